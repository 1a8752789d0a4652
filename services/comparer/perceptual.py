"""The perceptual comparer: a local, model-free similarity score with numpy, scikit-image and imagehash.

It needs no network and no API key, so it serves when the VLM comparer cannot (and in tests).
Both images are decoded, flattened onto white if they have transparency, converted to RGB and
resized to :data:`SIZE`². The score follows what a player notices rather than pixel alignment: a
small shift or crop of the same item stays close, a blurred or recoloured one does not. The
generated image is first aligned to the target (phase correlation of the lightness, at most
:data:`MAX_SHIFT` of the side, kept only when it improves the coarse structure); then five
measurements:

- **structure**: SSIM (scikit-image: 7×7 windows, sample covariances) of the aligned CIELAB
  lightness L*, the mean of SSIM at :data:`SIZE`² and at :data:`COARSE_SIZE`², so that fine
  misalignment costs little; L* is what a change of hue leaves alone, so a recolour is judged by
  the colour term alone;
- **colour**: CIELAB ΔE between the aligned images at :data:`COLOUR_SIZE`², each target pixel
  against the closest of its 3×3 neighbours in the generated one, less the just-noticeable
  :data:`JUST_NOTICEABLE`, mapped to e^(−ΔE / :data:`COLOUR_SCALE`): it keeps falling up to the
  opposite hue, and it is what tells a red sword from a cyan one of the same lightness;
- **pHash** (imagehash, of L*): max(0, 1 − (Hamming distance − :data:`PHASH_SLACK`) / 28), since
  two unrelated images differ in about 32 of the 64 bits and a few flip under any re-encoding;
- **placement**: 1 − shift / :data:`MAX_SHIFT`, the price of the alignment;
- **detail**: the square root of the generated image's RMS gradient of L* over the target's (at the
  smaller image's side when one is under :data:`SIZE`), plus :data:`DETAIL_SLACK`, at most 1: a
  blurred copy loses detail; added noise is left to SSIM.

Score = 100 × (weighted sum of the first four, :data:`WEIGHTS`) × detail. Identical images score
100. ``tests/distortions.py`` builds the calibration set these numbers were chosen on (blur,
noise, JPEG, hue rotation, crop, shift; unrelated pairs) and
``tests/unit/test_perceptual_calibration.py`` checks its rules.

Differences are read from measurements (mean luminance, luminance spread, saturation, edge
energy, dominant hue, SSIM of the image halves), each with a prompt improvement; both lists
hold at most :data:`MAX_ITEMS` entries.

Speed: everything that needs one image alone (decoding, the box reduce, L*, the coarse copy, CIELAB
at :data:`COLOUR_SIZE`², pHash, hue and edge measures) is taken in :func:`_prepare`. Plain RGB(A)
PNGs are decoded by libpng (imagecodecs), which takes about 30 % less CPU than Pillow's decoder;
other images by Pillow. The pair's generated image is decoded in a worker thread while this one
decodes and measures the target: decoding releases the GIL, the numpy measurements do not for
long, so they all run in the calling thread. Only what needs both images (alignment, SSIM, ΔE)
runs after. :class:`PreparedImages` keeps prepared images by content, so a target compared with
several candidates is decoded once (:class:`PerceptualComparer` keeps one).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache

import imagecodecs
import imagehash
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from skimage.color import rgb2xyz, xyz_tristimulus_values
from skimage.metrics import structural_similarity
from skimage.registration import phase_cross_correlation

from services.common.cache import LruTtlCache
from services.common.contracts import ComparisonResult, quality_band

__all__ = ["METHOD", "SIZE", "WEIGHTS", "PerceptualComparer", "PreparedImages", "compare"]

METHOD = "perceptual"
SIZE = 128  # every measurement is taken at SIZE × SIZE
COARSE_SIZE = 32
WINDOW = 7  # SSIM window side
COLOUR_SIZE = 32
MAX_SHIFT = 0.15  # share of the side the alignment may move the generated image
COLOUR_SCALE = 40.0  # ΔE over which the colour term falls by a factor e
JUST_NOTICEABLE = 2.3  # ΔE a person does not see; JPEG's chroma noise stays under it
DETAIL_FLOOR = 1.0  # keeps flat images from reading every speck as lost detail
DETAIL_SLACK = 0.03  # a loss of detail nobody sees (noise clipped at white, resampling)
PHASH_SLACK = 4  # bits that flip under any re-encoding
WEIGHTS = {"structure": 0.50, "colour": 0.35, "phash": 0.05, "placement": 0.10}
MAX_ITEMS = 5
HSV_STEP = 2  # saturation and hue are read from every HSV_STEP-th pixel of each row and column
MAX_PIXELS = 64_000_000  # refuse larger images before decoding them
PREPARED_MAXSIZE = 64  # images kept prepared by a PerceptualComparer, about 150 KB each
PREPARED_TTL_S = 600.0
ORIENTATION = 0x0112  # the EXIF tag
#: where a PNG can say how it is oriented: the eXIf chunk, XMP, ImageMagick's raw EXIF profile
_ORIENTATION_MARKERS = (b"eXIf", b"XML:com.adobe.xmp", b"Raw profile type exif")

# Thresholds for the written differences.
LUMA_DELTA = 12.0  # mean luminance, 0–255
SATURATION_DELTA = 20.0  # mean HSV saturation, 0–255
CONTRAST_RATIO = 1.25  # ratio of luminance standard deviations
SHARPNESS_RATIO = 1.4  # ratio of mean edge energy
REGION_GAP = 0.08  # SSIM gap between opposite halves
REGION_MAX_SSIM = 0.9  # below this a weak half is worth naming
MIN_COLOURFUL = 0.05  # share of saturated pixels needed to name a dominant hue

#: (upper bound of hue in degrees, name)
HUES: tuple[tuple[float, str], ...] = (
    (15, "red"), (45, "orange"), (70, "yellow"), (160, "green"), (200, "cyan"),
    (255, "blue"), (290, "purple"), (335, "magenta"), (360, "red"),
)
_HUE_UPPER = np.array([upper * 256 / 360 for upper, _name in HUES])
_HUE_INDEX = np.searchsorted(_HUE_UPPER, np.arange(256), side="right")  # PIL's 0–255 hue → index in HUES


def _xyz_tables() -> np.ndarray:
    """skimage's CIE XYZ (over the D65 white) of each 8-bit value of each sRGB channel alone: ``[c][v]``.
    XYZ is linear in the linearised channels, so an image's XYZ is the sum of three lookups: at
    COLOUR_SIZE² that is 0.6× the time of ``rgb2lab``, with its values (and 128² L* costs no gamma curve)."""
    ramps = np.zeros((3, 256, 3))
    for channel in range(3):
        ramps[channel, :, channel] = np.arange(256) / 255
    white = xyz_tristimulus_values(illuminant="D65", observer="2")
    return (rgb2xyz(ramps) / white).astype(np.float32)


_XYZ = _xyz_tables()
_Y = np.ascontiguousarray(_XYZ[..., 1])  # the luminance alone, for L*


@dataclass(frozen=True)
class _Image:
    """Everything one image contributes to a comparison, measured once, before the pair is looked at."""

    rgb: Image.Image  # SIZE × SIZE
    lightness: np.ndarray  # SIZE × SIZE CIELAB L* (float32): the structure, which a change of hue leaves alone
    coarse: np.ndarray  # the lightness at COARSE_SIZE², for the unaligned coarse SSIM
    lab: np.ndarray  # CIELAB at COLOUR_SIZE², three planes (L*, a*, b*), for the unaligned colour term
    phash: imagehash.ImageHash  # of the lightness
    side: int  # the decoded image's shorter side
    mean: float
    std: float
    saturation: float
    edges: float
    hue: str | None  # the dominant hue's name


def _plain_png(image: Image.Image, raw: bytes) -> bool:
    """Whether libpng may decode this PNG instead of Pillow with the same pixels: 8- or 16-bit RGB or
    RGBA, no single transparent colour, and nothing that could carry an orientation (an eXIf chunk, XMP
    or a raw EXIF profile, which Pillow would only find by decoding the whole image first). A false
    alarm costs only the fast path."""
    return (image.format == "PNG" and image.mode in ("RGB", "RGBA") and "transparency" not in image.info
            and not any(marker in raw for marker in _ORIENTATION_MARKERS))


def _decode_png(raw: bytes, role: str) -> Image.Image:
    """libpng through imagecodecs: about 30 % less CPU than Pillow's PNG decoder, and the GIL is released
    for all of it, so the two images of a pair decode at once."""
    try:
        pixels = imagecodecs.png_decode(raw)
    except imagecodecs.PngError as exc:
        raise ValueError(f"{role} image is not a readable image (PNG, JPEG, WebP...): {exc}") from None
    if pixels.dtype != np.uint8:  # 16 bits a channel: the high byte, as Pillow reads them
        pixels = (pixels >> 8).astype(np.uint8)
    if pixels.shape[-1] == 4:
        return _flatten(Image.fromarray(pixels, "RGBA"))
    return Image.fromarray(pixels, "RGB")


def _flatten(rgba: Image.Image) -> Image.Image:
    """An image with transparency onto white."""
    flat = Image.new("RGB", rgba.size, (255, 255, 255))
    flat.paste(rgba, mask=rgba.getchannel("A"))
    return flat


def _decode(raw: bytes, role: str) -> Image.Image:
    if not isinstance(raw, bytes | bytearray | memoryview) or len(raw) == 0:
        raise ValueError(f"{role} image is empty or not bytes")
    raw = bytes(raw)  # a copy only of a bytearray or memoryview
    try:
        image = Image.open(io.BytesIO(raw))  # in memory: nothing to close, and closing would drop the pixels
        if image.width * image.height > MAX_PIXELS:
            raise ValueError(f"{role} image is too large ({image.width}×{image.height})")
        if _plain_png(image, raw):
            return _decode_png(raw, role)
        image.draft("RGB", (SIZE, SIZE))  # JPEG decodes at a fraction of its size
        image.load()
        if image.getexif().get(ORIENTATION, 1) != 1:
            image = ImageOps.exif_transpose(image)
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            return _flatten(image.convert("RGBA"))
        return image if image.mode == "RGB" else image.convert("RGB")
    except ValueError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"{role} image is not a readable image (PNG, JPEG, WebP...): {exc}") from None


def _gradient(lightness: np.ndarray) -> float:
    """RMS of the differences between neighbouring pixels: the energy of the finest detail."""
    return float(np.sqrt(np.square(np.diff(lightness, axis=0)).mean() + np.square(np.diff(lightness, axis=1)).mean()))


def _companded(t: np.ndarray) -> np.ndarray:
    """CIELAB's f(t) of XYZ over the white, with skimage's constants (``xyz2lab``)."""
    return np.where(t > 0.008856, np.cbrt(t), np.float32(7.787) * t + np.float32(16 / 116))


def _lightness(pixels: np.ndarray) -> np.ndarray:
    """CIELAB L* (0–100, D65) of every pixel of an RGB array, through :data:`_Y` (``np.take``: half the time
    of indexing with an array)."""
    y = np.take(_Y[0], pixels[..., 0]) + np.take(_Y[1], pixels[..., 1]) + np.take(_Y[2], pixels[..., 2])
    return 116 * _companded(y) - 16


def _rgb2lab(pixels: np.ndarray) -> np.ndarray:
    """skimage's ``rgb2lab`` of an 8-bit RGB array, through :data:`_XYZ`, as three float32 planes: L*, a*, b*
    (``lab[:, y, x]`` is a pixel; planes make the ΔE of :func:`_colour_difference` a quarter of the work)."""
    fx, fy, fz = _companded(sum(np.take(_XYZ[c], pixels[..., c], axis=0) for c in range(3))).transpose(2, 0, 1)
    return np.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)])


def _edges(luma: np.ndarray) -> float:
    """Mean of Pillow's FIND_EDGES (8 × a pixel − its 8 neighbours, clipped to 0–255) inside the border."""
    wide = luma.astype(np.int16)
    rows = wide[:-2] + wide[1:-1] + wide[2:]
    box = rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]  # each interior pixel's 3×3 sum
    return float(np.clip(9 * wide[1:-1, 1:-1] - box, 0, 255).mean())


