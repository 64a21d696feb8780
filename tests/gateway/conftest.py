"""Fixtures of the gateway tests: a node served over loopback, on memory and SQLite stores."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mainspring.persistence.memory import MemoryStore
from mainspring.persistence.sqlite import SqliteStore
from tests.gateway.support import FAILS, Served, serve


@pytest.fixture(params=["memory", "sqlite"])
async def served(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Served]:
    """A node hosting the test workflows and ``Account``, behind a gateway with a token."""
    FAILS["charge"] = True
    store = MemoryStore() if request.param == "memory" else SqliteStore(str(tmp_path / "gw.db"))
    async with serve(store) as running:
        yield running


@pytest.fixture
async def served_memory() -> AsyncIterator[Served]:
    """The same on a memory store only (for tests whose store does not matter)."""
    FAILS["charge"] = True
    async with serve(MemoryStore()) as running:
        yield running
