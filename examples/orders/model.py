"""The order example's model: the ``Inventory`` and ``Notifier`` actors and the ``order`` workflow.

An order (``OrderInput``) goes through:

1. **reserve**: one ``ctx.ask(Inventory, sku, Reserve(order_id, qty))`` per SKU, concurrently.
   The ask is a step whose idempotency key is the message id, so each reservation happens
   exactly once however often the step runs. ``Inventory`` refuses a reservation it cannot
   cover (``CommandRejected``, code ``out_of_stock``): stock never goes negative.
2. **charge**: a step that passes ``step_context().idempotency_key`` to ``PaymentsClient.charge``:
   a repeated attempt (a retry, or a re-run after a crash) never charges twice. A declined card
   (``PaymentDeclined``) is not retried; transient errors are.
3. **approve**: orders of ``APPROVAL_THRESHOLD_CENTS`` or more wait for an ``approve`` signal
   (payload ``{"approved": true}``; ``false`` rejects), for ``approval_timeout_s`` (24 h unless
   the input says otherwise).
4. **ship**: a step returning a tracking id derived from its idempotency key.
5. **notify**: ``ctx.ask(Notifier, customer_id, Notify(...))`` records the notification once.

How an order ends
    ``{"status": "completed", "tracking_id": ...}``: shipped.

    ``{"status": "compensated", "reason": ...}``: a business failure undid the order: reason
    ``out_of_stock``, ``payment_declined``, ``payment_failed`` (transient errors outlasted the
    retries), ``approval_timeout`` or ``rejected``. The workflow *completes* with this result.

    Workflow status ``cancelled``: an operator called ``node.workflows.cancel``; the order was
    compensated the same way, then the ``CancelledError`` is re-raised.

Compensation
    Every reservation and charge registers its undo with the saga helper (``ctx.saga()``):
    ``ctx.ask(Inventory, sku, Release(...))``, registered as workflow code with
    ``saga.add_code`` (exactly once, like every ``ctx.ask``) before the reservation is asked for
    (a reservation whose ask failed may have held the units anyway), and ``refund_charge`` (a
    refund keyed by its own step's key). A charge whose step failed after transient errors may
    still have taken effect (a timed-out request), so it registers a refund too: the refund of a
    charge that never happened answers 404, which counts as nothing to refund.

    Steps that are in flight when a failure or a cancellation arrives are *settled* first: they
    run shielded from the cancellation (``asyncio.shield``), and the compensation waits for
    them, so it knows exactly what to undo. The compensation itself is shielded as well, so an
    operator's cancel that arrives while an order is already being compensated cannot cut one
    of its steps short.

Steps reach the payment service through ``bind_services`` (called by whoever hosts the
workflow, before the node starts: recovered workflows run their steps at once).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from collections.abc import Awaitable, Coroutine
from typing import Any, ClassVar, Final

import attrs

import mainspring
from examples.orders.payments import PaymentDeclined, PaymentError, PaymentsClient
from mainspring import (
    ActorContext,
    CommandRejected,
    RetryPolicy,
    StepFailed,
    WorkflowContext,
    handler,
    step_context,
)

__all__ = [
    "APPROVAL_THRESHOLD_CENTS",
    "DEFAULT_APPROVAL_TIMEOUT_S",
    "GetNotifications",
    "GetStock",
    "Inventory",
    "Notifier",
    "NotifierState",
    "OrderInput",
    "OrderItem",
    "Release",
    "Reserve",
    "Restock",
    "Stock",
    "bind_services",
    "order",
]

APPROVAL_THRESHOLD_CENTS: Final = 100_000
"""Orders of this amount or more wait for an ``approve`` signal."""
DEFAULT_APPROVAL_TIMEOUT_S: Final = 24 * 3600.0

# Charges: a declined card is final; transient errors are retried with a short backoff.
CHARGE_RETRY: Final = RetryPolicy(
    initial_interval=0.2, max_interval=2.0, max_attempts=10, non_retryable=(PaymentDeclined,)
)
# Compensations and the last steps must get through: retry until they do.
UNTIL_DONE: Final = RetryPolicy(initial_interval=0.2, max_interval=5.0, max_attempts=None)


# Inventory -----------------------------------------------------------------------------------


@mainspring.message("example.inventory.restock")
@attrs.frozen
class Restock:
    qty: int


@mainspring.message("example.inventory.reserve")
@attrs.frozen
class Reserve:
    order_id: str
    qty: int


@mainspring.message("example.inventory.release")
@attrs.frozen
class Release:
    """Give back whatever ``order_id`` holds (nothing when it holds nothing)."""

    order_id: str


@mainspring.message("example.inventory.get")
@attrs.frozen
class GetStock:
    resendable: ClassVar[bool] = True  # a read: a forward may send it again


@mainspring.event("example.inventory.restocked", version=1)
@attrs.frozen
class Restocked:
    qty: int


@mainspring.event("example.inventory.reserved", version=1)
@attrs.frozen
class Reserved:
    order_id: str
    qty: int


@mainspring.event("example.inventory.released", version=1)
@attrs.frozen
class Released:
    order_id: str
    qty: int


@mainspring.state("example.inventory.stock", version=1)
@attrs.frozen
class Stock:
    """``available`` units, the units each open order holds, and the orders that released."""

    available: int = 0
    restocked: int = 0
    held: dict[str, int] = attrs.Factory(dict)
    released: list[str] = attrs.Factory(list)


class Inventory(mainspring.Actor[Stock]):
    """The stock of one SKU (the actor id). ``available`` never goes below zero."""

    type_name = "example.inventory"
    initial_state = Stock()
    snapshot_every = 100

    @handler
    def restock(self, ctx: ActorContext[Stock], message: Restock) -> int:
        if message.qty <= 0:
            raise CommandRejected(f"a restock must add > 0 units, got {message.qty}")
        ctx.emit(Restocked(message.qty))
        return ctx.state.available

    @handler
    def reserve(self, ctx: ActorContext[Stock], message: Reserve) -> int:
        state = ctx.state
        if message.qty <= 0:
            raise CommandRejected(f"a reservation must be > 0 units, got {message.qty}")
        if message.order_id in state.held:
            return state.available  # the same order asked again: it holds its units already
        if message.order_id in state.released:
            raise CommandRejected(
                f"order {message.order_id!r} already released its stock of {ctx.actor_id!r}",
                code="order_released",
            )
        if state.available < message.qty:
            raise CommandRejected(
                f"out of stock: {ctx.actor_id} has {state.available}, order "
                f"{message.order_id} asked {message.qty}",
                code="out_of_stock",
            )
        ctx.emit(Reserved(message.order_id, message.qty))
        return ctx.state.available

    @handler
    def release(self, ctx: ActorContext[Stock], message: Release) -> int:
        """Returns the units given back."""
        state = ctx.state
        if message.order_id in state.released:
            return 0
        qty = state.held.get(message.order_id, 0)
        # Recorded even when nothing was held, so a late reservation of this order is refused.
        ctx.emit(Released(message.order_id, qty))
        return qty

    @handler
    def get(self, ctx: ActorContext[Stock], message: GetStock) -> Stock:
        return ctx.state

    def evolve(self, state: Stock, event: object) -> Stock:
        match event:
            case Restocked(qty):
                return attrs.evolve(
                    state, available=state.available + qty, restocked=state.restocked + qty
                )
            case Reserved(order_id, qty):
                return attrs.evolve(
                    state, available=state.available - qty, held={**state.held, order_id: qty}
                )
            case Released(order_id, qty):
                held = dict(state.held)
                held.pop(order_id, None)
                return attrs.evolve(
                    state,
                    available=state.available + qty,
                    held=held,
                    released=[*state.released, order_id],
                )
        raise AssertionError(f"Inventory cannot apply {event!r}")


# Notifications --------------------------------------------------------------------------------


@mainspring.message("example.notifier.notify")
@attrs.frozen
class Notify:
    order_id: str
    text: str


@mainspring.message("example.notifier.get")
@attrs.frozen
class GetNotifications:
    resendable: ClassVar[bool] = True  # a read: a forward may send it again


@mainspring.event("example.notifier.notified", version=1)
@attrs.frozen
class Notified:
    order_id: str
    text: str


@mainspring.state("example.notifier.state", version=1)
@attrs.frozen
class NotifierState:
    sent: list[Notified] = attrs.Factory(list)


class Notifier(mainspring.Actor[NotifierState]):
    """The notifications sent to one customer (the actor id)."""

    type_name = "example.notifier"
    initial_state = NotifierState()

    @handler
    def notify(self, ctx: ActorContext[NotifierState], message: Notify) -> int:
        ctx.emit(Notified(message.order_id, message.text))
        return len(ctx.state.sent)

    @handler
    def get(self, ctx: ActorContext[NotifierState], message: GetNotifications) -> NotifierState:
        return ctx.state

    def evolve(self, state: NotifierState, event: object) -> NotifierState:
        if isinstance(event, Notified):
            return NotifierState([*state.sent, event])
        raise AssertionError(f"Notifier cannot apply {event!r}")


# The order workflow ---------------------------------------------------------------------------


@attrs.frozen
class OrderItem:
    sku: str
    qty: int


@mainspring.message("example.order.input")
@attrs.frozen
class OrderInput:
    order_id: str
    customer_id: str
    items: list[OrderItem]
    amount_cents: int
    approval_timeout_s: float = DEFAULT_APPROVAL_TIMEOUT_S

    def __attrs_post_init__(self) -> None:
        if not self.items:
            raise ValueError(f"order {self.order_id!r} has no items")
        skus = [item.sku for item in self.items]
        if len(set(skus)) != len(skus):
            raise ValueError(f"order {self.order_id!r} lists a SKU twice: merge its quantities")
        if any(item.qty <= 0 for item in self.items):
            raise ValueError(f"order {self.order_id!r} has an item with qty <= 0")
        if self.amount_cents <= 0:
            raise ValueError(f"order {self.order_id!r} must have amount_cents > 0")
        if self.approval_timeout_s <= 0:
            raise ValueError(f"order {self.order_id!r} must have approval_timeout_s > 0")

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OrderInput:
        return cls(
            order_id=data["order_id"],
            customer_id=data["customer_id"],
            items=[OrderItem(item["sku"], item["qty"]) for item in data["items"]],
            amount_cents=data["amount_cents"],
            approval_timeout_s=data.get("approval_timeout_s", DEFAULT_APPROVAL_TIMEOUT_S),
        )


@attrs.define
class _Services:
    payments: PaymentsClient


_services: list[_Services] = []


def bind_services(payments: PaymentsClient) -> None:
    """Give the steps their payment client; call it before ``node.start()``, since the node
    resumes recovered workflows as soon as it starts."""
    _services[:] = [_Services(payments)]


def _bound() -> _Services:
    if not _services:
        raise RuntimeError("call examples.orders.model.bind_services(payments) first")
    return _services[0]


async def charge_card(order_id: str, customer_id: str, amount_cents: int) -> dict[str, Any]:
    """Charge the order once, whatever the number of attempts: the key is the step's."""
    key = step_context().idempotency_key
    charge = await _bound().payments.charge(key, order_id, customer_id, amount_cents)
    return {"charge_id": charge["charge_id"], "charge_key": key}


