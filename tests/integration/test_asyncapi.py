"""``forgeline schema``'s AsyncAPI 3.0 document, checked by the AsyncAPI project's own parser (npm).

The parser is installed into ~/.cache/forgeline on first use (node and npm with apt-get when
missing); if that cannot be done the test fails with the reason.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from typer.testing import CliRunner

from services.cli import app
from services.common import contracts, kafka
from services.common.asyncapi import channel_id
from services.common.topics import TOPIC_SPECS
from services.devstack.asyncapi_parser import check_document
from services.devstack.settings import DevStackSettings


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("schemas")
    result = CliRunner().invoke(app, ["schema", "--out", str(out)],
                                env={"FORGELINE_TOPICS_PREFIX": "acme", "FORGELINE_KAFKA_BOOTSTRAP": "kafka-1:9092"})
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def document(written: Path) -> dict:
    return json.loads((written / "asyncapi.json").read_text())


def _check(path: Path) -> list:
    return check_document(path, DevStackSettings().cache_dir, progress=print)


def test_the_asyncapi_parser_accepts_the_document(written):
    diagnostics = _check(written / "asyncapi.json")

    assert [str(d) for d in diagnostics if d.is_error] == []


def test_the_parser_would_notice_a_broken_document(written, document, tmp_path):
    broken = json.loads(json.dumps(document))
    broken["channels"]["generationRequested"]["bindings"]["kafka"]["partitions"] = "six"
    (tmp_path / "broken.json").write_text(json.dumps(broken))

    errors = [d for d in _check(tmp_path / "broken.json") if d.is_error]

    assert any(d.path == "channels.generationRequested.bindings.kafka.partitions" for d in errors), errors


def test_channels_are_the_real_topics_under_the_prefix(document):
    addresses = {channel["address"] for channel in document["channels"].values()}

    assert addresses == {f"acme.{spec.key}" for spec in TOPIC_SPECS} | {f"acme.{spec.key}.dlq" for spec in TOPIC_SPECS}
    assert document["servers"] == {"broker1": {"host": "kafka-1:9092", "protocol": "kafka",
                                               "description": "A bootstrap broker (FORGELINE_KAFKA_BOOTSTRAP)."}}
    requested = document["channels"]["generationRequested"]
    assert requested["bindings"]["kafka"]["topic"] == "acme.generation.requested"
    receive = document["operations"]["receiveGenerationRequested"]
    assert (receive["action"], receive["bindings"]["kafka"]["groupId"]["const"]) == ("receive", "acme.router")


def test_every_message_names_its_key_and_headers(document):
    messages = document["components"]["messages"]
    for spec in TOPIC_SPECS:
        message = messages[spec.model.__name__]
        headers = message["headers"]["properties"]
        assert set(headers) == set(kafka.HEADER_MEANINGS)
        assert headers["forgeline-schema"]["const"] == spec.model.__name__
        assert headers["forgeline-schema-version"]["const"] == "1"
        assert headers["content-type"]["const"] == "application/json"
        assert all(header["description"] for header in headers.values())
        assert message["bindings"]["kafka"]["key"]["description"].startswith("The payload's job_id")

        dead = messages[channel_id(spec.key, dlq=True)]
        assert set(dead["headers"]["required"]) == set(kafka.DLQ_HEADER_MEANINGS)
        assert dead["headers"]["properties"]["forgeline-dlq-original-topic"]["const"] == f"acme.{spec.key}"


def _validator(document: dict, schema: dict) -> jsonschema.Draft7Validator:
    """AsyncAPI schemas are JSON Schema draft 7; refs point into the document's components."""
    return jsonschema.Draft7Validator(schema | {"components": document["components"]},
                                      format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)


def test_every_example_matches_its_payload_and_header_schemas(document):
    for spec in TOPIC_SPECS:
        message = document["components"]["messages"][spec.model.__name__]
        (example,) = message["examples"]

        assert list(_validator(document, message["payload"]).iter_errors(example["payload"])) == []
        assert list(_validator(document, message["headers"]).iter_errors(example["headers"])) == []
        assert contracts.decode(spec.model, json.dumps(example["payload"])).job_id == example["payload"]["job_id"]


def test_dead_letter_examples_show_a_value_the_payload_schema_refuses(document):
    for spec in TOPIC_SPECS:
        (dead_name,) = document["channels"][channel_id(spec.key, dlq=True)]["messages"]
        dead = document["components"]["messages"][dead_name]
        (example,) = dead["examples"]
        payload_schema = document["components"]["messages"][spec.model.__name__]["payload"]

        assert not _validator(document, payload_schema).is_valid(example["payload"])
        assert list(_validator(document, dead["headers"]).iter_errors(example["headers"])) == []
        assert "created_at" in example["headers"]["forgeline-dlq-reason"]
