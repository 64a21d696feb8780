"""The order demo: a few hundred orders through a real node process that is SIGKILLed mid-way.

    python -m examples.orders [--orders 300] [--kills 2] [--seed 1] [--approval-timeout 3]
        [--failure-rate 0.2] [--store sqlite|postgres --dsn DSN --schema NAME] [--workdir DIR]

What runs, each in its own process:

- the payment service (``examples.orders.payments``) on its own SQLite file, answering 503 to
  ``--failure-rate`` of the charge and refund requests;
- an order node (``examples.orders.node``) on a fresh SQLite file (or a PostgreSQL schema),
  hosting ``Inventory`` and the ``order`` workflow behind a small HTTP control endpoint.

The driver (this process) talks to the node over that endpoint only. It seeds the stock, then
submits the orders in batches: most are small, about 10 % are big (they need an ``approve``
signal: the driver approves most of them and lets the others time out after
``--approval-timeout`` seconds), some customers are always declined, a few orders are cancelled
by an operator. Meanwhile a killer task SIGKILLs the node ``--kills`` times at random moments
while orders are in flight and restarts it over the same database each time; the restarted
node resumes every in-flight order by itself. Every request the driver makes is idempotent
(starts by order id and input, signals and restocks by id), so a request cut off by a kill is
simply sent again to the restarted node.

When every order has ended, the driver prints ONE JSON line and exits non-zero if any of the
figures that must be zero is not: ``lost`` (orders not in a terminal status),
``duplicate_charges`` (orders charged more than once, from the payment service),
``negative_stock`` (SKUs below zero), ``failed`` (workflows that failed instead of ending
completed, compensated or cancelled), ``leaked_units`` (units neither available nor held by a
completed order) and ``money_mismatch_cents`` (charged minus refunded, minus the amounts of the
completed orders).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Final

import aiohttp
import attrs

from examples.orders.model import APPROVAL_THRESHOLD_CENTS
from mainspring.seams import SeededRandom, SystemClock

__all__ = ["MUST_BE_ZERO", "DemoSettings", "run_demo"]

REPOSITORY: Final = Path(__file__).resolve().parents[2]
SKUS: Final = [f"sku-{n:02d}" for n in range(20)]
STOCK_PER_SKU: Final = 50
BATCH: Final = 10
MUST_BE_ZERO: Final = (
    "lost",
    "duplicate_charges",
    "negative_stock",
    "failed",
    "leaked_units",
    "money_mismatch_cents",
)
TERMINAL: Final = frozenset({"completed", "failed", "cancelled", "terminated"})


@attrs.frozen
class DemoSettings:
    orders: int = 300
    kills: int = 2
    seed: int = 1
    approval_timeout_s: float = 3.0
    failure_rate: float = 0.2
    store: str = "sqlite"
    dsn: str | None = None
    schema: str = "public"
    deadline_s: float = 100.0


@attrs.frozen
class Plan:
    """One order and what the driver does to it."""

    order: dict[str, Any]
    approve: bool | None  # None: no signal (small orders, and big ones left to time out)
    cancel: bool


def _between(rng: SeededRandom, low: int, high: int) -> int:
    """An int in [low, high]."""
    return low + int(rng.random() * (high - low + 1))


def _sample(rng: SeededRandom, items: list[str], count: int) -> list[str]:
    left = list(items)
    return [left.pop(int(rng.random() * len(left))) for _ in range(count)]


def make_plans(settings: DemoSettings) -> list[Plan]:
    """The orders, drawn from ``settings.seed``."""
    rng = SeededRandom(settings.seed)
    plans = []
    for n in range(settings.orders):
        skus = _sample(rng, SKUS, _between(rng, 1, 3))
        big = rng.random() < 0.10
        declined = rng.random() < 0.07
        customer = f"declined-{n % 7}" if declined else f"cust-{_between(rng, 0, 49)}"
        amount = (
            _between(rng, APPROVAL_THRESHOLD_CENTS, 2 * APPROVAL_THRESHOLD_CENTS)
            if big
            else _between(rng, 500, APPROVAL_THRESHOLD_CENTS - 1)
        )
        order = {
            "order_id": f"order-{n:04d}",
            "customer_id": customer,
            "items": [{"sku": sku, "qty": _between(rng, 1, 3)} for sku in sorted(skus)],
            "amount_cents": amount,
            "approval_timeout_s": settings.approval_timeout_s,
        }
        approve = (rng.random() < 0.8) if big else None
        plans.append(Plan(order, approve or None, rng.random() < 0.03))
    return plans


class Process:
    """A child process that announces ``{"listening": URL}`` on its first stdout line."""

    def __init__(self, name: str, arguments: list[str], log_path: Path) -> None:
        self.name = name
        self.arguments = arguments
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None
        self.url = ""
        self.ready = asyncio.Event()

    async def start(self) -> str:
        environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                *self.arguments,
                cwd=REPOSITORY,
                env=environment,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
            )
        assert self.process.stdout is not None
        try:
            line = await asyncio.wait_for(self.process.stdout.readline(), timeout=60)
            self.url = json.loads(line)["listening"]
        except (TimeoutError, ValueError, KeyError) as error:
            self.process.kill()
            await self.process.wait()
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.name} did not start ({error!r}); its log:\n{tail}") from None
        self.ready.set()
        return self.url

    async def kill(self) -> None:
        """SIGKILL: no clean-up of any kind."""
        self.ready.clear()
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()
        assert self.process.returncode == -signal.SIGKILL, self.process.returncode

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not stop."""
        self.ready.clear()
        if self.process is None or self.process.returncode is not None:
            return
        self.process.terminate()
        try:
            await asyncio.wait_for(self.process.wait(), timeout=15)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


