"""``forgeline run <service>``: one service in the foreground until SIGTERM.

Every service has the same two functions in its ``app.py``, ``build(settings, infra) -> handler``
and ``serve(settings, infra, stop)``; this table says where each one and its settings live.
The process reads its settings once, opens the shared infrastructure once (``bootstrap``) and
runs ``serve`` inside it.
"""

from __future__ import annotations

import asyncio
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from services.cli._console import fail, read_settings
from services.common.bootstrap import bootstrap
from services.common.health import Readiness
from services.common.settings import BudgetSettings, CacheSettings, Connections
from services.common.tracing import TracingSettings
from services.common.worker import run_service


@dataclass(frozen=True)
class ServiceEntry:
    """Where a service's ``serve`` and its settings class live (imported only when that service runs)."""

    module: str  # has build() and serve()
    settings: str  # "module:Class"
    reads_providers_file: bool = False

    def settings_class(self) -> Callable[..., Any]:
        module, _, name = self.settings.partition(":")
        return getattr(importlib.import_module(module), name)


SERVICES: dict[str, ServiceEntry] = {
    "ingest": ServiceEntry("services.ingest.app", "services.ingest.settings:IngestSettings", reads_providers_file=True),
    "router": ServiceEntry("services.router.app", "services.router.settings:RouterSettings"),
    "generator": ServiceEntry("services.generator.app", "services.generator.settings:GeneratorSettings",
                              reads_providers_file=True),
    "storage": ServiceEntry("services.storage.app", "services.storage.settings:StorageSettings"),
    "comparer": ServiceEntry("services.comparer.app", "services.comparer.settings:ComparerSettings"),
    "webhooks": ServiceEntry("services.webhooks.app", "services.webhooks.settings:WebhooksSettings"),
}

Service = Enum("Service", {name: name for name in SERVICES}, type=str)  # type: ignore[misc]


def catalog_or_fail(path: Path | None):
    """The providers file, or a clean exit naming what is wrong with it."""
    from services.providers.catalog import CatalogError, load_providers_file

    try:
        return load_providers_file(path)
    except CatalogError as exc:
        raise fail(str(exc), "fix the file named by FORGELINE_GENERATOR_PROVIDERS_FILE") from None


def run(
    service: Annotated[Service, typer.Argument(help="The service this process runs.")],
    path: Annotated[str | None, typer.Option(help="generator only: primary or fallback (FORGELINE_GENERATOR_PATH).")]
    = None,
) -> None:
    """Run one service in the foreground until SIGTERM: what a Kubernetes Deployment runs."""
    entry = SERVICES[service.value]
    settings_class = entry.settings_class()
    overrides = {"path": path} if service.value == "generator" and path is not None else {}
    service_settings = read_settings(lambda: settings_class(**overrides))
    connections, budget = read_settings(Connections.from_env), read_settings(BudgetSettings)
    traces, cache = read_settings(TracingSettings), read_settings(CacheSettings)
    if entry.reads_providers_file:
        catalog_or_fail(service_settings.providers_file)
    serve = importlib.import_module(entry.module).serve

    readiness = Readiness("kafka")  # ready once its consumer is connected (ingest answers /readyz itself)

    async def main(stop: asyncio.Event) -> None:
        async with bootstrap(connections, budget=budget, environ=os.environ, readiness=readiness,
                             cache=cache) as infra:
            await serve(service_settings, infra, stop)

    name = f"generator-{service_settings.path}" if service.value == "generator" else service.value
    # After SIGTERM, in-flight work gets the service's own shutdown timeout (and a little more) to finish.
    grace = getattr(service_settings, "shutdown_timeout_s", None) or getattr(service_settings, "shutdown_grace_s", 0)
    run_service(name, main, log_level=service_settings.log_level,
                metrics_port=getattr(service_settings, "metrics_port", None), readiness=readiness,
                shutdown_grace_s=float(grace) + 5.0, traces=traces, environ=os.environ)
