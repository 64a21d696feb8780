"""The HTTP gateway's throughput and latency, beside a trivial aiohttp handler, same run.

The server side (this process) runs a node on a fresh database behind ``mainspring.gateway``,
and, on another port of the same event loop, a bare aiohttp application whose one handler
parses a small JSON body and answers ``{"ok": true}``. A load client runs in a separate process
(``python bench/http.py --client ...``) on loopback: an aiohttp ``ClientSession`` with
``--concurrency`` requests in flight. The phases below run in turn, ``--rounds`` times over
(each round takes its share of every count), so that a shared machine's changing load weighs on
every kind alike; each phase of a round is one client process:

1. ``raw``: ``--requests`` POSTs to the bare handler (after ``--warmup`` uncounted ones);
2. ``start``: ``--starts`` ``POST /v1/workflows/bench-http-one-step`` with distinct ids (a
   one-step workflow); each answers 201 once the start is durable. The workflows then run
   (their step and completion are committed) alongside, as they would in production;
3. ``signal``: ``--signals`` ``POST /v1/workflows/{id}/signals/tick`` spread round-robin over
   ``--concurrency`` waiting workflows; each answers 202 once the signal is durable.

Figures: ``raw_aiohttp_req_per_s``, ``starts_per_s``, ``signals_per_s`` (requests / the wall
time of their phases, summed over the rounds, measured by the client), their latency
``_ms_p50`` / ``_ms_p99`` (over every request of the kind), and
``starts_ratio`` = ``starts_per_s / raw_aiohttp_req_per_s`` (target >= 0.3). Every answer's
status is checked; a phase with an unexpected status fails the run.

``inprocess_starts_per_s`` is the engine's own ceiling for the start phase, measured right
after it: the same number of starts through ``node.workflows.start`` in the server process,
``--concurrency`` in flight, no HTTP. ``starts_vs_inprocess`` is
``starts_per_s / inprocess_starts_per_s``: how much of it the gateway keeps. After each start
phase the run waits for all its workflows to complete, so no phase runs the previous one's
steps; a phase's own steps and completions run alongside its starts (the figures are start
acknowledgements per second while the workflows run, not a backlog left for later).

Usage: python bench/http.py --store sqlite|postgres [--starts 3000] [--signals 3000]
       [--requests 3000] [--concurrency 64] [--rounds 5] [--no-create-with-first-write] [--json]
"""

from __future__ import annotations

import sys
from pathlib import Path

# This script is named http.py: with its own directory first on sys.path (as Python puts it),
# it would shadow the standard library's http package that aiohttp imports. Load the standard
# library first, then make the directory importable again for _support.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _HERE]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import gc  # noqa: E402
import http.cookies  # noqa: E402, F401  (the standard library's, before _HERE is on the path)
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import Any  # noqa: E402

import aiohttp  # noqa: E402
import orjson  # noqa: E402
from aiohttp import web  # noqa: E402

import mainspring  # noqa: E402
from mainspring import Node, NodeConfig, WorkflowContext  # noqa: E402
from mainspring.gateway import Gateway  # noqa: E402
from mainspring.process import GC_THRESHOLD_DEFAULT, tune_garbage_collector  # noqa: E402

sys.path.append(str(_HERE))

from _support import (  # noqa: E402
    add_store_arguments,
    environment,
    fresh_database,
    median,
    open_store,
    percentile,
    postgres_version,
    print_result,
    rounded,
)

RATIO_TARGET = 0.3
"""The target for ``starts_per_s / raw_aiohttp_req_per_s``."""
EXPECTED_STATUS = {"raw": 200, "start": 201, "signal": 202}


async def one_step(value: int) -> int:
    """The step of the benchmark workflow."""
    return value + 1


@mainspring.workflow("bench-http-one-step", version=1)
async def one_step_workflow(ctx: WorkflowContext, value: int) -> int:
    """One step, then done."""
    return int(await ctx.step(one_step, value))


