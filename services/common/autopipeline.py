"""A Redis client that sends the commands issued in one turn of the event loop as one pipeline.

A service handles many records at once, and each stage of a job makes a few Redis calls. Sent one
by one, every call is a socket write and a read, on its own pooled connection; on loopback the
sender's ``write`` also runs the receiver's side of TCP, so that write is most of what a call costs
the client (``bench/redis_autopipeline.py`` measures it). Here the calls that coroutines make while
the loop runs one batch of callbacks queue up, and the loop's next turn sends them all in one write
of a non-transactional pipeline, then hands each caller its own reply. ioredis and node-redis call
this auto-pipelining; redis-py does not have it (redis/redis-py#3767).

What stays the same for a caller:
- it awaits its own reply, or its own error: a command that fails (``WRONGTYPE``, ``NOSCRIPT``)
  fails only its caller, so a script not yet loaded is loaded and retried as before;
- a connection error fails every command of that write, as it would have failed each of them
  (``make_redis`` sets no redis-py retry policy: the consumer loop retries the record);
- a coroutine's commands run in the order it issued them (each awaits the last); commands of
  different coroutines keep the order they were issued in, on one connection, where a pool of
  connections gave no order at all.

A pipeline is not a transaction: other clients' commands may run between the ones of a batch.
Blocking commands (``XREAD BLOCK``, ``BLPOP``…) are sent on their own connection, since they would
hold up every reply queued behind them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis

#: Commands that wait on the server; never queued behind others.
BLOCKING_COMMANDS = frozenset(
    {"BLPOP", "BRPOP", "BRPOPLPUSH", "BLMOVE", "BLMPOP", "BZPOPMIN", "BZPOPMAX", "BZMPOP", "WAIT", "WAITAOF"}
)
#: Commands that block only when given a BLOCK argument.
MAYBE_BLOCKING_COMMANDS = frozenset({"XREAD", "XREADGROUP"})
#: The most commands one write carries; a larger batch is split.
MAX_BATCH = 512

_Queued = tuple[tuple[Any, ...], dict[str, Any], asyncio.Future]


def _name(value: Any) -> str:
    return (value.decode() if isinstance(value, bytes) else str(value)).upper()


def blocks(args: tuple[Any, ...]) -> bool:
    """Whether the command ``args`` may wait on the server before it answers."""
    name = _name(args[0]).split(" ", 1)[0]
    if name in BLOCKING_COMMANDS:
        return True
    return name in MAYBE_BLOCKING_COMMANDS and any(
        isinstance(arg, (str, bytes)) and _name(arg) == "BLOCK" for arg in args[1:]
    )


class AutoPipelineRedis(Redis):
    """``redis.asyncio.Redis`` whose commands of one loop turn go out in one pipeline."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._queued: list[_Queued] = []
        self._sending: set[asyncio.Task] = set()

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        if blocks(args):
            return await super().execute_command(*args, **options)
        loop = asyncio.get_running_loop()
        reply = loop.create_future()
        self._queued.append((args, options, reply))
        if len(self._queued) == 1:
            loop.call_soon(self._send_queued)
        return await reply

    def _send_queued(self) -> None:
        queued, self._queued = self._queued, []
        for start in range(0, len(queued), MAX_BATCH):
            task = asyncio.ensure_future(self._send(queued[start : start + MAX_BATCH]))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[_Queued]) -> None:
        if len(batch) == 1:
            args, options, reply = batch[0]
            try:
                result = await super().execute_command(*args, **options)
            except BaseException as exc:  # handed to the caller, who raises it
                _fail(reply, exc)
            else:
                _answer(reply, result)
            return
        pipe = self.pipeline(transaction=False)
        for args, options, _ in batch:
            pipe.pipeline_execute_command(*args, **options)
        try:
            results = await pipe.execute(raise_on_error=False)
        except BaseException as exc:  # the write or the connection failed: every caller learns it
            for *_, reply in batch:
                _fail(reply, exc)
            return
        for (*_, reply), result in zip(batch, results, strict=True):
            if isinstance(result, Exception):
                _fail(reply, result)
            else:
                _answer(reply, result)

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        # Commands already queued get their replies before the connections close.
        if self._queued:
            self._send_queued()
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)
        await super().aclose(close_connection_pool)


def _answer(reply: asyncio.Future, result: Any) -> None:
    if not reply.done():  # a caller cancelled meanwhile no longer waits
        reply.set_result(result)


def _fail(reply: asyncio.Future, exc: BaseException) -> None:
    if reply.done():
        return
    if isinstance(exc, asyncio.CancelledError):
        reply.cancel()
    else:
        reply.set_exception(exc)
