from __future__ import annotations

from pathlib import Path

import pytest

from services.providers.catalog import (
    PROCEDURAL_ONLY,
    CatalogError,
    load_providers_file,
)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "providers.yaml"
    path.write_text(text)
    return path


def test_no_file_means_procedural_on_both_paths():
    assert load_providers_file(None) == PROCEDURAL_ONLY


def test_a_valid_file_keeps_order_costs_and_options(tmp_path):
    catalog = load_providers_file(_write(tmp_path, """
primary:
  - {name: hf-space-a, type: gradio, options: {space: owner/a}}
  - {name: hf-space-b, type: gradio, options: {space: owner/b}}
fallback:
  - {name: replicate, type: replicate, cost_usd: 0.0023, keys_env: FORGELINE_KEYS_REPLICATE,
     options: {model: black-forest-labs/flux-schnell}}
"""))

    assert [e.name for e in catalog.path("primary")] == ["hf-space-a", "hf-space-b"]
    assert str(catalog.fallback[0].cost_usd) == "0.0023"
    assert catalog.fallback[0].options == {"model": "black-forest-labs/flux-schnell"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("primary: []\nfallback: [{name: p, type: procedural}]", "primary"),
        ("primary: [{name: p, type: dalle9}]\nfallback: [{name: p, type: procedural}]", "primary.0.type"),
        ("primary: [{name: p, type: procedural, colour: red}]\nfallback: [{name: q, type: procedural}]",
         "primary.0.colour"),
        ("primary: [{name: p, type: procedural, cost_usd: -1}]\nfallback: [{name: q, type: procedural}]",
         "primary.0.cost_usd"),
        ("primary: [ {", "not valid YAML"),
    ],
)
def test_invalid_files_name_the_entry_and_field(tmp_path, text, expected):
    with pytest.raises(CatalogError, match=expected.replace(".", r"\.")):
        load_providers_file(_write(tmp_path, text))


def test_a_missing_file_says_which(tmp_path):
    with pytest.raises(CatalogError, match="cannot read providers file .*nope.yaml"):
        load_providers_file(tmp_path / "nope.yaml")


def test_replicate_costs_its_seed_price_unless_told_and_other_paid_kinds_must_say(tmp_path):
    catalog = load_providers_file(_write(tmp_path, """
primary: [{name: space, type: gradio, options: {space: o/s}}]
fallback: [{name: replicate, type: replicate, keys_env: K, options: {model: o/m}}]
"""))
    assert (str(catalog.primary[0].cost), str(catalog.fallback[0].cost)) == ("0", "0.0023")

    with pytest.raises(CatalogError, match="siliconflow is a paid provider: give its cost_usd"):
        load_providers_file(_write(tmp_path, """
primary: [{name: space, type: gradio}]
fallback: [{name: sf, type: siliconflow, keys_env: K}]
"""))
