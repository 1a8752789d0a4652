"""``forgeline topics …``: create, wait for and list the Kafka topics Forgeline owns."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from services.cli._console import console, fail, progress, read_settings
from services.common.settings import KafkaSettings, TopicSettings
from services.common.topics import TOPIC_SPECS, Topics

app = typer.Typer(no_args_is_help=True, help="Kafka topics Forgeline owns.")


@app.command("create")
def topics_create(
    partitions: Annotated[int | None, typer.Option(help="Override FORGELINE_TOPICS_PARTITIONS.")] = None,
) -> None:
    """Create every topic and its .dlq twin (idempotent)."""
    topic_settings = read_settings(TopicSettings)
    if partitions is not None:
        topic_settings = topic_settings.model_copy(update={"partitions": partitions})
    create_topics_or_fail(read_settings(KafkaSettings), topic_settings)


def create_topics_or_fail(kafka: KafkaSettings, topic_settings: TopicSettings) -> None:
    from services.common.kafka import make_admin
    from services.common.topics import create_topics

    async def run() -> None:
        admin = make_admin(kafka)
        try:
            await asyncio.wait_for(admin.start(), timeout=15)
        except Exception as exc:  # noqa: BLE001 — any failure to connect means the same to the user
            raise fail(f"cannot reach Kafka at {kafka.bootstrap}: {exc!r}",
                        "start the local stack with `forgeline dev up`, or set FORGELINE_KAFKA_BOOTSTRAP") from None
        try:
            outcomes = await create_topics(admin, topic_settings, progress=progress)
        finally:
            await admin.close()
        created = sum(o.status == "created" for o in outcomes)
        console.print(f"{created} created, {len(outcomes) - created} already there (prefix {topic_settings.prefix!r})")
        if any(o.warning for o in outcomes):
            console.print("[yellow]some existing topics differ from the settings; see above[/]")

    asyncio.run(run())


@app.command("wait")
def topics_wait(
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 300.0,
) -> None:
    """Wait until every topic and its .dlq twin exist (a pod's init step); exit 1 on timeout."""
    from services.common.kafka import make_admin
    from services.common.topics import TopicAdminError, wait_for_topics

    kafka, topic_settings = read_settings(KafkaSettings), read_settings(TopicSettings)

    async def run() -> None:
        admin = make_admin(kafka)
        deadline = asyncio.get_running_loop().time() + timeout
        while True:  # the broker itself may still be starting
            try:
                await asyncio.wait_for(admin.start(), timeout=15)
                break
            except Exception as exc:  # noqa: BLE001
                if asyncio.get_running_loop().time() > deadline:
                    raise fail(f"cannot reach Kafka at {kafka.bootstrap}: {exc!r}") from None
                progress(f"Kafka at {kafka.bootstrap} not reachable yet: {exc!r}")
                await asyncio.sleep(2)
        try:
            remaining = max(1.0, deadline - asyncio.get_running_loop().time())
            found = await wait_for_topics(admin, topic_settings, remaining, progress=progress)
        except TopicAdminError as exc:
            raise fail(str(exc)) from None
        finally:
            await admin.close()
        console.print(f"all {len(found)} topics exist (prefix {topic_settings.prefix!r})")

    asyncio.run(run())


@app.command("list")
def topics_list() -> None:
    """The topics Forgeline uses under the configured prefix, with their payload model."""
    topics = Topics.from_settings(read_settings(TopicSettings))
    table = Table()
    for column in ("topic", "payload", "what it carries"):
        table.add_column(column)
    for spec in TOPIC_SPECS:
        table.add_row(topics.name(spec.key), spec.model.__name__, spec.description)
        table.add_row(topics.dlq(spec.key), spec.model.__name__, "dead letters, with forgeline-dlq-* headers")
    Console().print(table)
