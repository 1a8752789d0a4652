"""Palettes and item silhouettes of the procedural provider.

Everything here draws in a *unit frame*: ``(0, 0)`` is the centre of the item box, ``±1`` its
edges, ``y`` points down. A :class:`Pen` maps that frame (turned by an angle, for the classic
diagonal pose of swords and staves) onto a Pillow image. Silhouettes are plain functions
``draw(pen, palette, rng, word)``; ``word`` is the noun that chose them (``"dagger"`` draws a
shorter blade than ``"greatsword"``). All randomness comes from the ``rng`` passed in.
"""

from __future__ import annotations

import colorsys
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw

RGB = tuple[int, int, int]
Point = tuple[float, float]

BLACK: RGB = (0, 0, 0)
WHITE: RGB = (255, 255, 255)


def mix(a: RGB, b: RGB, t: float) -> RGB:
    """``a`` moved a fraction ``t`` of the way towards ``b``."""
    return (round(a[0] + (b[0] - a[0]) * t), round(a[1] + (b[1] - a[1]) * t), round(a[2] + (b[2] - a[2]) * t))


@dataclass(frozen=True)
class Tone:
    """Three shades of one material: lit side, body, shadow side."""

    light: RGB
    base: RGB
    dark: RGB

    @classmethod
    def of(cls, base: RGB, light: RGB | None = None) -> Tone:
        return cls(light or mix(base, WHITE, 0.5), base, mix(base, BLACK, 0.5))


# --------------------------------------------------------------------------------------------
# Palettes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Palette:
    """The colours of an icon: background, glow, and the four materials an item is made of."""

    name: str
    bg: RGB  # centre of the background; the edges fade to near-black
    glow: RGB
    metal: Tone  # blades, shield rims, helmets
    trim: Tone  # guards, bands, settings
    accent: Tone  # gems, liquids, orbs, shield fields
    wood: Tone  # grips, shafts, bow limbs, corks
    sparkle: RGB
    particles: str  # "spark" | "ember" | "flake" | "bubble" | "mote"
    rim: RGB | None = None  # light on the item's upper-left edge; None → metal.light
    rays: bool = False  # light rays behind the item


def _palette(name: str, *, bg: RGB, glow: RGB, metal: RGB, trim: RGB, accent: RGB, wood: RGB,
             sparkle: RGB, particles: str, metal_light: RGB | None = None, rim: RGB | None = None,
             rays: bool = False) -> Palette:
    return Palette(name, bg, glow, Tone.of(metal, metal_light), Tone.of(trim), Tone.of(accent), Tone.of(wood),
                   sparkle, particles, rim, rays)


#: Palette name → the prompt words that choose it, and the palette.
PALETTES: dict[str, tuple[frozenset[str], Palette]] = {
    "fire": (frozenset({"flaming", "fire", "fiery", "flame", "lava", "ember", "molten", "burning", "inferno"}),
             _palette("fire", bg=(78, 24, 8), glow=(255, 110, 20), metal=(232, 96, 34), metal_light=(255, 214, 120),
                      trim=(206, 142, 48), accent=(255, 170, 30), wood=(96, 38, 22), sparkle=(255, 216, 110),
                      particles="ember")),
    "ice": (frozenset({"ice", "icy", "frost", "frozen", "crystal", "glacial", "snow"}),
            _palette("ice", bg=(14, 48, 86), glow=(80, 196, 255), metal=(150, 208, 240), metal_light=(240, 252, 255),
                     trim=(196, 214, 236), accent=(90, 220, 255), wood=(120, 170, 210), sparkle=(225, 250, 255),
                     particles="flake")),
    "poison": (frozenset({"poison", "poisoned", "toxic", "venom", "venomous", "acid"}),
               _palette("poison", bg=(20, 62, 22), glow=(120, 255, 70), metal=(118, 168, 96),
                        metal_light=(214, 255, 176), trim=(128, 140, 62), accent=(128, 240, 50), wood=(52, 74, 40),
                        sparkle=(200, 255, 140), particles="bubble")),
    "shadow": (frozenset({"shadow", "obsidian", "void", "dark", "cursed", "necrotic"}),
               _palette("shadow", bg=(38, 14, 60), glow=(140, 60, 230), metal=(52, 40, 74), metal_light=(170, 120, 240),
                        trim=(92, 70, 124), accent=(176, 96, 255), wood=(44, 30, 52), sparkle=(214, 170, 255),
                        particles="mote", rim=(196, 140, 255))),
    "holy": (frozenset({"holy", "golden", "gold", "divine", "blessed", "radiant", "sacred"}),
             _palette("holy", bg=(76, 60, 22), glow=(255, 228, 130), metal=(240, 200, 86), metal_light=(255, 250, 220),
                      trim=(255, 218, 96), accent=(255, 238, 186), wood=(176, 120, 56), sparkle=(255, 250, 210),
                      particles="spark", rays=True)),
    "healing": (frozenset({"healing", "heal", "health", "life", "restoration", "vitality"}),
                _palette("healing", bg=(74, 20, 36), glow=(255, 120, 150), metal=(226, 200, 210),
                         trim=(236, 196, 118), accent=(236, 40, 78), wood=(150, 96, 62), sparkle=(255, 210, 222),
                         particles="spark")),
}


