"""The local stack as a whole: start, stop and inspect Kafka, Redis and S3 together.

``up`` is idempotent and returns what it started, so a test fixture can stop exactly that::

    started = up(settings)
    try:
        ...
    finally:
        down(settings, started)
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from contextlib import AbstractContextManager

from services.devstack.component import Component, ComponentStatus
from services.devstack.errors import DevStackError, Progress, silent
from services.devstack.host import exclusive_lock
from services.devstack.kafka import KafkaComponent
from services.devstack.pipeline import Pipeline, ServiceProcess
from services.devstack.redis import RedisComponent
from services.devstack.s3 import (
    ACCESS_KEY_ID,
    REGION,
    SECRET_ACCESS_KEY,
    S3Component,
    endpoint_url,
)
from services.devstack.settings import DevStackSettings
from services.fakeproviders.server import fake_urls, sample_providers_file

#: Start order; ``down`` goes the other way.
COMPONENT_NAMES: tuple[str, ...] = ("kafka", "redis", "s3")


def components(settings: DevStackSettings, names: Sequence[str] | None = None) -> list[Component]:
    """The selected components (all by default), in start order."""
    wanted = list(COMPONENT_NAMES) if names is None else list(names)
    unknown = sorted(set(wanted) - set(COMPONENT_NAMES))
    if unknown:
        raise DevStackError(f"unknown component(s) {', '.join(unknown)}; choose from {', '.join(COMPONENT_NAMES)}")
    every: list[Component] = [KafkaComponent(settings), RedisComponent(settings), S3Component(settings)]
    return [c for c in every if c.name in wanted]


def up(
    settings: DevStackSettings,
    components: Sequence[str] | None = None,
    progress: Progress = silent,
) -> list[str]:
    """Start the selected components that are not running yet; return the names this call started.

    Running, answering components are left alone. If one fails, the ones this call started are
    stopped again before the error propagates, so a failed ``up`` leaves nothing new behind.
    """
    selected = _select(settings, components)
    with _stack_lock(settings, progress):
        # Every port conflict is reported before anything starts (not after Kafka took its 4 s).
        for component in selected:
            if not component.running():
                component.check_ports()
        started: list[Component] = []
        try:
            for component in selected:
                if component.start(progress):
                    started.append(component)
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
    """Stop the selected components this stack started (reverse order); return the names stopped."""
    selected = _select(settings, components)
    with _stack_lock(settings, progress):
        return [c.name for c in reversed(selected) if c.stop(progress)]


def status(settings: DevStackSettings) -> list[ComponentStatus]:
    """Every component: is our process alive, does its address answer a real request."""
    return [component.status() for component in _select(settings, None)]


def env(settings: DevStackSettings) -> dict[str, str]:
    """Environment variables that point Forgeline services at this stack."""
    return {
        "FORGELINE_KAFKA_BOOTSTRAP": f"{settings.host}:{settings.kafka_port}",
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


def pipeline(settings: DevStackSettings) -> Pipeline:
    """The seven service processes, configured for this stack, calling fake providers on loopback.

    The primary path is a fake Hugging Face Space that takes ``primary_latency_s`` an image, one
    image at a time; the fallback path is a fast fake Replicate (paid: it counts against the
    budget) with a fake SiliconFlow behind it; the comparer's VLM is a fake OpenAI-compatible chat
    API. Keys are fake too.
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
        },
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
    """Stop everything and delete the broker's data (every topic and offset) and Redis's append-only file."""
    pipeline(settings).stop(progress=progress)
    down(settings, progress=progress)
    for data in (KafkaComponent(settings).data_dir, RedisComponent(settings).data_dir):
        if data.exists():
            shutil.rmtree(data)
            progress(f"deleted {data}")