def _dominant_hue(hsv: np.ndarray) -> str | None:
    """The name of the dominant hue among colourful pixels (saturation ≥ 64, value ≥ 48), weighted by
    saturation × value; None when under MIN_COLOURFUL of the pixels are colourful."""
    h, s, v = (hsv[..., i].ravel() for i in range(3))
    colourful = (s >= 64) & (v >= 48)
    if np.count_nonzero(colourful) < MIN_COLOURFUL * h.size:
        return None
    strength = np.where(colourful, s.astype(np.float32) * v, np.float32(0))
    weights = np.bincount(np.take(_HUE_INDEX, h), weights=strength, minlength=len(HUES))
    merged: dict[str, float] = {}
    for (_upper, name), weight in zip(HUES, weights, strict=True):
        merged[name] = merged.get(name, 0.0) + weight
    return max(merged, key=merged.__getitem__)


def _prepare(raw: bytes, role: str) -> _Image:
    """Decode one image and take every measurement that needs only it."""
    return _measure(*_load(raw, role))


def _load(raw: bytes, role: str) -> tuple[Image.Image, int]:
    """The image decoded and brought to SIZE², and its shorter side: all of it in libpng or Pillow, which
    release the GIL, so another thread can load the pair's other image at the same time."""
    decoded = _decode(raw, role)
    factor = min(decoded.size) // SIZE
    rgb = decoded.reduce(factor) if factor >= 2 else decoded  # a box filter first: cheap, and no aliasing
    if rgb.size != (SIZE, SIZE):
        rgb = rgb.resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    return rgb, min(decoded.size)


