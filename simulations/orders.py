"""The order example (``examples/orders``) under every fault the simulator injects.

Nodes host the ``order`` workflow and the ``Inventory`` and ``Notifier`` actors over one faulty
SQLite store. The payment service is ``SimPayments``, an in-process stand-in that keeps one
charge per idempotency key and one refund per charge, fails transiently before or *after*
applying a request (the caller cannot tell which), and declines ``declined-*`` customers.

Workload: restock the SKUs, start the orders (some need an approval signal, some customers are
declined, some SKUs run short), approve or reject the large ones, while a nemesis crashes and
restarts nodes. Then faults heal and every order must end; what must hold afterwards:

- every order ended ``completed`` or ``compensated`` (the workflow completed either way);
- money: a completed order holds exactly one unrefunded charge of its amount, a compensated
  one none; no key was charged twice;
- stock: never below zero; each SKU's available units are what was restocked minus what the
  completed orders hold, and only completed orders hold units;
- notifications: each completed order notified its customer exactly once, nothing else was
  notified;
- the store invariants (``run_checks``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import attrs
from examples.orders.model import (
    APPROVAL_THRESHOLD_CENTS,
    GetNotifications,
    GetStock,
    Inventory,
    Notifier,
    OrderInput,
    OrderItem,
    Restock,
    Stock,
    bind_services,
    order,
)
from examples.orders.payments import PaymentDeclined, PaymentError, PaymentTransientError

from mainspring import NodeConfig
from mainspring.cluster.routing import ForwardingFailed
from mainspring.errors import (
    CommandRejected,
    ConcurrencyConflict,
    Fenced,
    LeaseHeld,
    NodeClosed,
    Overloaded,
    StoreUnavailable,
)
from mainspring.simulations import InvariantViolation, NodeDown, World
from mainspring.simulations.cluster import cluster_config
from mainspring.simulations.profile import FaultProfile
from mainspring.simulations.scenario import ProfilePolicy, Scenario
from mainspring.simulations.seeds import substream

__all__ = ["SimPayments", "orders", "orders_scenario"]

T = TypeVar("T")

CONFIG: Final = NodeConfig(
    lease_ttl_s=30.0,
    lease_renew_interval_s=10.0,
    timer_poll_interval_s=60.0,
    outbox_poll_interval_s=60.0,
    outbox_retry_interval_s=1.0,
    idle_timeout_s=600.0,
)
RETRYABLE: Final = (
    StoreUnavailable,
    Fenced,
    ConcurrencyConflict,
    LeaseHeld,
    NodeClosed,
    NodeDown,
    Overloaded,
    ForwardingFailed,
    TimeoutError,
)
"""What a client of the nodes may see and retry (``ForwardingFailed``: the owner of the
actor could not be reached in time, or the views disagreed; nothing is known to be lost)."""
STOCK: Final = {"sku-a": 40, "sku-b": 8, "sku-c": 4}
CALL_TIMEOUT_S: Final = 30.0


# The payment service stand-in ------------------------------------------------------------------


@attrs.define
class _Charge:
    charge_id: str
    order_id: str
    customer_id: str
    amount_cents: int
    refunded_by: str | None = None


class SimPayments:
    """The payment service, in process: the same contract as ``PaymentsClient``.

    ``charge`` keeps one charge per idempotency key (a repeat returns it with
    ``"duplicate": True``; the key reused for another charge is a 409); ``refund`` refunds a
    charge once (404 when no charge was made with the key). Each call takes a seeded virtual
    delay and fails transiently (``PaymentTransientError``) before applying, with probability
    ``fail_before``, or after applying, with probability ``fail_after``.
    """

    def __init__(self, seed: int, *, fail_before: float = 0.0, fail_after: float = 0.0) -> None:
        self._random = substream(seed, "payments")
        self.fail_before = fail_before
        self.fail_after = fail_after
        self.charges: dict[str, _Charge] = {}
        self.refunds: dict[str, str] = {}
        self.attempts: Counter[str] = Counter()

    async def _call(self, what: str) -> None:
        self.attempts[what] += 1
        await asyncio.sleep(self._random.randint(1, 50) / 1000)
        if self._random.random() < self.fail_before:
            raise PaymentTransientError(f"{what}: 503 service unavailable (nothing applied)", 503)

    def _maybe_lose_reply(self, what: str) -> None:
        if self._random.random() < self.fail_after:
            raise PaymentTransientError(f"{what}: timed out (it may have been applied)", None)

    async def charge(
        self, idempotency_key: str, order_id: str, customer_id: str, amount_cents: int
    ) -> dict[str, Any]:
        """Charge once per key; see the class."""
        await self._call("charge")
        if customer_id.startswith("declined-"):
            raise PaymentDeclined("card declined", 402)
        existing = self.charges.get(idempotency_key)
        if existing is not None:
            if (existing.order_id, existing.customer_id, existing.amount_cents) != (
                order_id,
                customer_id,
                amount_cents,
            ):
                raise PaymentError(f"key {idempotency_key!r} was used for another charge", 409)
            duplicate = True
        else:
            existing = _Charge(f"ch-{len(self.charges) + 1}", order_id, customer_id, amount_cents)
            self.charges[idempotency_key] = existing
            duplicate = False
        self._maybe_lose_reply("charge")
        return {"charge_id": existing.charge_id, "duplicate": duplicate}

    async def refund(self, idempotency_key: str, charge_key: str) -> dict[str, Any]:
        """Refund the charge made with ``charge_key`` once; 404 when there is none."""
        await self._call("refund")
        known = self.refunds.get(idempotency_key)
        if known is not None and known != charge_key:
            raise PaymentError(f"key {idempotency_key!r} refunded another charge", 409)
        charge = self.charges.get(charge_key)
        if charge is None:
            raise PaymentError(f"no charge was made with idempotency_key {charge_key!r}", 404)
        if charge.refunded_by is None:
            charge.refunded_by = idempotency_key
        self.refunds[idempotency_key] = charge_key
        self._maybe_lose_reply("refund")
        return {"refund_id": f"rf-{charge.refunded_by}", "charge_key": charge_key}


# The scenario ------------------------------------------------------------------------------------

STEP_ERROR_MAX: Final = 0.05
"""The highest injected step error rate: the model's ``ctx.ask`` steps (reserve, notify) keep
the default retry policy of 5 attempts, and a workflow whose step fails 5 times in a row
*fails* (by design), which at a 20% rate happens in about one seed in 60."""


def orders_profile(seed: int) -> FaultProfile:
    """The seed's swarm profile, with step errors capped at ``STEP_ERROR_MAX``."""
    swarm = FaultProfile.swarm(seed)
    steps = swarm.steps
    if steps.error > STEP_ERROR_MAX:
        swarm = attrs.evolve(swarm, steps=attrs.evolve(steps, error=STEP_ERROR_MAX))
    return swarm