def seeded_palette(rng: random.Random) -> Palette:
    """The palette of a prompt no palette word matches: steel and gold, with a seeded hue."""
    hue = rng.random()

    def hsv(s: float, v: float) -> RGB:
        r, g, b = colorsys.hsv_to_rgb(hue, s, v)
        return (round(r * 255), round(g * 255), round(b * 255))

    return _palette("arcane", bg=hsv(0.7, 0.3), glow=hsv(0.65, 1.0), metal=(166, 176, 192),
                    metal_light=(240, 244, 250), trim=(206, 164, 72), accent=hsv(0.8, 0.95), wood=(112, 72, 42),
                    sparkle=hsv(0.25, 1.0), particles="spark")


# --------------------------------------------------------------------------------------------
# Drawing in the unit frame
# --------------------------------------------------------------------------------------------


class Pen:
    """Draws on ``image`` in the unit frame, turned clockwise by ``angle`` degrees about the centre."""

    def __init__(self, image: Image.Image, *, scale: float, outline: RGB | None, line: float,
                 angle: float = 0.0, offset: Point = (0.0, 0.0)) -> None:
        self.image = image
        self.draw = ImageDraw.Draw(image, "RGBA" if image.mode == "RGB" else None)  # RGB: blend the ink
        self.scale, self.outline, self.line, self.angle, self.offset = scale, outline, line, angle, offset
        self.unit = min(image.size) / 2 * scale
        self.cx, self.cy = image.width / 2, image.height / 2
        self.cos, self.sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        self.width = max(1, round(line * self.unit))

    def turned(self, angle: float, offset: Point = (0.0, 0.0), zoom: float = 1.0) -> Pen:
        """A pen for the same image, its frame turned by ``angle``, moved by ``offset``, scaled by ``zoom``."""
        return Pen(self.image, scale=self.scale * zoom, outline=self.outline, line=self.line / zoom, angle=angle,
                   offset=offset)

    def map(self, points: Sequence[Point]) -> list[Point]:
        u, c, s, (ox, oy) = self.unit, self.cos, self.sin, self.offset
        return [(self.cx + (x * c - y * s + ox) * u, self.cy + (x * s + y * c + oy) * u) for x, y in points]

    def poly(self, points: Sequence[Point], fill: RGB | tuple[int, int, int, int] | None, *,
             outline: bool = True) -> None:
        ink = self.outline if outline else None
        self.draw.polygon(self.map(points), fill=fill, outline=ink, width=self.width if ink else 1)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float | None = None, fill: RGB | None = None, *,
                outline: bool = True) -> None:
        self.poly(ellipse_points(cx, cy, rx, rx if ry is None else ry), fill, outline=outline)

    def lines(self, points: Sequence[Point], fill: RGB | tuple[int, int, int, int], width: float) -> None:
        self.draw.line(self.map(points), fill=fill, width=max(1, round(width * self.unit)), joint="curve")


def ellipse_points(cx: float, cy: float, rx: float, ry: float, a0: float = 0.0, a1: float = 2 * math.pi,
                   steps: int = 40) -> list[Point]:
    """Points on an ellipse from angle ``a0`` to ``a1`` (radians; 0 is right, π/2 is down)."""
    n = max(2, round(steps * abs(a1 - a0) / (2 * math.pi)))
    return [(cx + rx * math.cos(a0 + (a1 - a0) * i / n), cy + ry * math.sin(a0 + (a1 - a0) * i / n))
            for i in range(n + 1)]


