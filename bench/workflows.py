"""Durable 3-step workflows through a node, beside DBOS Transact on the same database, same run.

The workload is the one of the DBOS baseline (``bench/_dbos_baseline.py``): a workflow calls
three trivial ``async`` step functions in turn, each returning its input + 1. ``--workflows``
of them are started with ``node.workflows.start`` and awaited with ``node.workflows.result``,
at most ``--concurrency`` start+wait pairs in flight (an asyncio semaphore), after a warm-up of
``--warmup`` workflows that is not counted. Then ``--uncontended`` more workflows run one at a
time. The node runs with ``NodeConfig`` defaults on a fresh database (a new SQLite file, or a
new PostgreSQL schema), and every step's result is durably recorded before the next step starts.

Figures:

- ``workflows_per_s``: counted workflows / wall time from the first start to the last result;
- ``step_overhead_ms_p50`` / ``_p99``: per step transition inside a workflow, the time from one
  step function returning to the next step function starting (the engine records the step's
  result in the workflow's history, resumes the workflow code and starts the next step in
  between), 2 transitions a workflow, under ``--concurrency`` workflows in flight;
- ``uncontended_step_overhead_ms_p50`` / ``_p99``: the same over the workflows run one at a
  time, i.e. the engine's own per-step cost. This is the figure the step-overhead target
  (``step_overhead_target_ms``) refers to, and it is compared with DBOS's uncontended figure;
- ``dbos_*``: the same workload through DBOS Transact in a child process on the same kind of
  database (a fresh SQLite file in WAL mode, or a fresh database on the same PostgreSQL server),
  measured right after the node; ``ratio`` = ``workflows_per_s / dbos_workflows_per_s``. When
  ``dbos`` cannot be installed (or with ``--no-dbos``) ``dbos_skipped`` says why.

Usage: python bench/workflows.py --store sqlite|postgres [--workflows 1000] [--concurrency 64]
       [--no-dbos] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from _dbos_baseline import DEFAULT_UNCONTENDED, DEFAULT_WARMUP, ensure_dbos, run_dbos_workflows
from _support import (
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

import mainspring
from mainspring import Node, WorkflowContext, step_context

STEPS = 3
STEP_OVERHEAD_TARGET_MS = 0.5
"""The target for the uncontended step overhead p50 on SQLite."""
RATIO_TARGET = 5.0
"""The target for ``workflows_per_s / dbos_workflows_per_s`` on the same database."""

_timings: dict[str, list[tuple[float, float]]] = {}
"""Per workflow id, (start, end) perf_counter pairs of its step functions, in step order."""


async def bench_step(value: int) -> int:
    """A trivial step: input + 1, timed."""
    started = time.perf_counter()
    key = step_context().idempotency_key
    result = value + 1
    workflow_id = key.rpartition("/")[0]
    _timings.setdefault(workflow_id, []).append((started, time.perf_counter()))
    return result


@mainspring.workflow("bench-three-steps", version=1)
async def three_steps(ctx: WorkflowContext, value: int) -> int:
    """Three steps in turn, each feeding the next."""
    for _ in range(STEPS):
        value = await ctx.step(bench_step, value)
    return value


def transitions_ms() -> list[float]:
    """Sorted, in ms, the step transitions recorded since ``_timings`` was cleared: from one
    step function returning to the next one starting."""
    return sorted(
        (pairs[index + 1][0] - pairs[index][1]) * 1000.0
        for pairs in _timings.values()
        for index in range(len(pairs) - 1)
    )


async def run_batch(node: Node, prefix: str, count: int, concurrency: int) -> float:
    """Start ``count`` workflows and wait for each, at most ``concurrency`` in flight; the
    wall time they took."""
    semaphore = asyncio.Semaphore(concurrency)

    async def one(number: int) -> None:
        workflow_id = f"{prefix}-{number:06d}"
        async with semaphore:
            handle = await node.workflows.start(three_steps, workflow_id, number)
            result = await handle.result(timeout_s=120)
        if result != number + STEPS:
            raise AssertionError(f"{workflow_id} returned {result!r}")

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for number in range(count):
            group.create_task(one(number))
    return time.perf_counter() - started


async def node_run(
    store: Any, workflows: int, concurrency: int, warmup: int, uncontended: int
) -> dict[str, Any]:
    """The node's side: warm-up, the measured batch, then the one-at-a-time pass."""
    node = Node("bench-node", store=store, workflows=[three_steps])
    async with node:
        if warmup:
            await run_batch(node, "warmup", warmup, concurrency)
        _timings.clear()
        before = node.statistics()["journal"]
        seconds = await run_batch(node, "measured", workflows, concurrency)
        after = node.statistics()["journal"]
        contended = transitions_ms()
        _timings.clear()
        alone: list[float] = []
        if uncontended:
            await run_batch(node, "alone", uncontended, 1)
            alone = transitions_ms()
        _timings.clear()
    if len(contended) != workflows * (STEPS - 1):
        raise AssertionError(f"{len(contended)} step transitions for {workflows} workflows")
    figures: dict[str, Any] = {
        "seconds": seconds,
        "workflows_per_s": workflows / seconds,
        "p50": median(contended),
        "p99": percentile(contended, 0.99),
        "events": after["events"] - before["events"],
        "commits": after["commits"] - before["commits"],
        "commit_s": after["commit_seconds_total"] - before["commit_seconds_total"],
    }
    if alone:
        figures["alone_p50"] = median(alone)
        figures["alone_p99"] = percentile(alone, 0.99)
    return figures