def _measure(rgb: Image.Image, side: int) -> _Image:
    """Every measurement of one image at SIZE² that needs only it: a few dozen small numpy steps, which hold
    the GIL between them, so they run in one thread (two threads taking turns cost more than they gain)."""
    pixels = np.asarray(rgb)
    luma = np.asarray(rgb.convert("L"))
    # Colour statistics from every other pixel: means and a hue histogram need no more, and HSV costs.
    hsv = np.asarray(Image.fromarray(pixels[::HSV_STEP, ::HSV_STEP]).convert("HSV"))
    std = float(luma.std())
    # mean edge strength per unit of luminance spread, so a darker copy does not read as blurrier
    edges = _edges(luma)
    lightness = _lightness(pixels)
    coarse = _shrink(lightness, COARSE_SIZE)
    return _Image(rgb, lightness, coarse, _lab(rgb), _phash(coarse),
                  side, float(luma.mean()), std, float(hsv[..., 1].mean()), edges / max(std, 1.0),
                  _dominant_hue(hsv))


@cache
def _workers() -> ThreadPoolExecutor:
    """The threads that load a pair's generated image while the caller loads and measures its target:
    decoding is most of a comparison's time at large sides, and two images decode in the time of one."""
    return ThreadPoolExecutor(max_workers=2, thread_name_prefix="perceptual-load")