def bezier(p0: Point, p1: Point, p2: Point, steps: int = 12) -> list[Point]:
    """A quadratic Bézier curve from ``p0`` to ``p2`` pulled towards ``p1``."""
    out = []
    for i in range(steps + 1):
        t = i / steps
        a, b, c = (1 - t) ** 2, 2 * (1 - t) * t, t * t
        out.append((a * p0[0] + b * p1[0] + c * p2[0], a * p0[1] + b * p1[1] + c * p2[1]))
    return out


def star_points(cx: float, cy: float, r: float, inner: float = 0.22, arms: int = 4) -> list[Point]:
    pts = []
    for i in range(arms * 2):
        a = math.pi * i / arms - math.pi / 2
        rr = r if i % 2 == 0 else r * inner
        pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    return pts


def gem(pen: Pen, cx: float, cy: float, r: float, tone: Tone) -> None:
    """A brilliant-cut gem seen from the side: a crown of three facets over a pavilion of four."""
    tl, tr, gl, gr, bottom = (cx - 0.5 * r, cy - 0.55 * r), (cx + 0.5 * r, cy - 0.55 * r), \
        (cx - r, cy - 0.12 * r), (cx + r, cy - 0.12 * r), (cx, cy + r)
    ml, mr = (cx - 0.3 * r, cy - 0.12 * r), (cx + 0.3 * r, cy - 0.12 * r)
    pen.poly([tl, ml, gl], mix(tone.light, WHITE, 0.3), outline=False)
    pen.poly([tl, tr, mr, ml], tone.light, outline=False)
    pen.poly([tr, gr, mr], tone.base, outline=False)
    pen.poly([gl, ml, bottom], tone.base, outline=False)
    pen.poly([ml, mr, bottom], mix(tone.base, tone.light, 0.4), outline=False)
    pen.poly([mr, gr, bottom], tone.dark, outline=False)
    pen.poly([tl, tr, gr, bottom, gl], None)
    pen.poly(star_points(cx - 0.35 * r, cy - 0.3 * r, 0.45 * r, 0.18), WHITE, outline=False)


# --------------------------------------------------------------------------------------------
# Silhouettes
# --------------------------------------------------------------------------------------------

#: word → (tip, guard, half width, guard half span, grip length, curve, fuller, zoom)
_BLADES: dict[str, tuple[float, float, float, float, float, float, bool, float]] = {
    "sword": (-1.1, 0.36, 0.14, 0.4, 0.34, 0.0, True, 1.0),
    "greatsword": (-1.2, 0.4, 0.18, 0.44, 0.4, 0.0, True, 1.0),
    "dagger": (-0.7, 0.16, 0.13, 0.3, 0.28, 0.0, False, 1.3),
    "knife": (-0.7, 0.16, 0.11, 0.0, 0.3, 0.0, False, 1.3),
    "katana": (-1.16, 0.36, 0.09, 0.0, 0.48, 0.16, False, 1.0),
}


