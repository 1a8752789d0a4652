"""Hugging Face Spaces through Gradio's HTTP API: the free primary path.

One ``generate`` is two requests plus a download:

1. ``POST {base}{prefix}/call/{api_name}`` with ``{"data": [inputs in order]}`` → ``{"event_id"}``;
2. ``GET {base}{prefix}/call/{api_name}/{event_id}`` → server-sent events ``heartbeat`` (every
   ~15 s), ``generating``, then ``complete`` (the output list) or ``error``;
3. the first image output is a FileData dict (``{"path", "url", "meta": {"_type": "gradio.FileData"}}``);
   its ``url`` is downloaded.

``prefix`` is ``/gradio_api`` on Gradio 5 and nothing on Gradio 4. With ``api_prefix="auto"`` the
adapter tries ``/gradio_api`` and, on a 404, the bare routes once, then keeps what worked.

``event: error`` almost always means the Space itself is in trouble (crashed, overloaded, ZeroGPU
quota used up), so it is a ``RetryableProviderError("space_error")`` and the caller fails over;
only texts that name a content refusal (``permanent_error_markers``) are permanent.
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any, Literal

import httpx
from pydantic import Field, field_validator, model_validator

from services.common.contracts import ImageSpec
from services.providers.http import (
    Deadline,
    HttpProvider,
    HttpProviderConfig,
    bearer_headers,
    json_body,
    redact,
    resolve_url,
    transport_error,
)
from services.providers.port import (
    GeneratedImage,
    PermanentProviderError,
    ProviderError,
    RetryableProviderError,
)

__all__ = ["SPEC_FIELDS", "GradioConfig", "GradioSpaceProvider"]

SPEC_FIELDS = ("prompt", "negative_prompt", "seed", "width", "height", "style")
InputSlot = str | bool | int | float | dict[str, Any] | None


class GradioConfig(HttpProviderConfig):
    """One Space endpoint.

    ``inputs`` lists the endpoint's parameters in order (as its "Use via API" page shows them):
    a name from ``SPEC_FIELDS`` takes that field of the spec; ``None``, a number or a bool is
    sent as is (e.g. a guidance scale); ``{"value": x}`` sends any literal, even a string.
    """

    base_url: str = Field("", description="The Space's app URL; derived from `space` when empty.")
    space: str = Field(description='"owner/name" of the Space; names the provider and the model.')
    api_name: str = "predict"
    api_prefix: Literal["auto", "/gradio_api", ""] = "auto"
    inputs: list[InputSlot] = Field(default_factory=lambda: ["prompt", "negative_prompt", "seed", "width", "height"])
    output_index: int | None = Field(None, ge=0, description="Which output holds the image; None: the first file.")
    read_timeout_s: float = Field(30.0, gt=0, description="Longest silence on the result stream (heartbeats ~15 s).")
    permanent_error_markers: tuple[str, ...] = ("nsfw", "content policy", "safety checker", "inappropriate")

    @model_validator(mode="before")
    @classmethod
    def _space_url(cls, values: Any) -> Any:
        # https://<owner>-<name>.hf.space is where a Space's app answers (not huggingface.co/spaces/...)
        if isinstance(values, dict) and not values.get("base_url") and isinstance(values.get("space"), str):
            host = values["space"].replace("/", "-").replace("_", "-").replace(".", "-").lower()
            values = {**values, "base_url": f"https://{host}.hf.space"}
        return values

    @field_validator("inputs")
    @classmethod
    def _known_slots(cls, inputs: list[InputSlot]) -> list[InputSlot]:
        for slot in inputs:
            if isinstance(slot, str) and slot not in SPEC_FIELDS:
                raise ValueError(f"unknown input {slot!r}: use one of {SPEC_FIELDS} or {{'value': ...}} for a literal")
            if isinstance(slot, dict) and set(slot) != {"value"}:
                raise ValueError("a literal input is written {'value': ...}")
        return inputs


class GradioSpaceProvider(HttpProvider[GradioConfig]):
    """Generates through one Space. Raises only ``ProviderError``s; never retries."""

    def __init__(self, config: GradioConfig, http: httpx.AsyncClient) -> None:
        super().__init__(config, http)
        self.name = f"hf-space:{config.space}"
        # learnt on the first call that got past the 404 check; None until then
        self._prefix: str | None = None if config.api_prefix == "auto" else config.api_prefix

    async def generate(self, spec: ImageSpec, token: str | None = None) -> GeneratedImage:
        deadline = Deadline(self.config.timeout_s)
        try:
            # a hard cap over everything: heartbeats keep each read alive, but not forever
            async with asyncio.timeout(self.config.timeout_s):
                prefix, event_id = await self._submit(spec, token, deadline)
                outputs = await self._result(prefix, event_id, token, deadline)
                data, content_type = await self.download(self._image_url(outputs, prefix), token, deadline,
                                                         send_token=True)
        except TimeoutError:
            raise RetryableProviderError(f"no result within {self.config.timeout_s:g}s", provider=self.name,
                                         code="timeout") from None
        return self.image(data, content_type, model=self.config.space)

    # -- step 1: queue the call

    async def _submit(self, spec: ImageSpec, token: str | None, deadline: Deadline) -> tuple[str, str]:
        candidates = [self._prefix] if self._prefix is not None else ["/gradio_api", ""]
        body = {"data": self._inputs(spec)}
        for i, prefix in enumerate(candidates):
            try:
                response = await self.request("POST", self.config.url(f"{prefix}/call/{self.config.api_name}"),
                                              token, deadline, json=body)
            except RetryableProviderError as error:
                if error.code == "not_found" and i + 1 < len(candidates):
                    continue  # a 404: Gradio 4 has no /gradio_api prefix
                raise
            payload = json_body(response, provider=self.name)
            event_id = payload.get("event_id") if isinstance(payload, dict) else None
            if not isinstance(event_id, str) or not event_id:
                raise RetryableProviderError("the Space's answer has no event_id", provider=self.name,
                                             code="malformed_response")
            self._prefix = prefix
            return prefix, event_id
        raise AssertionError("unreachable: the last candidate always returns or raises")

    def _inputs(self, spec: ImageSpec) -> list[Any]:
        values: list[Any] = []
        for slot in self.config.inputs:
            if isinstance(slot, str):
                values.append(_spec_value(spec, slot))
            elif isinstance(slot, dict):
                values.append(slot["value"])
            else:
                values.append(slot)
        return values

    # -- step 2: read the result stream

    async def _result(self, prefix: str, event_id: str, token: str | None, deadline: Deadline) -> list[Any]:
        url = self.config.url(f"{prefix}/call/{self.config.api_name}/{event_id}")
        timeout = self.timeout(deadline, read_s=self.config.read_timeout_s)
        try:
            async with self.http.stream("GET", url, headers=bearer_headers(token), timeout=timeout) as response:
                if response.status_code >= 300:
                    await response.aread()
                    raise self.error_for(response, token)
                event: str | None = None
                data: list[str] = []
                async for line in response.aiter_lines():
                    if line.startswith(":"):
                        continue  # an SSE comment
                    if line:
                        name, _, value = line.partition(":")
                        value = value.removeprefix(" ")
                        if name == "event":
                            event = value
                        elif name == "data":
                            data.append(value)
                        continue
                    if (outputs := self._on_event(event, "\n".join(data), token)) is not None:
                        return outputs
                    event, data = None, []
                # a last event without its blank line still counts
                if (outputs := self._on_event(event, "\n".join(data), token)) is not None:
                    return outputs
        except httpx.HTTPError as exc:
            raise transport_error(exc, provider=self.name, secrets=(token,)) from None
        raise RetryableProviderError("the result stream ended without a result", provider=self.name,
                                     code="incomplete")

    def _on_event(self, event: str | None, data: str, token: str | None) -> list[Any] | None:
        """The outputs for ``complete``; raises for ``error``; None for anything else (heartbeats…)."""
        if event == "complete":
            try:
                outputs = json.loads(data)
            except ValueError:
                outputs = None
            if not isinstance(outputs, list):
                raise RetryableProviderError("the Space's result is not a JSON list", provider=self.name,
                                             code="malformed_response")
            return outputs
        if event == "error":
            raise self._space_error(data, token)
        return None

    def _space_error(self, data: str, token: str | None) -> ProviderError:
        try:
            detail = json.loads(data) if data else None
        except ValueError:
            detail = data
        # Spaces without show_error send `data: null`: nothing to go on but "the Space failed"
        text = detail if isinstance(detail, str) else json.dumps(detail) if detail is not None else ""
        message = redact(f"the Space reported an error: {text}" if text else "the Space reported an error", (token,))
        if any(marker in text.lower() for marker in self.config.permanent_error_markers):
            return PermanentProviderError(message, provider=self.name, code="content_policy")
        return RetryableProviderError(message, provider=self.name, code="space_error")

    # -- step 3: find the image

    def _image_url(self, outputs: list[Any], prefix: str) -> str:
        candidates = outputs if self.config.output_index is None else outputs[self.config.output_index:][:1]
        file_data = _find_file(candidates)
        if file_data is None:
            raise RetryableProviderError("the Space's result holds no image file", provider=self.name,
                                         code="malformed_response")
        if isinstance(file_data.get("url"), str) and file_data["url"]:
            return resolve_url(self.config.base_url, file_data["url"])
        # older servers leave url empty: files are served at {prefix}/file=<path>
        return self.config.url(f"{prefix}/file={file_data['path']}")


def _spec_value(spec: ImageSpec, field: str) -> Any:
    if field == "negative_prompt":
        return spec.negative_prompt or ""  # a Textbox wants a string, not null
    if field == "style":
        return spec.style or ""
    if field == "seed" and spec.seed is None:
        # a Number input rejects null; without a seed in the spec any seed will do
        return random.randrange(2**31)
    return getattr(spec, field)


def _find_file(value: Any) -> dict[str, Any] | None:
    """The first FileData in an output, looking inside lists and dicts (a Gallery nests them)."""
    if isinstance(value, dict):
        # meta._type is "gradio.FileData" on Gradio 4.x/5.x, but older servers omit meta: go by the keys
        if any(isinstance(value.get(key), str) and value[key] for key in ("url", "path")):
            return value
        children: Any = list(value.values())
    elif isinstance(value, list):
        children = value
    else:
        return None
    for child in children:
        if (found := _find_file(child)) is not None:
            return found
    return None
