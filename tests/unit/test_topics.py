from __future__ import annotations

import json

import jsonschema
import pytest
from typer.testing import CliRunner

from services.cli import app
from services.common.settings import TopicSettings
from services.common.topics import TOPIC_SPECS, Topics, topic_configs


def test_every_topic_has_a_dlq_twin_under_the_prefix():
    names = dict(Topics("acme").all_names())

    assert len(names) == 2 * len(TOPIC_SPECS)
    assert names["acme.generation.requested"] is False
    assert names["acme.generation.requested.dlq"] is True
    assert all(name.startswith("acme.") for name in names)


def test_unknown_topic_key_is_refused():
    with pytest.raises(KeyError, match="no topic 'generation.unknown'"):
        Topics("x").name("generation.unknown")  # type: ignore[arg-type]


def test_topic_configs_carry_size_retention_and_compression():
    settings = TopicSettings(retention_ms=3_600_000, dlq_retention_ms=7_200_000, max_message_bytes=10 * 1024 * 1024)

    normal, dlq = topic_configs(settings, dlq=False), topic_configs(settings, dlq=True)

    assert normal["max.message.bytes"] == str(10 * 1024 * 1024)
    assert (normal["retention.ms"], dlq["retention.ms"]) == ("3600000", "7200000")
    assert normal["compression.type"] == "zstd"


def test_schema_command_writes_a_valid_schema_per_topic(tmp_path):
    result = CliRunner().invoke(app, ["schema", "--out", str(tmp_path)])

    assert result.exit_code == 0, result.output
    index = json.loads((tmp_path / "topics.json").read_text())
    assert [entry["key"] for entry in index["topics"]] == [spec.key for spec in TOPIC_SPECS]
    for entry in index["topics"]:
        schema = json.loads((tmp_path / entry["schema"]).read_text())
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["title"] == entry["key"]
        assert {"schema_version", "job_id", "tenant", "created_at", "trace"} <= set(schema["properties"])


def test_topics_json_names_the_real_topics_and_their_headers(tmp_path):
    result = CliRunner().invoke(app, ["schema", "--out", str(tmp_path)], env={"FORGELINE_TOPICS_PREFIX": "acme"})

    assert result.exit_code == 0, result.output
    index = json.loads((tmp_path / "topics.json").read_text())
    requested = index["topics"][0]
    assert (index["prefix"], requested["topic"], requested["dlq"]) == (
        "acme", "acme.generation.requested", "acme.generation.requested.dlq")
    assert requested["consumer_group"] == "acme.router"
    assert requested["headers"] == {"content-type": "application/json", "forgeline-schema": "GenerationRequested",
                                    "forgeline-schema-version": "1"}
    assert set(index["headers"]) == {"content-type", "forgeline-schema", "forgeline-schema-version",
                                     "forgeline-tenant", "traceparent"}
    assert "forgeline-dlq-reason" in index["dlq_headers"]