def draw_sword(pen: Pen, pal: Palette, rng: random.Random, word: str) -> None:
    tip, guard, w, span, grip, curve, fuller, zoom = _BLADES.get(word, _BLADES["sword"])
    end = guard + 0.11 + grip + 0.15
    p = pen.turned(45, offset=_rotate((0.0, -(tip + end) / 2 * zoom), 45), zoom=zoom)
    taper = tip + w * (3.2 if curve else 2.4)

    def centre(y: float) -> float:
        return curve * ((guard - y) / (guard - tip)) ** 2

    ys = [guard + (taper - guard) * i / 10 for i in range(11)]
    left = [(centre(y) - w, y) for y in ys] + [(centre(tip), tip)]
    right = [(centre(y) + w, y) for y in ys] + [(centre(tip), tip)]
    ridge = [(centre(y), y) for y in ys] + [(centre(tip), tip)]
    p.poly(left + ridge[::-1], pal.metal.light, outline=False)
    p.poly(ridge + right[::-1], pal.metal.base, outline=False)
    bevel = [(x - 0.045 * (x - centre(y)) / w if w else x, y) for x, y in right]  # the lower cutting edge
    p.poly(right + bevel[::-1], mix(pal.metal.base, pal.metal.light, 0.45), outline=False)
    if fuller:
        p.lines([(0, guard - 0.04), (0, guard - (guard - tip) * 0.55)], pal.metal.dark, w * 0.32)
    p.poly(left + right[::-1], None)
    g1 = guard + 0.11
    if span:  # a cross guard with curled ends and a jewel
        bar = [(-span - 0.07, guard - 0.03), (-span, guard), (span, guard), (span + 0.07, guard - 0.03),
               (span + 0.03, g1 + 0.01), (-span - 0.03, g1 + 0.01)]
        p.poly(bar, pal.trim.base)
        p.poly([(-span, guard), (span, guard), (span, guard + 0.045), (-span, guard + 0.045)], pal.trim.light,
               outline=False)
        p.poly(bar, None)
        p.poly([(0, guard - 0.06), (0.075, guard + 0.055), (0, g1 + 0.06), (-0.075, guard + 0.055)], pal.accent.base)
        p.poly([(0, guard - 0.06), (0, g1 + 0.06), (-0.075, guard + 0.055)], pal.accent.light, outline=False)
    else:  # a round tsuba
        p.ellipse(centre(guard), guard + 0.05, 0.18, 0.07, pal.trim.base)
    p.poly([(-0.065, g1), (0.065, g1), (0.065, g1 + grip), (-0.065, g1 + grip)], pal.wood.base)
    for i in range(1, int(grip / 0.08) + 1):
        y = g1 + i * 0.08
        p.lines([(-0.06, y - 0.04), (0.06, y)], pal.wood.dark, 0.022)
    p.ellipse(0, g1 + grip + 0.07, 0.1, 0.1, pal.trim.base)
    p.ellipse(-0.025, g1 + grip + 0.05, 0.04, 0.04, pal.trim.light, outline=False)


def _rotate(point: Point, angle: float) -> Point:
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    return (point[0] * c - point[1] * s, point[0] * s + point[1] * c)


def draw_bow(pen: Pen, pal: Palette, rng: random.Random, word: str) -> None:
    length = 1.05 if word == "longbow" else 0.92
    p = pen.turned(135, offset=_rotate((0.1, 0.0), 135))
    steps = 24

    def limb(t: float) -> tuple[Point, Point, float]:
        y = t * length
        x = 0.16 - 0.5 * (1 - t * t) - 0.06 * max(0.0, abs(t) - 0.85) / 0.15
        dx, dy = t, length  # the centre line's tangent
        n = math.hypot(dx, dy)
        th = 0.1 * (1 - 0.5 * abs(t))
        return (x, y), (dy / n, -dx / n), th

    outer, inner = [], []
    for i in range(steps + 1):
        (x, y), (nx, ny), th = limb(-1 + 2 * i / steps)
        outer.append((x - nx * th, y - ny * th))
        inner.append((x + nx * th, y + ny * th))
    (tx0, ty0), _, _ = limb(-1)
    (tx1, ty1), _, _ = limb(1)
    p.lines([(tx0, ty0), (tx1, ty1)], mix(pal.sparkle, WHITE, 0.5), 0.02)
    p.poly(outer + inner[::-1], pal.wood.base)
    centre = [((a[0] + b[0]) / 2, (a[1] + b[1]) / 2) for a, b in zip(outer, inner, strict=True)]
    p.poly(outer + centre[::-1], pal.wood.light, outline=False)
    p.poly(outer + inner[::-1], None)
    for t in (-1, 1):  # tips
        (x, y), _, _ = limb(t)
        p.ellipse(x, y, 0.045, 0.045, pal.trim.base)
    p.poly([(-0.42, -0.14), (-0.26, -0.14), (-0.26, 0.14), (-0.42, 0.14)], pal.accent.dark)  # the grip
    p.lines([(-0.42, 0.0), (-0.26, 0.0)], pal.accent.base, 0.03)
    # an arrow, nocked on the string, across the grip
    p.lines([(0.2, 0.0), (-0.86, 0.0)], pal.wood.light, 0.03)
    p.poly([(-0.82, -0.07), (-1.02, 0.0), (-0.82, 0.07)], pal.metal.light)
    p.poly([(0.22, 0.0), (0.08, -0.08), (0.0, -0.08), (0.1, 0.0)], pal.accent.base)
    p.poly([(0.22, 0.0), (0.08, 0.08), (0.0, 0.08), (0.1, 0.0)], pal.accent.dark)


