from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.common.settings import (
    Connections,
    KafkaSettings,
    RedisSettings,
    S3Settings,
    TopicSettings,
    env_names,
)
from services.generator.settings import GeneratorSettings
from services.ingest.settings import IngestSettings
from services.router.settings import RouterSettings


def _bad_fields(exc: ValidationError) -> set[str]:
    return {".".join(map(str, error["loc"])) for error in exc.errors()}


def test_shared_settings_read_their_own_prefix(monkeypatch):
    monkeypatch.setenv("FORGELINE_KAFKA_BOOTSTRAP", "kafka-1:9092, kafka-2:9092")
    monkeypatch.setenv("FORGELINE_REDIS_URL", "redis://:hunter2@redis:6379/3")
    monkeypatch.setenv("FORGELINE_S3_BUCKET", "game-images")
    monkeypatch.setenv("FORGELINE_TOPICS_PREFIX", "prod")
    monkeypatch.setenv("FORGELINE_TOPICS_PARTITIONS", "12")

    connections = Connections.from_env()

    assert connections.kafka.bootstrap == "kafka-1:9092,kafka-2:9092"
    assert connections.redis.url.get_secret_value() == "redis://:hunter2@redis:6379/3"
    assert connections.s3.bucket == "game-images"
    assert (connections.topics.prefix, connections.topics.partitions) == ("prod", 12)


def test_service_settings_have_their_own_prefix(monkeypatch):
    monkeypatch.setenv("FORGELINE_GENERATOR_PATH", "fallback")
    monkeypatch.setenv("FORGELINE_GENERATOR_CONCURRENCY", "32")
    monkeypatch.setenv("FORGELINE_ROUTER_DEPTH_HIGH", "80")

    generator = GeneratorSettings()

    assert (generator.path, generator.concurrency) == ("fallback", 32)
    assert RouterSettings().depth_high == 80


@pytest.mark.parametrize(
    ("factory", "env", "field"),
    [
        (KafkaSettings, {"FORGELINE_KAFKA_BOOTSTRAP": "kafka-without-port"}, "bootstrap"),
        (KafkaSettings, {"FORGELINE_KAFKA_BOOTSTRAP": "kafka:99999"}, "bootstrap"),
        (RedisSettings, {"FORGELINE_REDIS_URL": "http://redis:6379"}, "url"),
        (S3Settings, {"FORGELINE_S3_BUCKET": "Upper_Case"}, "bucket"),
        (TopicSettings, {"FORGELINE_TOPICS_PARTITIONS": "0"}, "partitions"),
        (TopicSettings, {"FORGELINE_TOPICS_PREFIX": "has space"}, "prefix"),
        (GeneratorSettings, {"FORGELINE_GENERATOR_PATH": "sideways"}, "path"),
        (IngestSettings, {"FORGELINE_INGEST_PORT": "not-a-port"}, "port"),
    ],
)
def test_bad_values_are_refused_naming_the_field(monkeypatch, factory, env, field):
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    with pytest.raises(ValidationError) as caught:
        factory()

    assert field in _bad_fields(caught.value)


def test_router_thresholds_must_leave_a_hysteresis_band():
    with pytest.raises(ValidationError, match="depth_low .* must be below depth_high"):
        RouterSettings(depth_high=50, depth_low=50)


def test_secrets_stay_out_of_repr_and_str():
    settings = S3Settings(access_key_id="AKIAEXAMPLEKEY", secret_access_key="very-secret-value")
    redis = RedisSettings(url="redis://:hunter2@redis:6379/0")
    ingest = IngestSettings(api_keys={"studio": "client-key-123"})

    for text in (repr(settings), str(settings), repr(redis), repr(ingest)):
        for secret in ("AKIAEXAMPLEKEY", "very-secret-value", "hunter2", "client-key-123"):
            assert secret not in text


def test_public_url_prefers_the_cdn_base():
    local = S3Settings(endpoint_url="http://127.0.0.1:19000", bucket="forgeline-dev")
    cdn = S3Settings(public_base_url="https://cdn.example.com/forge/")
    aws = S3Settings(endpoint_url=None, bucket="images", region="eu-west-1")

    assert local.public_url("images/ab.png") == "http://127.0.0.1:19000/forgeline-dev/images/ab.png"
    assert cdn.public_url("images/ab.png") == "https://cdn.example.com/forge/images/ab.png"
    assert aws.public_url("k.png") == "https://images.s3.eu-west-1.amazonaws.com/k.png"


def test_env_names_lists_every_field_with_its_prefix():
    assert {"FORGELINE_KAFKA_BOOTSTRAP", "FORGELINE_KAFKA_COMPRESSION"} <= env_names(KafkaSettings)
    assert "FORGELINE_ROUTER_DEPTH_HIGH" in env_names(RouterSettings)
