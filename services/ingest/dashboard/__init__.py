"""The operator's dashboard: the architecture diagram with live figures, and the latest images.

    GET  /dashboard          the page (or the login form, when the API runs with keys)
    POST /dashboard/login    the operator key → a session cookie
    GET  /dashboard/data     figures, gallery and the /v1/status they come from (the page polls it)
    GET  /dashboard/static/  the page's script and styles: plain JS and CSS, no build step

None of it is in the OpenAPI document: it is for people, not clients.
"""

from __future__ import annotations

import asyncio
import functools
from decimal import Decimal
from html import escape
from pathlib import Path
from urllib.parse import parse_qs

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from fastapi import APIRouter, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response

from services.common.contracts import utcnow
from services.common.diagram import Facts, PathProvider, render_svg
from services.common.lag import topic_partitions
from services.common.recent_jobs import RedisRecentJobs
from services.common.topics import DLQ_SUFFIX, TOPIC_SPECS
from services.ingest import status
from services.ingest.dashboard.access import COOKIE, COOKIE_MAX_AGE_S, admitted, is_operator_key, session_token
from services.ingest.dashboard.figures import figures, gallery
from services.ingest.deps import IngestDeps
from services.ingest.errors import Unavailable, describe
from services.providers.catalog import ProvidersFile, load_providers_file

GALLERY_SIZE = 24
STATIC = Path(__file__).parent / "static"
_ASSETS = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}

router = APIRouter(include_in_schema=False)


@functools.lru_cache(maxsize=4)
def _catalog(path: Path | None) -> ProvidersFile:
    """The providers file ingest was started with (read once; ``build_deps`` already checked it)."""
    return load_providers_file(path)


def _costs(catalog: ProvidersFile) -> dict[tuple[str, str], Decimal]:
    return {(path, entry.name): entry.cost for path in ("primary", "fallback") for entry in catalog.path(path)}


def _refusal(request: Request, deps: IngestDeps) -> Response | None:
    """None when the caller may see the dashboard; else the answer: a login form, 401 or 403."""
    verdict = admitted(request, deps)
    if verdict:
        return None
    if verdict is None:
        return JSONResponse({"detail": "the dashboard is off: API keys are on and FORGELINE_INGEST_OPERATOR_KEY "
                                       "is not set"}, status_code=403)
    if request.url.path == "/dashboard":
        return _login_page()
    return JSONResponse({"detail": "the dashboard needs the operator key: log in at /dashboard, or send "
                                   "'Authorization: Bearer <operator key>'"}, status_code=401,
                        headers={"WWW-Authenticate": "Bearer"})


def _login_page(problem: str | None = None) -> HTMLResponse:
    template = (STATIC / "login.html").read_text()
    message = f'<p class="problem" id="problem">{escape(problem)}</p>' if problem else ""
    return HTMLResponse(template.replace("{{problem}}", message), status_code=401)


@router.get("/dashboard")
async def page(request: Request) -> Response:
    deps: IngestDeps = request.app.state.deps
    if (refused := _refusal(request, deps)) is not None:
        return refused
    settings, s3 = deps.settings, deps.connections.s3
    catalog = _catalog(settings.providers_file)
    budget = await deps.budget.snapshot()
    facts = Facts(topics=deps.topics, depth_high=settings.routing_depth_high, depth_low=settings.routing_depth_low,
                  cap_usd=Decimal(budget.cap_micros) / 1_000_000, primary=PathProvider.of(catalog.primary),
                  fallback=PathProvider.of(catalog.fallback), cache_ttl_s=settings.result_cache_ttl_s,
                  bucket=s3.bucket, cdn=str(s3.public_base_url) if s3.public_base_url else "the bucket's public URL",
                  cache_shared=deps.cache_scope.shared)
    html = (STATIC / "page.html").read_text().replace("{{diagram}}", render_svg(facts, live=True))
    return HTMLResponse(html, headers={"Cache-Control": "no-store"})


@router.post("/dashboard/login")
async def login(request: Request) -> Response:
    deps: IngestDeps = request.app.state.deps
    operator_key = deps.settings.operator_key
    if not deps.auth_enabled:
        return RedirectResponse("/dashboard", status_code=303)
    if operator_key is None:
        return JSONResponse({"detail": "the dashboard is off: FORGELINE_INGEST_OPERATOR_KEY is not set"},
                            status_code=403)
    form = parse_qs((await request.body()).decode("utf-8", errors="replace"))
    presented = (form.get("key") or [""])[0]
    if not presented:
        return _login_page("key: enter the operator key")
    if not is_operator_key(presented, operator_key):
        return _login_page("key: that is not the operator key")  # never echoed
    answer = RedirectResponse("/dashboard", status_code=303)
    answer.set_cookie(COOKIE, session_token(operator_key), max_age=COOKIE_MAX_AGE_S, path="/dashboard",
                      httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return answer


@router.get("/dashboard/data")
async def data(request: Request) -> Response:
    deps: IngestDeps = request.app.state.deps
    if (refused := _refusal(request, deps)) is not None:
        return refused
    pipeline = jsonable_encoder(await status.pipeline_status(deps))
    ids = await RedisRecentJobs(deps.redis, deps.keys).latest(GALLERY_SIZE)
    views = [view for view in await asyncio.gather(*(deps.jobs.get(job_id) for job_id in ids)) if view is not None]
    dead = await dead_letters(deps)
    return JSONResponse({
        "figures": figures(pipeline, views, dead, utcnow()),
        "gallery": gallery(views, _costs(_catalog(deps.settings.providers_file))),
        "dead_letters": dead,
        "status": pipeline,
    }, headers={"Cache-Control": "no-store"})


async def dead_letters(deps: IngestDeps) -> dict[str, int]:
    """Records in each ``.dlq`` topic (end − beginning offsets, over its partitions); absent topics count 0."""
    names = [deps.topics.name(spec.key) + DLQ_SUFFIX for spec in TOPIC_SPECS]

    async def read() -> dict[str, int]:
        partitions = await asyncio.gather(*(topic_partitions(deps.admin, name) for name in names))
        tps = [TopicPartition(name, p) for name, parts in zip(names, partitions, strict=True) for p in sorted(parts)]
        counts = dict.fromkeys(names, 0)
        if tps:
            end, begin = await deps.offsets.end_offsets(tps), await deps.offsets.beginning_offsets(tps)
            for tp in tps:
                counts[tp.topic] += end[tp] - begin[tp]
        return counts

    try:
        return await asyncio.wait_for(read(), deps.settings.probe_timeout_s)
    except (TimeoutError, KafkaError) as exc:
        raise Unavailable("kafka", "Kafka did not report the dead-letter topics "
                                   f"({describe(exc, detail=False)}); retry shortly") from exc


@router.get("/dashboard/static/{name}")
async def asset(name: str) -> Response:
    if name not in _ASSETS:
        return JSONResponse({"detail": "no such dashboard asset"}, status_code=404)
    return FileResponse(STATIC / name, media_type=_ASSETS[name])


