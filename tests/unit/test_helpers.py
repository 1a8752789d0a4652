"""The settings helpers in tests/helpers.py catch the mistakes the compose and k8s checks rely on."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.common.settings import SHARED_SETTINGS
from services.generator.settings import GeneratorSettings
from services.router.settings import RouterSettings
from tests.helpers import allowed_env_names, load_settings, unknown_env_keys

ROUTER = SHARED_SETTINGS + (RouterSettings,)
GENERATOR = SHARED_SETTINGS + (GeneratorSettings,)


def test_unknown_env_keys_catches_typos_foreign_and_dev_settings() -> None:
    env = {
        "FORGELINE_KAFKA_BOOTSTRAP": "kafka:9092",
        "FORGELINE_KAFKA_BOOTSTRAPP": "kafka:9092",  # typo
        "FORGELINE_GENERATOR_PATH": "primary",  # a generator setting, given to the router
        "FORGELINE_DEV_KAFKA_PORT": "19092",  # the host-only dev stack, never a service's
    }
    assert unknown_env_keys(env, allowed_env_names(ROUTER)) == {
        "FORGELINE_KAFKA_BOOTSTRAPP",
        "FORGELINE_GENERATOR_PATH",
        "FORGELINE_DEV_KAFKA_PORT",
    }
    assert unknown_env_keys({"FORGELINE_GENERATOR_PATH": "primary"}, allowed_env_names(GENERATOR)) == set()


def test_unknown_env_keys_catches_foreign_settings_and_ignores_other_variables() -> None:
    env = {
        "FORGELINE_KAFKA_BOOTSTRAP": "kafka:9092",
        "FORGELINE_KAFKA_BOOTSTRAPP": "kafka:9092",  # typo
        "FORGELINE_INGEST_API_KEYS": "{}",  # ingest's, given to a generator
        "FORGELINE_GENERATOR_METRICS_PORT": "9100",
        "PYTHONUNBUFFERED": "1",  # not Forgeline's business
    }
    assert unknown_env_keys(env, allowed_env_names(GENERATOR)) == {
        "FORGELINE_KAFKA_BOOTSTRAPP",
        "FORGELINE_INGEST_API_KEYS",
    }
    # A one-shot (only the shared settings) is given no service's own settings.
    assert unknown_env_keys({"FORGELINE_GENERATOR_PATH": "primary"}, allowed_env_names(SHARED_SETTINGS)) == {
        "FORGELINE_GENERATOR_PATH"
    }


@pytest.mark.parametrize(
    ("env", "classes"),
    [
        ({"FORGELINE_GENERATOR_PATH": "tertiary"}, (GeneratorSettings,)),
        ({"FORGELINE_GENERATOR_METRICS_PORT": "metrics"}, (GeneratorSettings,)),
        ({"FORGELINE_KAFKA_BOOTSTRAP": "kafka"}, SHARED_SETTINGS),
        ({"FORGELINE_TOPICS_REPLICATION_FACTOR": "three"}, SHARED_SETTINGS),
    ],
)
def test_load_settings_rejects_a_bad_value(
    env: dict[str, str], classes: tuple[type, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValidationError):
        load_settings(env, classes, monkeypatch)
