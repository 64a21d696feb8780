"""An order node process: hosts ``Inventory``, ``Notifier`` and the ``order`` workflow, with a
small HTTP control endpoint (the example's own aiohttp app; mainspring has no gateway yet).

    python -m examples.orders.node --payments URL (--db PATH | --store postgres --dsn DSN
        [--schema NAME]) [--host 127.0.0.1] [--port 0] [--node-id orders-node]

Once the node runs and the endpoint listens, it prints one JSON line ``{"listening": URL}``.
SIGTERM or SIGINT stops it cleanly; SIGKILL is what the demo and the crash tests use, and a
node restarted over the same database resumes every in-flight order by itself (the workflows
the index lists as running are recovered on start; waiting ones are woken by their durable
timers).

Endpoints (JSON in and out; errors are ``{"error": ...}``):

- ``POST /inventory/restock`` ``{"batch": "seed", "stock": {"sku-1": 40, ...}}``: adds stock,
  once per (batch, SKU): resending the same batch after a crash adds nothing twice.
- ``GET /inventory?skus=sku-1,sku-2``: each SKU's ``available``, ``restocked`` and ``held``
  (units held per order).
- ``POST /orders`` ``{"orders": [{"order_id", "customer_id", "items": [{"sku", "qty"}],
  "amount_cents", "approval_timeout_s"?}, ...]}``: starts each order workflow (idempotent by
  order id and input, so resending a batch is safe); ``{"started": N}``.
- ``POST /orders/{id}/approve`` ``{"approved": true}``: the ``approve`` signal, deduplicated by
  order id; 409 when the order already ended.
- ``POST /orders/{id}/cancel`` ``{"reason": ...}``: operator cancellation; 409 when ended.
- ``GET /orders/summary``: ``{"total": N, "statuses": {status: count}}`` from the workflow index.
- ``GET /orders/report``: ``{"orders": {id: {"status", "result", "error"}}}``, every order.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from examples.orders.model import (
    GetStock,
    Inventory,
    Notifier,
    OrderInput,
    Restock,
    bind_services,
    order,
)
from examples.orders.payments import PaymentsClient
from mainspring import CommandRejected, Node, NodeConfig, WorkflowNotFound
from mainspring.persistence.store import Store

__all__ = ["CONFIG", "build_app", "make_store", "serve"]

CONFIG: Final = NodeConfig(
    timer_poll_interval_s=0.1,
    outbox_poll_interval_s=0.1,
    outbox_retry_interval_s=0.2,
    mailbox_messages_max=5_000,
)
_IN_FLIGHT: Final = 64


def make_store(kind: str, db: Path | None, dsn: str | None, schema: str) -> Store:
    """The store the node runs on."""
    if kind == "sqlite":
        from mainspring.persistence.sqlite import SqliteStore

        if db is None:
            raise ValueError("--db is required with --store sqlite")
        return SqliteStore(str(db))
    from mainspring.persistence.postgres import PostgresStore

    if not dsn:
        raise ValueError("--dsn is required with --store postgres")
    return PostgresStore(dsn, schema=schema)


async def _bounded(calls: list[Any]) -> list[Any]:
    limiter = asyncio.Semaphore(_IN_FLIGHT)

    async def one(call: Any) -> Any:
        async with limiter:
            return await call

    return await asyncio.gather(*(one(call) for call in calls))


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError as error:
        raise web.HTTPBadRequest(text=json.dumps({"error": f"invalid JSON: {error}"})) from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text=json.dumps({"error": "the body must be a JSON object"}))
    return body


def _decoded(node: Node, result: Any) -> Any:
    """A description's result as plain JSON (decoded if it still is a codec envelope)."""
    if isinstance(result, dict) and "d" in result and set(result) <= {"t", "v", "d"}:
        return node.codec.from_value(result)
    return result


