"""The floor a cache hit is measured against: FastAPI, a pydantic body and one Redis GET, nothing else.

``bench/cache_hit.py`` serves it with one uvicorn process beside Forgeline's ingest:

    uvicorn --app-dir bench minimal_cache_endpoint:app   # REDIS_URL and CACHE_KEY from the environment
"""

from __future__ import annotations

import os

from fastapi import FastAPI, HTTPException
from fastapi.responses import Response
from pydantic import BaseModel, Field
from redis.asyncio import Redis

app = FastAPI()
redis = Redis.from_url(os.environ["REDIS_URL"])
CACHE_KEY = os.environ["CACHE_KEY"]


class Body(BaseModel):
    prompt: str = Field(min_length=1, max_length=2000)
    width: int = Field(512, ge=64, le=2048, multiple_of=8)
    height: int = Field(512, ge=64, le=2048, multiple_of=8)
    seed: int | None = None


@app.post("/v1/generations")
async def cached(body: Body) -> Response:
    raw = await redis.get(CACHE_KEY)
    if raw is None:
        raise HTTPException(404, "not cached")
    return Response(raw, media_type="application/json")
