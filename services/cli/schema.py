"""``forgeline schema``: the JSON Schema of every topic's messages and the AsyncAPI document, for
backends in any language."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from services.cli._console import console
from services.common import kafka
from services.common.asyncapi import asyncapi_document
from services.common.contracts import SCHEMA_VERSION, json_schema
from services.common.settings import KafkaSettings, TopicSettings
from services.common.topics import TOPIC_SPECS, GroupIds, Topics

ASYNCAPI_FILE = "asyncapi.json"


def topics_index(settings: TopicSettings) -> dict[str, Any]:
    """``topics.json``: each topic's real name under the prefix, its key, headers, schema file and reader."""
    topics, groups = Topics.from_settings(settings), GroupIds.from_settings(settings)
    return {
        "schema_version": SCHEMA_VERSION,
        "prefix": settings.prefix,
        "message_key": "job_id (the comparison id on comparison.* topics), as UTF-8",
        "headers": kafka.HEADER_MEANINGS,
        "dlq_headers": kafka.DLQ_HEADER_MEANINGS,
        "asyncapi": ASYNCAPI_FILE,
        "topics": [
            {"key": spec.key, "topic": topics.name(spec.key), "dlq": topics.dlq(spec.key),
             "payload": spec.model.__name__, "schema": schema_file(spec.key),
             "headers": {kafka.H_CONTENT_TYPE: kafka.CONTENT_TYPE, kafka.H_SCHEMA: spec.model.__name__,
                         kafka.H_SCHEMA_VERSION: str(SCHEMA_VERSION)},
             "produced_by": list(spec.producers),
             "consumer_group": groups.of(spec.consumer) if spec.consumer else None,
             "description": spec.description}
            for spec in TOPIC_SPECS
        ],
    }


def schema_file(key: str) -> str:
    return f"{key}.v{SCHEMA_VERSION}.schema.json"


def schema(
    out: Annotated[Path, typer.Option(help="Folder to write the JSON Schema files into.")] = Path("schemas"),
    check: Annotated[bool, typer.Option(
        help="Validate the AsyncAPI document with the AsyncAPI parser (npm; installed on first use).")] = False,
) -> None:
    """Write the JSON Schema of every topic's messages, topics.json and the AsyncAPI 3.0 document.

    Topic names use FORGELINE_TOPICS_PREFIX and the servers FORGELINE_KAFKA_BOOTSTRAP.
    """
    topic_settings, kafka_settings = TopicSettings(), KafkaSettings()
    out.mkdir(parents=True, exist_ok=True)
    for spec in TOPIC_SPECS:
        (out / schema_file(spec.key)).write_text(json.dumps(json_schema(spec.model, title=spec.key), indent=2) + "\n")
    (out / "topics.json").write_text(json.dumps(topics_index(topic_settings), indent=2) + "\n")
    document = asyncapi_document(topic_settings, bootstrap=kafka_settings.bootstrap)
    (out / ASYNCAPI_FILE).write_text(json.dumps(document, indent=2) + "\n")
    console.print(f"wrote {len(TOPIC_SPECS)} schemas, topics.json and {ASYNCAPI_FILE} to {out}/ "
                  f"(topics {topic_settings.prefix}.*)")
    if check:
        _check(out / ASYNCAPI_FILE)


def _check(path: Path) -> None:
    from services.devstack.asyncapi_parser import check_document
    from services.devstack.errors import DevStackError
    from services.devstack.settings import DevStackSettings

    try:
        diagnostics = check_document(path, DevStackSettings().cache_dir, lambda line: console.print(line))
    except DevStackError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    errors = [diagnostic for diagnostic in diagnostics if diagnostic.is_error]
    for diagnostic in diagnostics:
        console.print(("[red]error[/red] " if diagnostic.is_error else "note ") + str(diagnostic))
    if errors:
        raise typer.Exit(1)
    console.print(f"{path}: valid AsyncAPI {document_version(path)} ({len(diagnostics)} notes)")


def document_version(path: Path) -> str:
    return json.loads(path.read_text())["asyncapi"]
