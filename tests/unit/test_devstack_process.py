"""The dev stack's process management, with tiny Python processes standing in for servers.

Nothing here touches the network beyond 127.0.0.1, and nothing starts Kafka, Redis or moto.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.settings import TopicSettings
from services.devstack import maven as devmaven
from services.devstack.cluster import KafkaCluster
from services.devstack.component import Answer, Component
from services.devstack.errors import DevStackError
from services.devstack.host import ensure_commands, run_streaming
from services.devstack.kafka import (
    cached_libs_dir,
    kafka_libs,
    kafka_version,
    new_cluster_id,
    render_server_properties,
)
from services.devstack.maven import LIBS_COMPLETE_MARKER
from services.devstack.process import (
    BackgroundProcess,
    free_ports,
    port_answers,
    port_free,
    wait_until,
)
from services.devstack.s3 import (
    MotoComponent,
    S3ProxyComponent,
    render_s3proxy_properties,
    s3_component,
    s3proxy_version,
)
from services.devstack.settings import DevStackSettings
from services.devstack.stack import env
from tests.helpers import pid_alive


@pytest.fixture
def marker() -> str:
    """A string only this test's process has on its command line."""
    return f"forgeline-test-{uuid.uuid4().hex[:12]}"


def sleeper(marker: str, body: str = "import time; time.sleep(120)") -> list[str]:
    # Arguments after `-c <code>` land in the command line, so the marker identifies the process.
    return [sys.executable, "-c", body, marker]


@pytest.fixture
def proc(tmp_path: Path) -> Iterator[BackgroundProcess]:
    process = BackgroundProcess("sleeper", tmp_path)
    yield process
    process.stop(timeout=2)  # whatever a failed test left behind


# --------------------------------------------------------------------------- BackgroundProcess


def test_start_runs_detached_with_pid_file_and_log(proc: BackgroundProcess, marker: str) -> None:
    pid = proc.start(sleeper(marker), marker=marker)

    assert proc.is_running() and proc.pid() == pid
    assert os.getpgid(pid) == pid, "own process group, so a Ctrl-C in our terminal does not reach it"
    assert os.getsid(pid) == pid, "own session"
    record = json.loads(proc.pid_path.read_text())
    assert record["pid"] == pid and record["marker"] == marker
    assert proc.pid_path == proc.dir / "sleeper.pid" and proc.log_path == proc.dir / "sleeper.log"
    assert marker in proc.log_path.read_text(), "the log starts with the command it runs"


def test_output_goes_to_the_log(proc: BackgroundProcess, marker: str) -> None:
    body = (
        "import sys, time; print('OUT' * 2, flush=True); print('ERR' * 2, file=sys.stderr, flush=True); time.sleep(120)"
    )
    proc.start(sleeper(marker, body), marker=marker)

    wait_until(
        lambda: "ERRERR" in proc.log_path.read_text(),
        what="output",
        timeout=10,
        progress=lambda m: None,
        log_path=proc.log_path,
    )
    assert "OUTOUT" in proc.log_path.read_text()


def test_starting_twice_is_refused(proc: BackgroundProcess, marker: str) -> None:
    proc.start(sleeper(marker), marker=marker)
    with pytest.raises(DevStackError, match="already running"):
        proc.start(sleeper(marker), marker=marker)


def test_stop_terminates_and_removes_pid_file(proc: BackgroundProcess, marker: str) -> None:
    pid = proc.start(sleeper(marker), marker=marker)

    assert proc.stop(timeout=5) == pid

    assert not pid_alive(pid)
    assert not proc.pid_path.exists()
    assert not proc.is_running()
    assert proc.stop(timeout=5) is None, "stopping a stopped process is a no-op"


def test_stop_kills_the_whole_process_group(proc: BackgroundProcess, marker: str) -> None:
    body = (
        "import subprocess, sys, time;"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']);"
        "print('CHILD=%d' % child.pid, flush=True); time.sleep(120)"
    )
    proc.start(sleeper(marker, body), marker=marker)

    # The log's first line quotes the command, so look for output the code computes.
    def child_pid() -> int | None:
        found = re.search(r"CHILD=(\d+)", proc.log_path.read_text())
        return int(found[1]) if found else None

    wait_until(
        lambda: child_pid() is not None, what="child", timeout=10, progress=lambda m: None, log_path=proc.log_path
    )
    child = child_pid()
    assert child is not None
    assert pid_alive(child)

    proc.stop(timeout=5)

    deadline = time.monotonic() + 5  # the orphaned child is reaped by init, not by us
    while pid_alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(child)


