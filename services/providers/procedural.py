"""The procedural provider: game item icons drawn with Pillow, no model, no network.

It serves the fallback path (and tests): it is fast, free, never rate-limited, and
deterministic — the same spec gives the same PNG bytes in every process, so a result can be
checked by comparing bytes with :func:`render_icon`.

How a spec becomes an icon:

- Words of the prompt choose a **palette** (``"flaming"`` → fire, ``"frost"`` → ice, ...; see
  :data:`~services.providers.procedural_shapes.PALETTES`) and an **item** — the first noun in
  the prompt with a silhouette (``"sword"``, ``"longbow"``, ``"potion"``, ...; see
  :data:`~services.providers.procedural_shapes.SILHOUETTES`); other nouns get a rune medallion.
  A second palette word gives the item's metal (``"flaming obsidian"``: an obsidian blade in a
  fire glow).
- Words of the negative prompt remove what they name: a palette (``"fire"`` drops every fire
  word), an item noun, or an effect: ``glow``, ``sparkles``/``particles``, ``frame``/``border``,
  ``vignette``/``background``, ``outline``, ``rim``/``highlight``, ``shadow`` (the drop shadow,
  and the shadow palette).
- ``style="pixel-art"`` draws at about 64 px, quantises the colours and scales up with
  NEAREST; any other style draws smooth (2× supersampled up to 1024 px).
- The seed is ``spec.seed``, or else the first four bytes of SHA-256 of the normalised prompt;
  randomness (palette hue for unknown words, emblems, bubbles, particles) comes from a local
  ``random.Random`` seeded from it and the style.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import math
import random
import re
from dataclasses import dataclass

from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageOps

from services.common.contracts import ImageSpec
from services.providers.port import (
    GeneratedImage,
    ImageProvider,
    PermanentProviderError,
)
from services.providers.procedural_shapes import (
    BLACK,
    FALLBACK,
    PALETTES,
    SILHOUETTES,
    WHITE,
    Palette,
    Pen,
    Silhouette,
    Tone,
    draw_particles,
    mix,
    seeded_palette,
)

__all__ = ["MODEL", "Features", "ProceduralProvider", "compose", "features", "render_icon", "stable_seed"]

MODEL = "procedural-v1"
PIXEL_ART_STYLES = frozenset({"pixel-art", "pixel", "pixelart", "8-bit", "16-bit"})
PIXEL_ART_SIZE = 64  # pixel art is drawn with about this many pixels on the shorter side
SUPERSAMPLE_UP_TO = 1024  # smooth images up to this size are drawn at 2× and reduced
ITEM_SCALE = 0.86  # the unit frame's ±1 as a fraction of half the shorter side
LINE = 0.028  # outline width, in units
PIXEL_ART_COLOURS = 32
PNG_COMPRESS_LEVEL = 4  # fixed: the bytes depend on it; 4 is ~2× faster than 6 for ~10% more bytes

#: effect → the negative-prompt words that switch it off
EFFECT_WORDS: dict[str, frozenset[str]] = {
    "glow": frozenset({"glow", "glowing", "bloom", "aura"}),
    "particles": frozenset({"sparkle", "sparkles", "particle", "particles", "sparks", "embers", "glitter"}),
    "frame": frozenset({"frame", "border", "slot"}),
    "vignette": frozenset({"vignette", "background", "gradient"}),
    "outline": frozenset({"outline", "outlines", "lineart"}),
    "rim": frozenset({"rim", "highlight", "highlights"}),
    "shadow": frozenset({"shadow", "shadows"}),  # also drops the shadow palette
}

_WORD = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class Features:
    """What an icon shows, read from a spec."""

    palette: Palette | None  # None: a palette from the seed
    noun: str | None  # the word that chose the silhouette; None: the fallback emblem
    silhouette: Silhouette
    pixel_art: bool
    glow: bool = True
    particles: bool = True
    frame: bool = True
    vignette: bool = True
    outline: bool = True
    rim: bool = True
    shadow: bool = True  # the drop shadow


def _words(text: str | None) -> list[str]:
    words = []
    for word in _WORD.findall((text or "").lower()):
        words.append(word)
        if word.endswith("s") and len(word) > 3:  # "swords" → also "sword"
            words.append(word[:-1])
    return words


def stable_seed(spec: ImageSpec) -> int:
    """``spec.seed``, or a seed from SHA-256 of the prompt (whitespace collapsed, case folded)."""
    if spec.seed is not None:
        return spec.seed
    normalised = " ".join(spec.prompt.casefold().split())
    return int.from_bytes(hashlib.sha256(normalised.encode()).digest()[:4], "big")


def _rng(spec: ImageSpec) -> random.Random:
    style = (spec.style or "").strip().lower()
    material = f"{stable_seed(spec)}|{style}".encode()
    return random.Random(int.from_bytes(hashlib.sha256(material).digest()[:8], "big"))


def features(spec: ImageSpec) -> Features:
    """Read palette, item and effects from the prompt, the negative prompt and the style."""
    words, negative = _words(spec.prompt), set(_words(spec.negative_prompt))
    palettes = []
    for word in words:
        for keys, palette in PALETTES.values():
            if word in keys and not keys & negative and palette not in palettes:
                palettes.append(palette)
    palette = palettes[0] if palettes else None
    if len(palettes) > 1 and palette is not None:  # the second material word gives the metal
        metal = palettes[1].metal
        palette = dataclasses.replace(palette, metal=Tone(mix(metal.light, palette.glow, 0.8), metal.base, metal.dark))
    noun = next((w for w in words if w in SILHOUETTES and w not in negative), None)
    effects = {effect: not keys & negative for effect, keys in EFFECT_WORDS.items()}
    pixel_art = (spec.style or "").strip().lower() in PIXEL_ART_STYLES
    return Features(palette, noun, SILHOUETTES[noun] if noun else FALLBACK, pixel_art, **effects)


# --------------------------------------------------------------------------------------------
# Composition
# --------------------------------------------------------------------------------------------


def render_icon(spec: ImageSpec) -> bytes:
    """The PNG of ``spec``: pure and deterministic (same spec → same bytes, in any process).

    Saved with fixed options and no metadata (no time stamps, no text chunks).
    """
    buffer = io.BytesIO()
    compose(spec).save(buffer, format="PNG", optimize=False, compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def compose(spec: ImageSpec) -> Image.Image:
    """The icon of ``spec`` as an RGB image of exactly ``spec.width`` × ``spec.height``.

    Layers, back to front: a radial background with the glow and the item's drop shadow (all
    smooth, so drawn at 1/4 size and scaled up), the item with its rim light and the particles
    (drawn at 2× on a layer of the shorter side's size, then reduced), and the slot frame.
    """
    feat, rng = features(spec), _rng(spec)
    pal = feat.palette or seeded_palette(rng)
    if feat.pixel_art:
        k = max(1, min(spec.width, spec.height) // PIXEL_ART_SIZE)
        ss, (w, h) = 1, (spec.width // k, spec.height // k)
    else:
        ss = 2 if max(spec.width, spec.height) <= SUPERSAMPLE_UP_TO else 1
        w, h = spec.width, spec.height
    side = min(w, h)
    corner = ((w - side) // 2, (h - side) // 2)

    # Transparent pixels carry a colour near the background's, so reducing without
    # premultiplied alpha (much faster) leaves no dark fringes around bright shapes.
    item = Image.new("RGBA", (side * ss, side * ss), (*mix(pal.bg, pal.glow, 0.5), 0))
    outline = mix(pal.metal.dark, BLACK, 0.7) if feat.outline else None
    pen = Pen(item, scale=ITEM_SCALE, outline=outline, line=LINE)
    feat.silhouette(pen, pal, rng, feat.noun or "")
    alpha = item.getchannel("A")  # the item alone, without particles
    if feat.particles:
        draw_particles(pen, pal, rng)
    coverage, colour = item.getchannel("A"), item.convert("RGB")
    if ss > 1:
        alpha, coverage, colour = alpha.reduce(ss), coverage.reduce(ss), colour.reduce(ss)
    if feat.rim:
        _rim_light(colour, alpha, pal.rim or pal.metal.light, max(1, pen.width // ss))
    canvas = _background(w, h, pal, rng, alpha if feat.shadow else None, vignette=feat.vignette, glow=feat.glow)
    canvas.paste(colour, corner, coverage)
    if feat.frame:
        _frame(canvas, pal, side)

    if feat.pixel_art:
        indexed = canvas.quantize(colors=PIXEL_ART_COLOURS, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        return indexed.convert("RGB").resize((spec.width, spec.height), Image.Resampling.NEAREST)
    return canvas


def _background(w: int, h: int, pal: Palette, rng: random.Random, alpha: Image.Image | None, *, vignette: bool,
                glow: bool) -> Image.Image:
    """A dark radial vignette, a soft glow in the middle (with rays, for radiant palettes) and
    the drop shadow of the item whose coverage is ``alpha`` (centred; None: no shadow).

    All are smooth, so they are drawn at 1/4 size, blurred, and scaled up: cheap, and as soft.
    """
    k = 4 if min(w, h) >= 64 else 1
    sw, sh = w // k, h // k
    if vignette:
        gradient = Image.radial_gradient("L").resize((sw, sh), Image.Resampling.BILINEAR)
        small = ImageOps.colorize(gradient, black=mix(pal.bg, WHITE, 0.06), mid=mix(pal.bg, BLACK, 0.5),
                                  white=mix(pal.bg, BLACK, 0.92), midpoint=120, whitepoint=235)
    else:
        small = Image.new("RGB", (sw, sh), mix(pal.bg, BLACK, 0.45))
    if glow:
        side = min(sw, sh)
        mask = Image.new("L", (sw, sh), 0)
        draw = ImageDraw.Draw(mask)
        cx, cy, r = sw / 2, sh / 2, side * (0.27 + 0.05 * rng.random())
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=210)
        if pal.rays:
            rays = rng.randint(10, 14)
            for i in range(rays):
                a = (i + rng.random() * 0.3) / rays * 2 * math.pi
                tip = (cx + side * 0.55 * math.cos(a), cy + side * 0.55 * math.sin(a))
                left = (cx + r * 0.5 * math.cos(a - 0.18), cy + r * 0.5 * math.sin(a - 0.18))
                right = (cx + r * 0.5 * math.cos(a + 0.18), cy + r * 0.5 * math.sin(a + 0.18))
                draw.polygon([left, tip, right], fill=120)
        small.paste(pal.glow, (0, 0, sw, sh), mask.filter(ImageFilter.GaussianBlur(side * 0.1)))
    if alpha is not None:
        shadow = alpha.reduce(k) if k > 1 else alpha
        shadow = shadow.filter(ImageFilter.GaussianBlur(max(1.0, shadow.width * 0.02))).point(_SHADOW_LUT)
        x = (sw - shadow.width) // 2 + round(shadow.width * 0.025)
        y = (sh - shadow.height) // 2 + round(shadow.width * 0.035)
        small.paste(BLACK, (x, y, x + shadow.width, y + shadow.height), shadow)
    return small.resize((w, h), Image.Resampling.BILINEAR)


def _shifted(mask: Image.Image, d: int) -> Image.Image:
    """``mask`` moved ``d`` pixels right and down (not wrapped)."""
    out = Image.new("L", mask.size, 0)
    out.paste(mask, (d, d))
    return out


def _rim_light(item: Image.Image, alpha: Image.Image, colour: tuple[int, int, int], line: int) -> None:
    """Light the upper-left edge of the silhouette (``alpha``), just inside its outline."""
    box = alpha.getbbox()
    if box is None:
        return
    alpha = alpha.crop((box[0] - 2 * line, box[1] - 2 * line, box[2], box[3]))  # room for the shifts
    inside = _shifted(alpha, line)
    beyond = ImageChops.invert(_shifted(alpha, line + max(1, line)))
    rim = ImageChops.multiply(ImageChops.multiply(inside, beyond), alpha).point(_RIM_LUT)
    item.paste(colour, (box[0] - 2 * line, box[1] - 2 * line, box[2], box[3]), rim)


def _frame(canvas: Image.Image, pal: Palette, side: int) -> None:
    """An inventory-slot border: square outside, rounded inside, with a bevelled inner edge."""
    w, h = canvas.size
    t, r = max(1, round(side * 0.035)), max(2, round(side * 0.09))
    draw = ImageDraw.Draw(canvas, "RGBA")
    # A rounded outline whose inner edge is the slot and whose outer edge lies off the canvas.
    e = 2 * r + t
    draw.rounded_rectangle((t - e, t - e, w - 1 - t + e, h - 1 - t + e), radius=r + e,
                           outline=mix(pal.trim.dark, (28, 26, 34), 0.65), width=e)
    bevel = max(1, round(side * 0.008))
    draw.rounded_rectangle((t, t, w - 1 - t, h - 1 - t), radius=r, outline=(*pal.trim.base, 150), width=bevel)
    draw.rectangle((0, 0, w - 1, h - 1), outline=(0, 0, 0, 200), width=bevel)


_RIM_LUT = [v * 3 // 4 for v in range(256)]
_SHADOW_LUT = [v * 3 // 5 for v in range(256)]


# --------------------------------------------------------------------------------------------
# Provider
# --------------------------------------------------------------------------------------------


class ProceduralProvider(ImageProvider):
    """Renders :func:`render_icon` in a worker thread, after an optional simulated latency."""

    name = "procedural"

    def __init__(self, *, simulated_latency_s: float = 0.0) -> None:
        if simulated_latency_s < 0:
            raise ValueError("simulated_latency_s must be >= 0")
        self.simulated_latency_s = simulated_latency_s

    async def generate(self, spec: ImageSpec, token: str | None = None) -> GeneratedImage:
        if self.simulated_latency_s > 0:
            await asyncio.sleep(self.simulated_latency_s)
        try:
            data = await asyncio.to_thread(render_icon, spec)
        except Exception as exc:  # a bug or out of memory: the same spec would fail again
            raise PermanentProviderError(f"rendering failed ({type(exc).__name__})", provider=self.name,
                                         code="render_failed") from exc
        return GeneratedImage(data=data, content_type="image/png", provider=self.name, model=MODEL,
                              deterministic=True)