@mainspring.workflow("bench-http-ticks", version=1)
async def ticks_workflow(ctx: WorkflowContext, _: None) -> None:
    """Waits for ``tick`` signals until ``stop``."""
    while await ctx.wait_for_signal("tick") != "stop":
        pass


# The load client (a separate process) ----------------------------------------------------


async def client(arguments: argparse.Namespace) -> dict[str, Any]:
    """Send ``count`` requests of one kind, ``concurrency`` in flight; time each."""
    kind, count, concurrency = arguments.kind, arguments.count, arguments.concurrency
    headers = {"Content-Type": "application/json"}
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    next_number = 0

    def request(number: int) -> tuple[str, bytes]:
        if kind == "raw":
            return f"{arguments.url}/raw", orjson.dumps({"id": f"r-{number}", "input": number})
        if kind == "start":
            body = {"id": f"{arguments.prefix}-{number}", "input": number}
            return f"{arguments.url}/v1/workflows/bench-http-one-step", orjson.dumps(body)
        target = f"{arguments.prefix}-{number % arguments.targets}"
        return f"{arguments.url}/v1/workflows/{target}/signals/tick", orjson.dumps(number)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal next_number
        while next_number < count:
            number = next_number
            next_number += 1
            url, body = request(number)
            sent = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                statuses[response.status] += 1
            latencies.append(time.perf_counter() - sent)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    return {
        "kind": kind,
        "count": count,
        "seconds": seconds,
        "latencies_ms": [round(latency * 1000, 4) for latency in latencies],
        "statuses": {str(status): n for status, n in sorted(statuses.items())},
    }


