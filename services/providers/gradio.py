"""Hugging Face Spaces through Gradio's HTTP API: the free primary path.

The adapter first reads the Space's ``GET /config`` once (``gradio_space.SpaceApi``: its version,
API prefix and endpoints with their inputs) and keeps it. Then one ``generate`` is:

1. ``POST {base}{prefix}/queue/join`` with ``{"data", "fn_index", "session_hash"}`` → ``{"event_id"}``;
2. ``GET {base}{prefix}/queue/data?session_hash=…`` → server-sent events, each ``data: {"msg": …}``:
   ``estimation``, ``process_starts``, ``heartbeat`` (every ~15 s), then ``process_completed``
   with ``success`` and ``output.data`` (the outputs) or ``output.error`` (the Space's text);
3. the first image output is a FileData dict (``{"path", "url", "meta": {"_type": "gradio.FileData"}}``),
   downloaded from ``{base}{prefix}/file=<path>``.

``prefix`` is ``/gradio_api`` on Gradio 5 and 6 and nothing on Gradio 4 (``api_prefix`` in the
config). This is the protocol ``gradio_client`` speaks on every version, and the only one that
carries the error text on Gradio 4 and 5: their ``/call/<api>`` stream sends ``event: error`` with
``data: null`` even for ``gr.Error("…")``. The file URL is built from the Space's base URL and the
file's ``path`` rather than taken from ``url``, which Gradio 4.44 gets wrong on ``/call`` and a
proxy may point at an internal host.

Errors: a content refusal in the Space's text (``permanent_error_markers``) is permanent, and so
is a call the Space cannot take as configured (no such ``api_name``, wrong number of inputs, a
value outside a slider): those fail the job at once and never count against the Space's breaker.
ZeroGPU's "You have exceeded your GPU quota … Try again in 0:59:00" cools the key for that long.
Any other error text means the Space is in trouble (crashed, overloaded): retryable, with the text.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from typing import Any

import httpx
from pydantic import Field, field_validator, model_validator

from services.common.contracts import ImageSpec
from services.providers.gradio_space import SPEC_FIELDS, SpaceApi, SpaceConfigError, SpaceEndpoint
from services.providers.http import (
    Deadline,
    HttpProvider,
    HttpProviderConfig,
    bearer_headers,
    json_body,
    redact,
    resolve_url,
    retry_after_from_text,
    transport_error,
)
from services.providers.port import (
    GeneratedImage,
    PermanentProviderError,
    ProviderError,
    RateLimitedError,
    RetryableProviderError,
)

__all__ = ["SPEC_FIELDS", "GradioConfig", "GradioSpaceProvider"]

InputSlot = str | bool | int | float | dict[str, Any] | None
_QUOTA = re.compile(r"gpu quota", re.IGNORECASE)
_TRY_AGAIN = re.compile(r"(?:try again|retry) in (\d+):(\d{2}):(\d{2})", re.IGNORECASE)
_REFUSED_INPUT = ("greater than maximum value", "less than minimum value", "didn't receive enough input values")
# the connection errors of a keep-alive connection the server closed while it sat in the pool
_DROPPED = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


class GradioConfig(HttpProviderConfig):
    """One Space endpoint.

    ``inputs`` (optional) lists the endpoint's parameters in order, as its "Use via API" page
    shows them: a name from ``SPEC_FIELDS`` takes that field of the spec; ``None``, a number or a
    bool is sent as is (e.g. a guidance scale); ``{"value": x}`` sends any literal, even a string.
    Without it the inputs are matched to the spec by the Space's own labels.
    """

    base_url: str = Field("", description="The Space's app URL; derived from `space` when empty.")
    space: str = Field(description='"owner/name" of the Space; names the model.')
    api_name: str = "predict"
    inputs: list[InputSlot] | None = None
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
    def _known_slots(cls, inputs: list[InputSlot] | None) -> list[InputSlot] | None:
        for slot in inputs or []:
            if isinstance(slot, str) and slot not in SPEC_FIELDS:
                raise ValueError(f"unknown input {slot!r}: use one of {SPEC_FIELDS} or {{'value': ...}} for a literal")
            if isinstance(slot, dict) and set(slot) != {"value"}:
                raise ValueError("a literal input is written {'value': ...}")
        return inputs


class GradioSpaceProvider(HttpProvider[GradioConfig]):
    """Generates through one Space. Raises only ``ProviderError``s; never retries a call the Space answered."""

    def __init__(self, config: GradioConfig, http: httpx.AsyncClient) -> None:
        super().__init__(config, http)
        self.name = f"hf-space:{config.space}"
        self._space: SpaceApi | None = None  # the Space's /config, read on the first call
        self._space_lock = asyncio.Lock()

    async def generate(self, spec: ImageSpec, token: str | None = None) -> GeneratedImage:
        deadline = Deadline(self.config.timeout_s)
        try:
            # a hard cap over everything: heartbeats keep each read alive, but not forever
            async with asyncio.timeout(self.config.timeout_s):
                space = await self._space_api(token, deadline)
                try:
                    endpoint = space.endpoint(self.config.api_name)
                    data = endpoint.values(spec, self.config.inputs)
                except SpaceConfigError as exc:
                    raise PermanentProviderError(f"{exc} (Gradio {space.version})", provider=self.name,
                                                 code="space_config") from None
                outputs = await self._call(space, endpoint, data, token, deadline)
                image, content_type = await self.download(self._image_url(outputs, space), token, deadline,
                                                          send_token=True)
        except TimeoutError:
            raise RetryableProviderError(f"no result within {self.config.timeout_s:g}s", provider=self.name,
                                         code="timeout") from None
        return self.image(image, content_type, model=self.config.space)

    # -- the Space's API, read once

    async def _space_api(self, token: str | None, deadline: Deadline) -> SpaceApi:
        async with self._space_lock:
            if self._space is None:
                response = await self._send("GET", self.config.url("/config"), token, deadline)
                config = json_body(response, provider=self.name)
                if not isinstance(config, dict):
                    raise RetryableProviderError("the Space's /config is not a JSON object", provider=self.name,
                                                 code="malformed_response")
                space = SpaceApi.from_config(config)
                if not space.protocol.startswith("sse"):
                    raise PermanentProviderError(
                        f"the Space runs Gradio {space.version} (protocol {space.protocol}); Gradio 4 or later "
                        f"is needed", provider=self.name, code="space_config")
                self._space = space
            return self._space

    async def _send(self, method: str, url: str, token: str | None, deadline: Deadline, *,
                    stream: bool = False, **kwargs: Any) -> httpx.Response:
        """One request; a connection the server dropped while it idled in the pool is tried once more
        (on another connection: httpx discards the broken one), so it never counts against the Space."""
        request = self.http.build_request(method, url, headers=bearer_headers(token),
                                          timeout=self.timeout(deadline, read_s=self.config.read_timeout_s
                                                               if stream else None), **kwargs)
        for attempt in (1, 2):
            try:
                response = await self.http.send(request, stream=stream)
                break
            except _DROPPED as exc:
                if attempt == 2:
                    raise transport_error(exc, provider=self.name, secrets=(token,)) from None
            except httpx.HTTPError as exc:
                raise transport_error(exc, provider=self.name, secrets=(token,)) from None
        if response.status_code >= 300:
            await response.aread()
            await response.aclose()
            if response.status_code == 404:
                self._space = None  # the Space restarted with another app: read its config again next time
            raise self.error_for(response, token)
        return response

    # -- one call through the queue

    async def _call(self, space: SpaceApi, endpoint: SpaceEndpoint, data: list[Any], token: str | None,
                    deadline: Deadline) -> list[Any]:
        session = uuid.uuid4().hex
        body = {"data": data, "fn_index": endpoint.fn_index, "session_hash": session, "event_data": None,
                "trigger_id": None}
        joined = json_body(await self._send("POST", self.config.url(f"{space.api_prefix}/queue/join"), token,
                                            deadline, json=body), provider=self.name)
        event_id = joined.get("event_id") if isinstance(joined, dict) else None
        if not isinstance(event_id, str) or not event_id:
            raise RetryableProviderError("the Space's answer has no event_id", provider=self.name,
                                         code="malformed_response")
        url = self.config.url(f"{space.api_prefix}/queue/data")
        response = await self._send("GET", url, token, deadline, stream=True, params={"session_hash": session})
        try:
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators, SSE comments
                if (outputs := self._on_message(line[5:].strip(), event_id, token)) is not None:
                    return outputs
        except httpx.HTTPError as exc:
            raise transport_error(exc, provider=self.name, secrets=(token,)) from None
        finally:
            await response.aclose()
        raise RetryableProviderError("the result stream ended without a result", provider=self.name,
                                     code="incomplete")

    def _on_message(self, data: str, event_id: str, token: str | None) -> list[Any] | None:
        """The outputs of ``process_completed``; raises for a failure; None for anything else."""
        try:
            message = json.loads(data)
        except ValueError:
            return None
        if not isinstance(message, dict):
            return None
        kind = message.get("msg")
        if kind == "unexpected_error":
            raise self._space_error(str(message.get("message") or ""), token)
        if kind == "close_stream":
            raise RetryableProviderError("the Space closed the stream without a result", provider=self.name,
                                         code="incomplete")
        if kind != "process_completed" or message.get("event_id") not in (None, event_id):
            return None
        output = message.get("output") if isinstance(message.get("output"), dict) else {}
        if not message.get("success"):
            raise self._space_error(output.get("error") if isinstance(output.get("error"), str) else "", token)
        outputs = output.get("data")
        if not isinstance(outputs, list):
            raise RetryableProviderError("the Space's result has no output list", provider=self.name,
                                         code="malformed_response")
        return outputs

    def _space_error(self, text: str, token: str | None) -> ProviderError:
        text = _unquoted(text.strip())
        message = redact(f"the Space reported an error: {text}" if text
                         else "the Space reported an error and shows no details (show_error is off)", (token,))
        lowered = text.lower()
        if any(marker in lowered for marker in self.config.permanent_error_markers):
            return PermanentProviderError(message, provider=self.name, code="content_policy")
        if _QUOTA.search(text):  # ZeroGPU: this token's (or this IP's) GPU time is used up for now
            return RateLimitedError(message, provider=self.name, retry_after_s=_quota_wait(text), code="gpu_quota")
        if any(marker in lowered for marker in _REFUSED_INPUT):
            return PermanentProviderError(message, provider=self.name, code="space_config")
        return RetryableProviderError(message, provider=self.name, code="space_error")

    # -- the image

    def _image_url(self, outputs: list[Any], space: SpaceApi) -> str:
        candidates = outputs if self.config.output_index is None else outputs[self.config.output_index:][:1]
        file_data = _find_file(candidates)
        if file_data is None:
            raise RetryableProviderError("the Space's result holds no image file", provider=self.name,
                                         code="malformed_response")
        path, url = file_data.get("path"), file_data.get("url")
        if isinstance(path, str) and path and (not isinstance(url, str) or not url or "/file=" in url):
            # a file the Space itself serves: its route is known, whatever host or prefix `url` names
            return self.config.url(f"{space.api_prefix}/file={path}")
        return resolve_url(self.config.base_url, url)


def _unquoted(text: str) -> str:
    """Gradio 4 sends ``gr.Error`` texts as their repr: ``'NSFW content detected'``."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _quota_wait(text: str) -> float | None:
    """Seconds from ZeroGPU's "Try again in 0:59:00" (or prose like "in 30s")."""
    match = _TRY_AGAIN.search(text)
    if match is None:
        return retry_after_from_text(text)
    hours, minutes, seconds = (int(part) for part in match.groups())
    return float(hours * 3600 + minutes * 60 + seconds)


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
