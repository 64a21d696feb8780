"""Apps that the command-line tests run with ``mainspring node --app tests.cli.apps:NAME``.

- ``durable``: the ``tests.cli.sink`` workflow, which runs one step, then records ``note``
  signals until a ``finish`` signal or its timeout (``input["wait_s"]``) ends it.
- ``hooks``: no types; its lifespan and ``on_start`` write marker files into the directory
  named by ``$MAINSPRING_TEST_MARKERS``; ``on_start`` blocks forever when
  ``$MAINSPRING_TEST_BLOCK_START`` is set (to stop a node while it starts).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import mainspring
from mainspring import App, Node, NodeConfig, WorkflowContext

FAST: Any = NodeConfig(
    timer_poll_interval_s=0.1,
    outbox_poll_interval_s=0.1,
    outbox_retry_interval_s=0.2,
    workflow_recovery_interval_s=1.0,
    mailbox_messages_max=10_000,
    lease_ttl_s=10.0,
    lease_renew_interval_s=2.0,
)


async def stamp(workflow_id: str) -> str:
    """A step with nothing to repeat: it returns its own idempotency key."""
    return mainspring.step_context().idempotency_key


@mainspring.workflow("tests.cli.sink", version=1)
async def sink(ctx: WorkflowContext, settings: dict[str, Any]) -> dict[str, Any]:
    """One step, then wait for ``finish`` (or ``settings["wait_s"]``)."""
    key = await ctx.step(stamp, ctx.workflow_id)
    try:
        await ctx.wait_for_signal("finish", timeout=float(settings.get("wait_s", 5.0)))
        ended = "finished"
    except TimeoutError:
        ended = "timed out"
    return {"step_key": key, "ended": ended}


durable = App(workflows=[sink], config=FAST)


def _marker(name: str) -> None:
    directory = os.environ.get("MAINSPRING_TEST_MARKERS")
    if directory:
        (Path(directory) / name).write_text(name)


@contextlib.asynccontextmanager
async def _lifespan(node: Node) -> AsyncIterator[None]:
    _marker("lifespan-entered")
    try:
        yield
    finally:
        _marker("lifespan-exited")


async def _on_start(node: Node) -> None:
    _marker("started")
    if os.environ.get("MAINSPRING_TEST_BLOCK_START"):
        await asyncio.Event().wait()


hooks = App(config=FAST, lifespan=_lifespan, on_start=_on_start)

not_an_app = {"workflows": [sink]}
