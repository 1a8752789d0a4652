from __future__ import annotations

import asyncio
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import imagecodecs
import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
from skimage.color import rgb2lab

from services.common.contracts import ImageSpec, quality_band
from services.comparer import perceptual
from services.comparer.perceptual import PerceptualComparer, PreparedImages, compare
from services.providers.procedural import render_icon

PROMPT = "flaming sword"


def icon(prompt: str = PROMPT, seed: int = 7) -> bytes:
    return render_icon(ImageSpec(prompt=prompt, width=256, height=256, seed=seed))


def decoded(raw: bytes) -> Image.Image:
    return Image.open(io.BytesIO(raw)).convert("RGB")


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def tinted(raw: bytes, colour: str) -> bytes:
    """The icon's luminance drawn in shades of one colour."""
    return png(ImageOps.colorize(decoded(raw).convert("L"), black="black", white=colour))


def test_identical_images_score_at_least_95() -> None:
    result = compare(icon(), icon(), PROMPT)
    assert result.score >= 95
    assert result.method == "perceptual"
    assert result.response_time_ms > 0


def test_blurred_beats_recoloured_beats_unrelated() -> None:
    base = icon()
    image = decoded(base)
    r, g, b = image.split()
    blurred = compare(base, png(image.filter(ImageFilter.GaussianBlur(1))), PROMPT).score
    recoloured = compare(base, png(Image.merge("RGB", (b, g, r))), PROMPT).score
    unrelated = compare(base, icon("frost potion", seed=3), PROMPT).score
    assert blurred > recoloured > unrelated


def test_darker_copy_is_called_darker() -> None:
    base = icon()
    darker = png(ImageEnhance.Brightness(decoded(base)).enhance(0.6))
    result = compare(base, darker, PROMPT)
    assert any("darker" in d for d in result.differences)
    assert any("bright" in i for i in result.improvements)


def test_red_to_blue_recolour_names_the_hue_shift() -> None:
    base = icon()
    result = compare(tinted(base, "red"), tinted(base, "blue"), "a red sword")
    assert any("hue" in d and "red" in d and "blue" in d for d in result.differences), result.differences
    assert any("red" in i for i in result.improvements)
    assert len(result.differences) <= 5 and len(result.improvements) <= 5


@pytest.mark.parametrize("bad", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40])
def test_garbage_bytes_raise_a_clear_value_error(bad: bytes) -> None:
    with pytest.raises(ValueError, match="generated image"):
        compare(icon(), bad, PROMPT)
    with pytest.raises(ValueError, match="target image"):
        compare(bad, icon(), PROMPT)


def test_band_and_colour_match_quality_band() -> None:
    base = icon()
    for other in (base, icon("frost potion", seed=3), tinted(base, "blue")):
        result = compare(base, other, PROMPT)
        assert (result.band, result.band_color) == quality_band(result.score)
        assert 0 <= result.score <= 100


def test_images_of_different_sizes_and_modes_compare() -> None:
    base = icon()
    small_rgba = decoded(base).resize((96, 96)).convert("RGBA")
    result = compare(base, png(small_rgba), PROMPT)
    assert result.score >= 85


def test_async_comparer_runs_the_same_comparison() -> None:
    comparer = PerceptualComparer()
    assert comparer.method == "perceptual"
    result = asyncio.run(comparer.compare(icon(), icon(), PROMPT))
    assert result.score == compare(icon(), icon(), PROMPT).score


def test_a_hue_swap_leaves_the_top_band() -> None:
    """Same shapes, other colours: not 'Excellent' (the hue term sees what luminance SSIM does not)."""
    base = icon()
    r, g, b = decoded(base).split()
    result = compare(base, png(Image.merge("RGB", (b, g, r))), PROMPT)
    assert result.band != "Excellent", result.score


