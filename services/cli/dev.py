"""``forgeline dev …`` and ``forgeline demo``: the local stack (a real Kafka broker, Redis and an S3
endpoint), the fake providers, and the demo that runs the pipeline on them."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.table import Table

from services.cli._console import console, fail, progress, read_settings
from services.cli.topics import create_topics_or_fail
from services.common.settings import KafkaSettings, TopicSettings

app = typer.Typer(no_args_is_help=True, help="The local stack: a real Kafka broker, Redis and an S3 endpoint.")


@app.command("up")
def dev_up(
    only: Annotated[list[str] | None, typer.Option("--only", help="Start just these components (kafka, redis, s3, "
                                                   "or one broker: kafka-2).")] = None,
    with_pipeline: Annotated[bool, typer.Option("--pipeline", help="Also start the five services.")] = False,
    brokers: Annotated[int | None, typer.Option("--brokers", min=1, max=5, help="KRaft nodes; 3 is a quorum whose "
                                                "topics have replication factor 3 and min.insync.replicas=2. Fixed "
                                                "once formatted (`dev reset` to change it).")] = None,
) -> None:
    """Start Kafka, Redis and S3 in the background (idempotent); with --pipeline, the services too."""
    from services import devstack

    settings = read_settings(devstack.DevStackSettings)
    if brokers is not None:
        settings = settings.model_copy(update={"kafka_brokers": brokers})
    try:
        devstack.up(settings, components=only, progress=progress)
        if with_pipeline:
            cluster = devstack.KafkaCluster(settings)
            create_topics_or_fail(KafkaSettings(bootstrap=cluster.bootstrap),
                                  cluster.topic_settings(read_settings(TopicSettings)))
            devstack.pipeline(settings).start(progress=progress)
    except devstack.DevStackError as exc:
        raise fail(str(exc)) from None
    _print_status(devstack.status(settings), devstack.pipeline(settings).status())
    console.print("Point tools at it with: [bold]eval \"$(forgeline dev env)\"[/]  ·  stop it with: [bold]make down[/]")


@app.command("down")
def dev_down(
    only: Annotated[list[str] | None, typer.Option("--only", help="Stop just these components.")] = None,
) -> None:
    """Stop what ``dev up`` started (the pipeline's services first)."""
    from services import devstack

    settings = read_settings(devstack.DevStackSettings)
    try:
        if not only:
            devstack.pipeline(settings).stop(progress=progress)
        devstack.down(settings, components=only, progress=progress)
    except devstack.DevStackError as exc:
        raise fail(str(exc)) from None


@app.command("reset")
def dev_reset() -> None:
    """Stop everything and delete what it keeps: every topic and offset, Redis's data and the S3 objects."""
    from services import devstack

    devstack.reset(read_settings(devstack.DevStackSettings), progress=progress)
    console.print("the next `forgeline dev up` starts from an empty broker, Redis and bucket")


@app.command("status")
def dev_status() -> None:
    """Show each component, its address, and whether it answers. Exit 1 if any does not."""
    from services import devstack

    settings = read_settings(devstack.DevStackSettings)
    try:
        statuses = devstack.status(settings)
    except devstack.DevStackError as exc:
        raise fail(str(exc)) from None
    _print_status(statuses, devstack.pipeline(settings).status())
    if not all(s.answers for s in statuses):
        raise typer.Exit(code=1)


@app.command("fake-providers")
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
            raise fail(f"--latency {item!r} is not PROTOCOL=SECONDS", f"protocols: {', '.join(PROTOCOLS)}") from None

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
        raise fail(f"cannot listen: {exc}", "choose other ports with --port") from None


@app.command("check")
def dev_check() -> None:
    """Round-trip a message through Kafka, a key through Redis and an object through S3."""
    from services.common.settings import Connections
    from services.devstack.smoke import run_smoke

    if not asyncio.run(run_smoke(read_settings(Connections.from_env), console)):
        raise typer.Exit(code=1)


@app.command("env")
def dev_env() -> None:
    """Print ``export`` lines that point Forgeline at the local stack."""
    from services import devstack

    for name, value in devstack.env(read_settings(devstack.DevStackSettings)).items():
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


def demo() -> None:
    """Start the pipeline on the local stack, generate sample images, and show the results."""
    from services import devstack
    from services.demo import run_demo

    settings = read_settings(devstack.DevStackSettings)
    if not asyncio.run(run_demo(settings, console)):
        raise typer.Exit(code=1)
