"""Adapters for hosted image providers, each speaking one provider's HTTP protocol with httpx."""

from services.generator.providers.cloudflare import (
    CloudflareConfig,
    CloudflareImageProvider,
)
from services.generator.providers.gradio import GradioConfig, GradioSpaceProvider
from services.generator.providers.openai_images import (
    OpenAIImagesConfig,
    OpenAIImagesProvider,
)
from services.generator.providers.replicate import ReplicateConfig, ReplicateProvider
from services.generator.providers.siliconflow import (
    SiliconFlowConfig,
    SiliconFlowImageProvider,
)

__all__ = [
    "CloudflareConfig",
    "CloudflareImageProvider",
    "GradioConfig",
    "GradioSpaceProvider",
    "OpenAIImagesConfig",
    "OpenAIImagesProvider",
    "ReplicateConfig",
    "ReplicateProvider",
    "SiliconFlowConfig",
    "SiliconFlowImageProvider",
]
