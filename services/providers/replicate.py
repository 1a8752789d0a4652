"""Replicate predictions: the paid fallback path.

1. Create: ``POST /v1/models/{owner}/{name}/predictions`` (``model``), ``POST /v1/predictions``
   with ``"version"`` (``version``) or ``POST /v1/deployments/{owner}/{name}/predictions``
   (``deployment``), with ``Prefer: wait=N`` so a fast model answers in the same request.
2. Still ``starting``/``processing`` (cold boots take minutes): poll ``urls.get`` every
   ``poll_interval_s`` until ``succeeded | failed | canceled``. Predictions that were slow to start
   and never polled again are a known way to lose results (LiteLLM #16801).
3. ``succeeded``: ``output`` is a URL or a list of URLs; download the first at once (API outputs
   are deleted after about an hour).

On the deadline, or any error once a prediction is running, the prediction is cancelled (best
effort) so nobody pays for an image no one will collect.

**Resuming a paid call** (``generate_resumable``, what ``Failover`` uses). A generator killed while
it waits leaves the job to be replayed; the replay must not pay for a second prediction:

* the create goes without ``Prefer: wait`` and the prediction's id is recorded under the job
  (``ProviderCalls``) the moment it is known, before any waiting — held-open creates would leave
  the window in which a kill loses the id as long as the wait (up to 60 s) instead of one round trip;
* the create itself is guarded by a ``SET NX`` claim with a deadline, so two replays of one job
  running at once create one prediction (the other waits for its id), and a dead holder's claim lapses;
* a replay that finds an id polls that prediction (``GET /v1/predictions/{id}``) and collects its
  output; if the job is terminal already (the terminal guard says so) it cancels the prediction
  (``POST …/cancel``) instead, and raises ``JobAlreadyFinished``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from pydantic import Field, model_validator

from services.common.contracts import ImageSpec
from services.providers.http import (
    Deadline,
    HttpProvider,
    HttpProviderConfig,
    bearer_headers,
    json_body,
    redact,
    resolve_url,
)
from services.providers.port import (
    GeneratedImage,
    JobAlreadyFinished,
    PermanentProviderError,
    ProviderError,
    ResumableCall,
    RetryableProviderError,
)

__all__ = ["ReplicateConfig", "ReplicateProvider"]

_RUNNING = ("starting", "processing")
_CANCEL_TIMEOUT = httpx.Timeout(5.0)  # the deadline is already spent when we cancel; give it a moment of its own


class ReplicateConfig(HttpProviderConfig):
    """Which model to run (exactly one of ``model``, ``version``, ``deployment``) and how."""

    base_url: str = "https://api.replicate.com"
    model: str | None = Field(None, pattern=r"^[\w.-]+/[\w.-]+$", description='"owner/name" (official models).')
    version: str | None = Field(None, min_length=1, description="A version id (community models).")
    deployment: str | None = Field(None, pattern=r"^[\w.-]+/[\w.-]+$", description='"owner/name" of a deployment.')
    prefer_wait_s: int = Field(60, ge=1, le=60, description="Prefer: wait=N on create (Replicate allows ≤ 60).")
    poll_interval_s: float = Field(1.0, gt=0)
    size_inputs: bool = Field(True, description="Send width/height (off for models that take aspect_ratio).")
    extra_input: dict[str, Any] = Field(default_factory=dict, description="Merged into input last (steps, format…).")

    @model_validator(mode="after")
    def _one_target(self) -> ReplicateConfig:
        if sum(x is not None for x in (self.model, self.version, self.deployment)) != 1:
            raise ValueError("set exactly one of model, version, deployment")
        return self

    @property
    def target(self) -> str:
        return self.model or self.deployment or self.version or ""


class ReplicateProvider(HttpProvider[ReplicateConfig]):
    """Generates through Replicate's predictions API. Raises only ``ProviderError``s; never retries."""

    name = "replicate"

    async def generate(self, spec: ImageSpec, token: str | None = None) -> GeneratedImage:
        deadline = Deadline(self.config.timeout_s)
        prediction = await self._create(spec, token, deadline)
        return await self._collect(prediction, token, deadline)

    async def generate_resumable(self, spec: ImageSpec, token: str | None, call: ResumableCall) -> GeneratedImage:
        """``generate``, but resuming the job's recorded prediction if an earlier attempt made one."""
        deadline = Deadline(self.config.timeout_s)
        prediction = await self._fetch(call.call_id, token, deadline) if call.call_id else None
        if prediction is None:
            if await call.finished():
                raise JobAlreadyFinished("the job has its result already", provider=self.name)
            prediction = await self._create_once(spec, token, deadline, call)
        elif await call.finished():
            await self._cancel(prediction, token)
            raise JobAlreadyFinished(f"the job has its result already; prediction {call.call_id} cancelled",
                                     provider=self.name)
        return await self._collect(prediction, token, deadline, call.finished)

    async def _collect(self, prediction: dict[str, Any], token: str | None, deadline: Deadline,
                       finished: Callable[[], Awaitable[bool]] | None = None) -> GeneratedImage:
        try:
            prediction = await self._until_done(prediction, token, deadline, finished)
        except ProviderError:
            await self._cancel(prediction, token)
            raise
        status = prediction.get("status")
        if status != "succeeded":
            error = prediction.get("error")
            reason = error if isinstance(error, str) and error else f"prediction {status}"
            raise PermanentProviderError(redact(reason, (token,)), provider=self.name,
                                         code="prediction_failed" if status == "failed" else "canceled")
        url = resolve_url(self.config.base_url, _first_output(prediction, self.name))
        data, content_type = await self.download(url, token, deadline, send_token=True)
        return self.image(data, content_type, model=self.config.target)

    # -- create

    def _create_request(self, spec: ImageSpec) -> tuple[str, dict[str, Any]]:
        cfg = self.config
        model_input: dict[str, Any] = {"prompt": spec.prompt}
        if spec.negative_prompt:
            model_input["negative_prompt"] = spec.negative_prompt
        if cfg.size_inputs:
            model_input |= {"width": spec.width, "height": spec.height}
        if spec.seed is not None:
            model_input["seed"] = spec.seed
        body: dict[str, Any] = {"input": model_input | cfg.extra_input}
        if cfg.model:
            return f"/v1/models/{cfg.model}/predictions", body
        if cfg.deployment:
            return f"/v1/deployments/{cfg.deployment}/predictions", body
        return "/v1/predictions", body | {"version": cfg.version}

    async def _create(self, spec: ImageSpec, token: str | None, deadline: Deadline, *,
                      hold_open: bool = True) -> dict[str, Any]:
        path, body = self._create_request(spec)
        # Hold the create open for at most the budget minus a margin: if our own timeout fired first
        # the prediction would run on, paid for, with no id to poll or cancel it by.
        wait = min(self.config.prefer_wait_s, math.floor(deadline.remaining() * 0.8) - 1) if hold_open else 0
        headers = {"Prefer": f"wait={wait}"} if wait >= 1 else {}
        response = await self.request("POST", self.config.url(path), token, deadline, json=body, headers=headers)
        return self._prediction(response)

    async def _create_once(self, spec: ImageSpec, token: str | None, deadline: Deadline,
                           call: ResumableCall) -> dict[str, Any]:
        """Create call ``call.seq`` unless a concurrent replay holds its claim; then wait for that one's id."""
        while not await call.calls.claim(call.job_id, call.provider, call.seq, ttl_s=self.config.timeout_s):
            if deadline.remaining() <= self.config.poll_interval_s:
                raise RetryableProviderError("another replay of the job is creating its prediction",
                                             provider=self.name, code="timeout")
            await asyncio.sleep(self.config.poll_interval_s)
            current = await call.calls.current(call.job_id, call.provider)
            if current.seq != call.seq:
                raise RetryableProviderError("a concurrent replay ended this call", provider=self.name,
                                             code="superseded")
            if current.call_id and (found := await self._fetch(current.call_id, token, deadline)) is not None:
                return found
        prediction = await self._create(spec, token, deadline, hold_open=False)
        if isinstance(prediction.get("id"), str):
            await call.calls.record(call.job_id, call.provider, call.seq, prediction["id"])
        return prediction

    async def _fetch(self, prediction_id: str, token: str | None, deadline: Deadline) -> dict[str, Any] | None:
        """The recorded prediction as it is now; None when Replicate no longer knows it."""
        try:
            response = await self.request("GET", self.config.url(f"/v1/predictions/{prediction_id}"), token, deadline)
        except RetryableProviderError as exc:
            if exc.code == "not_found":
                return None
            raise
        return self._prediction(response)

    # -- poll

    async def _until_done(self, prediction: dict[str, Any], token: str | None, deadline: Deadline,
                          finished: Callable[[], Awaitable[bool]] | None = None) -> dict[str, Any]:
        while prediction.get("status") in _RUNNING:
            if finished is not None and await finished():
                raise JobAlreadyFinished(f"the job has its result already; prediction {prediction.get('id')} "
                                         "cancelled", provider=self.name)
            if deadline.remaining() <= self.config.poll_interval_s:
                raise RetryableProviderError(
                    f"prediction still {prediction.get('status')} after {self.config.timeout_s:g}s",
                    provider=self.name, code="timeout")
            await asyncio.sleep(self.config.poll_interval_s)
            response = await self.request("GET", self._url_of(prediction, "get"), token, deadline)
            prediction = self._prediction(response)
        return prediction

    async def _cancel(self, prediction: dict[str, Any], token: str | None) -> None:
        """Stop a prediction nobody will collect. Best effort: its own failure changes nothing."""
        if prediction.get("status") not in _RUNNING:
            return
        try:
            await self.http.post(self._url_of(prediction, "cancel"), headers=bearer_headers(token),
                                 timeout=_CANCEL_TIMEOUT)
        except (httpx.HTTPError, ProviderError):
            pass

    def _url_of(self, prediction: dict[str, Any], which: str) -> str:
        urls = prediction.get("urls")
        url = urls.get(which) if isinstance(urls, dict) else None
        if isinstance(url, str) and url:
            return resolve_url(self.config.base_url, url)
        if not isinstance(prediction.get("id"), str):
            raise RetryableProviderError("the prediction has no id", provider=self.name, code="malformed_response")
        suffix = "/cancel" if which == "cancel" else ""
        return self.config.url(f"/v1/predictions/{prediction['id']}{suffix}")

    def _prediction(self, response: httpx.Response) -> dict[str, Any]:
        prediction = json_body(response, provider=self.name)
        status = prediction.get("status") if isinstance(prediction, dict) else None
        if status not in (*_RUNNING, "succeeded", "failed", "canceled"):
            raise RetryableProviderError(f"unexpected prediction status {str(status)[:40]!r}", provider=self.name,
                                         code="malformed_response")
        return prediction


def _first_output(prediction: dict[str, Any], provider: str) -> str:
    output = prediction.get("output")
    if isinstance(output, list):
        output = output[0] if output else None
    if not isinstance(output, str) or not output:
        raise RetryableProviderError("the prediction succeeded without an output URL", provider=provider,
                                     code="malformed_response")
    return output
