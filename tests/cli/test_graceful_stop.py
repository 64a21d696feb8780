"""A graceful stop lets the step attempts in flight finish and records their outcomes.

``mainspring node`` stops its node with ``Node.stop()`` on SIGTERM; these tests drive that
same call in-process over a real SQLite file, then restart a node over the file.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import mainspring
from mainspring import Node, NodeConfig, WorkflowContext
from mainspring.persistence.sqlite import SqliteStore

attempts: list[str] = []
step_started: list[asyncio.Event] = []


async def slow_call(label: str) -> str:
    attempts.append(label)
    for event in step_started:
        event.set()
    await asyncio.sleep(0.5)
    return f"{label}-done"


@mainspring.workflow("tests.cli.graceful-stop", version=1)
async def one_slow_step(ctx: WorkflowContext, label: str) -> str:
    result: str = await ctx.step(slow_call, label)
    return result


async def test_a_step_in_flight_finishes_before_the_node_stops(tmp_path: Path) -> None:
    """Goal: stopping a node does not cut a running step short (it would run again after the
    restart). Method: start a workflow whose one step takes 0.5 s, stop the node while the
    step runs, restart over the same file, and count the step's attempts."""
    attempts.clear()
    started = asyncio.Event()
    step_started[:] = [started]
    db = tmp_path / "graceful.db"
    config = NodeConfig(shutdown_timeout_s=10.0)
    node = Node("graceful-1", store=SqliteStore(db), workflows=[one_slow_step], config=config)
    async with node:
        await node.workflows.start(one_slow_step, "wf-1", "a")
        async with asyncio.timeout(10):
            await started.wait()
    # The step was running when the stop began; it finished and its outcome was recorded.
    restarted = Node("graceful-1", store=SqliteStore(db), workflows=[one_slow_step], config=config)
    async with restarted:
        assert await restarted.workflows.result("wf-1", timeout_s=10) == "a-done"
    assert attempts == ["a"]
