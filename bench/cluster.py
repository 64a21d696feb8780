"""The order workload on one node and on a three-node cluster over one PostgreSQL.

Starts the example payment service once, then, each over a fresh schema:

1. one ``mainspring node`` (no cluster) serving ``examples.orders.app``;
2. three nodes of a cluster (``--cluster-secret``), clients spread round-robin over them.

In each phase ``--clients`` concurrent clients run orders end to end for ``--seconds``: start an
order (``POST /v1/workflows/order``), then long-poll it until it is terminal. The stock is
raised first so orders do not run out. ``orders_per_s_*`` is terminal orders / wall time.
``forward_p50_ms``/``forward_p99_ms`` are the node-to-node forward round trips the three nodes
measured (``GET /v1/cluster``). Then one node is SIGKILLed and ``recover_after_kill_s`` is the
time until every sampled order it owned answers again from a survivor (target:
``lease_s`` + 1).

On a 2-core machine three nodes share the cores the one node had, so the 3-node figure shows
the forwarding overhead rather than scale.

Usage: python bench/cluster.py [--seconds 15] [--clients 32] [--json]
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/http.py would shadow the standard library's http package (aiohttp imports it) while
# this script's directory is first on sys.path: take the directory off.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _HERE]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import aiohttp  # noqa: E402
import asyncpg  # noqa: E402

REPOSITORY = Path(__file__).resolve().parents[1]
DSN = os.environ.get("MAINSPRING_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
SECRET = "bench-cluster-secret-0123456789"
LEASE_S = 3.0
MEMBER_TIMEOUT_S = 2.0
TERMINAL = {"completed", "failed", "cancelled", "terminated"}
SKUS = ("sku-1", "sku-2", "sku-3")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def environment(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


class Process:
    """A child process that announces a URL on its first stdout line."""

    def __init__(self, arguments: list[str], env: dict[str, str], cwd: Path) -> None:
        self.process = subprocess.Popen(
            arguments,
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if "listening" not in line:
            self.process.kill()
            raise RuntimeError(f"{arguments[2:4]} did not start: {line!r}")
        self.line = line

    def stop(self, signum: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signum)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def start_node(
    schema: str, node_id: str, port: int, payments_url: str, cwd: Path, clustered: bool
) -> Process:
    arguments = [
        sys.executable,
        "-m",
        "mainspring.cli",
        "node",
        "--app",
        "examples.orders.app",
        "--store",
        f"{DSN}?schema={schema}",
        "--listen",
        f"127.0.0.1:{port}",
        "--node-id",
        node_id,
        "--lease-ttl",
        str(LEASE_S),
        "--log-level",
        "error",
    ]
    if clustered:
        arguments += ["--cluster-secret", SECRET, "--member-timeout", str(MEMBER_TIMEOUT_S)]
    return Process(arguments, environment(ORDERS_PAYMENTS_URL=payments_url), cwd)


async def drop_schema(schema: str) -> None:
    connection = await asyncpg.connect(DSN)
    try:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await connection.close()


async def restock(session: aiohttp.ClientSession, url: str) -> None:
    for sku in SKUS:
        async with session.post(
            f"{url}/v1/actors/example.inventory/{sku}/messages",
            json={"type": "example.inventory.restock", "message": {"qty": 10_000_000}},
            headers={"Idempotency-Key": f"bench-restock-{sku}"},
        ) as response:
            assert response.status in {200, 202}, await response.text()


async def run_orders(
    session: aiohttp.ClientSession, urls: list[str], clients: int, seconds: float, tag: str
) -> tuple[int, float, list[str]]:
    """Orders end to end from ``clients`` clients for ``seconds``; returns (terminal, wall s,
    order ids)."""
    deadline = time.monotonic() + seconds
    done: list[str] = []

    async def client(worker: int) -> None:
        n = 0
        while time.monotonic() < deadline:
            n += 1
            order_id = f"{tag}-{worker}-{n}"
            url = urls[(worker + n) % len(urls)]
            body = {
                "id": order_id,
                "input": {
                    "order_id": order_id,
                    "customer_id": f"cust-{worker}",
                    "items": [{"sku": SKUS[n % 3], "qty": 1}],
                    "amount_cents": 1000 + n,
                },
            }
            async with session.post(f"{url}/v1/workflows/order", json=body) as response:
                await response.read()
                if response.status not in {200, 201}:
                    continue
            for _ in range(10):
                async with session.get(
                    f"{url}/v1/workflows/{order_id}", params={"wait": "10"}
                ) as response:
                    described = await response.json()
                if described.get("status") in TERMINAL:
                    done.append(order_id)
                    break

    started = time.monotonic()
    await asyncio.gather(*(client(w) for w in range(clients)))
    return len(done), time.monotonic() - started, done


async def main(arguments: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="mainspring-bench-cluster-"))
    payments = Process(
        [sys.executable, "-m", "examples.orders.payments", "--db", str(work / "p.db")],
        environment(),
        work,
    )
    payments_url = json.loads(payments.line)["listening"]
    results: dict[str, Any] = {"lease_s": LEASE_S, "clients": arguments.clients}
    suffix = os.getpid()
    try:
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            # One node, no cluster.
            schema = f"bench_cluster_one_{suffix}"
            port = free_port()
            one = start_node(schema, "solo", port, payments_url, work, clustered=False)
            try:
                url = f"http://127.0.0.1:{port}"
                await restock(session, url)
                count, wall_s, _ = await run_orders(
                    session, [url], arguments.clients, arguments.seconds, "one"
                )
                results["orders_per_s_1_node"] = round(count / wall_s, 1)
            finally:
                one.stop()
                await drop_schema(schema)

            # Three nodes of a cluster.
            schema = f"bench_cluster_three_{suffix}"
            ports = {f"node-{n}": free_port() for n in range(3)}
            nodes = {
                node_id: start_node(schema, node_id, port, payments_url, work, clustered=True)
                for node_id, port in ports.items()
            }
            try:
                urls = {node_id: f"http://127.0.0.1:{port}" for node_id, port in ports.items()}
                await restock(session, urls["node-0"])
                count, wall_s, orders = await run_orders(
                    session, list(urls.values()), arguments.clients, arguments.seconds, "three"
                )
                results["orders_per_s_3_nodes"] = round(count / wall_s, 1)
                p50s, p99s = [], []
                for url in urls.values():
                    async with session.get(f"{url}/v1/cluster") as response:
                        routing = (await response.json())["routing"]
                    if routing["forward_p50_ms"] is not None:
                        p50s.append(routing["forward_p50_ms"])
                        p99s.append(routing["forward_p99_ms"])
                results["forward_p50_ms"] = round(sorted(p50s)[len(p50s) // 2], 2)
                results["forward_p99_ms"] = round(max(p99s), 2)
                results["recover_after_kill_s"] = await recover_after_kill(
                    session, nodes, urls, orders
                )
            finally:
                for process in nodes.values():
                    process.stop()
                await drop_schema(schema)
    finally:
        payments.stop()
    return results


async def recover_after_kill(
    session: aiohttp.ClientSession,
    nodes: dict[str, Process],
    urls: dict[str, str],
    orders: list[str],
) -> float:
    """SIGKILL node-1; seconds until every sampled order it owned answers from node-0."""
    sys.path.insert(0, str(REPOSITORY / "src"))
    from mainspring.cluster.ring import HashRing

    ring = HashRing(urls)
    owned = [o for o in orders if ring.owner(f"mainspring.workflow/{o}") == "node-1"][:50]
    assert owned, "node-1 owned none of the orders"
    survivor = urls["node-0"]

    async def answers(order_id: str) -> bool:
        try:
            async with session.get(
                f"{survivor}/v1/workflows/{order_id}", timeout=aiohttp.ClientTimeout(total=2)
            ) as response:
                await response.read()
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    killed = time.monotonic()
    nodes["node-1"].stop(signal.SIGKILL)
    pending = set(owned)
    while pending:
        answered = await asyncio.gather(*(answers(o) for o in sorted(pending)))
        pending -= {o for o, ok in zip(sorted(pending), answered, strict=True) if ok}
        if pending:
            await asyncio.sleep(0.05)
    return round(time.monotonic() - killed, 2)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    options = parser.parse_args()
    figures = asyncio.run(main(options))
    if options.json:
        print(json.dumps(figures))
    else:
        for name, value in figures.items():
            print(f"{name}: {value}")
