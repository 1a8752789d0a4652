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
"""

from __future__ import annotations

import asyncio
import math
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
    PermanentProviderError,
    ProviderError,
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
        try:
            prediction = await self._until_done(prediction, token, deadline)
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

    async def _create(self, spec: ImageSpec, token: str | None, deadline: Deadline) -> dict[str, Any]:
        path, body = self._create_request(spec)
        # Hold the create open for at most the budget minus a margin: if our own timeout fired first
        # the prediction would run on, paid for, with no id to poll or cancel it by.
        wait = min(self.config.prefer_wait_s, math.floor(deadline.remaining() * 0.8) - 1)
        headers = {"Prefer": f"wait={wait}"} if wait >= 1 else {}
        response = await self.request("POST", self.config.url(path), token, deadline, json=body, headers=headers)
        return self._prediction(response)

    # -- poll

    async def _until_done(self, prediction: dict[str, Any], token: str | None, deadline: Deadline) -> dict[str, Any]:
        while prediction.get("status") in _RUNNING:
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
