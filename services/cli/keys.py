"""``forgeline keys …``: every provider key's state (masked), and re-enabling a disabled one."""

from __future__ import annotations

import asyncio
import os
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from services.cli._console import console, fail, read_settings
from services.cli.run import catalog_or_fail

app = typer.Typer(no_args_is_help=True, help="Provider API keys: their state, and re-enabling them.")


def _catalog():
    from services.generator.settings import GeneratorSettings

    return catalog_or_fail(read_settings(GeneratorSettings).providers_file)


def _comparer_keys():
    """The comparer's VLM keys, by provider name (FORGELINE_COMPARER_VLM_KEYS / _VLM_KEYS_FILE)."""
    from services.comparer.settings import ComparerSettings

    settings = read_settings(ComparerSettings)
    return {settings.vlm_name: settings.api_keys()}


@app.command("list")
def keys_list() -> None:
    """Every provider key (masked), the comparer's VLM keys too: healthy, cooling down until when, or
    disabled and why."""
    from services.common.settings import RedisSettings
    from services.providers.keys_admin import key_states

    states = asyncio.run(key_states(_catalog(), read_settings(RedisSettings), os.environ, _comparer_keys()))
    table = Table(title="Provider keys")
    for column in ("provider", "key id", "key", "state", "until / reason", "ok", "failed"):
        table.add_column(column)
    for s in states:
        detail = s.cooldown_until.isoformat(timespec="seconds") if s.cooldown_until else (s.disabled_reason or "")
        table.add_row(s.provider, s.key_id, s.masked, s.state, detail, str(s.successes), str(s.failures))
    Console().print(table if states else "no provider in the providers file has keys, and the comparer has none")


@app.command("enable")
def keys_enable(
    provider: Annotated[str, typer.Argument(help="Provider name from the providers file, or the VLM's name.")],
    key_id: Annotated[str, typer.Argument(help="Key id or masked key, as `forgeline keys list` shows it.")],
) -> None:
    """Re-enable a key that a 401 / 403 / quota error disabled."""
    from services.common.settings import RedisSettings
    from services.providers.keys_admin import enable_key

    try:
        enabled = asyncio.run(enable_key(_catalog(), read_settings(RedisSettings), os.environ, provider, key_id,
                                         _comparer_keys()))
    except KeyError as exc:
        raise fail(str(exc.args[0]), "see `forgeline keys list`") from None
    console.print(f"{key_id}: " + ("enabled" if enabled else "was not disabled; nothing to do"))