def draw_shield(pen: Pen, pal: Palette, rng: random.Random, word: str) -> None:
    def heater(k: float) -> list[Point]:
        top = [(-0.74 * k, -0.86 * k + 0.04), (0.0, -0.78 * k + 0.04), (0.74 * k, -0.86 * k + 0.04)]
        right = bezier((0.74 * k, -0.86 * k + 0.04), (0.76 * k, 0.45 * k), (0.0, 0.98 * k))
        left = bezier((0.0, 0.98 * k), (-0.76 * k, 0.45 * k), (-0.74 * k, -0.86 * k + 0.04))
        return top[:-1] + right + left[1:-1]

    pen.poly(heater(1.0), pal.metal.base)
    outer = heater(1.0)
    pen.poly([pt for pt in outer if pt[0] <= 0.001], pal.metal.light, outline=False)
    field = heater(0.84)
    pen.poly(field, pal.accent.base)
    pen.poly([pt for pt in field if pt[0] >= -0.001], mix(pal.accent.base, pal.accent.dark, 0.4), outline=False)
    pen.poly(outer, None)
    pen.poly(field, None)
    emblem = rng.choice(["boss", "cross", "chevron", "star"])
    light, base = pal.trim.light, pal.trim.base
    if emblem == "cross":
        pen.poly([(-0.09, -0.58), (0.09, -0.58), (0.09, -0.2), (0.42, -0.2), (0.42, -0.04), (0.09, -0.04),
                  (0.09, 0.62), (-0.09, 0.62), (-0.09, -0.04), (-0.42, -0.04), (-0.42, -0.2), (-0.09, -0.2)], base)
    elif emblem == "chevron":
        pen.poly([(-0.6, -0.2), (0.0, 0.22), (0.6, -0.2), (0.58, 0.05), (0.0, 0.48), (-0.58, 0.05)], base)
    elif emblem == "star":
        pen.poly(star_points(0.0, -0.04, 0.4, 0.42, 5), base)
    pen.ellipse(0.0, -0.1, 0.17, 0.17, base)
    pen.ellipse(-0.04, -0.14, 0.07, 0.07, light, outline=False)
    for x, y in ((-0.6, -0.7), (0.6, -0.7), (0.0, 0.84)):  # rivets
        pen.ellipse(x * 0.97, y, 0.035, 0.035, pal.metal.light)


def draw_potion(pen: Pen, pal: Palette, rng: random.Random, word: str) -> None:
    cx, cy, r, neck = 0.0, 0.3, 0.56, 0.17
    join = math.asin(neck / r)
    arc = ellipse_points(cx, cy, r, r, -math.pi / 2 + join, 3 * math.pi / 2 - join, 56)
    body = [(neck, -0.62)] + arc + [(-neck, -0.62)]
    glass = (*mix(pal.accent.light, WHITE, 0.4), 70)
    pen.poly(body, glass, outline=False)
    level = cy - r * (0.05 + 0.3 * rng.random())
    a0 = math.asin(max(-1.0, min(1.0, (level - cy) / r)))
    liquid = ellipse_points(cx, cy, r, r, a0, math.pi - a0, 48)
    pen.poly(liquid, pal.accent.base, outline=False)
    pen.poly([pt for pt in liquid if pt[0] >= 0.18 * r] + [(0.18 * r, cy + r * 0.99)], pal.accent.dark, outline=False)
    surface_r = liquid[0][0]
    pen.ellipse(cx, level, surface_r, 0.07, pal.accent.light, outline=False)
    for _ in range(rng.randint(3, 6)):  # bubbles in the liquid
        bx, by = cx + (rng.random() - 0.5) * r, level + 0.12 + rng.random() * (cy + r - level - 0.25)
        pen.ellipse(bx, by, 0.03 + 0.03 * rng.random(), None, pal.accent.light, outline=False)
    pen.poly(ellipse_points(cx - 0.28, cy - 0.05, 0.13, 0.3, 3.1, 4.4, 16) + [(cx - 0.3, cy - 0.3)],
             mix(pal.accent.light, WHITE, 0.75), outline=False)
    pen.poly(body, None)
    pen.poly([(-0.23, -0.66), (0.23, -0.66), (0.23, -0.56), (-0.23, -0.56)], pal.trim.base)
    pen.poly([(-0.14, -0.92), (0.14, -0.92), (0.13, -0.66), (-0.13, -0.66)], pal.wood.base)
    pen.poly([(-0.14, -0.92), (-0.02, -0.92), (-0.02, -0.66), (-0.13, -0.66)], pal.wood.light, outline=False)
    pen.poly([(-0.14, -0.92), (0.14, -0.92), (0.13, -0.66), (-0.13, -0.66)], None)


