"""Waiting for new topics: a broker that does not know a just-created topic yet is waited out, not an error."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from services.common.topics import TopicAdminError, _await_visible

UNKNOWN_TOPIC = 3
POLICY_VIOLATION = 44


class _Admin:
    """Metadata that already has the topic, then configs answered from ``config_errors`` in turn."""

    def __init__(self, *config_errors: int) -> None:
        self.config_errors = list(config_errors)
        self.config_calls = 0

    async def describe_topics(self, names):
        return [{"topic": name, "error_code": 0, "partitions": [{"error_code": 0}, {"error_code": 0}]}
                for name in names]

    async def describe_configs(self, resources):
        self.config_calls += 1
        code = self.config_errors.pop(0) if self.config_errors else 0
        entries = [("max.message.bytes", "2097152")] if code == 0 else []
        return [SimpleNamespace(resources=[(code, "", 2, r.name, entries) for r in resources])]


async def test_configs_from_a_broker_that_has_not_seen_the_topic_yet_are_asked_again():
    admin = _Admin(UNKNOWN_TOPIC, UNKNOWN_TOPIC)

    described = await _await_visible(admin, ["t.generation.requested"], every_s=0)

    assert admin.config_calls == 3
    assert described["t.generation.requested"].partitions == 2
    assert described["t.generation.requested"].configs == {"max.message.bytes": "2097152"}


async def test_any_other_config_error_fails_with_its_code():
    with pytest.raises(TopicAdminError, match="Kafka error 44"):
        await _await_visible(_Admin(POLICY_VIOLATION), ["t.generation.requested"], every_s=0)
