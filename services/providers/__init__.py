"""The provider layer: everything that calls an image generator or a VLM, shared by every service.

    port.py          ImageProvider, GeneratedImage and the provider error hierarchy
    failover.py      the one retry loop: keys, breakers, budget, backoff (generic over what it calls)
    http.py          the HTTP base every adapter stands on (timeouts, Retry-After, error mapping, downloads)
    openai_errors.py one error mapping for OpenAI-compatible APIs, with a dialect per API
    gradio.py, replicate.py, siliconflow.py, cloudflare.py, openai_images.py   image adapters
    procedural.py    the local procedural provider (no network), also the placeholder renderer
    vlm.py           the VLM adapter (OpenAI-compatible chat completions); verdict.py reads its answer
    catalog.py       the providers file: which providers serve each path, with their keys and costs
    keys_admin.py    key state for operators (``forgeline keys``, ``/v1/status``)

The generator and the comparer both stand on this layer; neither imports the other.
"""

from services.providers.cloudflare import CloudflareConfig, CloudflareImageProvider
from services.providers.gradio import GradioConfig, GradioSpaceProvider
from services.providers.openai_images import OpenAIImagesConfig, OpenAIImagesProvider
from services.providers.port import (
    GeneratedImage,
    ImageProvider,
    KeyRejectedError,
    PermanentProviderError,
    ProviderError,
    RateLimitedError,
    RetryableProviderError,
)
from services.providers.replicate import ReplicateConfig, ReplicateProvider
from services.providers.siliconflow import SiliconFlowConfig, SiliconFlowImageProvider

__all__ = [
    "CloudflareConfig",
    "CloudflareImageProvider",
    "GeneratedImage",
    "GradioConfig",
    "GradioSpaceProvider",
    "ImageProvider",
    "KeyRejectedError",
    "OpenAIImagesConfig",
    "OpenAIImagesProvider",
    "PermanentProviderError",
    "ProviderError",
    "RateLimitedError",
    "ReplicateConfig",
    "ReplicateProvider",
    "RetryableProviderError",
    "SiliconFlowConfig",
    "SiliconFlowImageProvider",
]
