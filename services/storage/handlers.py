"""Publishing a generated image: content-addressed upload, result cache, the completed event."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field

from services.common.blobstore import content_key
from services.common.cache import CacheScope, LruTtlCache
from services.common.consumer import Outcome, Output
from services.common.contracts import (
    ComparisonRequested,
    DataUrlImage,
    ErrorInfo,
    GenerationCompleted,
    GenerationFailed,
    GenerationGenerated,
    HttpsImage,
    StoredImage,
    webhook_fields,
)
from services.common.images import sniff_content_type
from services.common.jobs import terminal_outcome
from services.common.ports import BlobStore, JobStore, RecentJobs, ResultCache, TerminalGuard
from services.common.topics import Topics


def comparison_id_for(job_id: str) -> str:
    """The id of the comparison a generation with a reference image asks for: stable across replays."""
    return "cmp" + hashlib.sha256(job_id.encode()).hexdigest()[:32]


def _as_ref(reference: str | StoredImage) -> DataUrlImage | HttpsImage | StoredImage:
    if isinstance(reference, StoredImage):
        return reference
    return DataUrlImage(data_url=reference) if reference.startswith("data:") else HttpsImage(url=reference)


@dataclass
class StoreHandler:
    store: BlobStore
    cache: ResultCache
    topics: Topics
    jobs: JobStore
    guard: TerminalGuard
    key_prefix: str
    recent: RecentJobs | None = None  # the dashboard's gallery; None: not recorded
    cache_scope: CacheScope = CacheScope()  # whose later requests this result answers: its tenant's unless shared
    # Objects this process uploaded: a replay or a popular image skips the upload. Any other case
    # is one PUT with no HEAD first: the key is the bytes' digest, so writing it again changes nothing,
    # while a HEAD on every job cost an S3 request to save a PUT only on the rare repeat.
    uploaded: LruTtlCache[bool] = field(default_factory=lambda: LruTtlCache(4096, 3600.0))

    async def handle(self, generated: GenerationGenerated) -> Outcome:
        actual_type = sniff_content_type(generated.image)
        if actual_type != generated.content_type:
            return await self._fail(generated, "invalid_image",
                                    f"provider {generated.provider} sent {actual_type or 'unrecognised bytes'}, "
                                    f"not the {generated.content_type} it announced")
        digest = hashlib.sha256(generated.image).hexdigest()
        key = content_key(self.key_prefix, digest, generated.content_type)
        await self._upload(key, generated, digest)
        url = self.store.public_url(key)
        timings = generated.timings.with_stage("stored")
        completed = GenerationCompleted(
            job_id=generated.job_id, tenant=generated.tenant, trace=generated.trace.child(), url=url,
            object_key=key, sha256=digest, content_type=generated.content_type, size_bytes=len(generated.image),
            spec=generated.spec, path=generated.decision.path, provider=generated.provider,
            deterministic=generated.deterministic, placeholder=generated.placeholder, metadata=generated.metadata,
            timings=timings.with_stage("completed"), **webhook_fields(generated),
        )
        # Independent writes, sent at once: the status, the result cache (a stand-in must not answer later
        # requests for the real thing) and, for a plain generation, the terminal guard's claim.
        writes = [self.jobs.update(generated.job_id, "stored", tenant=generated.tenant, url=url,
                                   provider=generated.provider, timings=timings.model_dump(mode="json"))]
        if not generated.placeholder:
            writes.append(self.cache.put(self.cache_scope.key(generated.spec, generated.tenant), completed))
        if generated.reference_image is not None:
            await asyncio.gather(*writes)
            return await self._compare_first(generated, completed)
        return await terminal_outcome(completed, topic=self.topics.name("generation.completed"), guard=self.guard,
                                      jobs=self.jobs, recent=self.recent, alongside=writes)

    async def _upload(self, key: str, generated: GenerationGenerated, digest: str) -> None:
        """Put the bytes under their content key, unless this process did already.

        A ``BlobStoreError`` is Retryable: the consumer loop tries the record again.
        """
        if self.uploaded.get(key):
            return
        await self.store.put(key, generated.image, content_type=generated.content_type, sha256=digest)
        self.uploaded.set(key, True)

    async def _compare_first(self, generated: GenerationGenerated, completed: GenerationCompleted) -> Outcome:
        """Hand the result to the comparer, which publishes it with the comparison attached.

        The comparison id derives from the job id, so a replay asks for the same comparison.
        """
        assert generated.reference_image is not None
        request = ComparisonRequested(
            job_id=comparison_id_for(generated.job_id), tenant=generated.tenant, trace=generated.trace.child(),
            target_image=_as_ref(generated.reference_image),
            generated_image=StoredImage(object_key=completed.object_key, sha256=completed.sha256,
                                        content_type=completed.content_type),
            original_prompt=generated.spec.prompt, generation_job_id=generated.job_id, completion=completed,
        )
        comparison_id = request.job_id

        async def acked() -> None:
            await self.jobs.update(comparison_id, "queued", kind="comparison", tenant=generated.tenant,
                                   generation_job_id=generated.job_id)
            await self.jobs.update(generated.job_id, "stored", comparison_id=comparison_id)

        return Outcome([Output(self.topics.name("comparison.requested"), request)], on_acked=acked)

    async def _fail(self, generated: GenerationGenerated, code: str, message: str) -> Outcome:
        failed = GenerationFailed(
            job_id=generated.job_id, tenant=generated.tenant, trace=generated.trace.child(),
            metadata=generated.metadata, timings=generated.timings, **webhook_fields(generated),
            error=ErrorInfo(code=code, message=message, stage="storage", retryable=False, provider=generated.provider),
        )
        return await terminal_outcome(failed, topic=self.topics.name("generation.failed"), guard=self.guard,
                                      jobs=self.jobs)
