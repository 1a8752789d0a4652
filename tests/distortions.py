"""The perceptual comparer's calibration set: base images, graded distortions of each, unrelated pairs.

The bases are procedural icons (:func:`services.providers.procedural.render_icon`) and synthetic
scenes drawn here (a landscape, flat shapes, a smooth colour field strewn with stars), all at :data:`SIDE`². Each
family grows one distortion step by step; its first level is the *mild* one, a change a player
would hardly notice:

- ``blur``: Gaussian blur, σ in pixels at 512²
- ``noise``: Gaussian noise on every channel, σ on the 0–255 scale
- ``jpeg``: re-encoded as JPEG at falling quality (the pair goes through as real JPEG bytes)
- ``hue``: every pixel's hue angle turned by so many degrees (CIELAB LCh; lightness and chroma kept)
- ``crop``: this share of the side cut from every edge, then resized back to the side
- ``shift``: moved right and down by this share of the side, the uncovered strip filled with the edge

``python -m tests.distortions`` prints the table of scores for the comparer of this checkout.
"""

from __future__ import annotations

import io
import itertools
import random
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from skimage import color

from services.common.contracts import ImageSpec
from services.providers.procedural import render_icon

SIDE = 512
ICON_PROMPTS = ("flaming obsidian greatsword", "frost crystal longbow", "healing potion in a round flask",
                "oak shield with iron rim", "glowing amethyst ring")
SCENES = ("landscape", "shapes", "starfield")


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


# --- bases ------------------------------------------------------------------------------------

