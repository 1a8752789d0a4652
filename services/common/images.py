"""Image checks shared by every service: bytes and data URLs turned into checked ``ValidImage``s
(https URLs are fetched by ``services.common.fetch`` and end up here too), and image types
recognised by their magic numbers, never by what a caller claims.

Every input goes through :func:`validate_image_bytes`: at most ``MAX_IMAGE_BYTES``, PNG, JPEG or
WebP by its magic bytes (a declared type is never trusted), at most ``MAX_SIDE`` pixels a side and,
over all frames of an animation, at most ``MAX_SIDE``² pixels, and it must decode completely.
Dimensions are read from the header before any pixel is decoded, so a small file that declares a
huge canvas (a decompression bomb) is refused without allocating it.

Errors are all :class:`ImageInputError`, with the request ``field``, an HTTP ``status`` (413 when
too large, 422 otherwise) and a machine ``code``. Which kind says whether to try again
(:mod:`services.common.errors`): :class:`ImageRejected` (permanent: this input can never be used)
or :class:`ImageFetchUnavailable` (retryable: a transient fetch failure, such as a timeout or a 5xx).
Messages name at most ``scheme://host/path`` of a URL (query strings are often signed) and never
a data URL's payload.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from functools import cached_property

from PIL import Image

from services.common.errors import Permanent, PipelineError, Retryable

__all__ = [
    "MAX_IMAGE_BYTES",
    "MAX_SIDE",
    "ImageFetchUnavailable",
    "ImageInputError",
    "ImageRejected",
    "ValidImage",
    "EXTENSIONS",
    "decode_data_url",
    "sniff_content_type",
    "validate_image_bytes",
]

_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
)

EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


def sniff_content_type(data: bytes) -> str | None:
    """``image/png``, ``image/jpeg`` or ``image/webp`` from the leading bytes; None for anything else."""
    for signature, content_type in _SIGNATURES:
        if data.startswith(signature):
            return content_type
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


MAX_IMAGE_BYTES = 10 * 1024 * 1024
MAX_SIDE = 4096
MAX_PIXELS = MAX_SIDE * MAX_SIDE  # over all frames: bounds the memory a full decode can take


class ImageInputError(PipelineError, ValueError):
    """An image input that cannot be used; ``str()`` is safe to show the caller. Catch this one;
    raise :class:`ImageRejected` or :class:`ImageFetchUnavailable`."""

    def __init__(self, field: str, reason: str, *, code: str, status: int = 422) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
        self.code = code
        self.status = status

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(field={self.field!r}, code={self.code!r}, status={self.status}, "
                f"reason={self.reason!r})")


class ImageRejected(ImageInputError, Permanent):
    """This input can never be used: not an image, too large, a refused or invalid URL, a 4xx."""


class ImageFetchUnavailable(ImageInputError, Retryable):
    """The image could not be fetched now (timeout, 5xx, DNS, the image store down); later it may."""


@dataclass(frozen=True)
class ValidImage:
    """Image bytes that passed :func:`validate_image_bytes`; the type comes from the magic bytes."""

    data: bytes = dataclass_field(repr=False)
    content_type: str
    width: int
    height: int

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def data_url(self) -> str:
        return f"data:{self.content_type};base64,{base64.b64encode(self.data).decode('ascii')}"

    def __repr__(self) -> str:
        return (f"ValidImage({self.content_type}, {self.width}x{self.height}, {len(self.data)} bytes, "
                f"sha256={self.sha256[:12]}…)")


# --- bytes -------------------------------------------------------------------------------------

_PIL_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}
_KNOWN_OTHERS: tuple[tuple[bytes, str], ...] = (
    (b"GIF8", "a GIF"), (b"BM", "a BMP"), (b"II*\x00", "a TIFF"), (b"MM\x00*", "a TIFF"),
    (b"%PDF", "a PDF"), (b"\x00\x00\x01\x00", "an ICO"),
)


def _describe(data: bytes) -> str:
    """What unsupported bytes look like, for the caller's benefit."""
    if not data:
        return "is empty"
    for signature, name in _KNOWN_OTHERS:
        if data.startswith(signature):
            return f"is {name}"
    head = data[:256].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        return "is an HTML page"
    if head.startswith((b"<svg", b"<?xml")):
        return "is SVG/XML"
    if head[:12].find(b"ftyp") == 4:
        return "is an HEIF/AVIF or video file"
    return "is not a PNG, JPEG or WebP image"


