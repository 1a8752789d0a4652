"""The router's view of the primary path, measured on the real broker: depth (lag) and service rate."""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition

from services.common.kafka import make_admin, make_consumer
from services.common.topics import GroupIds, Topics
from services.router.depth import DepthMonitor
from tests.helpers import ManualClock

pytestmark = pytest.mark.integration


async def test_rate_is_committed_offsets_per_second_over_the_window(connections, topics, producer):
    topic = Topics.from_settings(connections.topics).name("generation.primary")
    group = GroupIds.from_settings(connections.topics).generator("primary")
    for i in range(60):
        await producer.send_and_wait(topic, f"job-{i}".encode(), key=f"job-{i}".encode(), partition=0)

    admin, offsets = make_admin(connections.kafka), make_consumer(connections.kafka, group_id=None)
    committer = make_consumer(connections.kafka, group_id=group)
    await admin.start()
    await offsets.start()
    await committer.start()
    tp = TopicPartition(topic, 0)
    committer.assign([tp])
    clock = ManualClock(1000.0)
    monitor = DepthMonitor.for_group(admin, offsets, topic=topic, group_id=group, refresh_s=0.1, rate_window_s=5.0,
                           clock=clock)
    try:
        assert await monitor.refresh() == 60  # nothing committed yet: the whole log waits
        assert monitor.rate == 0.0 and monitor.estimated_wait_s == float("inf")

        # The primary group serves 4 images a second for 5 s (one refresh a second).
        for second in range(1, 6):
            clock.now += 1
            await committer.commit({tp: 4 * second})
            await monitor.refresh()
        assert monitor.depth == 60 - 20
        assert monitor.rate == pytest.approx(4.0)
        assert monitor.estimated_wait_s == pytest.approx(40 / 4.0)

        # Twice as fast for the next 5 s: the 5 s window forgets the slower past.
        for second in range(1, 6):
            clock.now += 1
            await committer.commit({tp: 20 + 8 * second})
            await monitor.refresh()
        assert monitor.depth == 0
        assert monitor.rate == pytest.approx(8.0)
        assert monitor.estimated_wait_s == 0.0  # nothing waits

        # Stalled for a whole window: the rate falls to 0, and new work would wait forever.
        for _ in range(6):
            clock.now += 1
            await monitor.refresh()
        assert monitor.rate == 0.0
        monitor.routed_to_primary()
        assert monitor.depth == 1 and monitor.estimated_wait_s == float("inf")
    finally:
        await committer.stop()
        await offsets.stop()
        await admin.close()
