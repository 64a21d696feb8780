"""The order example's workflow, in process: a node on a SQLite file and the payment service.

Each test drives one or two orders through a path of the ``order`` workflow and checks the
effects where they live: stock in the ``Inventory`` actors, charges and refunds in the payment
service, the notification in the ``Notifier`` actor.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from examples.orders.model import (
    GetNotifications,
    GetStock,
    Inventory,
    Notifier,
    OrderInput,
    OrderItem,
    Restock,
    bind_services,
    order,
)
from examples.orders.node import CONFIG
from examples.orders.payments import PaymentsClient, PaymentsServer, start_payments

from mainspring import Node, WorkflowError
from mainspring.persistence.sqlite import SqliteStore
from tests.support.waiting import eventually

RESULT_S = 30  # a guard against hangs, far above what any order here needs


@pytest.fixture
async def payments(tmp_path: Path) -> AsyncIterator[PaymentsServer]:
    server = await start_payments(tmp_path / "payments.db")
    yield server
    await server.close()


@pytest.fixture
async def client(payments: PaymentsServer) -> AsyncIterator[PaymentsClient]:
    payments_client = PaymentsClient(payments.url)
    yield payments_client
    await payments_client.close()


def make_node(tmp_path: Path, client: PaymentsClient) -> Node:
    node = Node(
        "orders-test",
        store=SqliteStore(str(tmp_path / "orders.db")),
        actors=[Inventory, Notifier],
        workflows=[order],
        config=CONFIG,
    )
    bind_services(client)
    return node


@pytest.fixture
async def node(tmp_path: Path, client: PaymentsClient) -> AsyncIterator[Node]:
    async with make_node(tmp_path, client) as running:
        await running.ask(Inventory, "sku-a", Restock(10))
        await running.ask(Inventory, "sku-b", Restock(5))
        yield running


def an_order(
    order_id: str,
    *,
    customer: str = "cust-1",
    items: dict[str, int] | None = None,
    amount_cents: int = 5_000,
    approval_timeout_s: float = 30.0,
) -> OrderInput:
    items = items if items is not None else {"sku-a": 2, "sku-b": 1}
    return OrderInput(
        order_id,
        customer,
        [OrderItem(sku, qty) for sku, qty in items.items()],
        amount_cents,
        approval_timeout_s,
    )


async def stock(node: Node, sku: str) -> tuple[int, dict[str, int]]:
    state = await node.ask(Inventory, sku, GetStock())
    return state.available, state.held


async def assert_stock_restored(node: Node) -> None:
    assert await stock(node, "sku-a") == (10, {})
    assert await stock(node, "sku-b") == (5, {})


async def test_an_order_is_reserved_charged_shipped_and_notified(
    node: Node, client: PaymentsClient
) -> None:
    handle = await node.workflows.start(order, "order-1", an_order("order-1"))
    result = await handle.result(timeout_s=RESULT_S)

    assert result["status"] == "completed"
    assert result["tracking_id"].startswith("TRK-")
    assert await stock(node, "sku-a") == (8, {"order-1": 2})
    assert await stock(node, "sku-b") == (4, {"order-1": 1})
    stats = await client.stats()
    assert (stats["charges"], stats["refunds"], stats["duplicate_charges"]) == (1, 0, 0)
    assert stats["amount_charged_cents"] == 5_000
    assert result["charge_id"].startswith("ch_")
    notified = await node.ask(Notifier, "cust-1", GetNotifications())
    assert [n.order_id for n in notified.sent] == ["order-1"]
    assert result["tracking_id"] in notified.sent[0].text


async def test_starting_the_same_order_twice_runs_it_once(
    node: Node, client: PaymentsClient
) -> None:
    first = await node.workflows.start(order, "order-1", an_order("order-1"))
    again = await node.workflows.start(order, "order-1", an_order("order-1"))
    assert await first.result(timeout_s=RESULT_S) == await again.result(timeout_s=RESULT_S)
    assert await stock(node, "sku-a") == (8, {"order-1": 2})
    assert (await client.stats())["charges"] == 1


async def test_a_big_order_waits_for_approval_and_completes_on_the_signal(
    node: Node, client: PaymentsClient
) -> None:
    handle = await node.workflows.start(
        order, "big-1", an_order("big-1", amount_cents=150_000, approval_timeout_s=60)
    )

    async def awaiting_approval() -> bool:
        return bool(await handle.query("progress") == {"stage": "awaiting approval"})

    await eventually(awaiting_approval, what="the order waits for approval")
    assert (await handle.describe()).status == "waiting"
    assert (await client.stats())["charges"] == 1  # charged before the approval
    await handle.signal("approve", {"approved": True, "by": "alice"}, signal_id="a1")

    result = await handle.result(timeout_s=RESULT_S)
    assert result["status"] == "completed"
    assert await stock(node, "sku-a") == (8, {"big-1": 2})
    stats = await client.stats()
    assert (stats["charges"], stats["refunds"]) == (1, 0)


async def test_a_rejected_big_order_is_compensated(node: Node, client: PaymentsClient) -> None:
    handle = await node.workflows.start(order, "big-1", an_order("big-1", amount_cents=150_000))
    await handle.signal("approve", {"approved": False}, signal_id="r1")  # buffered until waited

    result = await handle.result(timeout_s=RESULT_S)
    assert result == {"status": "compensated", "order_id": "big-1", "reason": "rejected"}
    await assert_stock_restored(node)
    stats = await client.stats()
    assert (stats["charges"], stats["refunds"]) == (1, 1)


async def test_an_approval_timeout_releases_the_stock_and_refunds(
    node: Node, client: PaymentsClient
) -> None:
    handle = await node.workflows.start(
        order, "big-1", an_order("big-1", amount_cents=150_000, approval_timeout_s=0.5)
    )

    result = await handle.result(timeout_s=RESULT_S)
    assert result == {"status": "compensated", "order_id": "big-1", "reason": "approval_timeout"}
    await assert_stock_restored(node)
    stats = await client.stats()
    assert (stats["charges"], stats["refunds"]) == (1, 1)
    assert stats["amount_refunded_cents"] == stats["amount_charged_cents"] == 150_000


async def test_a_declined_card_is_not_retried_and_releases_the_stock(
    node: Node, client: PaymentsClient
) -> None:
    handle = await node.workflows.start(
        order, "order-1", an_order("order-1", customer="declined-7")
    )

    result = await handle.result(timeout_s=RESULT_S)
    assert result == {"status": "compensated", "order_id": "order-1", "reason": "payment_declined"}
    await assert_stock_restored(node)
    stats = await client.stats()
    assert (stats["charge_attempts"], stats["charges"], stats["refunds"]) == (1, 0, 0)


async def test_out_of_stock_fails_cleanly_without_negative_stock(
    node: Node, client: PaymentsClient
) -> None:
    handle = await node.workflows.start(
        order, "order-1", an_order("order-1", items={"sku-a": 3, "sku-b": 6})
    )

    result = await handle.result(timeout_s=RESULT_S)
    assert result == {"status": "compensated", "order_id": "order-1", "reason": "out_of_stock"}
    await assert_stock_restored(node)  # sku-a's reservation was released, sku-b never went < 0
    assert (await client.stats())["charge_attempts"] == 0


async def test_competing_orders_never_oversell(node: Node, client: PaymentsClient) -> None:
    handles = [
        await node.workflows.start(order, f"order-{n}", an_order(f"order-{n}", items={"sku-b": 2}))
        for n in range(6)
    ]
    results = [await handle.result(timeout_s=RESULT_S) for handle in handles]

    completed = [r for r in results if r["status"] == "completed"]
    assert len(completed) == 2  # 5 units, 2 per order
    assert {r["reason"] for r in results if r["status"] != "completed"} == {"out_of_stock"}
    available, held = await stock(node, "sku-b")
    assert available == 1
    assert sorted(held) == sorted(r["order_id"] for r in completed)
    assert (await client.stats())["charges"] == 2


async def test_an_operator_cancel_compensates_and_ends_cancelled(
    node: Node, client: PaymentsClient
) -> None:
    handle = await node.workflows.start(order, "big-1", an_order("big-1", amount_cents=150_000))

    async def awaiting_approval() -> bool:
        return bool(await handle.query("progress") == {"stage": "awaiting approval"})

    await eventually(awaiting_approval, what="the order waits for approval")
    await handle.cancel("customer called")

    with pytest.raises(WorkflowError) as raised:
        await handle.result(timeout_s=RESULT_S)
    assert raised.value.status == "cancelled"
    await assert_stock_restored(node)
    stats = await client.stats()
    assert (stats["charges"], stats["refunds"]) == (1, 1)


async def test_a_cancel_during_the_charge_waits_for_its_outcome_and_refunds(
    tmp_path: Path, node: Node, client: PaymentsClient
) -> None:
    # The charge step keeps failing (every request answers 503) when the cancel arrives...
    flaky = await start_payments(tmp_path / "flaky.db", failure_rate=1.0)
    flaky_client = PaymentsClient(flaky.url)
    try:
        bind_services(flaky_client)
        handle = await node.workflows.start(order, "order-1", an_order("order-1"))

        async def charging() -> bool:
            return bool((await flaky.stats())["charge_attempts"] >= 1)

        await eventually(charging, what="a charge attempt")
        await handle.cancel("changed my mind")
        assert (await handle.describe()).status != "cancelled"  # it waits for the charge
        # ...then the provider recovers: the charge goes through and is refunded.
        bind_services(client)
        with pytest.raises(WorkflowError) as raised:
            await handle.result(timeout_s=RESULT_S)
        assert raised.value.status == "cancelled"
        await assert_stock_restored(node)
        stats = await client.stats()
        assert (stats["charges"], stats["refunds"], stats["duplicate_charges"]) == (1, 1, 0)
    finally:
        await flaky_client.close()
        await flaky.close()


async def test_transient_payment_failures_are_retried_with_one_charge(
    tmp_path: Path, node: Node
) -> None:
    flaky = await start_payments(tmp_path / "flaky.db", failure_rate=0.5, seed=3)
    flaky_client = PaymentsClient(flaky.url)
    try:
        bind_services(flaky_client)
        handles = [
            await node.workflows.start(
                order, f"order-{n}", an_order(f"order-{n}", items={"sku-a": 1})
            )
            for n in range(4)
        ]
        results = [await handle.result(timeout_s=RESULT_S) for handle in handles]
        assert [r["status"] for r in results] == ["completed"] * 4
        stats = await flaky.stats()
        assert stats["charge_attempts"] > 4  # some attempts failed and were retried
        assert (stats["charges"], stats["duplicate_charges"]) == (4, 0)
    finally:
        await flaky_client.close()
        await flaky.close()


async def test_a_restarted_node_resumes_a_waiting_order(
    tmp_path: Path, client: PaymentsClient
) -> None:
    async with make_node(tmp_path, client) as first:
        await first.ask(Inventory, "sku-a", Restock(10), message_id="seed-a")
        await first.ask(Inventory, "sku-b", Restock(5), message_id="seed-b")
        handle = await first.workflows.start(
            order, "big-1", an_order("big-1", amount_cents=150_000)
        )

        async def awaiting_approval() -> bool:
            return bool(await handle.query("progress") == {"stage": "awaiting approval"})

        await eventually(awaiting_approval, what="the order waits for approval")

    async with make_node(tmp_path, client) as second:
        await second.workflows.signal("big-1", "approve", {"approved": True}, signal_id="a1")
        result = await second.workflows.result("big-1", timeout_s=RESULT_S)
        assert result["status"] == "completed"
        assert await stock(second, "sku-a") == (8, {"big-1": 2})
    assert (await client.stats())["charges"] == 1
