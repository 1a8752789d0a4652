"""Serving fakes on loopback: one in a test (``serve_fake``), or all of them (``forgeline dev fake-providers``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI


@asynccontextmanager
async def serve_fake(app: FastAPI, *, host: str = "127.0.0.1", port: int | None = None) -> AsyncIterator[str]:
    """Run ``app`` on ``host:port`` (a free port by default) in this event loop; yields its base URL."""
    if not host.startswith("127.") and host != "localhost":
        raise ValueError("fakes only listen on loopback")
    # Port 0 lets the kernel choose at bind time: no window in which another process takes it.
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port or 0, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()  # raises what stopped it (a taken port, say)
        await asyncio.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        await task


#: The fakes ``forgeline dev fake-providers`` runs, in port order from its base port.
PROTOCOLS: tuple[str, ...] = ("gradio", "replicate", "siliconflow", "cloudflare", "openai", "vlm")


def _app(protocol: str, latency_s: float = 0.0) -> FastAPI:
    from services.fakeproviders import (
        cloudflare,
        gradio,
        openai_chat,
        openai_images,
        replicate,
        siliconflow,
    )
    from services.fakeproviders.base import FakeProvider, Knobs

    modules = {"gradio": gradio, "replicate": replicate, "siliconflow": siliconflow, "cloudflare": cloudflare,
               "openai": openai_images, "vlm": openai_chat}
    return modules[protocol].create_app(FakeProvider(protocol, Knobs(latency_s=latency_s)))


def sample_providers_file(urls: dict[str, str]) -> str:
    """A providers file using the fakes: a free Space as primary; paid Replicate then SiliconFlow as fallback."""
    return f"""primary:
  - {{name: hf-space-a, type: gradio, options: {{space: demo/sdxl-a, base_url: "{urls['gradio']}"}}}}
fallback:
  - {{name: replicate, type: replicate, cost_usd: 0.0023, keys_env: FORGELINE_KEYS_REPLICATE,
     options: {{model: black-forest-labs/flux-schnell, base_url: "{urls['replicate']}"}}}}
  - {{name: siliconflow, type: siliconflow, cost_usd: 0.0014, keys_env: FORGELINE_KEYS_SILICONFLOW,
     options: {{base_url: "{urls['siliconflow']}"}}}}
"""


def fake_urls(host: str, port_base: int) -> dict[str, str]:
    return {protocol: f"http://{host}:{port_base + offset}" for offset, protocol in enumerate(PROTOCOLS)}


async def serve_all(port_base: int, announce, latency_s: dict[str, float] | None = None) -> None:
    """Run every fake until cancelled; ``announce(urls)`` is called once they all listen."""
    from contextlib import AsyncExitStack

    async with AsyncExitStack() as stack:
        urls = {}
        for offset, protocol in enumerate(PROTOCOLS):
            app = _app(protocol, (latency_s or {}).get(protocol, 0.0))
            urls[protocol] = await stack.enter_async_context(serve_fake(app, port=port_base + offset))
        announce(urls)
        await asyncio.Event().wait()  # until Ctrl-C / SIGTERM cancels us
