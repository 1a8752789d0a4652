"""The ``forgeline`` command line, one module per command group.

    run.py      forgeline run <service>       one service in the foreground (what a Deployment runs)
    dev.py      forgeline dev …, demo         the local stack, fake providers, the demo
    topics.py   forgeline topics …            create, wait for and list the Kafka topics
    keys.py     forgeline keys …              provider keys: state, re-enabling
    tenants.py  forgeline tenants …           tenants, their limits and API keys
    schema.py   forgeline schema              JSON Schemas, topics.json and the AsyncAPI document
    diagram.py  forgeline diagram             the architecture picture, SVG and PNG, from the settings
    simulate.py forgeline simulate            a day of routing on a simulated clock: cost, waits, misses
    jobs.py     forgeline submit|status|compare  the HTTP API for people: an image, a job, a score

Each command reads its settings from the environment once, in the command, and hands them down.
"""

from __future__ import annotations

import sys

import typer

from services.cli import dev, diagram, jobs, keys, run, schema, simulate, tenants, topics
from services.cli._console import console

__all__ = ["app", "main"]

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Forgeline: images on demand for game backends.")
app.add_typer(dev.app, name="dev")
app.add_typer(topics.app, name="topics")
app.add_typer(keys.app, name="keys")
app.add_typer(tenants.app, name="tenants")
app.command("run")(run.run)
app.command("schema")(schema.schema)
app.command("diagram")(diagram.diagram)
app.command("simulate")(simulate.simulate)
app.command("demo")(dev.demo)
app.command("submit")(jobs.submit)
app.command("status")(jobs.status)
app.command("cancel")(jobs.cancel)
app.command("compare")(jobs.compare)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)
