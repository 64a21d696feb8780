"""Workflows and a served node for the gateway tests (module level, so annotations resolve)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import attrs

import mainspring
from mainspring import Node, NodeConfig, RetryPolicy, StepFailed, WorkflowContext
from mainspring.errors import StoreUnavailable
from mainspring.gateway import Gateway
from mainspring.observability import Telemetry
from tests.support.accounts import Account

TOKEN = "s3cret-token"


@mainspring.message("gateway-test.order")
@attrs.frozen
class Order:
    """The input of ``gw.order``."""

    order_id: str
    amount_cents: int
    items: list[str] = attrs.Factory(list)


async def double(value: int) -> int:
    """A trivial step."""
    return value * 2


FAILS: dict[str, bool] = {"charge": True}
"""Whether ``charge`` fails (tests flip it to exercise retry)."""


async def charge(amount_cents: int) -> int:
    """A step that fails for good while ``FAILS['charge']``."""
    if FAILS["charge"]:
        raise RuntimeError("the card was declined")
    return amount_cents


@mainspring.workflow("gw.order")
async def order_workflow(ctx: WorkflowContext, order: Order) -> dict[str, Any]:
    """One step over an attrs input."""
    doubled = await ctx.step(double, order.amount_cents)
    return {"order_id": order.order_id, "doubled": doubled, "items": order.items}


@mainspring.workflow("gw.plain")
async def plain_workflow(ctx: WorkflowContext, value: Any) -> Any:
    """Echoes plain JSON after one step."""
    await ctx.step(double, 1)
    return value


@mainspring.workflow("gw.count")
async def count_workflow(ctx: WorkflowContext, value: int) -> int:
    """An int input."""
    return int(await ctx.step(double, value))


@mainspring.workflow("gw.waiter")
async def waiter_workflow(ctx: WorkflowContext, _: None) -> list[Any]:
    """Collects ``item`` signals until ``done``; answers the query ``items``."""
    items: list[Any] = []
    ctx.set_query_handler("items", lambda: list(items))
    ctx.set_query_handler("nth", lambda index: items[index] if index < len(items) else None)
    while True:
        payload = await ctx.wait_for_signal("item")
        if payload == "done":
            return items
        items.append(payload)


@mainspring.workflow("gw.charge")
async def charge_workflow(ctx: WorkflowContext, amount_cents: int) -> int:
    """Fails in its step while ``FAILS['charge']`` (for retry)."""
    try:
        return int(await ctx.step(charge, amount_cents, retry=RetryPolicy(max_attempts=1)))
    except StepFailed:
        raise


WORKFLOWS = [order_workflow, plain_workflow, count_workflow, waiter_workflow, charge_workflow]


@attrs.define
class Served:
    """A started node behind a started gateway, and a client session."""

    node: Node
    gateway: Gateway
    url: str
    session: aiohttp.ClientSession

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        token: str | None = TOKEN,
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        """One request; returns (status, parsed JSON body or text, response)."""
        sent = dict(headers or {})
        if token is not None and "Authorization" not in sent:
            sent["Authorization"] = f"Bearer {token}"
        body: Any = data
        if json is not None:
            import orjson

            body = orjson.dumps(json)
            sent.setdefault("Content-Type", "application/json")
        async with self.session.request(
            method, self.url + path, data=body, headers=sent, allow_redirects=False
        ) as response:
            raw = await response.read()
            if response.content_type == "application/json":
                import orjson

                return response.status, orjson.loads(raw), response
            return response.status, raw.decode("utf-8", "replace"), response


@contextlib.asynccontextmanager
async def serve(
    store: Any,
    *,
    tokens: Sequence[str] = (TOKEN,),
    telemetry: Telemetry | None = None,
    body_max_bytes: int = 1 << 20,
    config: NodeConfig | None = None,
    connections_max: int = 100,
    request_timeout_s: float = 30.0,
) -> AsyncIterator[Served]:
    """A node over ``store`` hosting ``WORKFLOWS`` and ``Account``, served on loopback."""
    node = Node(
        "gw-node",
        store=store,
        actors=[Account],
        workflows=WORKFLOWS,
        telemetry=telemetry,
        config=config,
    )
    async with node:
        gateway = Gateway(
            node,
            tokens=tokens,
            body_max_bytes=body_max_bytes,
            request_timeout_s=request_timeout_s,
        )
        url = await gateway.start("127.0.0.1", 0)
        connector = aiohttp.TCPConnector(limit=connections_max)
        try:
            async with aiohttp.ClientSession(connector=connector) as session:
                yield Served(node, gateway, url, session)
        finally:
            await gateway.stop(drain_timeout_s=5)


class GatedStore:
    """A real store whose appends wait while the gate is closed (to hold requests in flight),
    and whose reads fail while ``unreachable`` is set."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = asyncio.Event()
        self.unreachable = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def append_batch(self, requests: Any) -> Any:
        if not self.gate.is_set():
            self.waiting.set()
            await self.gate.wait()
        return await self.inner.append_batch(requests)

    async def read_head(self, stream_id: str) -> Any:
        if self.unreachable:
            raise StoreUnavailable("the test store is unreachable")
        return await self.inner.read_head(stream_id)


def error_of(body: Any) -> dict[str, Any]:
    """The error object of an error envelope, asserting the envelope's shape."""
    assert isinstance(body, dict), body
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "message", "details"}, error
    assert isinstance(error["code"], str), error
    assert error["code"], error
    assert isinstance(error["message"], str), error
    assert error["message"], error
    return dict(error)