async def refund_charge(charge_key: str) -> dict[str, Any]:
    """Refund the charge made with ``charge_key``; a charge that never happened is fine."""
    try:
        refund = await _bound().payments.refund(step_context().idempotency_key, charge_key)
    except PaymentError as error:
        if error.status == 404:
            return {"refunded": False}
        raise  # transient (503, no answer): retried
    return {"refunded": True, "refund_id": refund["refund_id"]}


async def ship(order_id: str) -> str:
    """Hand the parcel to the carrier: the tracking id is derived from the step's key."""
    digest = hashlib.sha256(step_context().idempotency_key.encode()).hexdigest()
    return f"TRK-{digest[:12].upper()}"


def _approved(decision: object) -> bool:
    if isinstance(decision, dict):
        return bool(decision.get("approved", True))
    return decision is None or bool(decision)


async def _finish(awaitable: Awaitable[Any]) -> Any:
    """Await ``awaitable`` to its end even if the workflow is cancelled meanwhile; then re-raise
    the cancellation."""
    task = asyncio.ensure_future(awaitable)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.cancelled():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return result


@mainspring.workflow("order", version=1)
async def order(ctx: WorkflowContext, order: OrderInput) -> dict[str, Any]:
    """Reserve, charge, (approve,) ship and notify; compensate on failure or cancellation."""
    saga = ctx.saga()
    in_flight: list[asyncio.Future[Any]] = []

    def settled(work: Coroutine[Any, Any, Any]) -> asyncio.Future[Any]:
        """Run ``work`` so that a cancellation or a sibling's failure does not cut it short:
        compensation waits for its outcome (see ``settle``)."""
        task = asyncio.ensure_future(work)
        in_flight.append(task)
        return asyncio.shield(task)

    async def settle() -> None:
        pending = [task for task in in_flight if not task.done()]
        if pending:
            await asyncio.wait(pending)
        for task in in_flight:
            if not task.cancelled():
                task.exception()  # retrieved: the caller saw or handles it

    async def reserve(item: OrderItem) -> None:
        # The release is registered before the ask: an ask that fails after its effect (it
        # timed out, or the node crashed before the reply was recorded) may hold the units all
        # the same, and a release gives back whatever the order holds, or nothing.
        release = Release(order.order_id)
        saga.add_code(functools.partial(ctx.ask, retry=UNTIL_DONE), Inventory, item.sku, release)
        await ctx.ask(Inventory, item.sku, Reserve(order.order_id, item.qty))

    async def charge() -> dict[str, Any]:
        try:
            charged: dict[str, Any] = await ctx.step(
                charge_card,
                order.order_id,
                order.customer_id,
                order.amount_cents,
                retry=CHARGE_RETRY,
            )
        except StepFailed as failure:
            if failure.error_type != PaymentDeclined.__name__:
                # The last attempt may have charged without answering: refund by its key.
                charge_key = f"{ctx.workflow_id}/{failure.step}"
                saga.add(refund_charge, charge_key, name="refund", retry=UNTIL_DONE)
            raise
        saga.add(refund_charge, charged["charge_key"], name="refund", retry=UNTIL_DONE)
        return charged

    async def compensate() -> None:
        await settle()
        await saga.compensate()

    async def undo(reason: str) -> dict[str, Any]:
        await _finish(compensate())
        return {"status": "compensated", "order_id": order.order_id, "reason": reason}

    progress = {"stage": "reserving"}
    ctx.set_query_handler("progress", lambda: dict(progress))
    try:
        try:
            await asyncio.gather(*(settled(reserve(item)) for item in order.items))
        except StepFailed as failure:
            reason = "out_of_stock" if "out of stock" in failure.error_message else "rejected"
            return await undo(reason)
        progress["stage"] = "charging"
        try:
            charged = await settled(charge())
        except StepFailed as failure:
            declined = failure.error_type == PaymentDeclined.__name__
            return await undo("payment_declined" if declined else "payment_failed")
        if order.amount_cents >= APPROVAL_THRESHOLD_CENTS:
            progress["stage"] = "awaiting approval"
            try:
                decision = await ctx.wait_for_signal("approve", timeout=order.approval_timeout_s)
            except TimeoutError:
                return await undo("approval_timeout")
            if not _approved(decision):
                return await undo("rejected")
        progress["stage"] = "shipping"
        tracking_id: str = await settled(ctx.step(ship, order.order_id, retry=UNTIL_DONE))
        await settled(
            ctx.ask(
                Notifier,
                order.customer_id,
                Notify(order.order_id, f"order {order.order_id} shipped: {tracking_id}"),
            )
        )
        progress["stage"] = "done"
        return {
            "status": "completed",
            "order_id": order.order_id,
            "tracking_id": tracking_id,
            "charge_id": charged["charge_id"],
        }
    except asyncio.CancelledError:
        progress["stage"] = "cancelled"
        await compensate()
        raise
