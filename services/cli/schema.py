"""``forgeline schema``: the JSON Schema of every topic's messages, for backends in any language."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from services.cli._console import console
from services.common.contracts import SCHEMA_VERSION, json_schema
from services.common.topics import TOPIC_SPECS


def schema(
    out: Annotated[Path, typer.Option(help="Folder to write the JSON Schema files into.")] = Path("schemas"),
) -> None:
    """Write the JSON Schema of every topic's messages, for producers and consumers in any language."""
    out.mkdir(parents=True, exist_ok=True)
    index = []
    for spec in TOPIC_SPECS:
        file_name = f"{spec.key}.v{SCHEMA_VERSION}.schema.json"
        (out / file_name).write_text(json.dumps(json_schema(spec.model, title=spec.key), indent=2) + "\n")
        index.append({"topic": spec.key, "dlq": spec.key + ".dlq", "payload": spec.model.__name__,
                      "schema": file_name, "description": spec.description})
    (out / "topics.json").write_text(json.dumps({"schema_version": SCHEMA_VERSION, "topics": index}, indent=2) + "\n")
    console.print(f"wrote {len(index)} schemas and topics.json to {out}/")
