"""The perceptual comparer: a local, model-free similarity score with Pillow and the stdlib.

It needs no network and no API key, so it serves when the VLM comparer cannot (and in tests).
Both images are decoded, flattened onto white if they have transparency, converted to RGB and
resized to :data:`SIZE` × :data:`SIZE`; then three measurements are taken:

- **SSIM** on luminance (Wang et al. 2004): uniform 7×7 sliding windows, C1 = (0.01·255)²,
  C2 = (0.03·255)², sample covariances; the mean over all windows. Negative values count as 0.
- **pHash**: the 8×8 lowest frequencies of a 32×32 DCT-II of the luminance, each bit "above the
  median"; similarity = max(0, 1 − Hamming distance / 32), since two unrelated images differ
  in about 32 of the 64 bits.
- **Colour histograms**: 16 bins per RGB channel, the Bhattacharyya coefficient of each channel,
  averaged (1 = the same colour distribution).
- **Hue histogram**: 12 hue bins of 30° over the saturated pixels plus one bin for grey ones,
  Bhattacharyya coefficient. Luminance SSIM and per-channel histograms barely see a hue swap
  (red ↔ blue keeps the luminance and moves mass between channels); this term does.

Score = 100 × (0.45·SSIM + 0.20·pHash + 0.15·histogram + 0.20·hue) (:data:`WEIGHTS`). Identical
images score 100; structure weighs most, so a blurred copy (99.5) beats a channel-swapped one
(76.5), which beats an unrelated image (~45).

Differences are read from measurements (mean luminance, luminance spread, saturation, edge
energy, dominant hue from an HSV histogram, SSIM of the image halves), each with a prompt
improvement; both lists hold at most :data:`MAX_ITEMS` entries.
"""

from __future__ import annotations

import asyncio
import io
import math
import time
from dataclasses import dataclass

from PIL import Image, ImageFilter, ImageOps, ImageStat, UnidentifiedImageError

from services.common.contracts import ComparisonResult, quality_band

__all__ = ["METHOD", "SIZE", "WEIGHTS", "PerceptualComparer", "compare"]

METHOD = "perceptual"
SIZE = 128  # both images are compared at SIZE × SIZE
WINDOW = 7  # SSIM window side
C1 = (0.01 * 255) ** 2
C2 = (0.03 * 255) ** 2
WEIGHTS = {"ssim": 0.45, "phash": 0.20, "histogram": 0.15, "hue": 0.20}
HIST_BINS = 16
HUE_BINS = 12  # 30° each
MAX_ITEMS = 5
MAX_PIXELS = 64_000_000  # refuse larger images before decoding them

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


@dataclass(frozen=True)
class _Image:
    rgb: Image.Image
    luma: list[float]
    mean: float
    std: float
    saturation: float
    edges: float
    hue: str | None  # the dominant hue's name
    hue_histogram: list[float]


def _decode(raw: bytes, role: str) -> Image.Image:
    if not isinstance(raw, bytes | bytearray | memoryview) or len(raw) == 0:
        raise ValueError(f"{role} image is empty or not bytes")
    try:
        with Image.open(io.BytesIO(raw)) as image:
            if image.width * image.height > MAX_PIXELS:
                raise ValueError(f"{role} image is too large ({image.width}×{image.height})")
            image.load()
            image = ImageOps.exif_transpose(image) or image
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                rgba = image.convert("RGBA")
                flat = Image.new("RGB", rgba.size, (255, 255, 255))
                flat.paste(rgba, mask=rgba.getchannel("A"))
                return flat
            return image.convert("RGB")
    except ValueError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"{role} image is not a readable image (PNG, JPEG, WebP...): {exc}") from None


def _hue_name(degrees: float) -> str:
    return next(name for upper, name in HUES if degrees < upper)