def draw_staff(pen: Pen, pal: Palette, rng: random.Random, word: str) -> None:
    top, bottom, r = (-0.42, 0.7, 0.22) if word == "wand" else (-0.5, 1.0, 0.27)
    oy = top - r * 0.95
    p = pen.turned(45, offset=_rotate((0.0, -(oy - r + bottom) / 2), 45))
    p.ellipse(0.0, oy, r * 1.4, r * 1.4, (*pal.glow, 90), outline=False)  # a translucent halo
    shaft = [(-0.085, top), (0.085, top), (0.065, bottom), (-0.065, bottom)]
    p.poly(shaft, pal.wood.base)
    p.poly([(-0.085, top), (-0.01, top), (-0.01, bottom), (-0.065, bottom)], pal.wood.light, outline=False)
    p.poly(shaft, None)
    for y in (top + 0.1, (top + bottom) / 2, bottom - 0.06):
        p.poly([(-0.105, y - 0.045), (0.105, y - 0.045), (0.105, y + 0.045), (-0.105, y + 0.045)], pal.trim.base)
    for side in (-1, 1):  # prongs cradling the orb
        p.poly(bezier((side * 0.08, top + 0.06), (side * (r + 0.2), oy + 0.12), (side * r * 0.6, oy - r * 1.15))
               + bezier((side * r * 0.45, oy - r * 0.9), (side * (r + 0.05), oy + 0.05), (0.0, top)), pal.trim.base)
    orb(p, 0.0, oy, r, pal.accent)


def orb(pen: Pen, cx: float, cy: float, r: float, tone: Tone) -> None:
    """A glossy sphere lit from the upper left."""
    pen.ellipse(cx, cy, r, r, tone.dark)
    pen.ellipse(cx - r * 0.12, cy - r * 0.12, r * 0.82, r * 0.82, tone.base, outline=False)
    pen.ellipse(cx - r * 0.3, cy - r * 0.3, r * 0.38, r * 0.32, tone.light, outline=False)
    pen.ellipse(cx - r * 0.4, cy - r * 0.42, r * 0.13, r * 0.1, WHITE, outline=False)
    pen.ellipse(cx, cy, r, r, None)


def draw_axe(pen: Pen, pal: Palette, rng: random.Random, word: str) -> None:
    p = pen.turned(35, offset=_rotate((-0.1, 0.05), 35))
    p.poly([(-0.055, -0.92), (0.055, -0.92), (0.05, 1.02), (-0.05, 1.02)], pal.wood.base)
    p.poly([(-0.055, -0.92), (0.0, -0.92), (0.0, 1.02), (-0.05, 1.02)], pal.wood.light, outline=False)
    p.poly([(-0.055, -0.92), (0.055, -0.92), (0.05, 1.02), (-0.05, 1.02)], None)
    edge = bezier((0.62, -1.02), (0.86, -0.58), (0.62, -0.12), 16)
    head = [(0.02, -0.78), (0.36, -0.76)] + edge + [(0.36, -0.38), (0.02, -0.42)]
    p.poly(head, pal.metal.base)
    bevel = bezier((0.55, -0.94), (0.74, -0.58), (0.55, -0.2), 16)
    p.poly(edge + bevel[::-1], pal.metal.light, outline=False)
    p.poly(head, None)
    p.poly([(-0.02, -0.74), (-0.34, -0.62), (-0.02, -0.48)], pal.metal.dark)
    p.poly([(-0.08, -0.84), (0.08, -0.84), (0.08, -0.36), (-0.08, -0.36)], pal.trim.base)
    p.ellipse(0.0, -0.6, 0.05, 0.05, pal.accent.base)
    p.poly([(-0.07, 0.86), (0.07, 0.86), (0.07, 1.0), (-0.07, 1.0)], pal.trim.base)