def _prepare_both(target: bytes, generated: bytes) -> tuple[_Image, _Image]:
    """Both images prepared, the generated one decoded in a worker thread meanwhile; a target that cannot
    be decoded is named first, as before."""
    pending = _workers().submit(_load, generated, "generated")
    try:
        t = _prepare(target, "target")
    except BaseException:
        pending.cancel()
        raise
    if pending.cancel():  # not started: the workers are busy with other comparisons, so do it here, not wait
        return t, _prepare(generated, "generated")
    return t, _measure(*pending.result())


class PreparedImages:
    """Images prepared lately, by the SHA-256 of their bytes, so that a target compared with several
    candidates (one reference image across a game's generations, one concept art against each try) is
    decoded and measured once: at 1024² that is most of a comparison. Images are kept per ``scope``
    (the tenant, in the service), as the result cache is: a tenant's latency does not tell whether
    another tenant compared the same image. Comparisons run in worker threads, hence the lock."""

    def __init__(self, maxsize: int = PREPARED_MAXSIZE, ttl_s: float = PREPARED_TTL_S) -> None:
        self._images: LruTtlCache[_Image] = LruTtlCache(maxsize, ttl_s)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._images)

    def pair(self, target: bytes, generated: bytes, scope: str = "") -> tuple[_Image, _Image]:
        keys = tuple(f"{scope}:{hashlib.sha256(raw).hexdigest()}" for raw in (target, generated))
        with self._lock:
            t, g = (self._images.get(key) for key in keys)
        if t is None and g is None:
            t, g = _prepare_both(target, generated)
        else:  # one of them is known: the other alone is left, no thread needed
            t = t or _prepare(target, "target")
            g = g or _prepare(generated, "generated")
        with self._lock:
            for key, image in zip(keys, (t, g), strict=True):
                self._images.set(key, image)
        return t, g