async def _until_done(
    world: World, what: str, call: Callable[[], Awaitable[T]], *, pause_s: float = 2.0
) -> T:
    """Call until it returns without a retryable error (the client's retry loop)."""
    for attempt in range(10_000):
        try:
            return await call()
        except RETRYABLE as error:
            world.record("client.retry", f"{what} #{attempt}: {type(error).__name__}")
            await world.sleep(pause_s)
    raise InvariantViolation(f"[liveness] {what} never got through")


def _orders_for(world: World, count: int) -> list[OrderInput]:
    inputs = []
    skus = sorted(STOCK)
    for index in range(count):
        chosen = [sku for sku in skus if world.random.chance(0.5)] or [skus[index % len(skus)]]
        items = [OrderItem(sku, world.random.randint(1, 3)) for sku in chosen]
        large = index % 5 == 4
        inputs.append(
            OrderInput(
                order_id=f"o-{index}",
                customer_id=f"declined-{index}" if index % 7 == 6 else f"c-{index % 4}",
                items=items,
                amount_cents=APPROVAL_THRESHOLD_CENTS + index if large else 1_000 + index,
                approval_timeout_s=120.0,
            )
        )
    return inputs


def orders_scenario(
    name: str = "orders",
    *,
    nodes: int = 1,
    count: int = 10,
    seeds: int = 100,
    store: str = "sqlite",
    profile: ProfilePolicy | None = None,
    max_steps: int | None = 1_000_000,
    sometimes: tuple[str, ...] = (),
    cluster: bool = False,
) -> Scenario:
    """The order workflow under faults; see the module docstring.

    Args:
        name: the scenario's name.
        nodes: how many nodes share the store (order ``i`` is driven through node ``i % nodes``).
        count: how many orders.
        seeds: the default seed budget.
        store: ``"sqlite"`` or ``"memory"``.
        profile: the fault policy (``orders_profile`` if None).
        max_steps: the callback budget of one run.
        sometimes: the ``world.sometimes`` targets a campaign expects to fire.
        cluster: run the nodes as a cluster (ring, forwarding, hand-off); otherwise each node
            serves what it is asked and another node's live actor answers ``LeaseHeld``.
    """
    names = tuple(f"n{number + 1}" for number in range(nodes))
    state: dict[str, Any] = {}

    def node_of(index: int) -> str:
        return names[index % len(names)]

    async def run(world: World) -> dict[str, int]:
        payments = SimPayments(world.seed, fail_before=0.05, fail_after=0.05)
        bind_services(payments)  # type: ignore[arg-type]  # the same contract, in process
        inner = world.sqlite_store() if store == "sqlite" else world.memory_store()
        faulty = world.faulty_store(inner)
        for node in names:
            await world.start_node(
                node,
                [Inventory, Notifier],
                faulty,
                config=CONFIG,
                workflows=[order],
                cluster=cluster_config(world, node) if cluster else None,
            )
        inputs = _orders_for(world, count)
        state.update(payments=payments, inputs=inputs, results={})
        for sku, qty in STOCK.items():
            await _until_done(
                world,
                f"restock {sku}",
                lambda sku=sku, qty=qty: world.ask(  # type: ignore[misc]
                    names[0],
                    Inventory,
                    sku,
                    Restock(qty),
                    message_id=f"restock-{sku}",
                    timeout_s=CALL_TIMEOUT_S,
                ),
            )

        async def start(index: int, data: OrderInput) -> None:
            await asyncio.sleep(world.random.randint(0, 20_000) / 1000)
            await _until_done(
                world,
                f"start {data.order_id}",
                lambda: world.call(
                    node_of(index),
                    lambda node: node.workflows.start(order, data.order_id, data),
                    timeout_s=CALL_TIMEOUT_S,
                ),
            )
            if data.amount_cents >= APPROVAL_THRESHOLD_CENTS and index % 2 == 0:
                await asyncio.sleep(world.random.randint(1, 60))
                decision = {"approved": world.random.chance(0.75)}
                with contextlib.suppress(CommandRejected):  # closed before it arrived
                    await _until_done(
                        world,
                        f"approve {data.order_id}",
                        lambda: world.call(
                            node_of(index),
                            lambda node: node.workflows.signal(
                                data.order_id,
                                "approve",
                                decision,
                                signal_id=f"approve-{data.order_id}",
                            ),
                            timeout_s=CALL_TIMEOUT_S,
                        ),
                    )

        async def nemesis() -> None:
            for _ in range(world.random.randint(0, 3)):
                await world.sleep(world.random.randint(1, 30_000) / 1000)
                victim = names[world.random.randint(0, len(names) - 1)]
                if dict(world.running_nodes()).get(victim) is None:
                    continue
                world.crash(victim)
                await world.sleep(world.random.randint(0, 5_000) / 1000)
                await world.restart(victim)

        clients = [asyncio.create_task(start(i, data)) for i, data in enumerate(inputs)]
        await nemesis()
        await asyncio.gather(*clients)
        return {"orders": len(inputs)}

    async def settle(world: World) -> None:
        for name_ in names:  # every node runs again, so every workflow can make progress
            if dict(world.running_nodes()).get(name_) is None:
                await world.restart(name_)
        inputs: list[OrderInput] = state["inputs"]
        results: dict[str, Any] = state["results"]
        for index, data in enumerate(inputs):
            results[data.order_id] = await _until_done(
                world,
                f"result {data.order_id}",
                lambda index=index, oid=data.order_id: world.call(  # type: ignore[misc]
                    node_of(index),
                    lambda node: node.workflows.result(oid, timeout_s=600),
                    timeout_s=700,
                ),
                pause_s=10.0,
            )
        await _check_business(world, names[0], inputs, results, state["payments"])

    return Scenario(
        name=name,
        run=run,
        settle=settle,
        liveness_s=24 * 3600.0,
        profile=profile or orders_profile,
        max_steps=max_steps,
        sometimes=sometimes,
        seeds=seeds,
        description=f"{count} orders on {nodes} node(s) under swarm faults",
    )


