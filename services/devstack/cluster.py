"""The dev stack's Kafka as a cluster: how many KRaft nodes, their shared id, and one node's faults.

A cluster's size is fixed when its storage is formatted (the controllers' quorum is static), so
it is recorded in ``<state_dir>/kafka/cluster.json`` then; later ``up``, ``status`` and ``down``
follow the record, and asking for another size is an error that says to ``dev reset``. A state
folder formatted before the record existed is a one-node cluster.

Topics on it follow its size: replication factor 3 with ``min.insync.replicas=2`` from three
brokers on (``topic_settings``), as production runs them, so killing one broker is a leader
election and not an outage. ``kill`` and ``start`` of one node are what a chaos run needs.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from services.common.settings import TopicSettings
from services.devstack.errors import DevStackError, Progress, silent
from services.devstack.kafka import KafkaComponent, new_cluster_id, replication
from services.devstack.settings import DevStackSettings


class KafkaCluster:
    """The KRaft nodes of one state folder, ``kafka`` (node 1), ``kafka-2``, ``kafka-3``, …"""

    def __init__(self, settings: DevStackSettings) -> None:
        self.settings = settings
        self.record_path = settings.state_dir / "kafka" / "cluster.json"
        recorded = self._recorded()
        self.size = recorded or settings.kafka_brokers or 1
        self.requested = settings.kafka_brokers
        self._record_lock = threading.Lock()  # the nodes are formatted in parallel; one draws the id
        self.brokers = [
            KafkaComponent(settings, node, brokers=self.size, cluster_id=self._cluster_id)
            for node in range(1, self.size + 1)
        ]

    def __repr__(self) -> str:
        return f"KafkaCluster(size={self.size}, bootstrap={self.bootstrap!r})"

    @property
    def bootstrap(self) -> str:
        return ",".join(broker.address for broker in self.brokers)

    def broker(self, node_id: int) -> KafkaComponent:
        if not 1 <= node_id <= self.size:
            raise DevStackError(f"no broker {node_id}: the local cluster has brokers 1 to {self.size}")
        return self.brokers[node_id - 1]

    def check_size(self) -> None:
        """Raise if the state folder holds a cluster of another size than the one asked for."""
        if self.requested is not None and self.requested != self.size:
            raise DevStackError(
                f"the local Kafka in {self.settings.state_dir} was formatted as {self.size} broker(s), not "
                f"{self.requested}; its controllers' quorum cannot change. Run `forgeline dev reset` (deletes "
                f"every topic) and then `forgeline dev up --brokers {self.requested}`, or leave --brokers out."
            )

    def topic_settings(self, topics: TopicSettings) -> TopicSettings:
        """``topics`` with the replication this cluster supports (see ``kafka.replication``)."""
        factor, min_isr = replication(self.size)
        return topics.model_copy(update={"replication_factor": factor, "min_insync_replicas": min_isr})

    def data_paths(self) -> list[Path]:
        return [*(path for broker in self.brokers for path in broker.data_paths()), self.record_path]

    # -- faults, for chaos runs

    def kill(self, node_id: int) -> int | None:
        """``kill -9`` broker ``node_id`` (no controlled shutdown); returns its pid, None if it was not running."""
        return self.broker(node_id).process.kill()

    def stop(self, node_id: int, progress: Progress = silent) -> bool:
        """Stop broker ``node_id`` with SIGTERM (a controlled shutdown: leadership moves first)."""
        return self.broker(node_id).stop(progress)

    def start(self, node_id: int, progress: Progress = silent) -> bool:
        """Start broker ``node_id`` again and wait until the cluster has registered it."""
        return self.broker(node_id).start(progress)

    # -- the record

    def _recorded(self) -> int | None:
        try:
            return int(json.loads(self.record_path.read_text())["brokers"])
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError) as exc:
            raise DevStackError(f"{self.record_path} is unreadable ({exc}); `forgeline dev reset` starts over") from exc
        # Formatted by a stack older than the record: always a single node.
        return 1 if (self.settings.state_dir / "kafka" / "data" / "meta.properties").is_file() else None

    def _cluster_id(self) -> str:
        """The id every node is formatted with; drawn and recorded (with the size) by the first one."""
        with self._record_lock:
            try:
                return str(json.loads(self.record_path.read_text())["cluster_id"])
            except FileNotFoundError:
                pass
            cluster_id = new_cluster_id()
            self.record_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.record_path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"brokers": self.size, "cluster_id": cluster_id}) + "\n")
            tmp.replace(self.record_path)
            return cluster_id