def _ssim(a: np.ndarray, b: np.ndarray, *, full: bool = False):
    """Wang et al.'s SSIM in scikit-image's default form: uniform 7×7 windows, sample covariances."""
    return structural_similarity(a, b, data_range=100, win_size=WINDOW, full=full)


def _shrink(pixels: np.ndarray, side: int) -> np.ndarray:
    image = Image.fromarray(pixels.astype(np.float32, copy=False))  # mode F: any range, one channel
    return np.asarray(image.resize((side, side), Image.Resampling.BOX), dtype=np.float32)


def _lab(rgb: Image.Image, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """CIELAB planes (:func:`_rgb2lab`) of ``box`` of the image (all of it by default) at COLOUR_SIZE²."""
    return _rgb2lab(np.asarray(rgb.resize((COLOUR_SIZE, COLOUR_SIZE), Image.Resampling.BOX, box=box)))


@dataclass(frozen=True)
class _Alignment:
    """Where the target and the moved generated image overlap, and how far it was moved."""

    target: tuple[slice, slice]
    generated: tuple[slice, slice]
    shift: float  # share of the side

    @classmethod
    def none(cls) -> _Alignment:
        everything = (slice(0, SIZE), slice(0, SIZE))
        return cls(everything, everything, 0.0)

    @property
    def moved(self) -> bool:
        return self.shift > 0

    @classmethod
    def by(cls, dy: int, dx: int) -> _Alignment:
        def spans(d: int) -> tuple[slice, slice]:
            return slice(max(d, 0), SIZE + min(d, 0)), slice(max(-d, 0), SIZE + min(-d, 0))

        (ty, gy), (tx, gx) = spans(dy), spans(dx)
        return cls((ty, tx), (gy, gx), float(np.hypot(dy, dx)) / SIZE)


def _align(t: _Image, g: _Image) -> tuple[_Alignment, float]:
    """The alignment that gives the better coarse SSIM (moved or not), and that SSIM."""
    plain = _Alignment.none()
    plain_ssim = _ssim(t.coarse, g.coarse)
    (dy, dx), _error, _phase = phase_cross_correlation(t.lightness, g.lightness, normalization=None)
    dy, dx = int(dy), int(dx)
    if (dy, dx) == (0, 0) or max(abs(dy), abs(dx)) > MAX_SHIFT * SIZE:
        return plain, plain_ssim
    moved = _Alignment.by(dy, dx)
    moved_ssim = _ssim(_shrink(t.lightness[moved.target], COARSE_SIZE),
                       _shrink(g.lightness[moved.generated], COARSE_SIZE))
    return (moved, moved_ssim) if moved_ssim > plain_ssim else (plain, plain_ssim)


def _colour_difference(t: _Image, g: _Image, where: _Alignment) -> float:
    """Mean CIELAB ΔE of each target pixel to the closest of its 3×3 neighbours in the generated image."""
    if where.moved:
        a, b = _lab(t.rgb, _box(where.target)), _lab(g.rgb, _box(where.generated))
    else:
        a, b = t.lab, g.lab
    edge = np.clip(np.arange(-1, COLOUR_SIZE + 1), 0, COLOUR_SIZE - 1)
    padded = np.take(np.take(b, edge, axis=1), edge, axis=2)  # one pixel of edge around it; np.pad costs more
    squared = None
    for y in range(3):
        for x in range(3):
            d = a - padded[:, y:y + COLOUR_SIZE, x:x + COLOUR_SIZE]
            d *= d
            distance = d[0] + d[1] + d[2]
            squared = distance if squared is None else np.minimum(squared, distance, out=squared)
    return float(np.maximum(np.sqrt(squared) - JUST_NOTICEABLE, 0).mean())


def _box(span: tuple[slice, slice]) -> tuple[int, int, int, int]:
    """Pillow's (left, upper, right, lower) of a (rows, columns) span: it resizes a region without a copy."""
    rows, columns = span
    return columns.start, rows.start, columns.stop, rows.stop


def _phash(coarse: np.ndarray) -> imagehash.ImageHash:
    """imagehash's pHash of the coarse lightness: it is already the 32² that pHash shrinks every image to."""
    return imagehash.phash(Image.fromarray((coarse * 2.55).astype(np.uint8)))


def _detail(t: _Image, g: _Image) -> float:
    """How much of the target's fine detail the generated image keeps (1: all of it, or more), measured at
    the finest scale both images have, so a smaller image is not blamed for its size."""
    side = min(SIZE, t.side, g.side)

    def gradient(image: _Image) -> float:
        return _gradient(image.lightness if side == SIZE else _shrink(image.lightness, side))

    kept = (gradient(g) + DETAIL_FLOOR) / (gradient(t) + DETAIL_FLOOR)
    return min(1.0, math.sqrt(kept) + DETAIL_SLACK)


def _region_difference(ssim_map: np.ndarray) -> str | None:
    """The half of the image that differs most, if it clearly does."""
    rows, cols = ssim_map.shape
    means = {"upper": ssim_map[:rows // 2].mean(), "lower": ssim_map[rows // 2:].mean(),
             "left": ssim_map[:, :cols // 2].mean(), "right": ssim_map[:, cols // 2:].mean()}
    opposite = {"upper": "lower", "lower": "upper", "left": "right", "right": "left"}
    worst = min(means, key=means.__getitem__)
    if means[worst] < REGION_MAX_SSIM and means[opposite[worst]] - means[worst] > REGION_GAP:
        return worst
    return None


# (measure, floor, ratio, when lower: difference and tip, when higher: difference and tip)
_RATIO_RULES = (
    ("std", 1.0, CONTRAST_RATIO, "has less contrast", "add 'high contrast'",
     "has more contrast", "add 'soft, even lighting'"),
    ("edges", 0.01, SHARPNESS_RATIO, "is blurrier, with less fine detail", "add 'sharp focus, fine detail'",
     "is busier, with more fine detail", "add 'clean, simple shapes'"),
)

_REGION_WORDS = {"upper": "top", "lower": "bottom", "left": "left side", "right": "right side"}


def _differences(t: _Image, g: _Image, region: str | None, prompt: str) -> tuple[list[str], list[str]]:
    diffs: list[str] = []
    tips: list[str] = []
    lowered = prompt.lower()

    if t.hue and g.hue and t.hue != g.hue:
        diffs.append(f"dominant hue shifted from {t.hue} to {g.hue}")
        tips.append(f"mention the colour '{t.hue}'" if t.hue not in lowered
                    else f"stress the colour '{t.hue}' (e.g. 'vivid {t.hue}') and avoid '{g.hue}'")
    elif t.hue and not g.hue:
        diffs.append(f"the generated image lacks the target's {t.hue} colour")
        tips.append(f"mention the colour '{t.hue}'")

    luma = g.mean - t.mean
    if luma < -LUMA_DELTA:
        diffs.append(f"the generated image is darker (mean brightness {g.mean:.0f} vs {t.mean:.0f})")
        tips.append("add 'bright lighting'")
    elif luma > LUMA_DELTA:
        diffs.append(f"the generated image is brighter (mean brightness {g.mean:.0f} vs {t.mean:.0f})")
        tips.append("add 'dark, moody lighting'")

    sat = g.saturation - t.saturation
    if sat < -SATURATION_DELTA:
        diffs.append("the generated image is less saturated")
        tips.append("add 'vivid, saturated colours'")
    elif sat > SATURATION_DELTA:
        diffs.append("the generated image is more saturated")
        tips.append("add 'muted colours'")

    for attr, floor, ratio, less, less_tip, more, more_tip in _RATIO_RULES:
        target, ours = getattr(t, attr), getattr(g, attr)
        if target > ratio * max(ours, floor):
            diffs.append(f"the generated image {less}")
            tips.append(less_tip)
        elif ours > ratio * max(target, floor):
            diffs.append(f"the generated image {more}")
            tips.append(more_tip)

    if region:
        diffs.append(f"the {region} half differs most")
        tips.append(f"describe the {_REGION_WORDS[region]} of the item in more detail")

    return diffs[:MAX_ITEMS], tips[:MAX_ITEMS]


def compare(target: bytes, generated: bytes, original_prompt: str, *,
            prepared: PreparedImages | None = None, scope: str = "") -> ComparisonResult:
    """Score ``generated`` against ``target`` (0–100) and say what differs; synchronous, and pure but for
    ``prepared``, where images already seen in ``scope`` are looked up and new ones kept (the score is
    the same).

    Raises ``ValueError`` when either image cannot be decoded.
    """
    started = time.perf_counter()
    if prepared is not None:
        t, g = prepared.pair(target, generated, scope)
    else:
        t, g = _prepare_both(target, generated)

    where, coarse = _align(t, g)
    fine, ssim_map = _ssim(t.lightness[where.target], g.lightness[where.generated], full=True)
    terms = {
        "structure": max(0.0, (fine + coarse) / 2),
        "colour": math.exp(-_colour_difference(t, g, where) / COLOUR_SCALE),
        "phash": max(0.0, 1 - max(0, (t.phash - g.phash) - PHASH_SLACK) / (32 - PHASH_SLACK)),
        "placement": 1 - where.shift / MAX_SHIFT,
    }
    detail = _detail(t, g)
    raw = sum(WEIGHTS[name] * value for name, value in terms.items()) * detail
    score = round(min(100.0, max(0.0, 100 * raw)), 2)

    region = _region_difference(ssim_map) if fine < REGION_MAX_SSIM else None
    differences, improvements = _differences(t, g, region, original_prompt)
    band, colour = quality_band(score)
    return ComparisonResult(
        score=score, band=band, band_color=colour, differences=differences, improvements=improvements,
        method=METHOD, response_time_ms=(time.perf_counter() - started) * 1000,
    )


class PerceptualComparer:
    """Async face of :func:`compare`, run in a worker thread so the event loop stays free, keeping the
    images it has prepared (:class:`PreparedImages`) for the next comparisons."""

    method = METHOD

    def __init__(self, prepared: PreparedImages | None = None) -> None:
        self.prepared = prepared if prepared is not None else PreparedImages()

    async def compare(self, target: bytes, generated: bytes, original_prompt: str, *,
                      tenant: str | None = None) -> ComparisonResult:
        """``tenant``: whose prepared images may be reused (none of another tenant's)."""
        return await asyncio.to_thread(compare, target, generated, original_prompt, prepared=self.prepared,
                                       scope=tenant or "")