async def _check_business(
    world: World,
    node: str,
    inputs: list[OrderInput],
    results: dict[str, Any],
    payments: SimPayments,
) -> None:
    completed = {oid for oid, result in results.items() if result.get("status") == "completed"}
    for oid, result in results.items():
        if result.get("status") not in {"completed", "compensated"}:
            raise InvariantViolation(f"[order outcome] {oid} ended {result!r}")
    by_id = {data.order_id: data for data in inputs}
    active: dict[str, list[str]] = {}
    for key, charge in payments.charges.items():
        if charge.refunded_by is None:
            active.setdefault(charge.order_id, []).append(key)
        if charge.amount_cents != by_id[charge.order_id].amount_cents:
            raise InvariantViolation(f"[money] {key} charged {charge.amount_cents}")
    for oid in by_id:
        expected = 1 if oid in completed else 0
        if len(active.get(oid, [])) != expected:
            raise InvariantViolation(
                f"[money] {oid} ({results[oid].get('status')}, "
                f"{results[oid].get('reason', '')}) holds unrefunded charges "
                f"{active.get(oid, [])}, expected {expected}"
            )
    for sku, restocked in STOCK.items():
        stock: Stock = await _until_done(
            world,
            f"stock {sku}",
            lambda sku=sku: world.ask(  # type: ignore[misc]
                node, Inventory, sku, GetStock(), timeout_s=CALL_TIMEOUT_S
            ),
        )
        holders = {oid for oid, data in by_id.items() if oid in completed and _qty(data, sku)}
        held = sum(_qty(by_id[oid], sku) for oid in holders)
        if stock.available < 0 or stock.available != restocked - held:
            raise InvariantViolation(
                f"[stock] {sku}: available {stock.available}, restocked {restocked}, "
                f"completed orders hold {held}; held {stock.held}, released {stock.released}, "
                f"outcomes {_outcomes(results)}"
            )
        if set(stock.held) != holders:
            raise InvariantViolation(
                f"[stock] {sku}: held by {sorted(stock.held)}, completed holders {sorted(holders)}"
            )
    customers = sorted({data.customer_id for data in inputs})
    for customer in customers:
        notes = await _until_done(
            world,
            f"notifications {customer}",
            lambda customer=customer: world.ask(  # type: ignore[misc]
                node, Notifier, customer, GetNotifications(), timeout_s=CALL_TIMEOUT_S
            ),
        )
        sent = Counter(note.order_id for note in notes.sent)
        expected = Counter(oid for oid in completed if by_id[oid].customer_id == customer)
        if sent != expected:
            raise InvariantViolation(
                f"[notified once] {customer}: notified {dict(sent)}, expected {dict(expected)}"
            )


def _outcomes(results: dict[str, Any]) -> str:
    return ", ".join(
        f"{oid}:{result.get('status')}{'/' + result['reason'] if 'reason' in result else ''}"
        for oid, result in sorted(results.items())
    )


def _qty(data: OrderInput, sku: str) -> int:
    return sum(item.qty for item in data.items if item.sku == sku)


orders = orders_scenario(
    seeds=150,
    sometimes=(
        "step_retried_after_crash",
        "crash_point:journal.after_commit",
        "stream_exists_refused",
    ),
)
"""Ten orders on one node over SQLite."""

orders_cluster = orders_scenario(
    "orders-cluster",
    nodes=3,
    count=10,
    seeds=100,
    max_steps=300_000,
    cluster=True,
    sometimes=(
        "lease_taken_over",
        "forward_outcome_lost_resent",
        "zombie_write_fenced",
        "member_pruned",
        "stream_exists_refused",
    ),
)
"""Ten orders driven through a cluster of three nodes (ring, forwarding, hand-off) over one
store."""