async def dbos_run(arguments: argparse.Namespace) -> dict[str, Any]:
    """The DBOS side, in a child process; ``dbos_skipped`` when it cannot run."""
    if arguments.no_dbos:
        return {"dbos_skipped": "--no-dbos"}
    problem = await asyncio.to_thread(ensure_dbos)
    if problem is not None:
        return {"dbos_skipped": problem}
    with tempfile.TemporaryDirectory(prefix="mainspring-bench-dbos-") as workdir:
        try:
            return await run_dbos_workflows(
                store=arguments.store,
                workflows=arguments.workflows,
                concurrency=arguments.concurrency,
                dsn=arguments.dsn if arguments.store == "postgres" else None,
                workdir=workdir,
                warmup=arguments.warmup,
                uncontended=arguments.uncontended,
            )
        except RuntimeError as error:
            return {"dbos_skipped": str(error)}


async def run(arguments: argparse.Namespace) -> dict[str, Any]:
    """One full measurement: the node on a fresh database, then DBOS on another."""
    result: dict[str, Any] = {
        "store": arguments.store,
        "workflows": arguments.workflows,
        "concurrency": arguments.concurrency,
        "steps": STEPS,
        "warmup": arguments.warmup,
        "uncontended": arguments.uncontended,
    }
    async with fresh_database(arguments.store, arguments.dsn, "workflows") as where:
        measured = await node_run(
            open_store(arguments.store, where, arguments.sqlite_writer),
            arguments.workflows,
            arguments.concurrency,
            arguments.warmup,
            arguments.uncontended,
        )
    result["workflows_per_s"] = round(measured["workflows_per_s"], 1)
    result["step_overhead_ms_p50"] = rounded(measured["p50"])
    result["step_overhead_ms_p99"] = rounded(measured["p99"])
    if "alone_p50" in measured:
        result["uncontended_step_overhead_ms_p50"] = rounded(measured["alone_p50"])
        result["uncontended_step_overhead_ms_p99"] = rounded(measured["alone_p99"])
    result["seconds"] = rounded(measured["seconds"])
    result["events_per_workflow"] = rounded(measured["events"] / arguments.workflows, 2)
    result["commits"] = measured["commits"]
    result["commit_s"] = rounded(measured["commit_s"])
    result["step_overhead_target_ms"] = STEP_OVERHEAD_TARGET_MS
    result["step_overhead_target_applies_to"] = "uncontended_step_overhead_ms_p50, SQLite"
    if arguments.store == "sqlite" and "alone_p50" in measured:
        result["step_overhead_target_met"] = measured["alone_p50"] < STEP_OVERHEAD_TARGET_MS
    dbos = await dbos_run(arguments)
    result.update(dbos)
    if "dbos_workflows_per_s" in dbos:
        result["ratio"] = rounded(measured["workflows_per_s"] / dbos["dbos_workflows_per_s"])
        result["ratio_target"] = RATIO_TARGET
        result["ratio_target_met"] = result["ratio"] >= RATIO_TARGET
    version = await postgres_version(arguments.dsn) if arguments.store == "postgres" else None
    result["environment"] = environment(arguments.store, version)
    return result


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line, run once, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_store_arguments(parser)
    parser.add_argument("--workflows", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=64, help="start+waits in flight")
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, help="uncounted first")
    parser.add_argument(
        "--uncontended",
        type=int,
        default=DEFAULT_UNCONTENDED,
        help="workflows run one at a time afterwards for the uncontended step overhead (0: none)",
    )
    parser.add_argument("--no-dbos", action="store_true", help="skip the DBOS baseline")
    arguments = parser.parse_args(argv)
    if arguments.workflows < 1 or arguments.concurrency < 1:
        parser.error("--workflows and --concurrency must be >= 1")
    if arguments.warmup < 0 or arguments.uncontended < 0:
        parser.error("--warmup and --uncontended must be >= 0")
    result = asyncio.run(run(arguments))
    print_result(result, arguments.json)


if __name__ == "__main__":
    main(sys.argv[1:])