def test_kill_is_a_crash_of_the_whole_group_and_start_runs_it_again(proc: BackgroundProcess, marker: str) -> None:
    # SIGTERM is ignored, so only a SIGKILL can have ended it.
    body = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"
    pid = proc.start(sleeper(marker, body), marker=marker)

    assert proc.kill(timeout=5) == pid

    assert not pid_alive(pid)
    assert not proc.pid_path.exists()
    again = proc.start(sleeper(marker), marker=marker)
    assert again != pid and proc.pid() == again


def test_signal_freezes_and_thaws_the_process(proc: BackgroundProcess, marker: str) -> None:
    pid = proc.start(sleeper(marker), marker=marker)

    def state() -> str:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]

    assert proc.signal(signal.SIGSTOP) == pid
    wait_until(lambda: state() == "T", what="stopped", timeout=5, progress=lambda m: None, log_path=proc.log_path)
    proc.signal(signal.SIGCONT)
    wait_until(lambda: state() != "T", what="running", timeout=5, progress=lambda m: None, log_path=proc.log_path)
    assert proc.is_running()
    proc.stop(timeout=5)
    with pytest.raises(DevStackError, match="sleeper is not running"):
        proc.signal(signal.SIGCONT)


def test_stop_escalates_to_sigkill(proc: BackgroundProcess, marker: str) -> None:
    body = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        "print('READY' * 2, flush=True); time.sleep(120)"
    )
    pid = proc.start(sleeper(marker, body), marker=marker)
    wait_until(
        lambda: "READYREADY" in proc.log_path.read_text(),
        what="ready",
        timeout=10,
        progress=lambda m: None,
        log_path=proc.log_path,
    )
    messages: list[str] = []

    started = time.monotonic()
    assert proc.stop(timeout=1, progress=messages.append) == pid

    assert time.monotonic() - started < 5
    assert not pid_alive(pid)
    assert any("SIGKILL" in m for m in messages)


def test_kill_is_a_sigkill_the_process_never_sees(proc: BackgroundProcess, marker: str) -> None:
    body = (
        "import signal, sys, time;"
        "signal.signal(signal.SIGTERM, lambda *a: (print('GOT-TERM', flush=True), sys.exit()));"
        "print('READY' * 2, flush=True); time.sleep(120)"
    )
    pid = proc.start(sleeper(marker, body), marker=marker)
    wait_until(lambda: "READYREADY" in proc.log_path.read_text(), what="ready", timeout=10,
               progress=lambda m: None, log_path=proc.log_path)

    assert proc.kill() == pid

    assert not pid_alive(pid) and not proc.pid_path.exists()
    output = proc.log_path.read_text().split("READYREADY", 1)[1]  # what the process printed after it was ready
    assert "GOT-TERM" not in output, "no chance to shut down cleanly, as in a crash"
    assert proc.kill() is None, "nothing of ours runs any more"


def test_stale_pid_file_is_cleaned(proc: BackgroundProcess, marker: str) -> None:
    pid = proc.start(sleeper(marker), marker=marker)
    os.kill(pid, 9)
    os.waitpid(pid, 0)  # it is our child: reap it so the pid is really gone

    assert not proc.is_running()
    assert proc.pid_path.exists()
    assert proc.clear_stale() is True
    assert not proc.pid_path.exists()

    new_pid = proc.start(sleeper(marker), marker=marker)  # a stale file never blocks a start
    assert proc.pid() == new_pid


def test_a_crashed_process_is_not_running_even_before_it_is_reaped(proc: BackgroundProcess, marker: str) -> None:
    pid = proc.start(sleeper(marker, "import time; time.sleep(0.2)"), marker=marker)
    time.sleep(0.5)  # exited; a zombie until someone waits for it

    assert not proc.is_running()
    assert not pid_alive(pid)