def _hues(hsv: Image.Image) -> tuple[str | None, list[float]]:
    """One pass over the colourful pixels (saturation ≥ 64, value ≥ 48):

    - the name of the dominant hue, weighted by saturation × value (None when under
      MIN_COLOURFUL of the pixels are colourful);
    - the share of pixels in each of HUE_BINS hue bins, plus a last bin for the grey ones.
    """
    h, s, v = (band.tobytes() for band in hsv.split())
    weights: dict[str, float] = {}
    bins = [0.0] * (HUE_BINS + 1)
    for hue, sat, val in zip(h, s, v, strict=True):
        if sat < 64 or val < 48:
            bins[HUE_BINS] += 1.0
            continue
        bins[hue * HUE_BINS // 256] += 1.0
        name = _hue_name(hue * 360 / 256)
        weights[name] = weights.get(name, 0.0) + sat * val
    colourful = len(h) - bins[HUE_BINS]
    dominant = max(weights, key=weights.__getitem__) if weights and colourful >= MIN_COLOURFUL * len(h) else None
    return dominant, [count / len(h) for count in bins]


def _prepare(raw: bytes, role: str) -> _Image:
    rgb = _decode(raw, role).resize((SIZE, SIZE), Image.Resampling.BILINEAR, reducing_gap=2.0)
    grey = rgb.convert("L")
    stat = ImageStat.Stat(grey)
    hsv = rgb.convert("HSV")
    saturation = ImageStat.Stat(hsv.getchannel("S")).mean[0]
    # mean edge strength per unit of luminance spread, so a darker copy does not read as blurrier
    edges = ImageStat.Stat(grey.filter(ImageFilter.FIND_EDGES).crop((1, 1, SIZE - 1, SIZE - 1))).mean[0]
    edges /= max(stat.stddev[0], 1.0)
    hue, hue_histogram = _hues(hsv)
    return _Image(rgb, [float(p) for p in grey.tobytes()], stat.mean[0], stat.stddev[0], saturation, edges,
                  hue, hue_histogram)


def _integral(values: list[float], w: int, h: int) -> list[float]:
    out = [0.0] * ((w + 1) * (h + 1))
    for y in range(h):
        row, above, here = 0.0, y * (w + 1), (y + 1) * (w + 1)
        for x in range(w):
            row += values[y * w + x]
            out[here + x + 1] = out[above + x + 1] + row
    return out


def _ssim_map(a: list[float], b: list[float]) -> list[tuple[int, int, float]]:
    """SSIM of every WINDOW × WINDOW window: (centre x, centre y, value)."""
    w = h = SIZE
    sums = [_integral(v, w, h) for v in (a, b, [x * x for x in a], [y * y for y in b],
                                         [x * y for x, y in zip(a, b, strict=True)])]
    n = WINDOW * WINDOW
    cov_norm = n / (n - 1)
    stride = w + 1
    out = []
    for y in range(h - WINDOW + 1):
        for x in range(w - WINDOW + 1):
            i0, i1 = y * stride + x, (y + WINDOW) * stride + x
            sa, sb, saa, sbb, sab = (s[i1 + WINDOW] - s[i1] - s[i0 + WINDOW] + s[i0] for s in sums)
            ma, mb = sa / n, sb / n
            va = (saa / n - ma * ma) * cov_norm
            vb = (sbb / n - mb * mb) * cov_norm
            vab = (sab / n - ma * mb) * cov_norm
            value = ((2 * ma * mb + C1) * (2 * vab + C2)) / ((ma * ma + mb * mb + C1) * (va + vb + C2))
            out.append((x + WINDOW // 2, y + WINDOW // 2, value))
    return out


_DCT = [[math.cos(math.pi * (2 * i + 1) * k / 64) for i in range(32)] for k in range(8)]


def _phash(rgb: Image.Image) -> int:
    grey = rgb.convert("L").resize((32, 32), Image.Resampling.BILINEAR).tobytes()
    rows = [[sum(c * grey[r * 32 + i] for i, c in enumerate(_DCT[k])) for k in range(8)] for r in range(32)]
    coeffs = [sum(_DCT[k][r] * rows[r][j] for r in range(32)) for k in range(8) for j in range(8)]
    median = sorted(coeffs[1:])[31]  # the DC term says only the mean brightness; leave it out of the median
    return sum(1 << i for i, c in enumerate(coeffs) if c > median)


def _histogram_similarity(a: Image.Image, b: Image.Image) -> float:
    def binned(image: Image.Image) -> list[list[float]]:
        hist = image.histogram()
        total = image.width * image.height
        per = 256 // HIST_BINS
        return [[sum(hist[c * 256 + i * per:c * 256 + (i + 1) * per]) / total for i in range(HIST_BINS)]
                for c in range(3)]

    ha, hb = binned(a), binned(b)
    return sum(sum(math.sqrt(p * q) for p, q in zip(ca, cb, strict=True)) for ca, cb in zip(ha, hb, strict=True)) / 3


def _hue_similarity(a: _Image, b: _Image) -> float:
    """Bhattacharyya coefficient of the hue histograms: low when the same shapes wear other colours."""
    return sum(math.sqrt(p * q) for p, q in zip(a.hue_histogram, b.hue_histogram, strict=True))


def _region_difference(windows: list[tuple[int, int, float]]) -> str | None:
    """The half of the image that differs most, if it clearly does."""
    half = SIZE / 2
    regions = {
        "upper": [v for _x, y, v in windows if y < half], "lower": [v for _x, y, v in windows if y >= half],
        "left": [v for x, _y, v in windows if x < half], "right": [v for x, _y, v in windows if x >= half],
    }
    means = {name: sum(vs) / len(vs) for name, vs in regions.items()}
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


def compare(target: bytes, generated: bytes, original_prompt: str) -> ComparisonResult:
    """Score ``generated`` against ``target`` (0–100) and say what differs; pure and synchronous.

    Raises ``ValueError`` when either image cannot be decoded.
    """
    started = time.perf_counter()
    t, g = _prepare(target, "target"), _prepare(generated, "generated")

    windows = _ssim_map(t.luma, g.luma)
    ssim = max(0.0, sum(v for _x, _y, v in windows) / len(windows))
    phash = max(0.0, 1 - (_phash(t.rgb) ^ _phash(g.rgb)).bit_count() / 32)  # unrelated hashes differ in ~32 bits
    histogram = _histogram_similarity(t.rgb, g.rgb)
    hue = _hue_similarity(t, g)
    raw = (WEIGHTS["ssim"] * ssim + WEIGHTS["phash"] * phash + WEIGHTS["histogram"] * histogram
           + WEIGHTS["hue"] * hue)
    score = round(min(100.0, max(0.0, 100 * raw)), 2)

    region = _region_difference(windows) if ssim < REGION_MAX_SSIM else None
    differences, improvements = _differences(t, g, region, original_prompt)
    band, colour = quality_band(score)
    return ComparisonResult(
        score=score, band=band, band_color=colour, differences=differences, improvements=improvements,
        method=METHOD, response_time_ms=(time.perf_counter() - started) * 1000,
    )


class PerceptualComparer:
    """Async face of :func:`compare`, run in a worker thread so the event loop stays free."""

    method = METHOD

    async def compare(self, target: bytes, generated: bytes, original_prompt: str) -> ComparisonResult:
        return await asyncio.to_thread(compare, target, generated, original_prompt)
