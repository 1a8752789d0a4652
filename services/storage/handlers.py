"""Publishing a generated image: content-addressed upload, result cache, the completed event."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from services.common.blobstore import BlobStore, BlobStoreError
from services.common.cache import ResultCache
from services.common.consumer import Outcome, RetryableError
from services.common.contracts import (
    ErrorInfo,
    GenerationCompleted,
    GenerationFailed,
    GenerationGenerated,
)
from services.common.images import EXTENSIONS, sniff_content_type
from services.common.jobs import JobStore, TerminalGuard, terminal_outcome
from services.common.topics import Topics


def object_key(prefix: str, digest: str, content_type: str) -> str:
    """Content-addressed: the same bytes always land at the same key (and URL)."""
    return f"{prefix}{digest[:2]}/{digest}.{EXTENSIONS[content_type]}"


@dataclass
class StoreHandler:
    store: BlobStore
    cache: ResultCache
    topics: Topics
    jobs: JobStore
    guard: TerminalGuard
    key_prefix: str

    async def handle(self, generated: GenerationGenerated) -> Outcome:
        actual_type = sniff_content_type(generated.image)
        if actual_type != generated.content_type:
            return await self._fail(generated, "invalid_image",
                                    f"provider {generated.provider} sent {actual_type or 'unrecognised bytes'}, "
                                    f"not the {generated.content_type} it announced")
        digest = hashlib.sha256(generated.image).hexdigest()
        key = object_key(self.key_prefix, digest, generated.content_type)
        try:
            if not await self.store.exists(key):  # a replay or a popular image: the bytes are there already
                await self.store.put(key, generated.image, content_type=generated.content_type)
        except BlobStoreError as exc:
            raise RetryableError(str(exc)) from exc
        url = self.store.public_url(key)
        timings = generated.timings.with_stage("stored")
        await self.jobs.update(generated.job_id, "stored", tenant=generated.tenant, url=url,
                               timings=timings.model_dump(mode="json"))

        completed = GenerationCompleted(
            job_id=generated.job_id, tenant=generated.tenant, trace=generated.trace.child(), url=url,
            object_key=key, sha256=digest, content_type=generated.content_type, size_bytes=len(generated.image),
            spec=generated.spec, path=generated.decision.path, provider=generated.provider,
            deterministic=generated.deterministic, placeholder=generated.placeholder, metadata=generated.metadata,
            timings=timings.with_stage("completed"),
        )
        if not generated.placeholder:  # a stand-in must not answer later requests for the real thing
            await self.cache.put(generated.spec.cache_key(), completed)
        return await terminal_outcome(completed, topic=self.topics.name("generation.completed"), guard=self.guard,
                                      jobs=self.jobs)

    async def _fail(self, generated: GenerationGenerated, code: str, message: str) -> Outcome:
        failed = GenerationFailed(
            job_id=generated.job_id, tenant=generated.tenant, trace=generated.trace.child(),
            metadata=generated.metadata, timings=generated.timings,
            error=ErrorInfo(code=code, message=message, stage="storage", retryable=False, provider=generated.provider),
        )
        return await terminal_outcome(failed, topic=self.topics.name("generation.failed"), guard=self.guard,
                                      jobs=self.jobs)