def _landscape(rng: random.Random) -> Image.Image:
    image = Image.new("RGB", (SIDE, SIDE))
    draw = ImageDraw.Draw(image)
    horizon = SIDE * 3 // 5
    for y in range(horizon):  # sky: deep blue at the top to pale at the horizon
        t = y / horizon
        draw.line([(0, y), (SIDE, y)], fill=(int(40 + 160 * t), int(90 + 130 * t), int(200 + 50 * t)))
    sun = rng.randrange(SIDE // 5, SIDE * 4 // 5)
    draw.ellipse([sun - 40, 60, sun + 40, 140], fill=(255, 220, 90))
    peaks = [(0, horizon)] + [(x, horizon - rng.randrange(60, 200)) for x in range(0, SIDE + 1, SIDE // 6)]
    draw.polygon(peaks + [(SIDE, horizon)], fill=(90, 80, 110))
    draw.rectangle([0, horizon, SIDE, SIDE], fill=(60, 140, 50))
    for _ in range(12):  # trees
        x, y = rng.randrange(SIDE), rng.randrange(horizon + 10, SIDE - 10)
        draw.polygon([(x, y - 50), (x - 18, y), (x + 18, y)], fill=(20, 90 + rng.randrange(40), 30))
    return image


def _shapes(rng: random.Random) -> Image.Image:
    image = Image.new("RGB", (SIDE, SIDE), (200, 196, 188))
    draw = ImageDraw.Draw(image)
    for _ in range(14):
        x, y, r = rng.randrange(SIDE), rng.randrange(SIDE), rng.randrange(20, 90)
        colour = tuple(rng.randrange(256) for _ in range(3))
        box = [x - r, y - r, x + r, y + r]
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour, outline=(30, 30, 30), width=3)
    return image


def _starfield(rng: random.Random) -> Image.Image:
    """A smooth colour field (random colours on an 8×8 grid, bicubic) strewn with small bright stars."""
    grid = np.array([[[rng.randrange(256) for _ in range(3)] for _ in range(8)] for _ in range(8)], dtype=np.uint8)
    image = Image.fromarray(grid).resize((SIDE, SIDE), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(300):
        x, y, r = rng.randrange(SIDE), rng.randrange(SIDE), rng.choice((1, 1, 2, 3))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=(255, 255, 240))
    return image


_SCENE_MAKERS: dict[str, Callable[[random.Random], Image.Image]] = {
    "landscape": _landscape, "shapes": _shapes, "starfield": _starfield}


@cache
def base(name: str) -> Image.Image:
    """A base image by name: an icon prompt or a scene name, the same in every run."""
    if name in _SCENE_MAKERS:
        return _SCENE_MAKERS[name](random.Random(name))
    raw = render_icon(ImageSpec(prompt=name, width=SIDE, height=SIDE, seed=7))
    return Image.open(io.BytesIO(raw)).convert("RGB")


def bases() -> tuple[str, ...]:
    return ICON_PROMPTS + SCENES


# --- distortions ------------------------------------------------------------------------------

def _blur(image: Image.Image, sigma: float) -> bytes:
    return png(image.filter(ImageFilter.GaussianBlur(sigma)))


def _noise(image: Image.Image, sigma: float) -> bytes:
    pixels = np.asarray(image, dtype=np.float32)
    noisy = pixels + np.random.default_rng(int(sigma * 100)).normal(0, sigma, pixels.shape)
    return png(Image.fromarray(np.clip(noisy, 0, 255).round().astype(np.uint8)))


def _jpeg(image: Image.Image, quality: int) -> bytes:
    return jpeg(image, quality)


def _hue(image: Image.Image, degrees: float) -> bytes:
    """Every pixel's CIELAB hue angle turned, its lightness and chroma kept (as far as sRGB allows)."""
    lch = color.lab2lch(color.rgb2lab(np.asarray(image)))
    lch[..., 2] += np.deg2rad(degrees)
    with warnings.catch_warnings():  # colours turned out of the sRGB gamut are clipped, as intended
        warnings.simplefilter("ignore", UserWarning)
        rgb = color.lab2rgb(color.lch2lab(lch))
    return png(Image.fromarray((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)))


def _crop(image: Image.Image, share: float) -> bytes:
    cut = round(share * SIDE)
    return png(image.crop((cut, cut, SIDE - cut, SIDE - cut)).resize((SIDE, SIDE), Image.Resampling.BICUBIC))


def _shift(image: Image.Image, share: float) -> bytes:
    d = round(share * SIDE)
    pixels = np.asarray(image)
    moved = np.pad(pixels, ((d, 0), (d, 0), (0, 0)), mode="edge")[:SIDE, :SIDE]
    return png(Image.fromarray(moved))


@dataclass(frozen=True)
class Family:
    name: str
    levels: tuple[float, ...]  # growing distortion; the first is the mild one
    apply: Callable[[Image.Image, float], bytes]
    unit: str


FAMILIES = (
    Family("blur", (0.5, 1, 2, 4, 8), _blur, "σ px"),
    Family("noise", (4, 8, 16, 32, 64), _noise, "σ"),
    Family("jpeg", (90, 75, 50, 25, 10, 5), _jpeg, "quality"),
    Family("hue", (10, 20, 45, 90, 135, 180), _hue, "°"),
    Family("crop", (0.01, 0.02, 0.05, 0.1, 0.2), _crop, "of each edge"),
    Family("shift", (0.01, 0.02, 0.05, 0.1, 0.2), _shift, "of the side"),
)


@dataclass(frozen=True)
class Case:
    """One pair of the set: the target and its distorted copy."""

    base: str
    family: str
    level: float
    target: bytes
    generated: bytes

    @property
    def mild(self) -> bool:
        return self.level == next(f for f in FAMILIES if f.name == self.family).levels[0]


def distorted() -> Iterator[Case]:
    """Every base under every level of every family."""
    for name in bases():
        image = base(name)
        target = png(image)
        for family in FAMILIES:
            for level in family.levels:
                yield Case(name, family.name, level, target, family.apply(image, level))


def unrelated() -> Iterator[tuple[str, str, bytes, bytes]]:
    """Every pair of two different bases."""
    for a, b in itertools.combinations(bases(), 2):
        yield a, b, png(base(a)), png(base(b))


def main() -> None:
    from services.comparer.perceptual import compare

    def score(target: bytes, generated: bytes) -> float:
        return compare(target, generated, "").score

    cases = list(distorted())
    print(f"{'family':8} {'level':>6}  " + "  ".join(f"{name[:9]:>9}" for name in bases()))
    for family in FAMILIES:
        for level in family.levels:
            row = [score(c.target, c.generated) for c in cases if c.family == family.name and c.level == level]
            print(f"{family.name:8} {level:6g}  " + "  ".join(f"{s:9.1f}" for s in row))
    pairs = sorted((score(t, g), a, b) for a, b, t, g in unrelated())
    print("unrelated, highest five: " + ", ".join(f"{s:.1f} ({a[:12]} / {b[:12]})" for s, a, b in pairs[-5:]))
    print(f"mild, lowest: {min(score(c.target, c.generated) for c in cases if c.mild):.1f}")


if __name__ == "__main__":
    main()
