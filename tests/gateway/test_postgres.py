"""The main flow of the HTTP API over a node on PostgreSQL."""

from __future__ import annotations

import pytest

from mainspring.persistence.postgres import PostgresStore
from tests.conftest import POSTGRES_DSN, drop_postgres_schema, require_postgres
from tests.gateway.support import serve

pytestmark = pytest.mark.postgres


async def test_main_flow_on_postgres(postgres_schema: str) -> None:
    """Start (and start again), signal with a key, query, wait for the result, read the
    history and the list, and send an actor message, all on PostgreSQL."""
    await require_postgres()
    try:
        async with serve(PostgresStore(POSTGRES_DSN, schema=postgres_schema)) as served:
            start = {"id": "pg-1", "input": None}
            status, body, _ = await served.call("POST", "/v1/workflows/gw.waiter", json=start)
            assert status == 201, body
            status, body, _ = await served.call("POST", "/v1/workflows/gw.waiter", json=start)
            assert status == 200, body
            for payload in ("a", "a", "done"):
                status, body, _ = await served.call(
                    "POST",
                    "/v1/workflows/pg-1/signals/item",
                    json=payload,
                    headers={"Idempotency-Key": f"key-{payload}"},
                )
                assert status == 202, body
            status, body, _ = await served.call("GET", "/v1/workflows/pg-1?wait=30")
            assert (status, body["status"], body["result"]) == (200, "completed", ["a"])
            status, body, _ = await served.call("GET", "/v1/workflows/pg-1/queries/items")
            assert body["result"] == ["a"], body
            status, body, _ = await served.call("GET", "/v1/workflows/pg-1/history?limit=1000")
            assert status == 200, body
            kinds = [event["kind"] for event in body["events"]]
            assert kinds[0] == "started"
            assert kinds.count("signal") == 2
            assert kinds[-1] == "completed"
            status, body, _ = await served.call("GET", "/v1/workflows?type=gw.waiter")
            assert [item["id"] for item in body["workflows"]] == ["pg-1"], body
            status, body, _ = await served.call(
                "POST",
                "/v1/actors/test-account/pg-acc/messages?reply=true",
                json={"type": "test.account.deposit", "message": {"amount_cents": 9}},
            )
            assert (status, body["reply"]) == (200, 9), body
    finally:
        await drop_postgres_schema(postgres_schema)