def validate_image_bytes(data: bytes, *, field: str, max_bytes: int = MAX_IMAGE_BYTES) -> ValidImage:
    """``data`` as a ``ValidImage``, or the ``ImageInputError`` that says why it cannot be one."""
    if len(data) > max_bytes:
        raise ImageRejected(field, f"is {len(data)} bytes; at most {max_bytes} are accepted",
                            code="too_large", status=413)
    content_type = sniff_content_type(data)
    if content_type is None:
        raise ImageRejected(field, f"{_describe(data)}; only PNG, JPEG and WebP are accepted",
                            code="unsupported_type")
    try:
        # Image.open reads the header only; Pillow's own bomb check runs here on the declared size.
        with Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[content_type]]) as image:
            width, height = image.size
            frames = getattr(image, "n_frames", 1)
            if width > MAX_SIDE or height > MAX_SIDE:
                raise ImageRejected(field, f"is {width}x{height} pixels; at most {MAX_SIDE}x{MAX_SIDE} "
                                    "are accepted", code="too_many_pixels")
            if width < 1 or height < 1:
                raise ImageRejected(field, f"declares {width}x{height} pixels", code="undecodable")
            if frames * width * height > MAX_PIXELS:
                raise ImageRejected(field, f"has {frames} frames of {width}x{height} pixels; at most "
                                    f"{MAX_PIXELS} pixels in all are accepted", code="decompression_bomb")
            image.load()  # within MAX_PIXELS now: bounded memory; finds truncated and corrupt data
    except Image.DecompressionBombError:
        raise ImageRejected(field, "declares more pixels than can be decoded safely (decompression bomb)",
                            code="decompression_bomb") from None
    except ImageInputError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        # Pillow reports truncated/corrupt data with all of these depending on the plugin.
        raise ImageRejected(field, f"is a {content_type} that cannot be decoded ({type(exc).__name__})",
                            code="undecodable") from None
    return ValidImage(data=data, content_type=content_type, width=width, height=height)


# --- data URLs ---------------------------------------------------------------------------------

_DATA_URL = re.compile(r"data:(?P<type>[^;,]*)(?P<params>(?:;[^;,]*)*),", re.IGNORECASE)
_DECLARED = {"image/png": "image/png", "image/jpeg": "image/jpeg", "image/jpg": "image/jpeg",
             "image/webp": "image/webp"}


def decode_data_url(url: str, *, field: str, max_bytes: int = MAX_IMAGE_BYTES) -> ValidImage:
    """A ``data:image/<png|jpeg|webp>;base64,...`` URL as a ``ValidImage``."""
    match = _DATA_URL.match(url)
    if match is None:
        raise ImageRejected(field, "is not a data URL (data:image/png;base64,...)", code="bad_url")
    declared_raw = match["type"].strip().lower()
    declared = _DECLARED.get(declared_raw)
    if declared is None:
        shown = declared_raw[:40] or "no type"
        raise ImageRejected(field, f"declares {shown}; only image/png, image/jpeg and image/webp are accepted",
                            code="unsupported_type")
    if "base64" not in [p.strip().lower() for p in match["params"].split(";")]:
        raise ImageRejected(field, "is not a base64 data URL (data:<type>;base64,...)", code="not_base64")
    payload = url[match.end():]
    # base64 is 4/3 of the bytes: refuse before decoding what would be too large anyway.
    if len(payload) * 3 // 4 > max_bytes + 2:
        raise ImageRejected(field, f"encodes about {len(payload) * 3 // 4} bytes; at most {max_bytes} are "
                            "accepted", code="too_large", status=413)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageRejected(field, "payload is not valid base64", code="not_base64") from None
    actual = sniff_content_type(data)
    if actual is not None and actual != declared:
        raise ImageRejected(field, f"declares {declared} but the bytes are {actual}", code="unsupported_type")
    return validate_image_bytes(data, field=field, max_bytes=max_bytes)
