"""Queue depth of a consumer group: the sum over its partitions of (latest offset − committed offset).

The same formula as KEDA's Kafka scaler, so the router and the autoscaler agree on what
"the primary path is busy" means. A partition the group never committed counts from the
beginning of the log, as our consumers start at the earliest offset.
"""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient


async def group_positions(
    admin: AIOKafkaAdminClient, offsets_client: AIOKafkaConsumer, topic: str, group_id: str
) -> dict[int, tuple[int, int]]:
    """``(position, end offset)`` per partition of ``topic`` for ``group_id``.

    ``offsets_client`` is a started consumer without a group, used only to read log offsets.
    """
    tps = [TopicPartition(topic, p) for p in sorted(await topic_partitions(admin, topic))]
    if not tps:
        return {}
    end = await offsets_client.end_offsets(tps)
    committed = await admin.list_consumer_group_offsets(group_id, partitions=tps)
    missing = [tp for tp in tps if tp not in committed or committed[tp].offset < 0]
    begin = await offsets_client.beginning_offsets(missing) if missing else {}
    return {
        tp.partition: (committed[tp].offset if tp in committed and committed[tp].offset >= 0 else begin[tp], end[tp])
        for tp in tps
    }


async def group_lag(
    admin: AIOKafkaAdminClient, offsets_client: AIOKafkaConsumer, topic: str, group_id: str
) -> dict[int, int]:
    """Lag per partition of ``topic`` for ``group_id``."""
    positions = await group_positions(admin, offsets_client, topic, group_id)
    return {partition: max(0, end - position) for partition, (position, end) in positions.items()}


async def topic_partitions(admin: AIOKafkaAdminClient, topic: str) -> set[int]:
    """The partition ids of ``topic``; empty when it does not exist."""
    (described,) = await admin.describe_topics([topic])
    if described["error_code"] != 0:
        return set()
    return {p["partition"] for p in described["partitions"]}