def draw_helmet(pen: Pen, pal: Palette, rng: random.Random, word: str) -> None:
    crest = ellipse_points(0.0, -0.62, 0.12, 0.36, math.pi, 2 * math.pi, 20)
    pen.poly(crest + [(0.1, -0.5), (-0.1, -0.5)], pal.accent.base)
    shell = ellipse_points(0.0, -0.02, 0.64, 0.74, math.pi, 2 * math.pi, 40)
    outline = shell + [(0.64, 0.55), (0.4, 0.82), (0.16, 0.86), (-0.16, 0.86), (-0.4, 0.82), (-0.64, 0.55)]
    pen.poly(outline, pal.metal.base)
    pen.poly([pt for pt in outline if pt[0] <= 0] + [(0.0, -0.76)], pal.metal.light, outline=False)
    pen.poly(outline, None)
    pen.poly([(-0.6, -0.14), (0.6, -0.14), (0.62, -0.02), (-0.62, -0.02)], pal.trim.base)
    visor = [(-0.46, 0.06), (0.46, 0.06), (0.46, 0.16), (0.08, 0.16), (0.08, 0.8), (-0.08, 0.8), (-0.08, 0.16),
             (-0.46, 0.16)]
    pen.poly(visor, mix(pal.bg, BLACK, 0.75))
    for x in (-0.3, 0.3):
        for y in (0.36, 0.48, 0.6):
            pen.ellipse(x, y, 0.03, 0.03, mix(pal.bg, BLACK, 0.7), outline=False)
    for x in (-0.52, 0.52):
        pen.ellipse(x, -0.08, 0.035, 0.035, pal.trim.light)


def draw_ring(pen: Pen, pal: Palette, rng: random.Random, word: str) -> None:
    if word == "amulet":
        chain = bezier((-0.62, -0.95), (0.0, 0.2), (0.62, -0.95), 14)
        for x, y in chain:
            pen.ellipse(x, y, 0.045, 0.045, pal.trim.base)
        pen.ellipse(0.0, 0.28, 0.42, 0.48, pal.trim.base)
        pen.ellipse(0.0, 0.28, 0.33, 0.39, pal.trim.dark)
        gem(pen, 0.0, 0.3, 0.3, pal.accent)
        return
    pen.ellipse(0.0, 0.25, 0.62, 0.56, pal.trim.base)
    pen.poly(ellipse_points(0.0, 0.25, 0.62, 0.56, math.pi * 0.5, math.pi * 1.4, 20) + [(0.0, 0.25)], pal.trim.light,
             outline=False)
    pen.ellipse(0.0, 0.25, 0.62, 0.56, None)
    pen.ellipse(0.0, 0.28, 0.46, 0.4, (0, 0, 0, 0))
    pen.poly([(-0.2, -0.3), (0.2, -0.3), (0.12, -0.1), (-0.12, -0.1)], pal.trim.base)
    gem(pen, 0.0, -0.45, 0.36 if word == "gem" else 0.3, pal.accent)


def draw_gem(pen: Pen, pal: Palette, rng: random.Random, word: str) -> None:
    gem(pen, 0.0, 0.0, 0.78, pal.accent)