def test_a_reused_pid_is_never_taken_for_ours(proc: BackgroundProcess) -> None:
    """The pid file names a live process that is not ours (here: the test runner itself)."""
    me = os.getpid()
    start_time = int(Path(f"/proc/{me}/stat").read_text().rsplit(")", 1)[1].split()[19])
    my_cmdline = Path(f"/proc/{me}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    proc.dir.mkdir(parents=True)

    # Right start time, marker not in its command line.
    proc.pid_path.write_text(json.dumps({"pid": me, "start_time": start_time, "marker": "kafka.Kafka", "argv": []}))
    assert not proc.is_running()
    # Marker matches, but the process started at another time: the pid was reused.
    proc.pid_path.write_text(
        json.dumps({"pid": me, "start_time": start_time - 1, "marker": my_cmdline.split()[0], "argv": []})
    )
    assert not proc.is_running()

    assert proc.stop(timeout=1) is None  # and above all: we are still alive, nothing was signalled
    assert not proc.pid_path.exists(), "the stale file is removed"


def test_a_garbage_pid_file_is_stale(proc: BackgroundProcess) -> None:
    proc.dir.mkdir(parents=True)
    proc.pid_path.write_text("12345\n")  # e.g. written by another tool

    assert not proc.is_running()
    assert proc.clear_stale() is True


def test_start_reports_a_command_that_cannot_run(proc: BackgroundProcess) -> None:
    with pytest.raises(DevStackError, match="cannot start sleeper"):
        proc.start(["/nonexistent/forgeline-binary"], marker="x")


# --------------------------------------------------------------------------- waiting and logs


def test_wait_until_returns_when_the_check_passes(tmp_path: Path) -> None:
    calls = iter([False, False, True])
    took = wait_until(
        lambda: next(calls), what="x", timeout=5, progress=lambda m: None, log_path=tmp_path / "x.log", interval=0.01
    )
    assert took < 1


def test_wait_until_timeout_names_the_log_and_quotes_its_tail(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text("".join(f"line {i}\n" for i in range(30)))
    messages: list[str] = []

    with pytest.raises(DevStackError) as error:
        wait_until(
            lambda: False,
            what="server to answer",
            timeout=0.5,
            progress=messages.append,
            log_path=log,
            interval=0.05,
            report_every=0.1,
        )

    text = str(error.value)
    assert "server to answer" in text and str(log) in text
    assert "line 29" in text and "line 10" in text and "line 9\n" not in text, "the last 20 lines"
    assert any(m.startswith("still waiting for server to answer") for m in messages), "progress while waiting"


def test_wait_until_fails_fast_when_the_process_dies(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text("Error: address already in use\n")

    started = time.monotonic()
    with pytest.raises(DevStackError, match="exited during startup(.|\n)*address already in use"):
        wait_until(lambda: False, what="server", timeout=30, progress=lambda m: None, log_path=log, alive=lambda: False)
    assert time.monotonic() - started < 5


# --------------------------------------------------------------------------- ports


def test_port_checks() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert port_answers("127.0.0.1", port)
        assert not port_free("127.0.0.1", port)
    assert not port_answers("127.0.0.1", port)
    assert port_free("127.0.0.1", port)


# --------------------------------------------------------------------------- foreground commands


def test_run_streaming_shows_filtered_lines_and_heartbeats(tmp_path: Path) -> None:
    messages: list[str] = []
    body = "import time; print('keep: one', flush=True); print('drop', flush=True); time.sleep(1.2); print('keep: two')"

    run_streaming(
        [sys.executable, "-c", body],
        progress=messages.append,
        show=lambda line: line if line.startswith("keep") else None,
        log_path=tmp_path / "out.log",
        heartbeat="still busy",
        heartbeat_every=0.4,
    )

    assert messages[0] == "keep: one" and messages[-1] == "keep: two"
    assert any(m.startswith("still busy… ") for m in messages)
    assert "drop" in (tmp_path / "out.log").read_text(), "the log has everything"


def test_run_streaming_failure_quotes_the_output(tmp_path: Path) -> None:
    body = "import sys; [print(f'out {i}') for i in range(40)]; sys.exit(3)"
    with pytest.raises(DevStackError, match=r"exit code 3(.|\n)*out 39") as error:
        run_streaming([sys.executable, "-c", body], progress=lambda m: None, log_path=tmp_path / "out.log")
    assert str(tmp_path / "out.log") in str(error.value)
    assert "out 19\n" not in str(error.value)


def test_ensure_commands_finds_installed_ones() -> None:
    assert ensure_commands({"sh": "dash"}, lambda m: None)["sh"].endswith("/sh")


def test_ensure_commands_tells_a_non_root_user_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(DevStackError, match="apt-get install -y forgeline-nonexistent-package"):
        ensure_commands({"forgeline-nonexistent-command": "forgeline-nonexistent-package"}, lambda m: None)


# --------------------------------------------------------------------------- the shared component lifecycle


class HttpServerComponent(Component):
    """``python -m http.server`` dressed as a dev-stack component."""

    name = "web"
    marker = "http.server"
    start_timeout = 15.0
    stop_timeout = 5.0

    def ports(self) -> dict[int, str]:
        return {self.port: "FORGELINE_DEV_WEB_PORT"}

    def prepare(self, progress) -> list[str]:
        return [sys.executable, "-m", "http.server", "--bind", self.host, str(self.port)]

    def check(self) -> Answer:
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as sock:
                sock.sendall(b"HEAD / HTTP/1.0\r\n\r\n")
                ok = sock.recv(12).startswith(b"HTTP/1.0 200")
        except OSError as exc:
            return Answer(False, str(exc))
        return Answer(ok, "http.server")


def test_component_start_is_idempotent_and_stop_is_clean(tmp_path: Path) -> None:
    web = HttpServerComponent(state_dir=tmp_path, host="127.0.0.1", port=free_ports(1)[0])
    messages: list[str] = []
    try:
        assert web.start(messages.append) is True
        pid = web.process.pid()
        status = web.status()
        assert status.running and status.answers and status.pid == pid

        assert web.start(messages.append) is False, "already running: left alone"
        assert web.process.pid() == pid
        assert any(m.startswith("web: already running") for m in messages)

        assert web.stop(messages.append) is True
        assert pid is not None and not pid_alive(pid)
        assert web.stop(messages.append) is False
        assert web.status().detail == "stopped"
    finally:
        web.stop()


def test_component_refuses_a_port_taken_by_someone_else(tmp_path: Path) -> None:
    with socket.socket() as foreign:
        foreign.bind(("127.0.0.1", 0))
        foreign.listen()
        web = HttpServerComponent(state_dir=tmp_path, host="127.0.0.1", port=foreign.getsockname()[1])

        with pytest.raises(DevStackError, match="taken by another process.*FORGELINE_DEV_WEB_PORT"):
            web.start()
        assert not web.process.pid_path.exists()
        assert web.stop() is False, "not ours: never stopped"


# --------------------------------------------------------------------------- Kafka configuration


def test_server_properties_follow_the_settings(tmp_path: Path) -> None:
    settings = DevStackSettings(state_dir=tmp_path, kafka_port=29092, kafka_controller_port=29093)

    rendered = render_server_properties(settings)
    props = dict(line.split("=", 1) for line in rendered.splitlines() if line and not line.startswith("#"))

    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:29093"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:29092,CONTROLLER://127.0.0.1:29093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:29092"
    assert props["log.dirs"] == str(tmp_path / "kafka" / "data")
    assert props["auto.create.topics.enable"] == "false"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["message.max.bytes"] == props["replica.fetch.max.bytes"] == str(10 * 1024 * 1024)


def test_three_nodes_form_one_quorum_with_their_own_ports_and_folders(tmp_path: Path) -> None:
    settings = DevStackSettings(state_dir=tmp_path, kafka_port=29092, kafka_controller_port=29093)

    nodes = [dict(line.split("=", 1) for line in render_server_properties(settings, node, 3).splitlines()
                  if line and not line.startswith("#")) for node in (1, 2, 3)]

    voters = "1@127.0.0.1:29093,2@127.0.0.1:29095,3@127.0.0.1:29097"
    assert [props["controller.quorum.voters"] for props in nodes] == [voters] * 3
    assert [props["node.id"] for props in nodes] == ["1", "2", "3"]
    assert nodes[1]["listeners"] == "PLAINTEXT://127.0.0.1:29094,CONTROLLER://127.0.0.1:29095"
    assert [props["log.dirs"] for props in nodes] == [str(tmp_path / name / "data") for name in
                                                      ("kafka", "kafka-2", "kafka-3")]
    for props in nodes:
        assert props["offsets.topic.replication.factor"] == props["default.replication.factor"] == "3"
        assert props["min.insync.replicas"] == props["transaction.state.log.min.isr"] == "2"


def test_the_cluster_size_is_fixed_by_its_record(tmp_path: Path) -> None:
    fresh = KafkaCluster(DevStackSettings(state_dir=tmp_path, kafka_port=29092, kafka_brokers=3))
    assert [b.name for b in fresh.brokers] == ["kafka", "kafka-2", "kafka-3"]
    assert fresh.bootstrap == "127.0.0.1:29092,127.0.0.1:29094,127.0.0.1:29096"
    topics = fresh.topic_settings(TopicSettings(prefix="x"))
    assert (topics.replication_factor, topics.min_insync_replicas, topics.prefix) == (3, 2, "x")
    assert env(fresh.settings)["FORGELINE_TOPICS_MIN_INSYNC_REPLICAS"] == "2"

    cluster_id = fresh.brokers[0]._cluster_id()  # what formatting node 1 does
    assert fresh.brokers[2]._cluster_id() == cluster_id, "every node joins the same cluster"

    unasked = KafkaCluster(DevStackSettings(state_dir=tmp_path))  # `dev status`, `dev down`: follow the record
    assert unasked.size == 3
    unasked.check_size()
    with pytest.raises(DevStackError, match=r"formatted as 3 broker\(s\), not 1(.|\n)*forgeline dev reset"):
        KafkaCluster(DevStackSettings(state_dir=tmp_path, kafka_brokers=1)).check_size()
    with pytest.raises(DevStackError, match="brokers 1 to 3"):
        unasked.broker(4)


def test_a_stack_formatted_before_the_record_is_one_node(tmp_path: Path) -> None:
    (tmp_path / "kafka" / "data").mkdir(parents=True)
    (tmp_path / "kafka" / "data" / "meta.properties").write_text("node.id=1\n")
    with pytest.raises(DevStackError, match=r"formatted as 1 broker\(s\), not 3"):
        KafkaCluster(DevStackSettings(state_dir=tmp_path, kafka_brokers=3)).check_size()


def test_the_default_s3_keeps_objects_on_disk_under_the_state_dir(tmp_path: Path) -> None:
    settings = DevStackSettings(state_dir=tmp_path, s3_port=29000)

    s3 = s3_component(settings)
    props = dict(line.split("=", 1) for line in render_s3proxy_properties(settings, s3.data_dir).splitlines()
                 if line and not line.startswith("#"))

    assert isinstance(s3, S3ProxyComponent) and s3.data_paths() == [tmp_path / "s3" / "data"]
    assert props == {"s3proxy.endpoint": "http://127.0.0.1:29000", "s3proxy.authorization": "none",
                     "jclouds.provider": "filesystem", "jclouds.filesystem.basedir": str(tmp_path / "s3" / "data")}
    assert s3proxy_version().count(".") == 2
    assert isinstance(s3_component(settings.model_copy(update={"s3_server": "moto"})), MotoComponent)


def test_kafka_version_is_read_from_the_pom(tmp_path: Path) -> None:
    assert kafka_version().count(".") == 2
    pom = tmp_path / "pom.xml"
    pom.write_text('<project xmlns="http://maven.apache.org/POM/4.0.0"><properties/></project>')
    with pytest.raises(DevStackError, match="kafka.version"):
        kafka_version(pom)


def test_cluster_ids_look_like_kafkas() -> None:
    for _ in range(200):
        cluster_id = new_cluster_id()
        assert len(cluster_id) == 22 and not cluster_id.startswith("-")
        assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


# --------------------------------------------------------------------------- the jar cache


@pytest.fixture
def no_maven(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("Maven must not run")

    monkeypatch.setattr(devmaven, "run_maven", fail)


@pytest.mark.usefixtures("no_maven")
def test_kafka_home_replaces_the_download(tmp_path: Path) -> None:
    (tmp_path / "kafka" / "libs").mkdir(parents=True)
    settings = DevStackSettings(state_dir=tmp_path, cache_dir=tmp_path / "cache", kafka_home=tmp_path / "kafka")
    assert kafka_libs(settings, lambda m: None) == tmp_path / "kafka" / "libs"

    with pytest.raises(DevStackError, match="no libs/ folder"):
        kafka_libs(settings.model_copy(update={"kafka_home": tmp_path}), lambda m: None)


def test_the_download_is_atomic_and_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = DevStackSettings(state_dir=tmp_path / "state", cache_dir=tmp_path / "cache", kafka_home=None)
    monkeypatch.setattr(devmaven, "ensure_commands", lambda required, progress: {c: f"/bin/{c}" for c in required})
    libs = cached_libs_dir(settings, kafka_version())
    libs.mkdir(parents=True)
    (libs / "leftover.jar").write_text("")  # a folder without the marker is not a download
    runs: list[Path] = []

    def interrupted(mvn: str, pom: Path, output_dir: Path, **kwargs: object) -> None:
        (output_dir / "kafka_2.13-half.jar").write_text("")
        raise KeyboardInterrupt

    monkeypatch.setattr(devmaven, "run_maven", interrupted)
    with pytest.raises(KeyboardInterrupt):
        kafka_libs(settings, lambda m: None)
    assert not (libs / LIBS_COMPLETE_MARKER).exists()
    assert [p.name for p in libs.parent.iterdir() if p.name.startswith("libs.partial")] == []

    def maven(mvn: str, pom: Path, output_dir: Path, **kwargs: object) -> None:
        runs.append(output_dir)
        (output_dir / "kafka_2.13-9.9.9.jar").write_text("")

    monkeypatch.setattr(devmaven, "run_maven", maven)
    assert kafka_libs(settings, lambda m: None) == libs
    assert kafka_libs(settings, lambda m: None) == libs
    assert len(runs) == 1, "the second call uses the cache"
    assert sorted(p.name for p in libs.iterdir()) == [LIBS_COMPLETE_MARKER, "kafka_2.13-9.9.9.jar"]


def test_a_failed_download_says_what_to_do_next(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = DevStackSettings(state_dir=tmp_path / "state", cache_dir=tmp_path / "cache", s3_port=29000)
    monkeypatch.setattr(devmaven, "ensure_commands", lambda required, progress: {c: f"/bin/{c}" for c in required})

    def offline(*args: object, **kwargs: object) -> None:
        raise DevStackError("`mvn -B …` failed with exit code 1:\n    [ERROR] Could not transfer artifact")

    monkeypatch.setattr(devmaven, "run_maven", offline)
    messages: list[str] = []
    with pytest.raises(DevStackError, match=r"Could not transfer(.|\n)*repo1.maven.org(.|\n)*forgeline dev up` again"):
        S3ProxyComponent(settings).prepare(messages.append)
    assert any("downloading the S3Proxy" in m and "55 MB" in m for m in messages), messages
    assert not (settings.cache_dir / f"s3proxy-{s3proxy_version()}" / "libs").exists()


# --------------------------------------------------------------------------- settings and env


def test_settings_read_kafka_home_and_expand_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FORGELINE_DEV_KAFKA_HOME", raising=False)
    monkeypatch.setenv("KAFKA_HOME", "/opt/kafka")
    assert DevStackSettings().kafka_home == Path("/opt/kafka")
    monkeypatch.setenv("FORGELINE_DEV_KAFKA_HOME", "/opt/other")
    assert DevStackSettings().kafka_home == Path("/opt/other")
    monkeypatch.setenv("FORGELINE_DEV_STATE_DIR", "~/dev-state")
    assert DevStackSettings().state_dir == Path.home() / "dev-state"


def test_env_points_services_at_the_stack(tmp_path: Path) -> None:
    settings = DevStackSettings(state_dir=tmp_path, kafka_port=1, redis_port=2, s3_port=3, s3_bucket="my-bucket",
                                ingest_port=4)
    assert env(settings) == {
        "FORGELINE_KAFKA_BOOTSTRAP": "127.0.0.1:1",
        "FORGELINE_TOPICS_REPLICATION_FACTOR": "1",
        "FORGELINE_TOPICS_MIN_INSYNC_REPLICAS": "1",
        "FORGELINE_REDIS_URL": "redis://127.0.0.1:2/0",
        "FORGELINE_S3_ENDPOINT_URL": "http://127.0.0.1:3",
        "FORGELINE_S3_BUCKET": "my-bucket",
        "FORGELINE_S3_ACCESS_KEY_ID": "forgeline",
        "FORGELINE_S3_SECRET_ACCESS_KEY": "forgeline-secret",
        "FORGELINE_S3_REGION": "us-east-1",
        "FORGELINE_INGEST_HOST": "127.0.0.1",
        "FORGELINE_INGEST_PORT": "4",
    }


def test_a_connection_made_to_itself_is_not_a_process_holding_the_port(monkeypatch) -> None:
    """The kernel can pick a free ephemeral port as the source of a connection to that same port."""
    (port,) = free_ports(1)
    looped = socket.socket()
    looped.bind(("127.0.0.1", port))
    looped.connect(("127.0.0.1", port))  # TCP simultaneous open with itself: connected, nobody listening
    monkeypatch.setattr(socket, "create_connection", lambda *_args, **_kwargs: looped)

    assert looped.getsockname() == looped.getpeername()
    assert port_answers("127.0.0.1", port) is False
