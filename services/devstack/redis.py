"""The dev stack's Redis: Debian's redis-server with an append-only file, as production runs it."""

from __future__ import annotations

from pathlib import Path

import redis

from services.devstack.component import Answer, Component
from services.devstack.errors import Progress
from services.devstack.host import ensure_command
from services.devstack.settings import DevStackSettings

REDIS_PACKAGE = "redis-server"


class RedisComponent(Component):
    name = "redis"
    # Redis rewrites its process title to "<argv0> <host>:<port>"; the executable name survives.
    marker = "redis-server"
    start_timeout = 15.0

    def __init__(self, settings: DevStackSettings) -> None:
        super().__init__(state_dir=settings.state_dir, host=settings.host, port=settings.redis_port)
        self.settings = settings

    @property
    def data_dir(self) -> Path:
        """Where redis-server keeps its append-only file (``--dir``)."""
        return self.process.dir / "appendonlydir"

    def data_paths(self) -> list[Path]:
        """The append-only file, and a snapshot should one have been written (``--save ""`` writes none)."""
        return [self.data_dir, self.process.dir / "dump.rdb"]

    def ports(self) -> dict[int, str]:
        return {self.port: self.settings.env_name("redis_port")}

    def prepare(self, progress: Progress) -> list[str]:
        server = ensure_command("redis-server", REDIS_PACKAGE, progress)
        self.process.dir.mkdir(parents=True, exist_ok=True)
        # Job status, terminal-event guards, idempotency claims and the budget ledger must survive a
        # restart: an append-only file synced every second (what the k8s manifests run too).
        # ``forgeline dev reset`` deletes it with the rest of the state.
        return [
            server,
            "--bind", self.host,
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--daemonize", "no",
            "--dir", str(self.process.dir),
        ]  # fmt: skip

    def check(self) -> Answer:
        client = redis.Redis(host=self.host, port=self.port, socket_timeout=2, socket_connect_timeout=2)
        try:
            if not client.ping():
                return Answer(False, "PING got no PONG")
            version = client.info("server").get("redis_version", "?")
        except redis.RedisError as exc:
            return Answer(False, f"PING failed: {exc}")
        finally:
            client.close()
        return Answer(True, f"redis {version}")
