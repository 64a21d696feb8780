"""The order example's payment service: attempts are counted, effects deduplicated by key.

Every test talks to a real server over loopback; one runs it as its own process.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from examples.orders.payments import (
    PaymentDeclined,
    PaymentError,
    PaymentsClient,
    PaymentsServer,
    PaymentTransientError,
    start_payments,
)

REPOSITORY = Path(__file__).resolve().parents[2]


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[PaymentsServer]:
    payments = await start_payments(tmp_path / "payments.db")
    yield payments
    await payments.close()


@pytest.fixture
async def client(server: PaymentsServer) -> AsyncIterator[PaymentsClient]:
    payments = PaymentsClient(server.url)
    yield payments
    await payments.close()


async def post_raw(url: str, data: bytes) -> tuple[int, dict[str, Any]]:
    """POST ``data`` as is (it need not be JSON); the status and the JSON answer."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=data, headers={"Content-Type": "application/json"}) as response,
    ):
        return response.status, await response.json()


async def test_first_charge_is_created(client: PaymentsClient) -> None:
    charge = await client.charge("key-1", "order-1", "cust-1", 1_250)

    assert charge["duplicate"] is False
    assert charge["charge_id"].startswith("ch_")
    assert (charge["idempotency_key"], charge["order_id"], charge["amount_cents"]) == (
        "key-1",
        "order-1",
        1_250,
    )
    assert await client.get_charge("key-1") == {
        key: value for key, value in charge.items() if key != "duplicate"
    }
    assert await client.get_charge("no-such-key") is None


async def test_same_key_returns_the_stored_charge(client: PaymentsClient) -> None:
    first = await client.charge("key-1", "order-1", "cust-1", 1_250)
    second = await client.charge("key-1", "order-1", "cust-1", 1_250)

    assert second["duplicate"] is True
    assert second["charge_id"] == first["charge_id"]
    stats = await client.stats()
    assert stats["charge_attempts"] == 2
    assert stats["charges"] == 1
    assert stats["amount_charged_cents"] == 1_250
    assert stats["duplicate_charges"] == 0


async def test_concurrent_requests_with_one_key_make_one_charge(client: PaymentsClient) -> None:
    results = await asyncio.gather(
        *(client.charge("key-1", "order-1", "cust-1", 999) for _ in range(20))
    )

    assert len({result["charge_id"] for result in results}) == 1
    assert sum(not result["duplicate"] for result in results) == 1
    stats = await client.stats()
    assert (stats["charge_attempts"], stats["charges"], stats["amount_charged_cents"]) == (
        20,
        1,
        999,
    )


async def test_same_key_for_a_different_charge_is_a_conflict(
    server: PaymentsServer, client: PaymentsClient
) -> None:
    await client.charge("key-1", "order-1", "cust-1", 1_000)

    with pytest.raises(PaymentError) as raised:
        await client.charge("key-1", "order-1", "cust-1", 2_000)
    assert raised.value.status == 409
    assert not isinstance(raised.value, PaymentTransientError | PaymentDeclined)
    assert "amount_cents" in str(raised.value)
    status, body = await post_raw(
        server.url + "/charges",
        json.dumps(
            {
                "idempotency_key": "key-1",
                "order_id": "order-2",
                "customer_id": "cust-1",
                "amount_cents": 1_000,
            }
        ).encode(),
    )
    assert status == 409
    assert "order_id" in body["error"]
    assert (await client.stats())["charges"] == 1


@pytest.mark.parametrize(
    ("customer_id", "amount_cents"),
    [("declined-cust", 100), ("cust-1", 10_000_001)],
    ids=["declined-customer", "over-limit"],
)
async def test_declined_charge_records_the_attempt_only(
    client: PaymentsClient, customer_id: str, amount_cents: int
) -> None:
    with pytest.raises(PaymentDeclined) as raised:
        await client.charge("key-1", "order-1", customer_id, amount_cents)

    assert raised.value.status == 402
    assert "card declined" in str(raised.value)
    stats = await client.stats()
    assert (stats["charge_attempts"], stats["charges"]) == (1, 0)
    assert await client.get_charge("key-1") is None


