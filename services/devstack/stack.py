"""The local stack as a whole: start, stop and inspect Kafka (one node or a cluster), Redis and S3 together.

``up`` is idempotent and returns what it started, so a test fixture can stop exactly that::

    started = up(settings)
    try:
        ...
    finally:
        down(settings, started)
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager

from services.devstack.cluster import KafkaCluster
from services.devstack.component import Component, ComponentStatus
from services.devstack.errors import DevStackError, Progress, silent
from services.devstack.host import exclusive_lock
from services.devstack.kafka import KafkaComponent, replication
from services.devstack.pipeline import Pipeline, ServiceProcess
from services.devstack.redis import RedisComponent
from services.devstack.s3 import (
    ACCESS_KEY_ID,
    REGION,
    SECRET_ACCESS_KEY,
    endpoint_url,
    s3_component,
)
from services.devstack.settings import DevStackSettings
from services.fakeproviders.server import fake_urls, sample_providers_file

#: Start order; ``down`` goes the other way. "kafka" stands for every broker of the cluster.
COMPONENT_NAMES: tuple[str, ...] = ("kafka", "redis", "s3")


def components(settings: DevStackSettings, names: Sequence[str] | None = None) -> list[Component]:
    """The selected components (all by default), in start order.

    A name is a group of ``COMPONENT_NAMES`` ("kafka": every broker) or one broker (``kafka-2``).
    """
    brokers: list[Component] = list(KafkaCluster(settings).brokers)
    every: list[Component] = [*brokers, RedisComponent(settings), s3_component(settings)]
    if names is None:
        return every
    known = {*COMPONENT_NAMES, *(c.name for c in every)}
    unknown = sorted(set(names) - known)
    if unknown:
        raise DevStackError(f"unknown component(s) {', '.join(unknown)}; choose from {', '.join(sorted(known))}")
    return [c for c in every if c.name in names or (c in brokers and "kafka" in names)]


def up(
    settings: DevStackSettings,
    components: Sequence[str] | None = None,
    progress: Progress = silent,
) -> list[str]:
    """Start the selected components that are not running yet; return the names this call started.

    Every process is launched first and then each is waited for, so the nodes of a Kafka quorum
    (which answer only once a majority runs) come up together. Running, answering components are
    left alone. If one fails, the ones this call started are stopped again before the error
    propagates, so a failed ``up`` leaves nothing new behind.
    """
    KafkaCluster(settings).check_size()
    selected = _select(settings, components)
    _check_distinct_ports(selected)
    with _stack_lock(settings, progress):
        # Every port conflict is reported before anything starts (not after Kafka took its 4 s).
        for component in selected:
            if not component.running():
                component.check_ports()
        started: list[Component] = []
        try:
            brokers = [c for c in selected if isinstance(c, KafkaComponent)]
            started += _launch_together(brokers, progress)  # each formats its storage first: a JVM of its own
            for component in selected:
                if component not in brokers and component.launch(progress):
                    started.append(component)
            for component in selected:
                component.ready(progress, launched=component in started)
        except BaseException:
            for component in reversed(started):
                progress(f"{component.name}: stopping again because the stack did not come up")
                try:
                    component.stop(progress)
                except DevStackError as exc:  # keep the original error; this one is secondary
                    progress(f"{component.name}: {exc}")
            raise
    return [component.name for component in started]


def down(
    settings: DevStackSettings,
    components: Sequence[str] | None = None,
    progress: Progress = silent,
) -> list[str]:
    """Stop the selected components this stack started (reverse order); return the names stopped.

    The brokers of a cluster stop together: one by one, the last ones would lose their quorum and
    wait out their whole controlled-shutdown timeout.
    """
    selected = _select(settings, components)
    brokers = [c for c in selected if isinstance(c, KafkaComponent)]
    others = [c for c in reversed(selected) if c not in brokers]
    with _stack_lock(settings, progress):
        stopped = [c.name for c in others if c.stop(progress)]
        with ThreadPoolExecutor(max_workers=max(1, len(brokers)), thread_name_prefix="stop-broker") as pool:
            results = list(pool.map(lambda broker: broker.stop(progress), reversed(brokers)))
        return stopped + [broker.name for broker, ran in zip(reversed(brokers), results, strict=True) if ran]


def _launch_together(components: Sequence[Component], progress: Progress) -> list[Component]:
    """Launch ``components`` in parallel; return those launched, or raise after stopping them again."""
    with ThreadPoolExecutor(max_workers=max(1, len(components)), thread_name_prefix="launch") as pool:
        futures = [(c, pool.submit(c.launch, progress)) for c in components]
    launched = [c for c, future in futures if future.exception() is None and future.result()]
    errors = [future.exception() for _c, future in futures if future.exception() is not None]
    if errors:
        for component in launched:
            component.stop(progress)
        raise errors[0]
    return launched


def _check_distinct_ports(selected: Sequence[Component]) -> None:
    owners: dict[int, str] = {}
    for component in selected:
        for port, setting in component.ports().items():
            if port in owners:
                raise DevStackError(
                    f"port {port} would be used twice ({owners[port]} and {setting}); choose ports so that "
                    f"broker n's KAFKA_PORT + 2(n-1) and KAFKA_CONTROLLER_PORT + 2(n-1) collide with nothing"
                )
            owners[port] = setting


def status(settings: DevStackSettings) -> list[ComponentStatus]:
    """Every component: is our process alive, does its address answer a real request."""
    return [component.status() for component in _select(settings, None)]


def env(settings: DevStackSettings) -> dict[str, str]:
    """Environment variables that point Forgeline services at this stack."""
    cluster = KafkaCluster(settings)
    factor, min_isr = replication(cluster.size)
    return {
        "FORGELINE_KAFKA_BOOTSTRAP": cluster.bootstrap,
        "FORGELINE_TOPICS_REPLICATION_FACTOR": str(factor),
        "FORGELINE_TOPICS_MIN_INSYNC_REPLICAS": str(min_isr),
        "FORGELINE_REDIS_URL": f"redis://{settings.host}:{settings.redis_port}/0",
        "FORGELINE_S3_ENDPOINT_URL": endpoint_url(settings),
        "FORGELINE_S3_BUCKET": settings.s3_bucket,
        "FORGELINE_S3_ACCESS_KEY_ID": ACCESS_KEY_ID,
        "FORGELINE_S3_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
        "FORGELINE_S3_REGION": REGION,
        "FORGELINE_INGEST_HOST": settings.host,
        "FORGELINE_INGEST_PORT": str(settings.ingest_port),
    }


def ingest_url(settings: DevStackSettings) -> str:
    return f"http://{settings.host}:{settings.ingest_port}"


def pipeline(settings: DevStackSettings, env_overrides: Mapping[str, str] | None = None) -> Pipeline:
    """The seven service processes, configured for this stack, calling fake providers on loopback.

    The primary path is a fake Hugging Face Space that takes ``primary_latency_s`` an image, one
    image at a time; the fallback path is a fast fake Replicate (paid: it counts against the
    budget) with a fake SiliconFlow behind it; the comparer's VLM is a fake OpenAI-compatible chat
    API. Keys are fake too. ``env_overrides`` adds or replaces settings of every service.
    """
    urls = fake_urls(settings.host, settings.fake_providers_port)
    providers_file = settings.state_dir / "providers.yaml"
    providers_file.parent.mkdir(parents=True, exist_ok=True)
    providers_file.write_text(sample_providers_file(urls))
    fakes = ServiceProcess(
        "fake-providers",
        ("dev", "fake-providers", "--port", str(settings.fake_providers_port),
         "--latency", f"gradio={settings.primary_latency_s}"),
        ready_url=f"{urls['gradio']}/_fake/requests",
    )
    return Pipeline(
        settings.state_dir,
        env(settings) | {
            "FORGELINE_ROUTER_DEPTH_HIGH": str(settings.depth_high),
            "FORGELINE_ROUTER_DEPTH_LOW": str(settings.depth_low),
            "FORGELINE_ROUTER_DEPTH_REFRESH_S": "0.5",
            "FORGELINE_GENERATOR_PROVIDERS_FILE": str(providers_file),
            "FORGELINE_KEYS_REPLICATE": "r8_fake-local-key-1,r8_fake-local-key-2",
            "FORGELINE_KEYS_SILICONFLOW": "sf_fake-local-key-1",
            "FORGELINE_COMPARER_VLM_BASE_URL": urls["vlm"],
            "FORGELINE_COMPARER_VLM_KEYS": "sk-fake-local-vlm-key-1",
        } | dict(env_overrides or {}),
        per_service_env={"generator-primary": {
            "FORGELINE_GENERATOR_CONCURRENCY": str(settings.primary_concurrency),
        }},
        ingest_url=ingest_url(settings),
        extra=(fakes,),
    )


def _stack_lock(settings: DevStackSettings, progress: Progress) -> AbstractContextManager[None]:
    # One `up` or `down` at a time per state dir (two shells, or parallel test workers): otherwise
    # both see "not running", both start, and the loser fails on a taken port.
    return exclusive_lock(
        settings.state_dir / "stack.lock",
        progress=progress,
        waiting=f"another `forgeline dev up/down` is working on {settings.state_dir}; waiting for it…",
    )


# `up` and `down` take a `components` argument, which hides the function of that name inside them.
_select = components


def reset(settings: DevStackSettings, progress: Progress = silent) -> None:
    """Stop everything and delete what the servers keep: every broker's topics and offsets (and the
    cluster's size), Redis's append-only file and S3Proxy's objects."""
    pipeline(settings).stop(progress=progress)
    down(settings, progress=progress)
    others = _select(settings, ["redis", "s3"])
    paths = [*KafkaCluster(settings).data_paths(), *(path for c in others for path in c.data_paths())]
    for data in paths:
        if data.is_dir():
            shutil.rmtree(data)
        elif data.exists():
            data.unlink()
        else:
            continue
        progress(f"deleted {data}")
