"""Shared fixtures: one factory per Store implementation, against real databases."""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

POSTGRES_DSN = os.environ.get(
    "MAINSPRING_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

_postgres_checked: list[str | None] = []


async def _postgres_problem() -> str | None:
    """None when the test PostgreSQL answers, else why not (checked once per session)."""
    if _postgres_checked:
        return _postgres_checked[0]
    import asyncpg

    try:
        connection = await asyncpg.connect(POSTGRES_DSN, timeout=5)
        await connection.close()
        problem = None
    except Exception as error:  # any failure to connect means "unreachable" here
        problem = f"PostgreSQL at {_without_password(POSTGRES_DSN)} is unreachable: {error!r}"
    _postgres_checked.append(problem)
    return problem


def _without_password(dsn: str) -> str:
    """The DSN as it may appear in test output: a CI secret in it is masked."""
    parts = urllib.parse.urlsplit(dsn)
    if not parts.password:
        return dsn
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")).geturl()


async def require_postgres() -> None:
    """Skip (locally) or fail (under CI=true) when the test PostgreSQL is unreachable."""
    problem = await _postgres_problem()
    if problem is None:
        return
    if IN_CI:
        pytest.fail(f"{problem}; CI=true requires PostgreSQL", pytrace=False)
    pytest.skip(
        f"{problem}. Start it (pg_ctlcluster ... main start) or set MAINSPRING_TEST_POSTGRES_DSN."
    )


@pytest.fixture
def postgres_schema(request: pytest.FixtureRequest) -> str:
    """A fresh schema name per test, so tests never see each other's rows."""
    digest = abs(hash(request.node.nodeid)) % 10**10
    return f"t_{os.getpid()}_{digest}"


async def drop_postgres_schema(schema: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(POSTGRES_DSN)
    try:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await connection.close()


StoreFactory = Callable[[], Any]


@pytest.fixture(
    params=[
        "memory",
        "sqlite",
        "sqlite-process",
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
async def store_factory(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_schema: str
) -> AsyncIterator[StoreFactory]:
    """A factory of Store objects that all see the same durable data (one database per test).

    Calling it twice gives two independent Store objects over the same data, as two nodes
    would have; the memory store returns the one shared object.
    """
    kind = request.param
    created: list[Any] = []
    if kind == "memory":
        from mainspring.persistence.memory import MemoryStore

        shared = MemoryStore()

        def factory() -> Any:
            return shared

    elif kind in ("sqlite", "sqlite-process"):
        from mainspring.persistence.sqlite import SqliteStore

        path = tmp_path / "store.db"
        writer = "process" if kind == "sqlite-process" else "thread"

        def factory() -> Any:
            store = SqliteStore(str(path), writer=writer)
            created.append(store)
            return store

    else:
        await require_postgres()
        from mainspring.persistence.postgres import PostgresStore

        def factory() -> Any:
            store = PostgresStore(POSTGRES_DSN, schema=postgres_schema)
            created.append(store)
            return store

    yield factory
    for store in created:
        await store.close()
    if kind == "postgres":
        await drop_postgres_schema(postgres_schema)


@pytest.fixture
async def store(store_factory: StoreFactory) -> Any:
    """An opened Store of each kind (closed by ``store_factory``)."""
    opened = store_factory()
    await opened.open()
    return opened
