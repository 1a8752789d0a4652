from __future__ import annotations

import asyncio
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

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