class NodeClient:
    """Requests to the node's control endpoint, sent again until the (restarted) node answers."""

    def __init__(self, node: Process, session: aiohttp.ClientSession) -> None:
        self.node = node
        self.session = session
        self.retried = 0

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        while True:
            await self.node.ready.wait()
            url = self.node.url + path
            try:
                async with self.session.request(
                    method, url, json=body, timeout=aiohttp.ClientTimeout(total=30)
                ) as response:
                    text = await response.text()
                    if response.status >= 500:
                        raise RuntimeError(f"{method} {path} -> {response.status}: {text[:2000]}")
                    return response.status, json.loads(text)
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError):
                self.retried += 1
                await asyncio.sleep(0.05)


def node_arguments(settings: DemoSettings, workdir: Path, payments_url: str) -> list[str]:
    arguments = ["examples.orders.node", "--payments", payments_url]
    if settings.store == "sqlite":
        arguments += ["--db", str(workdir / "orders.db")]
    else:
        assert settings.dsn, "--dsn is required with --store postgres"
        arguments += ["--store", "postgres", "--dsn", settings.dsn, "--schema", settings.schema]
    return arguments


async def run_demo(settings: DemoSettings, workdir: Path) -> dict[str, Any]:
    """Run the demo in ``workdir`` (its files and logs); returns the summary."""
    clock = SystemClock()
    started = clock.monotonic_s()
    rng = SeededRandom(settings.seed + 1)
    plans = make_plans(settings)
    payments = Process(
        "the payment service",
        [
            "examples.orders.payments",
            "--db",
            str(workdir / "payments.db"),
            "--failure-rate",
            str(settings.failure_rate),
            "--seed",
            str(settings.seed),
        ],
        workdir / "payments.log",
    )
    payments_url = await payments.start()
    node = Process(
        "the order node", node_arguments(settings, workdir, payments_url), workdir / "node.log"
    )
    kills = 0
    in_flight_at_kills: list[int] = []
    try:
        await node.start()
        async with aiohttp.ClientSession() as session:
            client = NodeClient(node, session)
            await client.call(
                "POST",
                "/inventory/restock",
                {"batch": "seed", "stock": dict.fromkeys(SKUS, STOCK_PER_SKU)},
            )

            submitted = 0
            progress = asyncio.Event()
            # Kill at random points of the submission, so that orders are in flight.
            kill_points = sorted(
                int(len(plans) * (0.15 + 0.7 * rng.random())) for _ in range(settings.kills)
            )

            async def submit() -> None:
                nonlocal submitted
                for start in range(0, len(plans), BATCH):
                    batch = plans[start : start + BATCH]
                    await client.call("POST", "/orders", {"orders": [p.order for p in batch]})
                    for plan in batch:
                        order_id = plan.order["order_id"]
                        if plan.approve:
                            await client.call(
                                "POST", f"/orders/{order_id}/approve", {"approved": True}
                            )
                        if plan.cancel:
                            await client.call(
                                "POST", f"/orders/{order_id}/cancel", {"reason": "demo"}
                            )
                    submitted += len(batch)
                    progress.set()
                    await asyncio.sleep(0.1)

            async def killer() -> None:
                nonlocal kills
                for point in kill_points:
                    while submitted < point:
                        progress.clear()
                        await progress.wait()
                    await asyncio.sleep(rng.random() * 0.2)
                    _, summary = await client.call("GET", "/orders/summary")
                    in_flight_at_kills.append(
                        sum(n for s, n in summary["statuses"].items() if s not in TERMINAL)
                    )
                    await node.kill()
                    kills += 1
                    await node.start()

            await asyncio.gather(submit(), killer())
            deadline = clock.monotonic_s() + settings.deadline_s
            while True:
                _, summary = await client.call("GET", "/orders/summary")
                terminal = sum(n for s, n in summary["statuses"].items() if s in TERMINAL)
                if terminal >= len(plans) or clock.monotonic_s() > deadline:
                    break
                await asyncio.sleep(0.2)
            _, report = await client.call("GET", "/orders/report")
            _, inventory = await client.call("GET", "/inventory?skus=" + ",".join(SKUS))
            async with session.get(payments_url + "/stats") as response:
                stats = await response.json()
            retried = client.retried
    finally:
        await node.stop()
        await payments.stop()
    summary = summarize(plans, report["orders"], inventory, stats)
    summary.update(
        kills=kills,
        in_flight_at_kills=in_flight_at_kills,
        requests_resent=retried,
        store=settings.store,
        seconds=round(clock.monotonic_s() - started, 2),
    )
    return summary


