"""Three real ``mainspring node`` processes over one PostgreSQL, under load, through a crash and
a rolling restart.

The order example runs on three nodes that share one payment service (started once by the
test). A client sends orders round-robin to the three nodes and records every acknowledgement.
One node is SIGKILLed and restarted later; then all three are restarted one by one with
SIGTERM. Afterwards every acknowledged order is terminal, nothing was charged twice, every
stream's sequence is gapless, no event was written under a stale epoch (each event's epoch is
one the lease history granted, and epochs never go back along a stream), and the actors of the
killed node answered again within the lease TTL plus a small bound (measured and printed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from mainspring.cluster.ring import HashRing
from mainspring.seams import SystemClock
from tests.cli.conftest import NodeProcess, environment, free_port
from tests.conftest import POSTGRES_DSN, drop_postgres_schema, require_postgres

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(180)]

SECRET = "process-test-cluster-secret-42"
LEASE_TTL_S = 3.0
MEMBER_TIMEOUT_S = 2.0
RECOVERY_BOUND_S = LEASE_TTL_S + MEMBER_TIMEOUT_S + 5.0
"""The killed node's actors must answer again within this long (lease TTL, the membership
timeout that drops the dead node from the views, and slack for a loaded 2-core machine)."""
TERMINAL = {"completed", "failed", "cancelled", "terminated"}
TIMEOUT = aiohttp.ClientTimeout(total=20)
NODE_IDS = ("node-a", "node-b", "node-c")
CLOCK = SystemClock()


class PaymentService:
    """The example payment service as a child process, shared by the three nodes."""

    def __init__(self, db: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "examples.orders.payments", "--db", str(db), "--port", "0"],
            env=environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        box: list[str] = []
        reader = threading.Thread(
            target=lambda: box.append(self.process.stdout.readline()),  # type: ignore[union-attr]
            daemon=True,
        )
        reader.start()
        reader.join(30)
        assert box, "the payment service did not announce its URL"
        self.url: str = json.loads(box[0])["listening"]

    def stop(self) -> None:
        self.process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        if self.process.poll() is None:
            self.process.kill()


class Load:
    """Orders sent round-robin to the nodes; every acknowledged order id is kept."""

    def __init__(self, urls: dict[str, str]) -> None:
        self.urls = urls
        self.acknowledged: set[str] = set()
        self.attempts = 0
        self.failures = 0
        self.stop = asyncio.Event()

    async def run(self, session: aiohttp.ClientSession, worker: int) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            order_id = f"order-{worker}-{n}"
            url = list(self.urls.values())[(worker + n) % len(self.urls)]
            body = {
                "id": order_id,
                "input": {
                    "order_id": order_id,
                    "customer_id": f"cust-{worker}",
                    "items": [{"sku": f"sku-{1 + n % 3}", "qty": 1}],
                    "amount_cents": 1000 + n,
                },
            }
            self.attempts += 1
            try:
                async with session.post(
                    f"{url}/v1/workflows/order", json=body, timeout=TIMEOUT
                ) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError):
                status = 0
            if status in {200, 201}:
                self.acknowledged.add(order_id)
            else:
                self.failures += 1
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.02)


async def describe(session: aiohttp.ClientSession, url: str, workflow_id: str) -> dict[str, Any]:
    async with session.get(f"{url}/v1/workflows/{workflow_id}", timeout=TIMEOUT) as response:
        assert response.status == 200, (workflow_id, response.status, await response.text())
        described: dict[str, Any] = await response.json()
        return described


async def answers(session: aiohttp.ClientSession, url: str, workflow_id: str) -> bool:
    try:
        async with session.get(
            f"{url}/v1/workflows/{workflow_id}", timeout=aiohttp.ClientTimeout(total=2)
        ) as response:
            await response.read()
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def test_three_nodes_survive_a_crash_and_a_rolling_restart_without_loss(
    tmp_path: Path, node_process: type[NodeProcess], postgres_schema: str
) -> None:
    await require_postgres()
    store_url = f"{POSTGRES_DSN}?schema={postgres_schema}"
    payments = PaymentService(tmp_path / "payments.db")
    ports = {node_id: free_port() for node_id in NODE_IDS}
    nodes = {
        node_id: node_process(
            [
                "--app",
                "examples.orders.app",
                "--store",
                store_url,
                "--listen",
                f"127.0.0.1:{ports[node_id]}",
                "--node-id",
                node_id,
                "--cluster-secret",
                SECRET,
                "--lease-ttl",
                str(LEASE_TTL_S),
                "--member-timeout",
                str(MEMBER_TIMEOUT_S),
                "--shutdown-timeout",
                "5",
                "--log-level",
                "warning",
            ],
            ORDERS_PAYMENTS_URL=payments.url,
        )
        for node_id in NODE_IDS
    }
    try:
        urls = {node_id: process.start() for node_id, process in nodes.items()}
        async with aiohttp.ClientSession() as session:
            await wait_for_ring(session, urls, set(NODE_IDS))
            load = Load(urls)
            workers = [asyncio.create_task(load.run(session, w)) for w in range(6)]
            await asyncio.sleep(4)

            # A crash: node-b dies without a word; its actors must move within the lease TTL.
            victim = "node-b"
            survivors = {n: u for n, u in urls.items() if n != victim}
            ring = HashRing(NODE_IDS)
            victims = sorted(
                order_id
                for order_id in load.acknowledged
                if ring.owner(f"mainspring.workflow/{order_id}") == victim
            )[:20]
            assert victims, "node-b owned none of the acknowledged orders"
            load.urls = survivors
            killed_at = CLOCK.monotonic_s()
            nodes[victim].kill()
            survivor_url = next(iter(survivors.values()))
            while not all(
                await asyncio.gather(*(answers(session, survivor_url, o) for o in victims))
            ):
                assert CLOCK.monotonic_s() - killed_at < 60, "the killed node's orders never moved"
                await asyncio.sleep(0.1)
            recovered_s = CLOCK.monotonic_s() - killed_at
            print(f"\nrecover_after_kill_s={recovered_s:.2f} lease_s={LEASE_TTL_S}")
            assert recovered_s < RECOVERY_BOUND_S, recovered_s

            await asyncio.sleep(2)
            urls[victim] = nodes[victim].start()
            load.urls = dict(urls)
            await wait_for_ring(session, urls, set(NODE_IDS))
            await asyncio.sleep(2)

            # A rolling restart: each node in turn leaves gracefully and comes back.
            for node_id in NODE_IDS:
                load.urls = {n: u for n, u in urls.items() if n != node_id}
                assert nodes[node_id].terminate() == 0, nodes[node_id].stderr()
                urls[node_id] = nodes[node_id].start()
                load.urls = dict(urls)
                await wait_for_ring(session, urls, set(NODE_IDS))
                await asyncio.sleep(1)

            load.stop.set()
            await asyncio.gather(*workers)
            assert len(load.acknowledged) > 50, (len(load.acknowledged), load.failures)
            any_url = urls["node-a"]
            pending = set(load.acknowledged)
            deadline = CLOCK.monotonic_s() + 60
            while pending:
                assert CLOCK.monotonic_s() < deadline, f"not terminal: {sorted(pending)[:10]}"
                states = await asyncio.gather(
                    *(describe(session, any_url, order_id) for order_id in sorted(pending)[:50])
                )
                pending -= {s["id"] for s in states if s["status"] in TERMINAL}
                if pending:
                    await asyncio.sleep(0.5)
            async with session.get(f"{payments.url}/stats", timeout=TIMEOUT) as response:
                stats = await response.json()
            assert stats["duplicate_charges"] == 0, stats
        await check_streams(postgres_schema)
        print(
            f"orders acknowledged={len(load.acknowledged)} attempts={load.attempts} "
            f"failures={load.failures} charges={stats['charges']}"
        )
    finally:
        for process in nodes.values():
            with contextlib.suppress(Exception):
                process.terminate()
        payments.stop()
        await drop_postgres_schema(postgres_schema)


async def wait_for_ring(
    session: aiohttp.ClientSession, urls: dict[str, str], expected: set[str]
) -> None:
    deadline = CLOCK.monotonic_s() + 30
    while True:
        views = []
        for url in urls.values():
            try:
                async with session.get(f"{url}/v1/cluster", timeout=TIMEOUT) as response:
                    views.append(set((await response.json())["ring"]))
            except (aiohttp.ClientError, TimeoutError, KeyError):
                views.append(set())
        if all(view == expected for view in views):
            return
        assert CLOCK.monotonic_s() < deadline, f"the views did not converge: {views}"
        await asyncio.sleep(0.1)


async def check_streams(schema: str) -> None:
    """Gapless sequences; every event under an epoch the lease history granted, and epochs
    never going back along a stream (a stale owner's late write would)."""
    connection = await asyncpg.connect(POSTGRES_DSN)
    try:
        await connection.execute(f'SET search_path TO "{schema}"')
        events = await connection.fetch("SELECT stream_id, seq, epoch FROM events ORDER BY 1, 2")
        grants = await connection.fetch("SELECT stream_id, epoch, owner FROM lease_history")
        heads = await connection.fetch("SELECT stream_id, head FROM streams")
    finally:
        await connection.close()
    granted = {(row["stream_id"], row["epoch"]) for row in grants}
    by_stream: dict[str, list[tuple[int, int]]] = {}
    for row in events:
        by_stream.setdefault(row["stream_id"], []).append((row["seq"], row["epoch"]))
    assert by_stream, "no events were written"
    for stream_id, rows in by_stream.items():
        assert [seq for seq, _ in rows] == list(range(1, len(rows) + 1)), stream_id
        epochs = [epoch for _, epoch in rows]
        assert epochs == sorted(epochs), (stream_id, epochs)
        assert all((stream_id, epoch) in granted for epoch in epochs), stream_id
    for row in heads:
        assert row["head"] == len(by_stream.get(row["stream_id"], [])), row["stream_id"]
    owners = {row["owner"] for row in grants}
    assert owners <= set(NODE_IDS), owners
    assert len(owners) == len(NODE_IDS), owners
