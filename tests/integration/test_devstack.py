"""The local stack for real: a Kafka JVM, redis-server and S3Proxy, in a throwaway state folder.

Free ports and a temporary state dir keep it apart from any stack a developer runs on the
default ports. The jar cache is the shared one (``~/.cache/forgeline`` unless
``FORGELINE_DEV_CACHE_DIR`` says otherwise), so only the very first run on a machine downloads.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from services.common.blobstore import make_s3_client
from services.devstack import DevStackSettings, down, env, reset, status, up
from services.devstack import maven as devmaven
from services.devstack.kafka import cached_libs_dir, kafka_version
from services.devstack.maven import LIBS_COMPLETE_MARKER
from services.devstack.process import free_ports, port_answers
from services.devstack.s3 import s3_settings
from tests.helpers import pid_alive

pytestmark = pytest.mark.integration



def _processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains ``text`` (e.g. our state dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and pid_alive(int(entry.name)):
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except (FileNotFoundError, ProcessLookupError):
                continue
            if text in cmdline:
                found.append(int(entry.name))
    return found


def _say(message: str) -> None:
    print(f"[devstack] {message}", flush=True)


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> DevStackSettings:
    kafka_port, controller_port, redis_port, s3_port = free_ports(4)
    return DevStackSettings(
        state_dir=tmp_path_factory.mktemp("devstack"),
        kafka_port=kafka_port,
        kafka_controller_port=controller_port,
        redis_port=redis_port,
        s3_port=s3_port,
        s3_bucket="forgeline-devstack-test",
    )


@pytest.fixture(scope="module")
def stack(settings: DevStackSettings) -> Iterator[DevStackSettings]:
    started_at = time.monotonic()
    try:
        started = up(settings, progress=_say)
        _say(f"up took {time.monotonic() - started_at:.1f}s")
        assert started == ["kafka", "redis", "s3"]
        yield settings
    finally:
        # The state dir is ours alone, so everything in it can go, whatever a test did.
        down(settings, progress=_say)
        assert _processes_mentioning(str(settings.state_dir)) == []


def test_every_component_answers(stack: DevStackSettings) -> None:
    statuses = {s.name: s for s in status(stack)}

    assert list(statuses) == ["kafka", "redis", "s3"]
    for s in statuses.values():
        assert s.running and s.answers and s.pid is not None, s
        assert s.log_path.is_file() and s.log_path.parent == stack.state_dir / s.name
    assert statuses["kafka"].address == f"127.0.0.1:{stack.kafka_port}"
    assert "1 broker" in statuses["kafka"].detail
    assert (cached_libs_dir(stack, kafka_version()) / LIBS_COMPLETE_MARKER).is_file() or stack.kafka_home


async def test_kafka_round_trip(stack: DevStackSettings) -> None:
    bootstrap = env(stack)["FORGELINE_KAFKA_BOOTSTRAP"]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic("devstack.check", num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait("devstack.check", b"hello", key=b"k")
    finally:
        await producer.stop()
    # No group: the group coordinator may need a moment after a fresh start, assignment does not.
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign([TopicPartition("devstack.check", 0)])
        record = await consumer.getone()
    finally:
        await consumer.stop()
    assert (record.key, record.value) == (b"k", b"hello")


def test_redis_and_public_s3_work(stack: DevStackSettings) -> None:
    variables = env(stack)
    client = redis.Redis.from_url(variables["FORGELINE_REDIS_URL"])
    try:
        client.set("devstack:check", "ok")
        assert client.get("devstack:check") == b"ok"
    finally:
        client.close()

    s3 = make_s3_client(s3_settings(stack))
    s3.put_object(Bucket=stack.s3_bucket, Key="check/hello.txt", Body=b"hello", ContentType="text/plain")
    url = f"{variables['FORGELINE_S3_ENDPOINT_URL']}/{variables['FORGELINE_S3_BUCKET']}/check/hello.txt"
    response = httpx.get(url)  # anonymous, as a browser or CDN would fetch it
    assert response.status_code == 200 and response.content == b"hello"


def test_up_again_is_a_noop(stack: DevStackSettings) -> None:
    before = {s.name: s.pid for s in status(stack)}
    messages: list[str] = []

    assert up(stack, progress=messages.append) == []

    assert {s.name: s.pid for s in status(stack)} == before
    assert all("already running" in m for m in messages), messages


def test_down_stops_everything_and_a_warm_start_skips_maven(
    stack: DevStackSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    jvm = next(s.pid for s in status(stack) if s.name == "kafka")
    assert jvm is not None

    started_at = time.monotonic()
    assert down(stack, progress=_say) == ["s3", "redis", "kafka"]
    _say(f"down took {time.monotonic() - started_at:.1f}s")

    assert not pid_alive(jvm), "no orphan JVM"
    assert _processes_mentioning(str(stack.state_dir)) == []
    assert (stack.state_dir / "kafka" / "data" / ".kafka_cleanshutdown").is_file(), "Kafka shut down cleanly"
    assert not any(s.running or s.answers for s in status(stack))
    assert down(stack) == [], "down again is a no-op"

    def no_maven(*args: object, **kwargs: object) -> None:
        raise AssertionError("a warm start must not run Maven")

    monkeypatch.setattr(devmaven, "run_maven", no_maven)
    messages: list[str] = []

    def record(message: str) -> None:
        messages.append(message)
        _say(message)

    started_at = time.monotonic()
    assert up(stack, progress=record) == ["kafka", "redis", "s3"]
    _say(f"warm up took {time.monotonic() - started_at:.1f}s")
    assert all(s.answers for s in status(stack))
    assert not [m for m in messages if "downloading" in m or "formatting" in m], "cache and data dir reused"


def test_redis_keys_survive_a_restart_and_reset_deletes_them(tmp_path: Path) -> None:
    (redis_port,) = free_ports(1)
    settings = DevStackSettings(state_dir=tmp_path, redis_port=redis_port)
    try:
        assert up(settings, components=["redis"], progress=_say) == ["redis"]
        client = redis.Redis(host="127.0.0.1", port=redis_port)
        client.set("job:kept", "completed")
        client.close()

        assert down(settings, components=["redis"], progress=_say) == ["redis"]  # SIGTERM: Redis syncs the file
        assert up(settings, components=["redis"], progress=_say) == ["redis"]
        client = redis.Redis(host="127.0.0.1", port=redis_port)
        assert client.get("job:kept") == b"completed", "the append-only file is read back"
        client.close()

        reset(settings, progress=_say)
        assert not (tmp_path / "redis" / "appendonlydir").exists()
        assert up(settings, components=["redis"], progress=_say) == ["redis"]
        client = redis.Redis(host="127.0.0.1", port=redis_port)
        assert client.dbsize() == 0, "dev reset deletes every key"
        client.close()
    finally:
        down(settings, progress=_say)
    assert _processes_mentioning(str(tmp_path)) == []


def test_s3_objects_survive_a_restart_and_reset_deletes_them(tmp_path: Path) -> None:
    (s3_port,) = free_ports(1)
    settings = DevStackSettings(state_dir=tmp_path, s3_port=s3_port, s3_bucket="forgeline-persist-test")
    image = bytes(range(256)) * 160  # 40 KB, every byte value
    url = f"{env(settings)['FORGELINE_S3_ENDPOINT_URL']}/{settings.s3_bucket}/images/ab/abc.png"
    try:
        assert up(settings, components=["s3"], progress=_say) == ["s3"]
        s3 = make_s3_client(s3_settings(settings))
        s3.put_object(Bucket=settings.s3_bucket, Key="images/ab/abc.png", Body=image, ContentType="image/png")
        s3.close()

        assert down(settings, components=["s3"], progress=_say) == ["s3"]
        assert not port_answers("127.0.0.1", s3_port), "the server is gone: what answers next comes from disk"
        assert up(settings, components=["s3"], progress=_say) == ["s3"]

        after_restart = httpx.get(url)  # anonymous, as the CDN URL of a completed event is fetched
        assert (after_restart.status_code, after_restart.headers["content-type"]) == (200, "image/png")
        assert after_restart.content == image

        reset(settings, progress=_say)
        assert not (tmp_path / "s3" / "data").exists()
        assert up(settings, components=["s3"], progress=_say) == ["s3"]
        assert httpx.get(url).status_code == 404, "dev reset deletes every object"
    finally:
        down(settings, progress=_say)
    assert _processes_mentioning(str(tmp_path)) == []