def client_main(argv: Sequence[str]) -> None:
    """``--client``: run one phase against ``--url`` and print its figures as JSON."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--client", action="store_true")
    parser.add_argument("--url", required=True)
    parser.add_argument("--kind", choices=sorted(EXPECTED_STATUS), required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--prefix", default="w")
    parser.add_argument("--targets", type=int, default=1)
    arguments = parser.parse_args(argv)
    # What the imports built stays alive for the whole run: freeze it, or the client's first
    # full collection (tens of milliseconds over that heap) lands in some phase's timed window
    # and not in another's, depending on what the imports happened to allocate.
    gc.collect()
    gc.freeze()
    print(json.dumps(asyncio.run(client(arguments))))


# The server side ---------------------------------------------------------------------------


SCRIPT = str(Path(__file__).resolve())


async def run_client(url: str, kind: str, count: int, concurrency: int, **extra: Any) -> Any:
    """One load-client process; its figures, after checking every status."""
    command = [
        sys.executable,
        SCRIPT,
        "--client",
        "--url",
        url,
        "--kind",
        kind,
        "--count",
        str(count),
        "--concurrency",
        str(concurrency),
    ]
    for key, value in extra.items():
        command += [f"--{key}", str(value)]
    process = await asyncio.create_subprocess_exec(
        *command, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    stdout, stderr = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"the {kind} client failed: {stderr.decode()[-2000:]}")
    figures = json.loads(stdout)
    expected = {str(EXPECTED_STATUS[kind]): count}
    if figures["statuses"] != expected:
        raise AssertionError(f"{kind}: expected {expected}, got {figures['statuses']}")
    return figures


async def raw_handler(request: web.Request) -> web.Response:
    """The baseline: parse a small JSON body, answer a small JSON body."""
    body = orjson.loads(await request.read())
    assert isinstance(body, dict)
    return web.Response(body=orjson.dumps({"ok": True}), content_type="application/json")


async def serve_raw() -> tuple[web.AppRunner, str]:
    """The bare aiohttp application on a free loopback port."""
    app = web.Application()
    app.router.add_post("/raw", raw_handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


class Totals:
    """The requests of one kind over all rounds: count, time and every latency."""

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0
        self.latencies_ms: list[float] = []

    def add(self, figures: dict[str, Any]) -> None:
        self.count += figures["count"]
        self.seconds += figures["seconds"]
        self.latencies_ms.extend(figures.get("latencies_ms", ()))

    def summary(self) -> dict[str, float]:
        figures = {"per_s": self.count / self.seconds}
        if self.latencies_ms:
            ordered = sorted(self.latencies_ms)
            figures["p50_ms"] = median(ordered)
            figures["p99_ms"] = percentile(ordered, 0.99)
        return figures


async def measure(store: Any, arguments: argparse.Namespace) -> dict[str, Any]:
    """``--rounds`` rounds of the four phases against one node and one bare server, so that
    the load of a shared machine weighs on every kind alike."""
    concurrency, rounds = arguments.concurrency, arguments.rounds
    config = NodeConfig(create_with_first_write=arguments.create_with_first_write)
    node = Node(
        "bench-http", store=store, workflows=[one_step_workflow, ticks_workflow], config=config
    )
    raw_runner, raw_url = await serve_raw()
    totals = {kind: Totals() for kind in ("raw", "start", "inprocess", "signal")}
    try:
        async with node:
            gateway = Gateway(node)
            url = await gateway.start("127.0.0.1", 0)
            # As `mainspring node` does once it listens (--gc-threshold).
            tune_garbage_collector(arguments.gc_threshold)
            try:
                if arguments.warmup:
                    await run_client(raw_url, "raw", arguments.warmup, concurrency)
                    await run_client(url, "start", arguments.warmup, concurrency, prefix="warm")
                    await wait_closed(node, "warm", arguments.warmup)
                targets = min(concurrency, arguments.signals)
                for number in range(targets):
                    await node.workflows.start(ticks_workflow, f"t-{number}", None)
                for index in range(rounds):

                    def share(total: int, index: int = index) -> int:
                        return total // rounds + (1 if index < total % rounds else 0)

                    raw = await run_client(raw_url, "raw", share(arguments.requests), concurrency)
                    totals["raw"].add(raw)
                    starts = share(arguments.starts)
                    totals["start"].add(
                        await run_client(url, "start", starts, concurrency, prefix=f"s{index}")
                    )
                    await wait_closed(node, f"s{index}", starts)
                    totals["inprocess"].add(
                        await start_in_process(node, starts, concurrency, f"p{index}")
                    )
                    await wait_closed(node, f"p{index}", starts)
                    signals = await run_client(
                        url,
                        "signal",
                        share(arguments.signals),
                        concurrency,
                        prefix="t",
                        targets=targets,
                    )
                    totals["signal"].add(signals)
            finally:
                await gateway.stop()
    finally:
        await raw_runner.cleanup()
    return {kind: total.summary() for kind, total in totals.items()}


async def wait_closed(node: Node, prefix: str, count: int) -> None:
    """Wait until the workflows a start phase began have completed, so that their steps and
    completions are not left to run during the next phase."""
    semaphore = asyncio.Semaphore(256)

    async def one(number: int) -> None:
        async with semaphore:
            result = await node.workflows.result(f"{prefix}-{number}", timeout_s=300)
        if result != number + 1:
            raise AssertionError(f"{prefix}-{number} returned {result!r}")

    await asyncio.gather(*(one(number) for number in range(count)))


async def start_in_process(
    node: Node, count: int, concurrency: int, prefix: str
) -> dict[str, float]:
    """The same starts through ``node.workflows.start`` in this process, ``concurrency`` in
    flight: the engine's own ceiling for the start phase, without HTTP."""
    semaphore = asyncio.Semaphore(concurrency)

    async def one(number: int) -> None:
        async with semaphore:
            await node.workflows.start(one_step_workflow, f"{prefix}-{number}", number)

    started = time.perf_counter()
    await asyncio.gather(*(one(number) for number in range(count)))
    return {"count": count, "seconds": time.perf_counter() - started}