async def test_transient_failures_count_attempts_but_charge_nothing(tmp_path: Path) -> None:
    server = await start_payments(tmp_path / "payments.db", failure_rate=1.0)
    client = PaymentsClient(server.url)
    try:
        for _ in range(3):
            with pytest.raises(PaymentTransientError) as raised:
                await client.charge("key-1", "order-1", "cust-1", 500)
            assert raised.value.status == 503
        with pytest.raises(PaymentTransientError):
            await client.refund("refund-1", "key-1")

        stats = await client.stats()
        assert (stats["charge_attempts"], stats["charges"]) == (3, 0)
        assert (stats["refund_attempts"], stats["refunds"]) == (1, 0)
    finally:
        await client.close()
        await server.close()


async def test_unreachable_service_is_a_transient_error(tmp_path: Path) -> None:
    server = await start_payments(tmp_path / "payments.db")
    url = server.url
    await server.close()
    client = PaymentsClient(url, timeout_s=2)
    try:
        with pytest.raises(PaymentTransientError) as raised:
            await client.charge("key-1", "order-1", "cust-1", 500)
        assert raised.value.status is None
    finally:
        await client.close()


VALID_CHARGE = {
    "idempotency_key": "key-1",
    "order_id": "order-1",
    "customer_id": "cust-1",
    "amount_cents": 100,
}


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({k: v for k, v in VALID_CHARGE.items() if k != "order_id"}, "order_id"),
        ({**VALID_CHARGE, "amount_cents": -5}, "amount_cents"),
        ({**VALID_CHARGE, "amount_cents": 0}, "amount_cents"),
        ({**VALID_CHARGE, "amount_cents": 1.5}, "amount_cents"),
        ({**VALID_CHARGE, "amount_cents": "100"}, "amount_cents"),
        ({**VALID_CHARGE, "customer_id": ""}, "customer_id"),
        ({**VALID_CHARGE, "idempotency_key": 7}, "idempotency_key"),
        ({**VALID_CHARGE, "currency": "EUR"}, "currency"),
        (["not", "an", "object"], "JSON object"),
    ],
    ids=[
        "missing",
        "negative",
        "zero",
        "float",
        "string-amount",
        "empty",
        "non-string",
        "unknown",
        "array",
    ],
)
async def test_invalid_charge_is_a_400_naming_the_problem(
    server: PaymentsServer, client: PaymentsClient, body: object, named: str
) -> None:
    status, answer = await post_raw(server.url + "/charges", json.dumps(body).encode())

    assert status == 400
    assert named in answer["error"]
    stats = await client.stats()
    assert (stats["charge_attempts"], stats["charges"]) == (1, 0)


async def test_non_json_bodies_are_a_400(server: PaymentsServer) -> None:
    status, answer = await post_raw(server.url + "/charges", b"{not json")
    assert status == 400
    assert "not valid JSON" in answer["error"]

    status, answer = await post_raw(server.url + "/refunds", b"\xff\xfe")
    assert status == 400
    assert "not valid JSON" in answer["error"]

    status, answer = await post_raw(server.url + "/refunds", b'{"idempotency_key": "r"}')
    assert status == 400
    assert "charge_key" in answer["error"]


async def test_refund_is_idempotent_and_once_per_charge(client: PaymentsClient) -> None:
    charge = await client.charge("key-1", "order-1", "cust-1", 700)

    first = await client.refund("refund-1", "key-1")
    again = await client.refund("refund-1", "key-1")
    other_key = await client.refund("refund-2", "key-1")

    assert first["duplicate"] is False
    assert first["amount_cents"] == charge["amount_cents"]
    assert again["duplicate"] is True
    assert again["refund_id"] == first["refund_id"]
    assert other_key["duplicate"] is True
    assert other_key["refund_id"] == first["refund_id"]
    stats = await client.stats()
    assert (stats["refund_attempts"], stats["refunds"], stats["amount_refunded_cents"]) == (
        3,
        1,
        700,
    )


