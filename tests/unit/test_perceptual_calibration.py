"""The perceptual comparer's score against the calibration set of ``tests/distortions.py``."""

from __future__ import annotations

import pytest

from services.common.contracts import quality_band
from services.comparer.perceptual import compare
from tests import distortions
from tests.distortions import FAMILIES, SIDE, Case


@pytest.fixture(scope="module")
def scored() -> list[tuple[Case, float]]:
    return [(case, compare(case.target, case.generated, "").score) for case in distortions.distorted()]


@pytest.fixture(scope="module")
def unrelated_scores() -> dict[tuple[str, str], float]:
    return {(a, b): compare(t, g, "").score for a, b, t, g in distortions.unrelated()}


def band(score: float) -> str:
    return quality_band(score)[0]


def level_scores(scored: list[tuple[Case, float]], family: str, level: float) -> dict[str, float]:
    return {case.base: score for case, score in scored if case.family == family and case.level == level}


@pytest.mark.parametrize("name", distortions.bases())
def test_identical_scores_100(name: str) -> None:
    raw = distortions.png(distortions.base(name))
    assert compare(raw, raw, "").score == 100


@pytest.mark.parametrize("family", [f.name for f in FAMILIES])
def test_score_never_rises_as_the_distortion_grows(scored: list[tuple[Case, float]], family: str) -> None:
    levels = next(f for f in FAMILIES if f.name == family).levels
    for name in distortions.bases():
        series = [level_scores(scored, family, level)[name] for level in levels]
        assert series == sorted(series, reverse=True), f"{family} on {name}: {dict(zip(levels, series))}"
    assert len(levels) >= 5


def test_every_mild_distortion_beats_every_unrelated_pair(
        scored: list[tuple[Case, float]], unrelated_scores: dict[tuple[str, str], float]) -> None:
    mild = {(case.base, case.family): score for case, score in scored if case.mild}
    assert len(mild) == len(distortions.bases()) * len(FAMILIES)
    worst_mild = min(mild, key=mild.__getitem__)
    best_unrelated = max(unrelated_scores, key=unrelated_scores.__getitem__)
    assert mild[worst_mild] > unrelated_scores[best_unrelated], (worst_mild, best_unrelated)


def test_a_180_degree_hue_rotation_is_not_excellent(scored: list[tuple[Case, float]]) -> None:
    for name, score in level_scores(scored, "hue", 180).items():
        assert band(score) != "Excellent", (name, score)


def test_heavy_blur_is_not_excellent(scored: list[tuple[Case, float]]) -> None:
    assert SIDE == 512  # the rule speaks of σ = 8 at 512²
    for name, score in level_scores(scored, "blur", 8).items():
        assert band(score) != "Excellent", (name, score)


@pytest.mark.parametrize("family", ["shift", "crop"])
def test_a_two_percent_shift_or_crop_stays_at_least_very_good(scored: list[tuple[Case, float]], family: str) -> None:
    for name, score in level_scores(scored, family, 0.02).items():
        assert band(score) in ("Excellent", "Very Good"), (name, score)
