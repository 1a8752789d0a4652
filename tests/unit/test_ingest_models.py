"""Ingest's request model, settings and auth rules, without Kafka or Redis."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from services.common.contracts import GenerationRequested, ImageSpec
from services.ingest.api_models import GenerationRequestBody, contract_errors
from services.ingest.app import create_app
from services.ingest.auth import tenant_for_key
from services.ingest.handlers import InvalidRequest, build_request
from services.ingest.settings import IngestSettings
from services.ingest.validation import EXCERPT_CHARS, STREAM_ID_PATTERN


def test_body_uses_the_contract_limits_and_names_every_bad_field():
    with pytest.raises(ValidationError) as caught:
        GenerationRequestBody.model_validate({"prompt": " ", "width": 100, "height": 4096, "seed": -1, "colour": "red"})

    assert {error["loc"] for error in caught.value.errors()} == {
        ("prompt",), ("width",), ("height",), ("seed",), ("colour",)}


def test_body_schema_shows_the_contract_constraints():
    schema = GenerationRequestBody.model_json_schema()

    assert schema["additionalProperties"] is False
    assert schema["properties"]["width"]["multipleOf"] == 8
    assert schema["properties"]["prompt"]["maxLength"] == 2000
    assert schema["properties"]["width"]["description"] == ImageSpec.model_fields["width"].description


def test_fingerprint_ignores_spelt_out_defaults_but_not_values():
    short = GenerationRequestBody(prompt="axe")
    explicit = GenerationRequestBody(prompt="axe", width=512, priority="standard", metadata={})

    assert short.fingerprint() == explicit.fingerprint()
    assert short.fingerprint() != GenerationRequestBody(prompt="axe", seed=1).fingerprint()


def test_building_the_event_splits_spec_and_job_fields():
    body = GenerationRequestBody(prompt="axe", width=256, priority="high", metadata={"a": "b"})

    event = build_request(body, "studio-alpha", "key-1")

    assert isinstance(event, GenerationRequested)
    assert (event.spec.prompt, event.spec.width, event.priority, event.metadata) == ("axe", 256, "high", {"a": "b"})
    assert (event.tenant, event.idempotency_key) == ("studio-alpha", "key-1")
    assert event.timings.accepted_at is not None


def test_contract_checks_become_api_shaped_errors_in_the_request():
    with pytest.raises(InvalidRequest) as caught:
        build_request(GenerationRequestBody(prompt="axe"), "public", "x" * 300)

    assert [tuple(error["loc"]) for error in caught.value.errors] == [("header", "Idempotency-Key")]
    assert all(set(error) <= {"type", "loc", "msg", "ctx"} for error in caught.value.errors)  # no echoed input


def test_the_body_refuses_what_the_contract_would_so_the_schema_says_it():
    with pytest.raises(ValidationError) as caught:
        GenerationRequestBody(prompt="axe", reference_image="ftp://example.com/a.png",
                              metadata={f"k{i}": "v" for i in range(40)})

    assert {error["loc"] for error in caught.value.errors()} == {("reference_image",), ("metadata",)}
    schema = GenerationRequestBody.model_json_schema()["properties"]
    assert schema["metadata"]["maxProperties"] == 32
    assert schema["reference_image"]["anyOf"][0]["pattern"] == "^(data:image/|https://)"


def test_contract_errors_strip_the_spec_prefix():
    with pytest.raises(ValidationError) as caught:
        GenerationRequested.model_validate({"job_id": "abcdefgh", "tenant": "public", "spec": {"prompt": ""}})

    assert [error["loc"] for error in contract_errors(caught.value)] == [["body", "prompt"]]


def test_api_keys_map_tenants_and_stay_secret():
    settings = IngestSettings(api_keys={"studio-alpha": "client-key-123", "studio-beta": "client-key-456"})

    assert tenant_for_key("client-key-456", settings.api_keys) == "studio-beta"
    assert tenant_for_key("client-key-45", settings.api_keys) is None
    assert tenant_for_key("", settings.api_keys) is None
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert "client-key-123" not in text and "client-key-456" not in text


def test_api_keys_from_the_environment_are_a_json_object(monkeypatch):
    monkeypatch.setenv("FORGELINE_INGEST_API_KEYS", '{"studio-alpha": "env-key-0001"}')

    settings = IngestSettings()

    assert settings.api_keys["studio-alpha"].get_secret_value() == "env-key-0001"


@pytest.mark.parametrize(("keys", "reason"), [
    ({"Studio Alpha": "long-enough-key"}, "pattern"),
    ({"studio-alpha": "short"}, "at least 8 characters"),
    ({"studio-alpha": "same-key-123", "studio-beta": "same-key-123"}, "share a key"),
])
def test_bad_api_keys_are_refused_without_quoting_them(keys, reason):
    with pytest.raises(ValidationError) as caught:
        IngestSettings(api_keys={tenant: SecretStr(key) for tenant, key in keys.items()})

    message = str(caught.value)
    assert reason in message
    for key in keys.values():
        assert key not in message


def test_openapi_documents_every_route_and_both_key_schemes():
    schema = create_app(None).openapi()

    assert schema["info"]["title"] == "Forgeline ingest API"
    assert {"/v1/generations", "/v1/generations/{job_id}", "/v1/generations/{job_id}/events", "/v1/status",
            "/healthz", "/readyz", "/metrics"} <= set(schema["paths"])
    assert {"HTTPBearer", "APIKeyHeader"} <= set(schema["components"]["securitySchemes"])
    post = schema["paths"]["/v1/generations"]["post"]
    assert {"200", "202", "401", "413", "422", "503"} <= set(post["responses"])


def test_openapi_states_every_status_and_enforced_constraint():
    schema = create_app(None).openapi()
    paths = schema["paths"]

    for path, method in (("/v1/generations", "post"), ("/v1/comparisons", "post")):
        assert {"200", "202", "400", "401", "413", "422", "429", "503"} == set(paths[path][method]["responses"])
    for path in ("/v1/generations/{job_id}", "/v1/generations/{job_id}/events", "/v1/comparisons/{comparison_id}"):
        assert {"200", "401", "404", "422", "503"} == set(paths[path]["get"]["responses"])
    headers = {p["name"]: p["schema"] for p in paths["/v1/generations"]["post"]["parameters"]}
    assert {name: headers["Idempotency-Key"][name] for name in ("type", "minLength", "maxLength", "pattern")} == {
        "type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"}  # never null: text or absent
    events = paths["/v1/generations/{job_id}/events"]["get"]
    assert set(events["responses"]["200"]["content"]) == {"text/event-stream"}
    [last_event_id] = [p for p in events["parameters"] if p["name"] == "Last-Event-ID"]
    assert last_event_id["schema"]["pattern"] == STREAM_ID_PATTERN
    error = schema["components"]["schemas"]["ErrorDetail"]["properties"]
    assert error["input"]["anyOf"][0]["maxLength"] == EXCERPT_CHARS + 1
    assert "HTTPValidationError" not in schema["components"]["schemas"]  # FastAPI's echoing 422 is gone
    assert '"512" and true are refused' in schema["components"]["schemas"]["GenerationRequestBody"]["description"]


def test_a_bare_list_of_keys_is_refused_with_the_new_format():
    with pytest.raises(ValidationError, match="JSON object of tenant") as caught:
        IngestSettings(api_keys=["client-key-123"])

    assert "client-key-123" not in str(caught.value)
