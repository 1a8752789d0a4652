"""The architecture diagram: drawn from the topic list and the settings, in the four colours."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from decimal import Decimal

import pytest
from PIL import Image
from typer.testing import CliRunner

from services.cli import app
from services.common import diagram
from services.common.contracts import GenerationCompleted
from services.common.topics import TOPIC_SPECS, Topics, TopicSpec

SVG = "{http://www.w3.org/2000/svg}"


def _facts(**changes) -> diagram.Facts:
    facts = diagram.Facts(
        topics=Topics("studio"), depth_high=50, depth_low=35, cap_usd=Decimal("10"),
        primary=(diagram.PathProvider("hf-space-a", "gradio", Decimal(0)),),
        fallback=(diagram.PathProvider("replicate", "replicate", Decimal("0.0023")),
                  diagram.PathProvider("sf", "siliconflow", Decimal("0.0014"))),
        cache_ttl_s=86_400, bucket="forgeline-images", cdn="https://cdn.example.com/")
    return diagram.Facts(**(facts.__dict__ | changes))


def _texts(svg: str) -> list[str]:
    return [element.text or "" for element in ET.fromstring(svg).iter(f"{SVG}text")]


def test_every_topic_routing_rule_cost_cache_and_cdn_are_on_it():
    texts = _texts(diagram.render_svg(_facts(depth_high=40, depth_low=20)))

    for spec in TOPIC_SPECS:
        assert f"[studio.{spec.key}]" in texts
    assert "queue depth < 40 → Spaces (free)" in texts and "queue depth ≥ 40 → API (paid)" in texts
    assert "back to Spaces below 20" in texts
    assert "hf-space-a (gradio) $0/image" in texts
    assert "replicate $0.0023/image" in texts and "sf (siliconflow) $0.0014/image" in texts
    assert "Redis + in-process, 24 h" in texts and "bucket forgeline-images" in texts
    assert "https://cdn.example.com/" in texts


def test_paths_are_drawn_in_their_colours():
    root = ET.fromstring(diagram.render_svg(_facts()))
    strokes = {group.get("id"): group.find(f"{SVG}rect").get("stroke") for group in root.iter(f"{SVG}g")}

    assert strokes["node-generator:primary"] == strokes["node-topic:generation.primary"] == "#27ae60"
    assert strokes["node-generator:fallback"] == strokes["node-topic:generation.fallback"] == "#3498db"
    assert strokes["node-router"] == "#f39c12"
    assert strokes["node-storage"] == strokes["node-cache"] == "#95a5a6"


def test_only_the_live_drawing_has_figure_slots():
    static, live = diagram.render_svg(_facts()), diagram.render_svg(_facts(), live=True)

    assert "data-figure" not in static
    slots = {element.get("data-figure") for element in ET.fromstring(live).iter(f"{SVG}text")} - {None}
    assert {"queue.primary", "queue.fallback", "route.split", "cache", "budget", "dlq"} <= slots


def test_a_topic_without_a_place_fails_the_drawing(monkeypatch: pytest.MonkeyPatch):
    extra = TopicSpec("generation.archived", GenerationCompleted, "not drawn", ("storage",))  # type: ignore[arg-type]
    monkeypatch.setattr(diagram, "TOPIC_SPECS", (*TOPIC_SPECS, extra))

    with pytest.raises(ValueError, match="no place for topic.*generation.archived"):
        diagram.render_svg(_facts())


def test_the_command_writes_svg_and_png_from_the_environment(tmp_path, monkeypatch: pytest.MonkeyPatch):
    providers = tmp_path / "providers.yaml"
    providers.write_text("primary: [{name: space-a, type: gradio, options: {space: o/a}}]\n"
                         "fallback: [{name: replicate, type: replicate, cost_usd: 0.003}]\n")
    monkeypatch.setenv("FORGELINE_GENERATOR_PROVIDERS_FILE", str(providers))
    monkeypatch.setenv("FORGELINE_ROUTER_DEPTH_HIGH", "12")
    monkeypatch.setenv("FORGELINE_ROUTER_DEPTH_LOW", "8")
    monkeypatch.setenv("FORGELINE_BUDGET_CAP_USD", "25")

    result = CliRunner().invoke(app, ["diagram", "--out", str(tmp_path / "arch.svg")])

    assert result.exit_code == 0, result.output
    texts = _texts((tmp_path / "arch.svg").read_text())
    assert "queue depth < 12 → Spaces (free)" in texts and "paid only under the $25/month cap" in texts
    assert "space-a (gradio) $0/image" in texts and "replicate $0.003/image" in texts
    with Image.open(tmp_path / "arch.png") as png:
        assert png.format == "PNG" and png.size == (2050, 1200)
        assert png.getpixel((33, 73)) == (0x27, 0xAE, 0x60)  # the legend's green square, at 1.25 scale