def summarize(
    plans: list[Plan],
    orders: dict[str, dict[str, Any]],
    inventory: dict[str, dict[str, Any]],
    stats: dict[str, int],
) -> dict[str, Any]:
    """The demo's figures (see the module docstring)."""
    amounts = {p.order["order_id"]: p.order["amount_cents"] for p in plans}
    statuses: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    completed_ids = set()
    for order_id in amounts:
        described = orders.get(order_id)
        status = described["status"] if described else "missing"
        result = (described or {}).get("result") or {}
        if status == "completed" and result.get("status") == "compensated":
            status = "compensated"
            reasons[result["reason"]] += 1
        elif status == "completed":
            completed_ids.add(order_id)
        statuses[status] += 1
    leaked = 0
    for stock in inventory.values():
        held_by_completed = sum(q for o, q in stock["held"].items() if o in completed_ids)
        held_by_others = sum(q for o, q in stock["held"].items() if o not in completed_ids)
        leaked += abs(stock["restocked"] - stock["available"] - held_by_completed)
        leaked += held_by_others
    terminal = sum(n for s, n in statuses.items() if s in TERMINAL | {"compensated"})
    net_charged = stats["amount_charged_cents"] - stats["amount_refunded_cents"]
    return {
        "orders": len(plans),
        "completed": statuses["completed"],
        "compensated": statuses["compensated"],
        "cancelled": statuses["cancelled"],
        "failed": statuses["failed"] + statuses["terminated"],
        "lost": len(plans) - terminal,
        "compensation_reasons": dict(sorted(reasons.items())),
        "charge_attempts": stats["charge_attempts"],
        "charges": stats["charges"],
        "refunds": stats["refunds"],
        "duplicate_charges": stats["duplicate_charges"],
        "negative_stock": sum(1 for stock in inventory.values() if stock["available"] < 0),
        "leaked_units": leaked,
        "money_mismatch_cents": net_charged - sum(amounts[o] for o in completed_ids),
    }


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m examples.orders",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--orders", type=int, default=300)
    parser.add_argument("--kills", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--approval-timeout", type=float, default=3.0, help="seconds")
    parser.add_argument("--failure-rate", type=float, default=0.2)
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--dsn", help="PostgreSQL DSN (with --store postgres)")
    parser.add_argument("--schema", default="orders_demo", help="PostgreSQL schema")
    parser.add_argument("--workdir", type=Path, help="default: a fresh temporary directory")
    arguments = parser.parse_args(argv)
    if arguments.orders < 1 or arguments.kills < 0 or arguments.approval_timeout <= 0:
        parser.error("need --orders >= 1, --kills >= 0 and --approval-timeout > 0")
    if arguments.store == "postgres" and not arguments.dsn:
        parser.error("--dsn is required with --store postgres")
    return arguments


def main(argv: list[str] | None = None) -> int:
    """Run the demo, print the summary line; 1 when a must-be-zero figure is not zero."""
    arguments = _parse_args(argv)
    settings = DemoSettings(
        orders=arguments.orders,
        kills=arguments.kills,
        seed=arguments.seed,
        approval_timeout_s=arguments.approval_timeout,
        failure_rate=arguments.failure_rate,
        store=arguments.store,
        dsn=arguments.dsn,
        schema=arguments.schema,
    )
    with contextlib.ExitStack() as stack:
        workdir = arguments.workdir
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="orders-")))
        workdir.mkdir(parents=True, exist_ok=True)
        summary = asyncio.run(run_demo(settings, workdir))
    print(json.dumps(summary), flush=True)
    return 1 if any(summary[name] for name in MUST_BE_ZERO) else 0


if __name__ == "__main__":
    sys.exit(main())
