"""A small async client for game backends written in Python.

Over HTTP (submit, then wait on server-sent events, falling back to polling)::

    async with ForgelineClient("http://forgeline:8080", api_key=...) as forgeline:
        result = await forgeline.generate("flaming obsidian greatsword", width=512, height=512)
        print(result.url)

Or over Kafka (produce the request, await its completed event by job id)::

    async with KafkaGenerationClient(kafka_settings, topic_settings, tenant="studio-a") as forgeline:
        completed = await forgeline.generate(ImageSpec(prompt="frost crystal longbow"))
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any, Self

import httpx
from aiokafka import TopicPartition

from services.common.contracts import (
    ContractError,
    GenerationCompleted,
    GenerationFailed,
    GenerationRequested,
    ImageSpec,
    decode,
    new_job_id,
)
from services.common.kafka import make_admin, make_consumer, make_producer, send_event
from services.common.lag import topic_partitions
from services.common.settings import KafkaSettings, TopicSettings
from services.common.topics import Topics

TERMINAL = frozenset({"completed", "failed", "canceled"})


class ForgelineError(Exception):
    """The API refused a request or a job failed; ``status_code`` and ``detail`` say why."""

    def __init__(self, message: str, *, status_code: int | None = None, detail: Any = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.detail = detail


class JobFailed(ForgelineError):
    """The job ended without an image; ``detail`` holds the error (code, message, retryable)."""


@dataclass(frozen=True)
class JobResult:
    """A job as the API reports it."""

    job_id: str
    status: str
    url: str | None
    route: str | None
    provider: str | None
    cached: bool
    raw: dict[str, Any]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobResult:
        return cls(job_id=data["job_id"], status=data["status"], url=data.get("url"), route=data.get("route"),
                   provider=data.get("provider"), cached=bool(data.get("cached")), raw=data)


class ForgelineClient:
    """The HTTP API: ``generate`` = ``submit`` + ``wait``."""

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout_s: float = 30.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(base_url=base_url, headers=headers, transport=transport,
                                       timeout=httpx.Timeout(timeout_s))

    def __repr__(self) -> str:  # never show the key
        return f"ForgelineClient(base_url={str(self._http.base_url)!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def submit(self, prompt: str, *, idempotency_key: str | None = None, **options: Any) -> JobResult:
        """Ask for an image. A cache hit comes back completed at once; otherwise status is queued."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        response = await self._http.post("/v1/generations", json={"prompt": prompt, **options}, headers=headers)
        data = self._checked(response)
        if "status" not in data:
            data["status"] = "completed" if response.status_code == 200 else "queued"
        return JobResult.from_json(data)

    async def status(self, job_id: str) -> JobResult:
        return JobResult.from_json(self._checked(await self._http.get(f"/v1/generations/{job_id}")))

    async def cancel(self, job_id: str, reason: str | None = None) -> JobResult:
        """End the job ``canceled`` (``ForgelineError`` with the API's words when it has ended already)."""
        body = {"reason": reason} if reason else None
        return JobResult.from_json(self._checked(await self._http.post(f"/v1/generations/{job_id}/cancel",
                                                                       json=body)))

    async def wait(self, job_id: str, *, timeout_s: float = 300.0) -> JobResult:
        """Wait for a terminal status via server-sent events; poll if the stream breaks."""
        deadline = time.monotonic() + timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                async for view in self.events(job_id):
                    if view["status"] in TERMINAL:
                        return self._final(JobResult.from_json(view))
        except (httpx.HTTPError, json.JSONDecodeError):
            pass  # a proxy that buffers or cuts SSE: polling still works
        except TimeoutError:
            raise ForgelineError(f"job {job_id} not finished after {timeout_s:.0f} s") from None
        while time.monotonic() < deadline:
            result = await self.status(job_id)
            if result.status in TERMINAL:
                return self._final(result)
            await asyncio.sleep(0.5)
        raise ForgelineError(f"job {job_id} not finished after {timeout_s:.0f} s")

    async def generate(self, prompt: str, *, timeout_s: float = 300.0, **options: Any) -> JobResult:
        submitted = await self.submit(prompt, **options)
        if submitted.status in TERMINAL:
            return self._final(submitted)
        return await self.wait(submitted.job_id, timeout_s=timeout_s)

    async def compare(self, target_image: str, generated_image: str, original_prompt: str, *,
                      wait_s: float = 30.0) -> dict[str, Any]:
        """Score ``generated_image`` (a data: URL, an https URL or a job id) against ``target_image``.

        Returns the comparison as ``GET /v1/comparisons/{id}`` shows it (status, result or error);
        waits up to ``wait_s`` for the result, then polls until it ends.
        """
        body = {"target_image": target_image, "generated_image": generated_image, "original_prompt": original_prompt}
        response = await self._http.post("/v1/comparisons", params={"wait": wait_s}, json=body,
                                          timeout=httpx.Timeout(wait_s + 30.0))
        view = self._checked(response)
        deadline = time.monotonic() + wait_s
        while view["status"] not in TERMINAL and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            view = self._checked(await self._http.get(view["status_url"]))
        if view["status"] == "failed":
            error = view.get("error") or {}
            raise JobFailed(f"comparison {view['comparison_id']} failed: {error.get('message', 'no reason given')}",
                            detail=error)
        if view["status"] not in TERMINAL:
            raise ForgelineError(f"comparison {view['comparison_id']} not finished after {wait_s:.0f} s")
        return view

    async def events(self, job_id: str):
        """Each status change of the job as JSON, from the first, until it ends (server-sent events)."""
        async with self._http.stream("GET", f"/v1/generations/{job_id}/events",
                                     timeout=httpx.Timeout(30.0, read=60.0)) as response:
            if response.status_code != 200:
                await response.aread()
                self._checked(response)
            data: list[str] = []
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    data.append(line[5:].strip())
                elif line == "" and data:
                    yield json.loads("\n".join(data))
                    data = []

    @staticmethod
    def _final(result: JobResult) -> JobResult:
        if result.status == "failed":
            error = result.raw.get("error") or {}
            raise JobFailed(f"job {result.job_id} failed: {error.get('message', 'no reason given')}", detail=error)
        return result

    @staticmethod
    def _checked(response: httpx.Response) -> dict[str, Any]:
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = response.text[:500]
            raise ForgelineError(f"HTTP {response.status_code}: {detail}", status_code=response.status_code,
                                 detail=detail)
        return response.json()


