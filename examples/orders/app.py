"""The order example as an app for ``mainspring node --app examples.orders.app``.

It hosts ``Inventory``, ``Notifier`` and the ``order`` workflow (``examples.orders.model``).
Its lifespan starts the example's payment service in this process, on a free loopback port and
its own SQLite file, and binds the order steps to it; ``on_start`` seeds the stock of
``SEED_STOCK`` once (a restart adds nothing).

Where the payment service lives:

- ``ORDERS_PAYMENTS_URL``: use a payment service that runs elsewhere
  (``python -m examples.orders.payments``) instead of starting one;
- otherwise its SQLite file is ``ORDERS_PAYMENTS_DB``, by default next to a SQLite store
  (``mainspring.db`` gets ``mainspring-payments.db``) or ``./orders-payments.db``.

Start an order over the HTTP API (orders of 100000 cents or more wait for an ``approve``
signal)::

    curl -X POST http://127.0.0.1:8080/v1/workflows/order -H 'Content-Type: application/json' \\
      -d '{"id": "order-1", "input": {"order_id": "order-1", "customer_id": "cust-1",
           "items": [{"sku": "sku-1", "qty": 2}], "amount_cents": 2500}}'
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

from examples.orders.model import GetStock, Inventory, Notifier, Restock, bind_services, order
from examples.orders.node import CONFIG
from examples.orders.payments import PaymentsClient, start_payments
from mainspring import App, Node

__all__ = ["SEED_STOCK", "app"]

log: Final = logging.getLogger(__name__)

SEED_STOCK: Final = {"sku-1": 100, "sku-2": 100, "sku-3": 100}
"""The stock each SKU gets the first time the app starts over a store."""
PAYMENTS_URL_ENVIRONMENT: Final = "ORDERS_PAYMENTS_URL"
PAYMENTS_DB_ENVIRONMENT: Final = "ORDERS_PAYMENTS_DB"


def payments_db_path(node: Node) -> Path:
    """Where the in-process payment service keeps its SQLite file."""
    configured = os.environ.get(PAYMENTS_DB_ENVIRONMENT)
    if configured:
        return Path(configured)
    store_path = getattr(node.store, "path", None)
    if isinstance(store_path, str) and store_path != ":memory:":
        path = Path(store_path)
        return path.with_name(f"{path.stem}-payments.db")
    return Path("orders-payments.db")


@contextlib.asynccontextmanager
async def lifespan(node: Node) -> AsyncIterator[None]:
    """Run (or reach) the payment service and bind the order steps to it."""
    url = os.environ.get(PAYMENTS_URL_ENVIRONMENT)
    async with contextlib.AsyncExitStack() as stack:
        if not url:
            server = await start_payments(payments_db_path(node))
            stack.push_async_callback(server.close)
            url = server.url
            log.info("PaymentsStarted", extra={"url": url, "db": str(server.db_path)})
        client = PaymentsClient(url, timeout_s=5.0)
        stack.push_async_callback(client.close)
        bind_services(client)
        yield


async def seed_stock(node: Node) -> None:
    """Give each SKU of ``SEED_STOCK`` its stock once: a SKU that was ever restocked is left
    alone, and the restock's message id makes a repeated one count once."""
    for sku, qty in SEED_STOCK.items():
        stock = await node.ask(Inventory, sku, GetStock())
        if stock.restocked == 0:
            await node.ask(Inventory, sku, Restock(qty), message_id=f"seed:{sku}")


app: Final = App(
    actors=[Inventory, Notifier],
    workflows=[order],
    config=CONFIG,
    lifespan=lifespan,
    on_start=seed_stock,
)
