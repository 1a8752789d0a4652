"""Fixtures the integration tests share (the session's services come from tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.common.settings import Connections
from tests.integration.ingest_support import Api, api


@pytest.fixture
async def client(connections: Connections, topics) -> AsyncIterator[Api]:
    async with api(connections) as ready:
        yield ready