async def test_refund_conflicts_and_unknown_charges(client: PaymentsClient) -> None:
    await client.charge("key-1", "order-1", "cust-1", 700)
    await client.charge("key-2", "order-2", "cust-1", 300)
    await client.refund("refund-1", "key-1")

    with pytest.raises(PaymentError) as unknown:
        await client.refund("refund-9", "no-such-charge")
    assert unknown.value.status == 404
    assert "no-such-charge" in str(unknown.value)

    with pytest.raises(PaymentError) as reused:
        await client.refund("refund-1", "key-2")
    assert reused.value.status == 409

    stats = await client.stats()
    assert (stats["refund_attempts"], stats["refunds"]) == (3, 1)


async def test_concurrent_refunds_make_one_refund(client: PaymentsClient) -> None:
    await client.charge("key-1", "order-1", "cust-1", 700)

    results = await asyncio.gather(
        *(client.refund(f"refund-{index % 2}", "key-1") for index in range(10))
    )

    assert len({result["refund_id"] for result in results}) == 1
    assert (await client.stats())["refunds"] == 1


async def test_duplicate_charges_counts_orders_charged_under_two_keys(
    client: PaymentsClient,
) -> None:
    await client.charge("key-a", "order-1", "cust-1", 100)
    await client.charge("key-b", "order-1", "cust-1", 100)
    await client.charge("key-c", "order-1", "cust-1", 100)
    await client.charge("key-d", "order-2", "cust-1", 100)
    await client.charge("key-d", "order-2", "cust-1", 100)  # a retry: not a duplicate charge

    stats = await client.stats()
    assert stats["charges"] == 4
    assert stats["duplicate_charges"] == 1


async def test_data_survive_a_restart_on_the_same_file(tmp_path: Path) -> None:
    db = tmp_path / "payments.db"
    server = await start_payments(db)
    client = PaymentsClient(server.url)
    try:
        charge = await client.charge("key-1", "order-1", "cust-1", 4_200)
        await client.refund("refund-1", "key-1")
        before = await client.stats()
    finally:
        await client.close()
        await server.close()

    server = await start_payments(db)
    client = PaymentsClient(server.url)
    try:
        assert await client.stats() == before
        again = await client.charge("key-1", "order-1", "cust-1", 4_200)
        assert again["duplicate"] is True
        assert again["charge_id"] == charge["charge_id"]
        assert (await client.stats())["charge_attempts"] == before["charge_attempts"] + 1
    finally:
        await client.close()
        await server.close()


async def test_health(server: PaymentsServer) -> None:
    async with aiohttp.ClientSession() as session, session.get(server.url + "/health") as answer:
        assert answer.status == 200


@pytest.mark.slow
async def test_runs_as_its_own_process_and_stops_on_sigterm(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "examples.orders.payments",
        "--db",
        str(tmp_path / "payments.db"),
        "--port",
        "0",
        "--failure-rate",
        "0.0",
        "--seed",
        "1",
        "--limit-cents",
        "5000",
        cwd=REPOSITORY,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), timeout=10)
        url = json.loads(line)["listening"]
        assert url.startswith("http://127.0.0.1:")

        client = PaymentsClient(url)
        try:
            assert (await client.charge("key-1", "order-1", "cust-1", 5_000))["duplicate"] is False
            with pytest.raises(PaymentDeclined):
                await client.charge("key-2", "order-2", "cust-1", 5_001)
            assert (await client.stats())["charges"] == 1
        finally:
            await client.close()

        process.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=10)
        assert process.returncode == 0, stderr.decode()
        assert stdout == b""  # exactly one line, already read
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