class KafkaGenerationClient:
    """The Kafka path: produce ``GenerationRequested``, await the job's terminal event.

    Results are read from the completed and failed topics from the moment ``start`` returns,
    without a consumer group (every client instance sees every result and keeps its own).
    """

    def __init__(self, kafka: KafkaSettings, topics: TopicSettings, *, tenant: str) -> None:
        self._kafka = kafka
        self._topics = Topics.from_settings(topics)
        self._tenant = tenant
        self._waiting: dict[str, asyncio.Future[GenerationCompleted]] = {}
        self._reader_task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self._producer = make_producer(self._kafka)
        self._consumer = make_consumer(self._kafka, group_id=None, auto_offset_reset="latest")
        await self._producer.start()
        await self._consumer.start()
        names = [self._topics.name("generation.completed"), self._topics.name("generation.failed")]
        admin = make_admin(self._kafka)
        await admin.start()
        try:
            partitions = [TopicPartition(name, p) for name in names for p in await self._partitions(admin, name)]
        finally:
            await admin.close()
        self._consumer.assign(partitions)
        await self._consumer.seek_to_end(*partitions)
        for tp in partitions:  # resolve the positions now, so nothing produced after start is missed
            await self._consumer.position(tp)
        self._reader_task = asyncio.create_task(self._read_results())

    @staticmethod
    async def _partitions(admin, topic: str) -> set[int]:
        partitions = await topic_partitions(admin, topic)
        if not partitions:
            raise ForgelineError(f"topic {topic!r} does not exist; run `forgeline topics create`")
        return partitions

    async def stop(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
            await asyncio.gather(self._reader_task, return_exceptions=True)
        await self._consumer.stop()
        await self._producer.stop()

    async def generate(self, spec: ImageSpec, *, timeout_s: float = 300.0, **fields: Any) -> GenerationCompleted:
        request = GenerationRequested(job_id=new_job_id(), tenant=self._tenant, spec=spec, **fields)
        waiter: asyncio.Future[GenerationCompleted] = asyncio.get_running_loop().create_future()
        self._waiting[request.job_id] = waiter
        try:
            await send_event(self._producer, self._topics.name("generation.requested"), request)
            return await asyncio.wait_for(waiter, timeout_s)
        finally:
            self._waiting.pop(request.job_id, None)

    async def _read_results(self) -> None:
        completed_topic = self._topics.name("generation.completed")
        while True:
            batches = await self._consumer.getmany(timeout_ms=1000)
            for record in (r for records in batches.values() for r in records):
                waiter = self._waiting.get((record.key or b"").decode())
                if waiter is None or waiter.done():
                    continue
                try:
                    if record.topic == completed_topic:
                        waiter.set_result(decode(GenerationCompleted, record.value))
                    else:
                        failed = decode(GenerationFailed, record.value)
                        waiter.set_exception(JobFailed(f"job {failed.job_id} failed: {failed.error.message}",
                                                       detail=failed.error.model_dump()))
                except ContractError as exc:
                    waiter.set_exception(ForgelineError(f"unreadable result for the job: {exc}"))
