"""The AsyncAPI 3.0 document of Forgeline's topics, generated from the contracts and the topic list.

One source of truth: channels are ``topics.TOPIC_SPECS`` under the configured prefix (with their
``.dlq`` twins), payloads are the contract models' schemas, headers are those ``kafka.py`` writes,
examples are ``contract_examples``. ``forgeline schema`` writes it next to the JSON Schemas.
"""

from __future__ import annotations

import json
from typing import Any

from services.common import contracts, kafka
from services.common.contract_examples import EXAMPLES
from services.common.settings import TopicSettings
from services.common.topics import TOPIC_SPECS, GroupIds, Topics, TopicSpec, topic_configs

ASYNCAPI_VERSION = "3.0.0"
KAFKA_BINDING_VERSION = "0.5.0"
_REF = "#/components/schemas/{model}"
_DECIMAL = {"type": "string", "pattern": r"^[0-9]+$"}
_JOB_ID_PATTERN = contracts.Event.model_json_schema()["properties"]["job_id"]["pattern"]


def channel_id(key: str, *, dlq: bool = False) -> str:
    """``generation.requested`` → ``generationRequested`` (``…Dlq`` for its twin)."""
    first, *rest = key.split(".")
    return first + "".join(part.capitalize() for part in rest) + ("Dlq" if dlq else "")


def asyncapi_document(settings: TopicSettings, *, bootstrap: str) -> dict[str, Any]:
    """The whole document for a deployment: its topic prefix, partitions and brokers."""
    topics, groups = Topics.from_settings(settings), GroupIds.from_settings(settings)
    schemas = _payload_schemas()
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for spec in TOPIC_SPECS:
        name, group = spec.model.__name__, groups.of(spec.consumer) if spec.consumer else None
        messages.setdefault(name, _message(spec.model))
        messages[channel_id(spec.key, dlq=True)] = _dead_letter(spec, topics, group)
        for dlq in (False, True):
            cid = channel_id(spec.key, dlq=dlq)
            message = cid if dlq else name
            channels[cid] = _channel(spec, topics, settings, dlq=dlq, message=message, group=group)
            operations.update(_operations(spec, cid, message, dlq=dlq, group=group))
    servers = {f"broker{index}": {"host": host.strip(), "protocol": "kafka",
                                  "description": "A bootstrap broker (FORGELINE_KAFKA_BOOTSTRAP)."}
               for index, host in enumerate(bootstrap.split(","), start=1)}
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "id": f"urn:forgeline:{settings.prefix}",
        "info": {
            "title": "Forgeline",
            "version": str(contracts.SCHEMA_VERSION),
            "description": (
                f"Images on demand for game backends, over Kafka. Topics are `{settings.prefix}.<key>`; each has a "
                "`.dlq` twin. Records are keyed by job id (every event of a job on one partition, in order); "
                "the value is the event's JSON. Consumers decode strictly: a value is accepted exactly when it "
                "matches its payload schema, otherwise it is dead-lettered. Unknown fields are ignored. "
                "Produce GenerationRequested to generation.requested; subscribe to generation.completed and "
                "generation.failed."),
        },
        "defaultContentType": kafka.CONTENT_TYPE,
        "servers": servers,
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


def _payload_schemas() -> dict[str, Any]:
    """Every model's schema, with its nested models hoisted next to it (``$ref`` by component name)."""
    schemas: dict[str, Any] = {}
    for model in contracts.EVENT_MODELS:
        schema = _asyncapi_schema(model.model_json_schema(mode="validation", ref_template=_REF))
        for def_name, definition in schema.pop("$defs", {}).items():
            if schemas.setdefault(def_name, definition) != definition:
                raise ValueError(f"two different schemas are named {def_name}")
        schemas[model.__name__] = schema
    return schemas


def _asyncapi_schema(node: Any) -> Any:
    """A pydantic schema as an AsyncAPI Schema: its ``discriminator`` is a property name, not
    OpenAPI's object, and the ``oneOf`` over ``kind`` consts already tells the variants apart."""
    if isinstance(node, dict):
        return {key: _asyncapi_schema(value) for key, value in node.items() if key != "discriminator"}
    if isinstance(node, list):
        return [_asyncapi_schema(item) for item in node]
    return node


def _event_headers_schema(model: type[contracts.Event]) -> dict[str, Any]:
    values: dict[str, dict[str, Any]] = {
        kafka.H_CONTENT_TYPE: {"const": kafka.CONTENT_TYPE},
        kafka.H_SCHEMA: {"const": model.__name__},
        kafka.H_SCHEMA_VERSION: {"const": str(contracts.SCHEMA_VERSION)},
        kafka.H_TENANT: {"pattern": contracts.Event.model_json_schema()["properties"]["tenant"]["pattern"]},
        kafka.H_TRACEPARENT: {"pattern": contracts.TraceContext.model_json_schema()["properties"]["traceparent"][
            "pattern"]},
    }
    return {
        "type": "object",
        "description": "Forgeline writes all five on every record; its consumers read only the value, so a "
                       "producer may leave them out, but should set them for the routers and subscribers that "
                       "filter on them.",
        "properties": {name: {"type": "string", "description": kafka.HEADER_MEANINGS[name]} | values[name]
                       for name in kafka.HEADER_MEANINGS},
    }


def _example_headers(event: contracts.Event) -> dict[str, str]:
    return {name: value.decode() for name, value in kafka.event_headers(event)}


def _key_binding(model: type[contracts.Event]) -> dict[str, Any]:
    what = "the comparison id" if model.__name__.startswith("Comparison") else "the job id"
    return {"kafka": {"key": {"type": "string", "pattern": _JOB_ID_PATTERN,
                              "description": f"The payload's job_id ({what}), as UTF-8."},
                      "bindingVersion": KAFKA_BINDING_VERSION}}


