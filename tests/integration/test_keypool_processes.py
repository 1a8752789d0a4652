"""The shared key pool across OS processes: a cooldown or disable written by one process is seen by another."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from services.common.keypool import ApiKey, RedisKeyPool
from services.common.redis import KeySpace, make_redis

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROVIDER = "hf"
SECRETS = [f"hf_{name * 34}" for name in "abc"]

# The child builds its own client and pool from the environment, then runs one action.
_CHILD = textwrap.dedent("""
    import asyncio, os, sys

    from services.common.keypool import ApiKey, RedisKeyPool
    from services.common.redis import KeySpace
    from redis.asyncio import Redis

    async def main(action: str) -> None:
        client = Redis.from_url(os.environ["CHILD_REDIS_URL"])
        try:
            keys = [ApiKey(os.environ["CHILD_PROVIDER"], s) for s in os.environ["CHILD_SECRETS"].split(",")]
            pool = RedisKeyPool(client, KeySpace(os.environ["CHILD_REDIS_PREFIX"]), os.environ["CHILD_PROVIDER"], keys)
            if action == "cooldown":
                await pool.cooldown(keys[0], 60, "429")
                print("cooled", keys[0].key_id)
            elif action == "pick":
                for _ in range(4):
                    print((await pool.pick()).key_id)
        finally:
            await client.aclose()

    asyncio.run(main(sys.argv[1]))
""")


def _child_env(connections) -> dict[str, str]:
    return os.environ | {
        "CHILD_REDIS_URL": connections.redis.url.get_secret_value(),
        "CHILD_REDIS_PREFIX": connections.redis.key_prefix,
        "CHILD_PROVIDER": PROVIDER,
        "CHILD_SECRETS": ",".join(SECRETS),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }


async def _run_child(connections, action: str) -> list[str]:
    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", _CHILD, action], env=_child_env(connections), cwd=ROOT,
                              capture_output=True, text=True, timeout=60)

    done = await asyncio.to_thread(run)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.fixture
def api_keys() -> list[ApiKey]:
    return [ApiKey(PROVIDER, secret) for secret in SECRETS]


async def test_a_cooldown_set_by_another_process_is_honoured_at_the_next_pick(connections, api_keys):
    key_1 = api_keys[0]
    client = make_redis(connections.redis)
    try:
        pool = RedisKeyPool(client, KeySpace(connections.redis.key_prefix), PROVIDER, api_keys)
        await pool.pick()  # warm: script loaded, no stale state to hold
        assert await _run_child(connections, "cooldown") == ["cooled", key_1.key_id]

        picks = [(await pool.pick()).key_id for _ in range(6)]
    finally:
        await client.aclose()

    assert key_1.key_id not in picks
    assert set(picks) == {api_keys[1].key_id, api_keys[2].key_id}


async def test_a_key_disabled_here_is_never_picked_by_another_process(connections, api_keys):
    key_2 = api_keys[1]
    client = make_redis(connections.redis)
    try:
        pool = RedisKeyPool(client, KeySpace(connections.redis.key_prefix), PROVIDER, api_keys)
        await pool.disable(key_2, "401 Unauthorized")
    finally:
        await client.aclose()

    picks = await _run_child(connections, "pick")

    assert len(picks) == 4
    assert key_2.key_id not in picks
    assert set(picks) <= {api_keys[0].key_id, api_keys[2].key_id}
