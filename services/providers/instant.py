"""The instant provider: pre-rendered icons, no render time, distinct bytes for every spec.

It exists to measure the pipeline itself (``bench/e2e.py --provider instant``): the generator
answers at once, so what is left is Forgeline's own work per job. One procedural icon per size
is rendered on first use; each answer is that PNG with a ``tEXt`` chunk naming the spec's
SHA-256 before its end, so two specs never share bytes (storage cannot de-duplicate them) and
the image stays a valid PNG of the right size.
"""

from __future__ import annotations

import functools
import hashlib
import struct
import zlib

from services.common.contracts import ImageSpec
from services.providers.port import GeneratedImage, ImageProvider
from services.providers.procedural import render_icon

MODEL = "instant-prerendered"
_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"


@functools.lru_cache(maxsize=16)
def _prerendered(width: int, height: int) -> bytes:
    return render_icon(ImageSpec(prompt="instant bench sword", width=width, height=height, seed=1))


def _text_chunk(keyword: bytes, text: bytes) -> bytes:
    body = b"tEXt" + keyword + b"\x00" + text
    return struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))


def instant_png(spec: ImageSpec) -> bytes:
    """The pre-rendered PNG of ``spec``'s size, made distinct by a chunk holding the spec's digest."""
    base = _prerendered(spec.width, spec.height)
    assert base.endswith(_IEND)
    digest = hashlib.sha256(spec.model_dump_json().encode()).hexdigest().encode()
    return base[: -len(_IEND)] + _text_chunk(b"forgeline-spec", digest) + _IEND


class InstantProvider(ImageProvider):
    """Answers at once with :func:`instant_png` (deterministic: the same spec, the same bytes)."""

    name = "instant"

    async def generate(self, spec: ImageSpec, token: str | None = None) -> GeneratedImage:
        return GeneratedImage(data=instant_png(spec), content_type="image/png", provider=self.name, model=MODEL,
                              deterministic=True)
