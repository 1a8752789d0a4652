"""The ``forgeline`` command line: the local stack, topics, schemas and the demo.

Each command reads its settings from the environment once, here, and hands them down.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from services.common.contracts import SCHEMA_VERSION, json_schema
from services.common.settings import BudgetSettings, KafkaSettings, TopicSettings
from services.common.topics import TOPIC_SPECS, Topics

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Forgeline: images on demand for game backends.")
dev_app = typer.Typer(no_args_is_help=True, help="The local stack: a real Kafka broker, Redis and an S3 endpoint.")
topics_app = typer.Typer(no_args_is_help=True, help="Kafka topics Forgeline owns.")
app.add_typer(dev_app, name="dev")
keys_app = typer.Typer(no_args_is_help=True, help="Provider API keys: their state, and re-enabling them.")
app.add_typer(topics_app, name="topics")
app.add_typer(keys_app, name="keys")

console = Console(stderr=True)


def _fail(message: str, hint: str | None = None) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}")
    if hint:
        console.print(f"[yellow]next:[/] {hint}")
    return typer.Exit(code=1)


def _settings(factory):
    """Build a settings object, turning a validation error into a readable message."""
    try:
        return factory()
    except ValidationError as exc:
        lines = [f"  {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False)]
        raise _fail(f"invalid {exc.title} settings:\n" + "\n".join(lines),
                    "fix the environment variables named above") from None


def _progress(message: str) -> None:
    console.print(f"[dim]•[/] {message}")


# ---------------------------------------------------------------------------------- dev stack


def _components(only: list[str] | None) -> list[str]:
    from services.devstack import COMPONENT_NAMES

    chosen = only or list(COMPONENT_NAMES)
    unknown = sorted(set(chosen) - set(COMPONENT_NAMES))
    if unknown:
        raise _fail(f"unknown component(s): {', '.join(unknown)}", f"choose from {', '.join(COMPONENT_NAMES)}")
    return chosen


@dev_app.command("up")
def dev_up(
    only: Annotated[list[str] | None, typer.Option("--only", help="Start just these components.")] = None,
    with_pipeline: Annotated[bool, typer.Option("--pipeline", help="Also start the five services.")] = False,
) -> None:
    """Start Kafka, Redis and S3 in the background (idempotent); with --pipeline, the services too."""
    from services import devstack

    settings = _settings(devstack.DevStackSettings)
    try:
        devstack.up(settings, components=_components(only), progress=_progress)
        if with_pipeline:
            stack_kafka = KafkaSettings(bootstrap=devstack.env(settings)["FORGELINE_KAFKA_BOOTSTRAP"])
            _create_topics(stack_kafka, _settings(TopicSettings))
            devstack.pipeline(settings).start(progress=_progress)
    except devstack.DevStackError as exc:
        raise _fail(str(exc)) from None
    _print_status(devstack.status(settings), devstack.pipeline(settings).status())
    console.print("Point tools at it with: [bold]eval \"$(forgeline dev env)\"[/]  ·  stop it with: [bold]make down[/]")


@dev_app.command("down")
def dev_down(
    only: Annotated[list[str] | None, typer.Option("--only", help="Stop just these components.")] = None,
) -> None:
    """Stop what ``dev up`` started (the pipeline's services first)."""
    from services import devstack

    settings = _settings(devstack.DevStackSettings)
    if not only:
        devstack.pipeline(settings).stop(progress=_progress)
    devstack.down(settings, components=_components(only), progress=_progress)


@dev_app.command("reset")
def dev_reset() -> None:
    """Stop everything and delete the local broker's data (all topics and offsets)."""
    from services import devstack

    devstack.reset(_settings(devstack.DevStackSettings), progress=_progress)
    console.print("the next `forgeline dev up` starts from an empty broker")


@dev_app.command("status")
def dev_status() -> None:
    """Show each component, its address, and whether it answers. Exit 1 if any does not."""
    from services import devstack

    settings = _settings(devstack.DevStackSettings)
    statuses = devstack.status(settings)
    _print_status(statuses, devstack.pipeline(settings).status())
    if not all(s.answers for s in statuses):
        raise typer.Exit(code=1)


@dev_app.command("fake-providers")
def dev_fake_providers(
    port: Annotated[int, typer.Option(help="Port of the first fake; the others follow it.")] = 19100,
    latency: Annotated[list[str] | None, typer.Option(help="PROTOCOL=SECONDS added to each image, e.g. gradio=1.5")]
    = None,
) -> None:
    """Run fake Gradio, Replicate, SiliconFlow, Cloudflare and OpenAI servers on loopback (Ctrl-C stops)."""
    from services.fakeproviders.server import (
        PROTOCOLS,
        sample_providers_file,
        serve_all,
    )

    latencies: dict[str, float] = {}
    for item in latency or []:
        protocol, _, seconds = item.partition("=")
        try:
            latencies[protocol] = float(seconds)
        except ValueError:
            raise _fail(f"--latency {item!r} is not PROTOCOL=SECONDS", f"protocols: {', '.join(PROTOCOLS)}") from None

    def announce(urls: dict[str, str]) -> None:
        for protocol, url in urls.items():
            console.print(f"  {protocol:12} {url}   (knobs: POST {url}/_fake/knobs, log: GET {url}/_fake/requests)")
        console.print("\nA providers file for them (FORGELINE_GENERATOR_PROVIDERS_FILE):\n")
        print(sample_providers_file(urls))

    try:
        asyncio.run(serve_all(port, announce, latencies))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        raise _fail(f"cannot listen: {exc}", "choose other ports with --port") from None


@dev_app.command("check")
def dev_check() -> None:
    """Round-trip a message through Kafka, a key through Redis and an object through S3."""
    from services.common.settings import Connections
    from services.devstack.smoke import run_smoke

    if not asyncio.run(run_smoke(_settings(Connections.from_env), console)):
        raise typer.Exit(code=1)


@dev_app.command("env")
def dev_env() -> None:
    """Print ``export`` lines that point Forgeline at the local stack."""
    from services import devstack

    for name, value in devstack.env(_settings(devstack.DevStackSettings)).items():
        print(f"export {name}={value}")


def _print_status(statuses, services=()) -> None:
    table = Table(title="Forgeline local stack")
    for column in ("component", "address", "running", "answers", "pid", "detail"):
        table.add_column(column)
    for s in statuses:
        table.add_row(
            s.name, s.address,
            "[green]yes[/]" if s.running else "[red]no[/]",
            "[green]yes[/]" if s.answers else "[red]no[/]",
            str(s.pid or "-"), s.detail,
        )
    for service in services:
        table.add_row(service.name, "", "[green]yes[/]" if service.running else "[dim]no[/]", "", str(service.pid or "-"),
                      str(service.log_path))
    console.print(table)


# ---------------------------------------------------------------------------------- topics


@topics_app.command("create")
def topics_create(
    partitions: Annotated[int | None, typer.Option(help="Override FORGELINE_TOPICS_PARTITIONS.")] = None,
) -> None:
    """Create every topic and its .dlq twin (idempotent)."""
    topic_settings = _settings(TopicSettings)
    if partitions is not None:
        topic_settings = topic_settings.model_copy(update={"partitions": partitions})
    _create_topics(_settings(KafkaSettings), topic_settings)


def _create_topics(kafka: KafkaSettings, topic_settings: TopicSettings) -> None:
    from services.common.kafka import make_admin
    from services.common.topics import create_topics

    async def run() -> None:
        admin = make_admin(kafka)
        try:
            await asyncio.wait_for(admin.start(), timeout=15)
        except Exception as exc:  # noqa: BLE001 — any failure to connect means the same to the user
            raise _fail(f"cannot reach Kafka at {kafka.bootstrap}: {exc!r}",
                        "start the local stack with `forgeline dev up`, or set FORGELINE_KAFKA_BOOTSTRAP") from None
        try:
            outcomes = await create_topics(admin, topic_settings, progress=_progress)
        finally:
            await admin.close()
        created = sum(o.status == "created" for o in outcomes)
        console.print(f"{created} created, {len(outcomes) - created} already there (prefix {topic_settings.prefix!r})")
        if any(o.warning for o in outcomes):
            console.print("[yellow]some existing topics differ from the settings; see above[/]")

    asyncio.run(run())


@topics_app.command("wait")
def topics_wait(
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 300.0,
) -> None:
    """Wait until every topic and its .dlq twin exist (a pod's init step); exit 1 on timeout."""
    from services.common.kafka import make_admin
    from services.common.topics import TopicAdminError, wait_for_topics

    kafka, topic_settings = _settings(KafkaSettings), _settings(TopicSettings)

    async def run() -> None:
        admin = make_admin(kafka)
        deadline = asyncio.get_running_loop().time() + timeout
        while True:  # the broker itself may still be starting
            try:
                await asyncio.wait_for(admin.start(), timeout=15)
                break
            except Exception as exc:  # noqa: BLE001
                if asyncio.get_running_loop().time() > deadline:
                    raise _fail(f"cannot reach Kafka at {kafka.bootstrap}: {exc!r}") from None
                _progress(f"Kafka at {kafka.bootstrap} not reachable yet: {exc!r}")
                await asyncio.sleep(2)
        try:
            remaining = max(1.0, deadline - asyncio.get_running_loop().time())
            found = await wait_for_topics(admin, topic_settings, remaining, progress=_progress)
        except TopicAdminError as exc:
            raise _fail(str(exc)) from None
        finally:
            await admin.close()
        console.print(f"all {len(found)} topics exist (prefix {topic_settings.prefix!r})")

    asyncio.run(run())


@topics_app.command("list")
def topics_list() -> None:
    """The topics Forgeline uses under the configured prefix, with their payload model."""
    topics = Topics.from_settings(_settings(TopicSettings))
    table = Table()
    for column in ("topic", "payload", "what it carries"):
        table.add_column(column)
    for spec in TOPIC_SPECS:
        table.add_row(topics.name(spec.key), spec.model.__name__, spec.description)
        table.add_row(topics.dlq(spec.key), spec.model.__name__, "dead letters, with forgeline-dlq-* headers")
    Console().print(table)


# ---------------------------------------------------------------------------------- run


class Service(str, Enum):
    ingest = "ingest"
    router = "router"
    generator = "generator"
    storage = "storage"
    comparer = "comparer"


@app.command("run")
def run(
    service: Annotated[Service, typer.Argument(help="The service this process runs.")],
    path: Annotated[str | None, typer.Option(help="generator only: primary or fallback (FORGELINE_GENERATOR_PATH).")]
    = None,
) -> None:
    """Run one service in the foreground until SIGTERM: what a Kubernetes Deployment runs."""
    from services.common.settings import Connections
    from services.common.worker import run_service

    connections = _settings(Connections.from_env)
    if service is Service.router:
        from services.router.app import serve
        from services.router.settings import RouterSettings

        settings = _settings(RouterSettings)
        run_service("router", lambda stop: serve(settings, connections, stop),
                    log_level=settings.log_level, metrics_port=settings.metrics_port)
    elif service is Service.generator:
        from services.generator.app import serve
        from services.generator.settings import GeneratorSettings

        settings = _settings(GeneratorSettings)
        if path is not None:
            settings = _settings(lambda: GeneratorSettings(path=path))
        _catalog_or_fail(settings.providers_file)
        run_service(f"generator-{settings.path}",
                    lambda stop: serve(settings, connections, stop, _settings(BudgetSettings), dict(os.environ)),
                    log_level=settings.log_level, metrics_port=settings.metrics_port)
    elif service is Service.storage:
        from services.storage.app import serve
        from services.storage.settings import StorageSettings

        settings = _settings(StorageSettings)
        run_service("storage", lambda stop: serve(settings, connections, stop),
                    log_level=settings.log_level, metrics_port=settings.metrics_port)
    elif service is Service.comparer:
        from services.comparer.app import serve
        from services.comparer.settings import ComparerSettings

        settings = _settings(ComparerSettings)
        run_service("comparer", lambda stop: serve(settings, connections, stop, _settings(BudgetSettings)),
                    log_level=settings.log_level, metrics_port=settings.metrics_port)
    else:
        from services.ingest.app import serve
        from services.ingest.settings import IngestSettings

        settings = _settings(IngestSettings)
        _catalog_or_fail(settings.providers_file)
        run_service("ingest", lambda stop: serve(settings, connections, stop, dict(os.environ), _settings(BudgetSettings)),
                    log_level=settings.log_level)


# ---------------------------------------------------------------------------------- keys


def _catalog_or_fail(path: Path | None):
    """The providers file, or a clean exit naming what is wrong with it."""
    from services.providers.catalog import CatalogError, load_providers_file

    try:
        return load_providers_file(path)
    except CatalogError as exc:
        raise _fail(str(exc), "fix the file named by FORGELINE_GENERATOR_PROVIDERS_FILE") from None


def _catalog():
    from services.generator.settings import GeneratorSettings

    return _catalog_or_fail(_settings(GeneratorSettings).providers_file)


def _comparer_keys():
    """The comparer's VLM keys, by provider name (FORGELINE_COMPARER_VLM_KEYS / _VLM_KEYS_FILE)."""
    from services.comparer.settings import ComparerSettings

    settings = _settings(ComparerSettings)
    return {settings.vlm_name: settings.api_keys()}


@keys_app.command("list")
def keys_list() -> None:
    """Every provider key (masked), the comparer's VLM keys too: healthy, cooling down until when, or
    disabled and why."""
    from services.common.settings import RedisSettings
    from services.providers.keys_admin import key_states

    states = asyncio.run(key_states(_catalog(), _settings(RedisSettings), os.environ, _comparer_keys()))
    table = Table(title="Provider keys")
    for column in ("provider", "key id", "key", "state", "until / reason", "ok", "failed"):
        table.add_column(column)
    for s in states:
        detail = s.cooldown_until.isoformat(timespec="seconds") if s.cooldown_until else (s.disabled_reason or "")
        table.add_row(s.provider, s.key_id, s.masked, s.state, detail, str(s.successes), str(s.failures))
    Console().print(table if states else "no provider in the providers file has keys, and the comparer has none")


@keys_app.command("enable")
def keys_enable(
    provider: Annotated[str, typer.Argument(help="Provider name from the providers file, or the VLM's name.")],
    key_id: Annotated[str, typer.Argument(help="Key id or masked key, as `forgeline keys list` shows it.")],
) -> None:
    """Re-enable a key that a 401 / 403 / quota error disabled."""
    from services.common.settings import RedisSettings
    from services.providers.keys_admin import enable_key

    try:
        enabled = asyncio.run(enable_key(_catalog(), _settings(RedisSettings), os.environ, provider, key_id,
                                         _comparer_keys()))
    except KeyError as exc:
        raise _fail(str(exc.args[0]), "see `forgeline keys list`") from None
    console.print(f"{key_id}: " + ("enabled" if enabled else "was not disabled; nothing to do"))


# ---------------------------------------------------------------------------------- schema


@app.command("schema")
def schema(
    out: Annotated[Path, typer.Option(help="Folder to write the JSON Schema files into.")] = Path("schemas"),
) -> None:
    """Write the JSON Schema of every topic's messages, for producers and consumers in any language."""
    out.mkdir(parents=True, exist_ok=True)
    index = []
    for spec in TOPIC_SPECS:
        file_name = f"{spec.key}.v{SCHEMA_VERSION}.schema.json"
        (out / file_name).write_text(json.dumps(json_schema(spec.model, title=spec.key), indent=2) + "\n")
        index.append({"topic": spec.key, "dlq": spec.key + ".dlq", "payload": spec.model.__name__,
                      "schema": file_name, "description": spec.description})
    (out / "topics.json").write_text(json.dumps({"schema_version": SCHEMA_VERSION, "topics": index}, indent=2) + "\n")
    console.print(f"wrote {len(index)} schemas and topics.json to {out}/")


# ---------------------------------------------------------------------------------- demo


@app.command("demo")
def demo() -> None:
    """Start the pipeline on the local stack, generate sample images, and show the results."""
    from services import devstack
    from services.demo import run_demo

    settings = _settings(devstack.DevStackSettings)
    if not asyncio.run(run_demo(settings, console)):
        raise typer.Exit(code=1)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
