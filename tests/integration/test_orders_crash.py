"""The order example under SIGKILL, with real processes, on SQLite and on PostgreSQL.

Each test runs the demo driver (``examples.orders.demo.run_demo``): a payment service process
with transient failures, an order node process that is SIGKILLed several times while orders are
in flight and restarted over the same database. Then it checks what must hold whatever the
moment of the kills: every order ended (completed, compensated or cancelled), no order was
charged twice, no SKU's stock was ever negative (at any point of its history, replayed from
the store), no unit leaked and the money adds up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from examples.orders.demo import MUST_BE_ZERO, SKUS, DemoSettings, run_demo
from examples.orders.model import Inventory

import mainspring
from mainspring.persistence.postgres import PostgresStore
from mainspring.persistence.sqlite import SqliteStore
from mainspring.persistence.store import Store
from tests.conftest import POSTGRES_DSN, drop_postgres_schema, require_postgres

pytestmark = pytest.mark.slow

ORDERS = 150
KILLS = 3


def check_summary(summary: dict[str, Any]) -> None:
    assert {name: summary[name] for name in MUST_BE_ZERO} == dict.fromkeys(MUST_BE_ZERO, 0), summary
    assert summary["kills"] == KILLS, summary
    assert summary["orders"] == ORDERS
    assert summary["completed"] + summary["compensated"] + summary["cancelled"] == ORDERS
    assert summary["completed"] > 0, summary
    assert summary["charges"] >= summary["completed"], summary
    assert summary["charge_attempts"] > summary["charges"], "no transient failure was retried"


async def check_stock_never_negative(store: Store) -> None:
    """Fold each SKU's log event by event: ``available`` is never below zero."""
    await store.open()
    try:
        inventory = Inventory()
        for sku in SKUS:
            state = Inventory.initial_state
            events = await store.read_events(f"{Inventory.type_name}/{sku}")
            assert events, sku
            for stored in events:
                event = mainspring.registry.decode(
                    stored.type_name, stored.type_version, stored.payload
                )
                state = inventory.evolve(state, event)
                assert state.available >= 0, (sku, stored.seq, state)
    finally:
        await store.close()


async def test_orders_survive_sigkills_on_sqlite(tmp_path: Path) -> None:
    settings = DemoSettings(orders=ORDERS, kills=KILLS, seed=11, approval_timeout_s=2.0)
    summary = await run_demo(settings, tmp_path)

    check_summary(summary)
    await check_stock_never_negative(SqliteStore(str(tmp_path / "orders.db")))


@pytest.mark.postgres
async def test_orders_survive_sigkills_on_postgres(tmp_path: Path, postgres_schema: str) -> None:
    await require_postgres()
    schema = postgres_schema  # unique per process and test
    await drop_postgres_schema(schema)
    settings = DemoSettings(
        orders=ORDERS,
        kills=KILLS,
        seed=12,
        approval_timeout_s=2.0,
        store="postgres",
        dsn=POSTGRES_DSN,
        schema=schema,
    )
    try:
        summary = await run_demo(settings, tmp_path)

        check_summary(summary)
        await check_stock_never_negative(PostgresStore(POSTGRES_DSN, schema=schema))
    finally:
        await drop_postgres_schema(schema)