def draw_emblem(pen: Pen, pal: Palette, rng: random.Random, word: str) -> None:
    """The fallback: a rune medallion with a gem, for nouns no silhouette knows."""
    pen.ellipse(0.0, 0.0, 0.86, 0.86, pal.trim.base)
    pen.poly(ellipse_points(0.0, 0.0, 0.86, 0.86, math.pi * 0.75, math.pi * 1.75, 24), pal.trim.light, outline=False)
    pen.ellipse(0.0, 0.0, 0.86, 0.86, None)
    pen.ellipse(0.0, 0.0, 0.72, 0.72, mix(pal.bg, BLACK, 0.55))
    runes = rng.randint(6, 9)
    for i in range(runes):
        a = 2 * math.pi * i / runes - math.pi / 2
        x, y = 0.56 * math.cos(a), 0.56 * math.sin(a)
        strokes = [[(rng.uniform(-1, 1), rng.uniform(-1, 1)) for _ in range(rng.randint(2, 3))]
                   for _ in range(rng.randint(2, 3))]
        for stroke in strokes:
            pen.lines([(x + 0.08 * sx, y + 0.08 * sy) for sx, sy in stroke], mix(pal.glow, WHITE, 0.4), 0.025)
    pen.ellipse(0.0, 0.0, 0.4, 0.4, pal.trim.dark)
    gem(pen, 0.0, 0.02, 0.34, pal.accent)


Silhouette = Callable[[Pen, Palette, random.Random, str], None]

#: noun → the function that draws it. The first noun of a prompt found here chooses the item.
SILHOUETTES: dict[str, Silhouette] = {
    **dict.fromkeys(("sword", "greatsword", "blade", "dagger", "katana", "longsword", "knife", "sabre", "saber"),
                     draw_sword),
    **dict.fromkeys(("bow", "longbow", "shortbow"), draw_bow),
    **dict.fromkeys(("shield", "buckler"), draw_shield),
    **dict.fromkeys(("potion", "flask", "elixir", "vial", "tonic"), draw_potion),
    **dict.fromkeys(("staff", "wand", "scepter", "sceptre", "rod"), draw_staff),
    **dict.fromkeys(("axe", "hatchet", "battleaxe"), draw_axe),
    **dict.fromkeys(("helmet", "helm", "armor", "armour"), draw_helmet),
    **dict.fromkeys(("ring", "amulet", "necklace", "pendant"), draw_ring),
    **dict.fromkeys(("gem", "jewel", "ruby", "emerald", "sapphire", "diamond"), draw_gem),
}
FALLBACK: Silhouette = draw_emblem


# --------------------------------------------------------------------------------------------
# Particles
# --------------------------------------------------------------------------------------------


def draw_particles(pen: Pen, pal: Palette, rng: random.Random) -> None:
    """Seeded sparkles around the item, in the palette's particle style, plus two star glints.

    Drawn opaque, after the item, on the item's layer (where a translucent ink would not blend).
    """
    count = rng.randint(9, 15)
    for _ in range(count):
        a = rng.random() * 2 * math.pi
        d = 0.62 + 0.42 * rng.random()
        x, y = max(-1.05, min(1.05, d * math.cos(a))), max(-1.05, min(1.05, d * math.sin(a)))
        size = 0.012 + 0.028 * rng.random()
        if pal.particles == "ember":
            y = -abs(y) if rng.random() < 0.7 else y
            pen.ellipse(x, y, size, size, mix(pal.glow, pal.sparkle, rng.random()), outline=False)
        elif pal.particles == "bubble":
            pen.draw.ellipse(_box(pen, x, y, size * 1.6), outline=pal.sparkle, width=max(1, pen.width // 2))
        elif pal.particles == "flake":
            for k in range(3):
                ang = math.pi * k / 3
                dx, dy = size * 1.8 * math.cos(ang), size * 1.8 * math.sin(ang)
                pen.lines([(x - dx, y - dy), (x + dx, y + dy)], pal.sparkle, 0.008)
        elif pal.particles == "mote":
            pen.ellipse(x, y, size * 1.3, size * 1.3, mix(pal.glow, pal.bg, 0.5), outline=False)
            pen.ellipse(x, y, size * 0.5, size * 0.5, pal.sparkle, outline=False)
        else:
            pen.poly(star_points(x, y, size * 2.2, 0.3), pal.sparkle, outline=False)
    for _ in range(2):
        a = rng.random() * 2 * math.pi
        d = 0.3 + 0.45 * rng.random()
        pen.poly(star_points(d * math.cos(a), d * math.sin(a), 0.07 + 0.05 * rng.random(), 0.16),
                 mix(pal.sparkle, WHITE, 0.6), outline=False)


def _box(pen: Pen, x: float, y: float, r: float) -> tuple[float, float, float, float]:
    (px, py), = pen.map([(x, y)])
    rr = r * pen.unit
    return (px - rr, py - rr, px + rr, py + rr)