def git_commit() -> str:
    """The commit checked out when the run was made."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit


async def run(arguments: argparse.Namespace) -> dict[str, Any]:
    """One full measurement on a fresh database."""
    async with fresh_database(arguments.store, arguments.dsn, "http") as where:
        store = open_store(arguments.store, where, arguments.sqlite_writer)
        phases = await measure(store, arguments)
    raw, starts, signals = phases["raw"], phases["start"], phases["signal"]
    inprocess = phases["inprocess"]
    result: dict[str, Any] = {
        "store": arguments.store,
        "sqlite_writer": arguments.sqlite_writer if arguments.store == "sqlite" else None,
        "concurrency": arguments.concurrency,
        "rounds": arguments.rounds,
        "starts": arguments.starts,
        "signals": arguments.signals,
        "requests": arguments.requests,
        "gc_threshold": arguments.gc_threshold,
        "create_with_first_write": arguments.create_with_first_write,
        "raw_aiohttp_req_per_s": round(raw["per_s"], 1),
        "raw_ms_p50": rounded(raw["p50_ms"]),
        "raw_ms_p99": rounded(raw["p99_ms"]),
        "starts_per_s": round(starts["per_s"], 1),
        "start_ms_p50": rounded(starts["p50_ms"]),
        "start_ms_p99": rounded(starts["p99_ms"]),
        "signals_per_s": round(signals["per_s"], 1),
        "signal_ms_p50": rounded(signals["p50_ms"]),
        "signal_ms_p99": rounded(signals["p99_ms"]),
    }
    result["inprocess_starts_per_s"] = round(inprocess["per_s"], 1)
    result["starts_vs_inprocess"] = rounded(starts["per_s"] / inprocess["per_s"])
    result["starts_ratio"] = rounded(starts["per_s"] / raw["per_s"])
    result["ratio_target"] = RATIO_TARGET
    result["ratio_target_met"] = result["starts_ratio"] >= RATIO_TARGET
    version = await postgres_version(arguments.dsn) if arguments.store == "postgres" else None
    described = environment(arguments.store, version)
    described["aiohttp"] = aiohttp.__version__
    described["machine"] = platform.machine()
    described["load_average_1m"] = f"{os.getloadavg()[0]:.2f}"
    described["commit"] = git_commit()
    result["environment"] = described
    return result


def main(argv: Sequence[str]) -> None:
    """Parse the command line, run once, print the figures."""
    if "--client" in argv:
        client_main(argv)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_store_arguments(parser)
    parser.add_argument("--starts", type=int, default=3000)
    parser.add_argument("--signals", type=int, default=3000)
    parser.add_argument("--requests", type=int, default=3000, help="to the bare handler")
    parser.add_argument("--warmup", type=int, default=200, help="uncounted first, per server")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    parser.add_argument(
        "--gc-threshold",
        type=int,
        default=GC_THRESHOLD_DEFAULT,
        help="the server's garbage collector setting, as `mainspring node --gc-threshold` "
        "(0: CPython's defaults)",
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="phases are interleaved over this many rounds"
    )
    parser.add_argument(
        "--no-create-with-first-write",
        dest="create_with_first_write",
        action="store_false",
        help="NodeConfig(create_with_first_write=False): a start takes its lease in a lease "
        "transaction before its first write (the behaviour before that setting)",
    )
    arguments = parser.parse_args(argv)
    if not arguments.concurrency >= 1 or not arguments.rounds >= 1:
        parser.error("--concurrency and --rounds must be >= 1")
    for name in ("starts", "signals", "requests"):
        if getattr(arguments, name) < arguments.rounds:
            parser.error(f"--{name} must be >= --rounds ({arguments.rounds})")
    if arguments.warmup < 0:
        parser.error("--warmup must be >= 0")
    result = asyncio.run(run(arguments))
    print_result(result, arguments.json)


if __name__ == "__main__":
    main(sys.argv[1:])