def _message(model: type[contracts.Event]) -> dict[str, Any]:
    example = EXAMPLES[model]
    return {
        "name": model.__name__,
        "title": model.__name__,
        "summary": (model.__doc__ or "").strip().splitlines()[0],
        "contentType": kafka.CONTENT_TYPE,
        "headers": _event_headers_schema(model),
        "payload": {"$ref": _REF.format(model=model.__name__)},
        "bindings": _key_binding(model),
        "examples": [{"name": f"{model.__name__}Example", "summary": f"A {model.__name__} as Forgeline writes it.",
                      "headers": _example_headers(example), "payload": json.loads(example.to_json_bytes())}],
    }


def _dead_letter(spec: TopicSpec, topics: Topics, group: str | None) -> dict[str, Any]:
    model = spec.model
    example = EXAMPLES[model]
    headers = _event_headers_schema(model)
    dlq_values: dict[str, dict[str, Any]] = {
        kafka.H_DLQ_REASON: {"maxLength": kafka.DLQ_REASON_MAX},
        kafka.H_DLQ_PARTITION: _DECIMAL, kafka.H_DLQ_OFFSET: _DECIMAL,
    }
    headers["properties"] |= {name: {"type": "string", "description": meaning} | dlq_values.get(name, {})
                              for name, meaning in kafka.DLQ_HEADER_MEANINGS.items()}
    headers["required"] = list(kafka.DLQ_HEADER_MEANINGS)
    headers["properties"][kafka.H_DLQ_TOPIC]["const"] = topics.name(spec.key)
    if group:
        headers["properties"][kafka.H_DLQ_CONSUMER_GROUP]["const"] = group
    headers["description"] = ("The original record's headers, kept as they were (so they may be missing or "
                              "wrong: that can be why it is here), plus the forgeline-dlq-* headers.")
    broken = json.loads(example.to_json_bytes()) | {"created_at": "2025-01-31T12:00:00"}  # no time zone
    try:
        contracts.decode(model, json.dumps(broken))
    except contracts.ContractError as exc:
        reason = str(exc)
    else:
        raise AssertionError(f"{model.__name__} accepted a created_at without a time zone")
    return {
        "name": channel_id(spec.key, dlq=True),
        "title": f"Dead letter of {topics.name(spec.key)}",
        "summary": "A record the consumer could not process, copied byte for byte (key, value, headers) so it can "
                   "be replayed, with headers saying why and where it came from.",
        "headers": headers,
        "payload": {"description": f"The original value, unchanged: usually a {model.__name__}, but anything a "
                                   "producer sent, JSON or not (a value that does not match is why most records "
                                   "are here)."},
        "bindings": _key_binding(model),
        "examples": [{"name": f"{channel_id(spec.key)}DeadLetterExample",
                      "summary": "A value whose created_at has no time zone.",
                      "headers": _example_headers(example) | {
                          kafka.H_DLQ_REASON: reason, kafka.H_DLQ_ERROR_CLASS: contracts.ContractError.__name__,
                          kafka.H_DLQ_TOPIC: topics.name(spec.key), kafka.H_DLQ_PARTITION: "3",
                          kafka.H_DLQ_OFFSET: "1207", kafka.H_DLQ_CONSUMER_GROUP: group or "<the consumer's group>"},
                      "payload": broken}],
    }


def _channel(spec: TopicSpec, topics: Topics, settings: TopicSettings, *, dlq: bool, message: str,
             group: str | None) -> dict[str, Any]:
    address = topics.dlq(spec.key) if dlq else topics.name(spec.key)
    configs = topic_configs(settings, dlq=dlq)
    if dlq:
        reader = f"the {spec.consumer} ({group})" if group else "a Forgeline consumer"
        description = f"Dead letters of {topics.name(spec.key)}: records {reader} could not process."
    else:
        description = spec.description + (f" Read by {spec.consumer} (consumer group {group})." if group else "")
    return {
        "address": address,
        "title": address,
        "description": description,
        "messages": {message: {"$ref": f"#/components/messages/{message}"}},
        "bindings": {"kafka": {
            "topic": address,
            "partitions": settings.partitions,
            "replicas": settings.replication_factor,
            "topicConfiguration": {
                "cleanup.policy": [configs["cleanup.policy"]],
                "retention.ms": int(configs["retention.ms"]),
                "max.message.bytes": int(configs["max.message.bytes"]),
            },
            "bindingVersion": KAFKA_BINDING_VERSION,
        }},
    }


def _operations(spec: TopicSpec, cid: str, message: str, *, dlq: bool, group: str | None) -> dict[str, Any]:
    channel = {"$ref": f"#/channels/{cid}"}
    messages = [{"$ref": f"#/channels/{cid}/messages/{message}"}]
    if dlq:
        if not group:
            return {}
        return {f"deadLetter{cid[0].upper()}{cid[1:-3]}": {
            "action": "send", "channel": channel, "messages": messages,
            "summary": f"The {spec.consumer} dead-letters a record it cannot process."}}
    operations = {f"send{cid[0].upper()}{cid[1:]}": {
        "action": "send", "channel": channel, "messages": messages,
        "summary": f"Produced by {', '.join(spec.producers)}.",
    }}
    if group:
        operations[f"receive{cid[0].upper()}{cid[1:]}"] = {
            "action": "receive", "channel": channel, "messages": messages,
            "summary": f"The {spec.consumer} consumes it; a value that does not match the payload schema goes to "
                       f"the .dlq twin.",
            "bindings": {"kafka": {"groupId": {"type": "string", "const": group},
                                   "bindingVersion": KAFKA_BINDING_VERSION}},
        }
    return operations
