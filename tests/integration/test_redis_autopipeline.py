"""The auto-pipelining Redis client against a real Redis: one write per loop turn, each caller its own reply."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from services.common.autopipeline import AutoPipelineRedis, blocks
from services.common.redis import KeySpace, make_redis
from services.common.settings import RedisSettings

pytestmark = pytest.mark.integration


class CountingConnection(Connection):
    """A connection that counts the writes it sends."""

    writes = 0

    async def send_packed_command(self, command, check_health: bool = True) -> None:
        type(self).writes += 1
        await super().send_packed_command(command, check_health)


@pytest.fixture
def keys(connections, unique) -> KeySpace:
    return KeySpace(f"{connections.redis.key_prefix}autopipe-{unique}:")


@pytest.fixture
async def client(connections) -> AsyncIterator[AutoPipelineRedis]:
    CountingConnection.writes = 0
    client = AutoPipelineRedis.from_url(
        connections.redis.url.get_secret_value(), socket_timeout=5, connection_class=CountingConnection
    )
    await client.ping()  # the connection's handshake is not what these tests count
    CountingConnection.writes = 0
    try:
        yield client
    finally:
        await client.aclose()


async def test_the_commands_of_one_loop_turn_go_out_in_one_write_and_each_caller_gets_its_own_reply(client, keys):
    names = [keys.key(str(i)) for i in range(200)]
    await asyncio.gather(*(client.set(name, f"value {i}") for i, name in enumerate(names)))
    writes_for_the_sets = CountingConnection.writes

    values = await asyncio.gather(*(client.get(name) for name in names))

    assert values == [f"value {i}".encode() for i in range(200)]
    assert writes_for_the_sets == 1
    assert CountingConnection.writes == 2


async def test_a_failing_command_fails_only_its_own_caller(client, keys):
    await client.set(keys.key("string"), "not a list")

    results = await asyncio.gather(
        client.incr(keys.key("counter")),
        client.lpush(keys.key("string"), "x"),  # WRONGTYPE
        client.get(keys.key("string")),
        return_exceptions=True,
    )

    assert results[0] == 1
    assert isinstance(results[1], ResponseError) and "WRONGTYPE" in str(results[1])
    assert results[2] == b"not a list"
    assert CountingConnection.writes == 2


async def test_a_script_the_server_forgot_is_loaded_again_for_every_caller_of_the_batch(client, keys, connections):
    script = client.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    async with Redis.from_url(connections.redis.url.get_secret_value()) as admin:
        await admin.script_flush()  # as after a Redis restart: the next EVALSHA answers NOSCRIPT

    totals = await asyncio.gather(*(script(keys=[keys.key("sum")], args=[n]) for n in range(1, 11)))

    assert sorted(totals) == [sum(range(1, k + 1)) for k in range(1, 11)]
    assert int(await client.get(keys.key("sum"))) == 55


async def test_a_blocking_read_does_not_hold_up_the_commands_issued_beside_it(client, keys):
    stream = keys.key("stream")
    waiting = asyncio.ensure_future(client.xread({stream: "$"}, block=5000))
    await asyncio.sleep(0.05)  # the XREAD is at the server, blocked

    assert await client.set(keys.key("beside"), "1") is True
    assert not waiting.done()
    await client.xadd(stream, {"event": "one"})
    reply = await asyncio.wait_for(waiting, 5)

    assert reply[0][1][0][1] == {b"event": b"one"}


async def test_a_caller_cancelled_while_its_command_is_queued_leaves_the_others_their_replies(client, keys):
    await client.set(keys.key("a"), "A")
    first = asyncio.ensure_future(client.get(keys.key("a")))
    second = asyncio.ensure_future(client.get(keys.key("a")))
    await asyncio.sleep(0)  # both queued, not sent yet
    first.cancel()

    assert await second == b"A"
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_a_connection_that_dies_under_a_batch_fails_it_for_every_caller_and_the_next_batch_gets_a_new_one(
    client, keys
):
    await asyncio.gather(*(client.set(keys.key(str(i)), str(i)) for i in range(20)))
    own_id = await client.client_id()  # the pool's one connection

    # The first command of the batch has the server close this very connection once it has answered
    # it (CLIENT KILL of oneself, SKIPME no), so the GETs behind it are sent and never answered. A kill from
    # another client would race the pool's check of the connection before it is handed out.
    kill = client.execute_command("CLIENT", "KILL", "ID", own_id, "SKIPME", "no")
    # redis-py without a retry policy fails a command on a dead connection; each caller sees that
    # error as it would have alone, and the consumer loop's own retry handles it from there.
    failed = await asyncio.gather(
        kill, *(client.get(keys.key(str(i))) for i in range(20)), return_exceptions=True
    )
    values = await asyncio.gather(*(client.get(keys.key(str(i))) for i in range(20)))

    assert [type(result) for result in failed] == [RedisConnectionError] * 21
    assert values == [str(i).encode() for i in range(20)]
    assert await client.client_id() != own_id


async def test_queued_commands_are_answered_before_the_client_closes(connections, keys):
    client = make_redis(connections.redis)
    assert isinstance(client, AutoPipelineRedis)
    pending = [asyncio.ensure_future(client.set(keys.key(f"late{i}"), "1")) for i in range(5)]
    await asyncio.sleep(0)

    await client.aclose()

    assert [task.result() for task in pending] == [True] * 5


def test_auto_pipelining_can_be_turned_off():
    client = make_redis(RedisSettings(auto_pipeline=False))

    assert type(client) is Redis


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("GET", "k"), False),
        (("BLPOP", "k", 0), True),
        ((b"bzpopmin", "k", 1), True),
        (("XREAD", "COUNT", 10, "STREAMS", "s", "0"), False),
        (("XREAD", "COUNT", 64, "BLOCK", 800, "STREAMS", "s", "$"), True),
        (("XREADGROUP", "GROUP", "g", "c", "BLOCK", 0, "STREAMS", "s", ">"), True),
        (("SET", "block", "BLOCK"), False),
    ],
)
def test_which_commands_may_block(args, expected):
    assert blocks(args) is expected