def test_exif_orientation_is_applied_before_comparing() -> None:
    """A photo stored sideways with an EXIF 'rotate 90°' tag is the same picture as the upright one."""
    upright = decoded(icon())
    exif = Image.Exif()
    exif[0x0112] = 6  # the viewer turns it 90° clockwise
    buffer = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(buffer, format="JPEG", quality=95, exif=exif)
    tagged = buffer.getvalue()
    buffer = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(buffer, format="JPEG", quality=95)
    untagged = buffer.getvalue()
    assert compare(png(upright), tagged, PROMPT).band == "Excellent"
    assert compare(png(upright), untagged, PROMPT).score < compare(png(upright), tagged, PROMPT).score - 20


def counting_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The role of every image the comparer decodes from now on."""
    roles: list[str] = []
    real = perceptual._decode

    def spy(raw: bytes, role: str) -> Image.Image:
        roles.append(role)
        return real(raw, role)

    monkeypatch.setattr(perceptual, "_decode", spy)
    return roles


def test_a_target_compared_with_several_candidates_is_decoded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    target, candidates = icon(), [icon(seed=seed) for seed in (1, 2, 3)]
    fresh = [compare(target, candidate, PROMPT) for candidate in candidates]
    decodes = counting_decodes(monkeypatch)
    prepared = PreparedImages()
    kept = [compare(target, candidate, PROMPT, prepared=prepared) for candidate in candidates]
    assert [r.score for r in kept] == [r.score for r in fresh]
    assert [r.differences for r in kept] == [r.differences for r in fresh]
    assert sorted(decodes) == ["generated", "generated", "generated", "target"]  # the target once, at first
    assert len(prepared) == 4


def test_prepared_images_are_bounded_and_skip_what_failed() -> None:
    prepared = PreparedImages(maxsize=2)
    for seed in (1, 2, 3):
        compare(icon(), icon(seed=seed), PROMPT, prepared=prepared)
    assert len(prepared) == 2
    with pytest.raises(ValueError, match="generated image"):
        compare(icon(), b"not an image at all", PROMPT, prepared=prepared)
    with pytest.raises(ValueError, match="generated image"):  # the failure was not kept as an image
        compare(icon(), b"not an image at all", PROMPT, prepared=prepared)


def test_comparisons_in_threads_share_prepared_images() -> None:
    target, candidates = icon(), [icon(prompt, seed) for prompt in ("frost potion", PROMPT) for seed in (1, 2, 3)]
    expected = [compare(target, candidate, PROMPT).score for candidate in candidates]
    prepared = PreparedImages(maxsize=4)
    with ThreadPoolExecutor(4) as pool:
        scores = list(pool.map(lambda c: compare(target, c, PROMPT, prepared=prepared).score, candidates * 3))
    assert scores == expected * 3


def test_busy_workers_do_not_hold_a_comparison_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """With every worker thread taken (other comparisons), the caller prepares the second image itself."""
    expected = compare(icon(), icon(seed=3), PROMPT).score
    release = threading.Event()
    busy = ThreadPoolExecutor(1)
    busy.submit(release.wait, 10)
    monkeypatch.setattr(perceptual, "_workers", lambda: busy)
    started = time.monotonic()
    try:
        score = compare(icon(), icon(seed=3), PROMPT).score
    finally:
        release.set()
        busy.shutdown()
    assert score == expected
    assert time.monotonic() - started < 5


def test_prepared_images_are_kept_per_scope(monkeypatch: pytest.MonkeyPatch) -> None:
    """One tenant's comparisons reuse its own prepared images only, as the result cache does."""
    target = icon()
    prepared = PreparedImages()
    compare(target, icon(seed=1), PROMPT, prepared=prepared, scope="studio-a")
    decodes = counting_decodes(monkeypatch)
    compare(target, icon(seed=2), PROMPT, prepared=prepared, scope="studio-b")
    assert sorted(decodes) == ["generated", "target"]
    compare(target, icon(seed=3), PROMPT, prepared=prepared, scope="studio-a")
    assert sorted(decodes) == ["generated", "generated", "target"]