def build_app(node: Node) -> web.Application:
    """The control endpoint over ``node`` (see the module docstring)."""
    routes = web.RouteTableDef()

    @routes.post("/inventory/restock")
    async def restock(request: web.Request) -> web.Response:
        body = await _body(request)
        batch = str(body.get("batch", "restock"))
        stock: dict[str, int] = body.get("stock", {})
        available = await _bounded(
            [
                node.ask(Inventory, sku, Restock(int(qty)), message_id=f"restock:{batch}:{sku}")
                for sku, qty in stock.items()
            ]
        )
        return web.json_response({"available": dict(zip(stock, available, strict=True))})

    @routes.get("/inventory")
    async def inventory(request: web.Request) -> web.Response:
        skus = [sku for sku in request.query.get("skus", "").split(",") if sku]
        states = await _bounded([node.ask(Inventory, sku, GetStock()) for sku in skus])
        return web.json_response(
            {
                sku: {"available": s.available, "restocked": s.restocked, "held": s.held}
                for sku, s in zip(skus, states, strict=True)
            }
        )

    @routes.post("/orders")
    async def start_orders(request: web.Request) -> web.Response:
        body = await _body(request)
        try:
            inputs = [OrderInput.from_json(data) for data in body.get("orders", [])]
        except (KeyError, TypeError, ValueError) as error:
            return _error(400, f"invalid order: {error!r}")
        await _bounded([node.workflows.start(order, data.order_id, data) for data in inputs])
        return web.json_response({"started": len(inputs)})

    @routes.post("/orders/{order_id}/approve")
    async def approve(request: web.Request) -> web.Response:
        order_id = request.match_info["order_id"]
        body = await _body(request)
        try:
            await node.workflows.signal(order_id, "approve", body, signal_id=f"approve:{order_id}")
        except WorkflowNotFound as error:
            return _error(404, str(error))
        except CommandRejected as error:
            return _error(409, str(error))
        return web.json_response({"signalled": order_id})

    @routes.post("/orders/{order_id}/cancel")
    async def cancel(request: web.Request) -> web.Response:
        order_id = request.match_info["order_id"]
        body = await _body(request)
        try:
            described = await node.workflows.cancel(order_id, str(body.get("reason", "")))
        except WorkflowNotFound as error:
            return _error(404, str(error))
        except CommandRejected as error:
            return _error(409, str(error))
        return web.json_response({"status": described.status})

    @routes.get("/orders/summary")
    async def summary(request: web.Request) -> web.Response:
        statuses: Counter[str] = Counter()
        after: str | None = None
        while True:
            page = await node.workflows.list(limit=500, after=after)
            if not page:
                break
            statuses.update(info.status for info in page)
            after = page[-1].actor_id
        return web.json_response({"total": sum(statuses.values()), "statuses": statuses})

    @routes.get("/orders/report")
    async def report(request: web.Request) -> web.Response:
        ids: list[str] = []
        after: str | None = None
        while True:
            page = await node.workflows.list(limit=500, after=after)
            if not page:
                break
            ids.extend(info.actor_id for info in page)
            after = page[-1].actor_id
        described = await _bounded([node.workflows.describe(workflow_id) for workflow_id in ids])
        return web.json_response(
            {
                "orders": {
                    d.workflow_id: {
                        "status": d.status,
                        "result": _decoded(node, d.result),
                        "error": d.error,
                    }
                    for d in described
                }
            }
        )

    app = web.Application()
    app.add_routes(routes)
    return app


async def serve(arguments: argparse.Namespace) -> None:
    """Run the node and its endpoint until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    store = make_store(arguments.store, arguments.db, arguments.dsn, arguments.schema)
    node = Node(
        arguments.node_id,
        store=store,
        actors=[Inventory, Notifier],
        workflows=[order],
        config=CONFIG,
    )
    payments = PaymentsClient(arguments.payments, timeout_s=5.0)
    bind_services(payments)  # before the start: recovered orders run steps at once
    try:
        async with node:
            runner = web.AppRunner(build_app(node), access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, arguments.host, arguments.port)
            await site.start()
            sockets = site._server.sockets if site._server is not None else []  # type: ignore[union-attr]
            port = sockets[0].getsockname()[1]
            print(json.dumps({"listening": f"http://{arguments.host}:{port}"}), flush=True)
            try:
                await stop.wait()
            finally:
                await runner.cleanup()
    finally:
        await payments.close()


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m examples.orders.node",
        description="Run an order node (Inventory + the order workflow) with a control endpoint.",
    )
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--db", type=Path, help="the SQLite file (with --store sqlite)")
    parser.add_argument("--dsn", help="the PostgreSQL DSN (with --store postgres)")
    parser.add_argument("--schema", default="public", help="the PostgreSQL schema")
    parser.add_argument("--payments", required=True, help="the payment service's base URL")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--node-id", default="orders-node")
    arguments = parser.parse_args(argv)
    if arguments.store == "sqlite" and arguments.db is None:
        parser.error("--db is required with --store sqlite")
    if arguments.store == "postgres" and not arguments.dsn:
        parser.error("--dsn is required with --store postgres")
    return arguments


def main(argv: list[str] | None = None) -> int:
    asyncio.run(serve(_parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
