from __future__ import annotations

import asyncio
import hashlib
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image, ImageStat

from services.common.contracts import ImageSpec
from services.common.errors import Retryable
from services.providers.port import (
    GeneratedImage,
    ImageProvider,
    PermanentProviderError,
    ProviderError,
    RetryableProviderError,
)
from services.providers.procedural import (
    ProceduralProvider,
    features,
    render_icon,
    stable_seed,
)
from services.providers.procedural_shapes import FALLBACK, SILHOUETTES

REPO = Path(__file__).resolve().parents[2]
SPEC = ImageSpec(prompt="flaming obsidian greatsword", negative_prompt="blurry", width=192, height=128, seed=42)


def _open(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _warmth(data: bytes) -> float:
    red, _green, blue = ImageStat.Stat(_open(data).convert("RGB")).mean
    return red - blue


def test_same_spec_same_bytes() -> None:
    assert render_icon(SPEC) == render_icon(SPEC)
    assert render_icon(SPEC) == render_icon(ImageSpec.model_validate(SPEC.model_dump()))


def test_same_bytes_in_another_process() -> None:
    """Nothing may depend on the process: not hash() salting, not the global RNG, not the time."""
    code = (
        "import hashlib, sys\n"
        "from services.common.contracts import ImageSpec\n"
        "from services.providers.procedural import render_icon\n"
        "spec = ImageSpec.model_validate_json(sys.argv[1])\n"
        "print(hashlib.sha256(render_icon(spec)).hexdigest())\n"
    )
    for spec in (SPEC, ImageSpec(prompt="mystery relic", width=64, height=64)):  # also without a seed
        out = subprocess.run([sys.executable, "-c", code, spec.model_dump_json()], cwd=REPO, capture_output=True,
                             text=True, check=True, timeout=60, env={**os.environ, "PYTHONHASHSEED": "987"})
        assert out.stdout.strip() == hashlib.sha256(render_icon(spec)).hexdigest()


def test_global_random_state_does_not_matter() -> None:
    import random

    random.seed(1)
    first = render_icon(SPEC)
    random.seed(2)
    assert render_icon(SPEC) == first


def test_seed_changes_the_image() -> None:
    assert render_icon(SPEC) != render_icon(SPEC.model_copy(update={"seed": 43}))


def test_without_a_seed_the_prompt_gives_a_stable_seed() -> None:
    spec = ImageSpec(prompt="  Mystery   relic ")
    assert stable_seed(spec) == stable_seed(ImageSpec(prompt="mystery relic"))
    assert stable_seed(spec) == int.from_bytes(hashlib.sha256(b"mystery relic").digest()[:4], "big")
    assert stable_seed(ImageSpec(prompt="mystery relic", seed=5)) == 5


@pytest.mark.parametrize(("width", "height"), [(64, 64), (192, 128), (128, 320), (512, 512)])
@pytest.mark.parametrize("style", [None, "pixel-art"])
def test_output_is_a_png_of_the_requested_size(width: int, height: int, style: str | None) -> None:
    data = render_icon(ImageSpec(prompt="frost crystal longbow", width=width, height=height, style=style))
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    image = _open(data)
    assert (image.format, image.size, image.mode) == ("PNG", (width, height), "RGB")
    assert not image.info.keys() - {"dpi", "gamma"}  # no text chunks, no time stamp


def test_png_has_no_metadata_chunks() -> None:
    data, pos, chunks = render_icon(SPEC), 8, []
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        chunks.append(data[pos + 4:pos + 8])
        pos += 12 + length
    assert set(chunks) <= {b"IHDR", b"IDAT", b"IEND"}


def test_flaming_is_warmer_than_frost() -> None:
    for seed in (1, 2, 3):
        flaming = render_icon(ImageSpec(prompt="flaming sword", width=128, height=128, seed=seed))
        frost = render_icon(ImageSpec(prompt="frost sword", width=128, height=128, seed=seed))
        assert _warmth(flaming) > _warmth(frost) + 30


def _palette_name(spec: ImageSpec) -> str | None:
    palette = features(spec).palette
    return palette.name if palette else None


def test_negative_fire_drops_the_warm_palette() -> None:
    spec = ImageSpec(prompt="flaming frost sword", width=128, height=128, seed=1)
    assert _palette_name(spec) == "fire"  # the first palette word wins
    cooled = spec.model_copy(update={"negative_prompt": "fire, blurry"})
    assert _palette_name(cooled) == "ice"
    assert _warmth(render_icon(cooled)) < _warmth(render_icon(spec)) - 30
    assert _palette_name(ImageSpec(prompt="flaming sword", negative_prompt="lava")) != "fire"


def test_pixel_art_has_fewer_colours_than_smooth() -> None:
    smooth = _open(render_icon(ImageSpec(prompt="healing potion", width=256, height=256, seed=9)))
    pixel = _open(render_icon(ImageSpec(prompt="healing potion", width=256, height=256, seed=9, style="pixel-art")))
    smooth_colours = smooth.getcolors(maxcolors=256 * 256)
    pixel_colours = pixel.getcolors(maxcolors=256 * 256)
    assert smooth_colours is not None and pixel_colours is not None
    assert len(pixel_colours) <= 32 < len(smooth_colours)
    # scaled up with NEAREST: every 4×4 block (256 / 64) is one colour
    block = pixel.crop((100, 100, 104, 104))
    assert block.getcolors() is not None and len(block.getcolors()) == 1


def test_unknown_style_is_drawn_smooth_but_seeds_differently() -> None:
    spec = ImageSpec(prompt="mystery relic", width=128, height=128, seed=3)
    painterly = spec.model_copy(update={"style": "painterly"})
    assert not features(painterly).pixel_art
    assert render_icon(painterly) != render_icon(spec)


def test_negative_glow_changes_the_image() -> None:
    spec = ImageSpec(prompt="holy golden shield", width=128, height=128, seed=4)
    dimmed = spec.model_copy(update={"negative_prompt": "glow"})
    assert features(spec).glow and not features(dimmed).glow
    assert render_icon(dimmed) != render_icon(spec)
    # the glow is bright: without it the icon is darker
    lit = ImageStat.Stat(_open(render_icon(spec)).convert("L")).mean[0]
    unlit = ImageStat.Stat(_open(render_icon(dimmed)).convert("L")).mean[0]
    assert unlit < lit - 5


@pytest.mark.parametrize(("prompt", "noun"), [
    ("flaming obsidian greatsword", "greatsword"),
    ("frost crystal longbow", "longbow"),
    ("a potion next to a sword", "potion"),  # the first noun wins
    ("Healing POTIONS", "potion"),
    ("mystery relic", None),
])
def test_the_first_known_noun_chooses_the_item(prompt: str, noun: str | None) -> None:
    feat = features(ImageSpec(prompt=prompt))
    assert feat.noun == noun
    assert feat.silhouette is (SILHOUETTES[feat.noun] if feat.noun else FALLBACK)


def test_negative_noun_removes_the_item() -> None:
    feat = features(ImageSpec(prompt="potion and sword", negative_prompt="potion"))
    assert feat.noun == "sword"


@pytest.mark.parametrize("prompt", [
    "flaming obsidian greatsword", "frost crystal longbow", "healing potion", "holy golden shield", "toxic dagger",
    "shadow staff", "ice axe", "mystery relic", "iron helmet", "golden ring", "poison amulet", "ruby", "fire wand",
    "katana", "hatchet",
])
def test_every_silhouette_draws_something_in_the_middle(prompt: str) -> None:
    spec = ImageSpec(prompt=prompt, width=128, height=128, seed=11)
    plain = spec.model_copy(update={"negative_prompt": "sparkles, frame, glow, background"})
    assert not {"particles", "frame", "glow", "vignette"} & {k for k, v in vars(features(plain)).items() if v is True}
    image = _open(render_icon(plain)).convert("L")
    # the background is flat now (the middle of an empty icon has a stddev of 0): all contrast is the item's
    assert ImageStat.Stat(image.crop((32, 32, 96, 96))).stddev[0] > 20


def test_large_image_renders() -> None:
    image = _open(render_icon(ImageSpec(prompt="ice axe", width=2048, height=2048)))
    assert image.size == (2048, 2048)


async def test_provider_returns_the_rendered_png() -> None:
    provider = ProceduralProvider()
    assert isinstance(provider, ImageProvider)
    result = await provider.generate(SPEC)
    assert isinstance(result, GeneratedImage)
    assert (result.content_type, result.provider, result.model, result.deterministic, result.placeholder) == (
        "image/png", "procedural", "procedural-v1", True, False)
    assert result.data == render_icon(SPEC)
    assert "bytes" in repr(result) and len(repr(result)) < 300


async def test_simulated_latency_waits_and_gives_the_same_bytes() -> None:
    provider = ProceduralProvider(simulated_latency_s=0.2)
    started = time.monotonic()
    result = await provider.generate(SPEC)
    assert time.monotonic() - started >= 0.2
    assert result.data == render_icon(SPEC)


async def test_rendering_does_not_block_the_event_loop() -> None:
    provider = ProceduralProvider()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    try:
        await provider.generate(ImageSpec(prompt="ice axe", width=1024, height=1024))
    finally:
        task.cancel()
    assert ticks > 5


async def test_a_render_failure_is_a_permanent_provider_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.providers import procedural

    def broken(spec: ImageSpec) -> bytes:
        raise RuntimeError("boom")

    monkeypatch.setattr(procedural, "render_icon", broken)
    with pytest.raises(PermanentProviderError) as info:
        await ProceduralProvider().generate(SPEC)
    assert (info.value.provider, info.value.code, isinstance(info.value, Retryable)) == (
        "procedural", "render_failed", False)


def test_negative_latency_is_refused() -> None:
    with pytest.raises(ValueError):
        ProceduralProvider(simulated_latency_s=-1)


def test_provider_errors() -> None:
    retry = RetryableProviderError("rate limited (429)", provider="replicate", code="rate_limited")
    never = PermanentProviderError("content policy", provider="replicate", code="content_policy")
    assert isinstance(retry, ProviderError) and isinstance(never, ProviderError)
    assert (isinstance(retry, Retryable), retry.code, retry.provider) == (True, "rate_limited", "replicate")
    assert (isinstance(never, Retryable), never.code) == (False, "content_policy")
    assert str(retry) == "replicate: rate limited (429) (rate_limited)"
    assert RetryableProviderError("timeout", provider="x").code == "unavailable"
    assert isinstance(ProviderError("odd", provider="x", code="odd"), Retryable) is False