def test_async_comparer_keeps_prepared_images_per_tenant() -> None:
    comparer = PerceptualComparer()
    asyncio.run(comparer.compare(icon(), icon(seed=1), PROMPT, tenant="studio-a"))
    asyncio.run(comparer.compare(icon(), icon(seed=1), PROMPT, tenant="studio-b"))
    assert len(comparer.prepared) == 4


def pillow_reference(raw: bytes) -> np.ndarray:
    """What Pillow alone makes of an image: oriented, flattened onto white when it has transparency."""
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(raw)))
    if image.mode == "RGBA":
        flat = Image.new("RGB", image.size, (255, 255, 255))
        flat.paste(image, mask=image.getchannel("A"))
        image = flat
    return np.asarray(image.convert("RGB"))


def spy_on_libpng(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every PNG handed to libpng from now on."""
    calls: list[int] = []
    real = imagecodecs.png_decode
    monkeypatch.setattr(imagecodecs, "png_decode", lambda raw: calls.append(len(raw)) or real(raw))
    return calls


def pixels_in(mode: str, size: tuple[int, int] = (96, 80)) -> Image.Image:
    rng = np.random.default_rng(5)
    channels = {"RGB": 3, "RGBA": 4}[mode]
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8), mode)


def encoded(image: Image.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


@pytest.mark.parametrize("raw", [
    pytest.param(encoded(pixels_in("RGB")), id="rgb"),
    pytest.param(encoded(pixels_in("RGBA")), id="rgba-on-white"),
    pytest.param(encoded(pixels_in("RGB"), interlace=1), id="interlaced"),
    pytest.param(imagecodecs.png_encode(np.asarray(pixels_in("RGB")).astype(np.uint16) * 257 + 99), id="16-bit"),
])
def test_plain_pngs_decode_through_libpng_to_pillows_pixels(raw: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = spy_on_libpng(monkeypatch)
    assert np.array_equal(np.asarray(perceptual._decode(raw, "target")), pillow_reference(raw))
    assert calls == [len(raw)]


def test_pngs_libpng_would_read_differently_go_through_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    """An orientation (Pillow finds an eXIf chunk only by decoding) and a single transparent colour (which
    libpng turns into alpha, Pillow leaves alone) keep Pillow's reading."""
    exif = Image.Exif()
    exif[0x0112] = 6
    turned, keyed = encoded(pixels_in("RGB"), exif=exif), encoded(pixels_in("RGB"), transparency=(1, 2, 3))
    calls = spy_on_libpng(monkeypatch)
    for raw in (turned, keyed):
        assert np.array_equal(np.asarray(perceptual._decode(raw, "target")), pillow_reference(raw))
    assert perceptual._decode(turned, "target").size == (80, 96)  # turned upright
    assert calls == []


def test_a_truncated_png_is_a_clear_value_error() -> None:
    raw = encoded(pixels_in("RGB"))
    with pytest.raises(ValueError, match="^generated image is not a readable image") as caught:
        compare(icon(), raw[: len(raw) // 2], PROMPT)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_colour_tables_give_skimages_cielab() -> None:
    pixels = np.asarray(pixels_in("RGB", (32, 32)))
    ours = perceptual._rgb2lab(pixels).transpose(1, 2, 0)
    np.testing.assert_allclose(ours, rgb2lab(pixels.astype(np.float64) / 255), atol=1e-3)
    np.testing.assert_allclose(perceptual._lightness(pixels), ours[..., 0], atol=1e-4)


def test_edges_are_pillows_find_edges() -> None:
    grey = pixels_in("RGB", (64, 48)).convert("L")
    expected = np.asarray(grey.filter(ImageFilter.FIND_EDGES))[1:-1, 1:-1].mean()
    assert perceptual._edges(np.asarray(grey)) == pytest.approx(expected, abs=1e-9)
