"""Nothing a node acknowledged over HTTP is lost when the node process is SIGKILLed.

A ``mainspring node`` process runs the ``tests.cli.sink`` workflow (one step, then it records
``note`` signals until its durable timer ends it). The test fires concurrent starts and signals
at it over HTTP and records every one answered with 2xx; once enough requests were acknowledged it
SIGKILLs the node in the middle of the load, restarts it over the same store, and checks that
every acknowledged start reaches a terminal state with its step done, and that every
acknowledged signal is in its workflow's history exactly once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.cli.conftest import NodeProcess
from tests.conftest import POSTGRES_DSN, drop_postgres_schema, require_postgres

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

WORKFLOWS = 120
NOTES_PER_WORKFLOW = 3
KILL_AFTER_ACKNOWLEDGED = 150
WORKERS = 16
WORKFLOW_WAIT_S = 3.0
TERMINAL = {"completed", "failed", "cancelled", "terminated"}
TIMEOUT = aiohttp.ClientTimeout(total=15)


class Load:
    """The acknowledged requests of one load run."""

    def __init__(self) -> None:
        self.starts: set[str] = set()
        self.notes: dict[str, set[str]] = {}
        self.acknowledged = 0
        self.failures = 0


async def fire_load(
    session: aiohttp.ClientSession, url: str, kill: Callable[[], Awaitable[None]]
) -> Load:
    """Start ``WORKFLOWS`` workflows and signal each ``NOTES_PER_WORKFLOW`` times from
    ``WORKERS`` concurrent clients (each starts a workflow, then signals it), and kill the node
    (``kill``) once ``KILL_AFTER_ACKNOWLEDGED`` requests were acknowledged."""
    load = Load()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(WORKFLOWS):
        queue.put_nowait(index)
    killing: list[asyncio.Task[None]] = []

    def acknowledged() -> None:
        load.acknowledged += 1
        if load.acknowledged >= KILL_AFTER_ACKNOWLEDGED and not killing:
            killing.append(asyncio.create_task(kill()))

    async def post(path: str, body: object, headers: dict[str, str] | None = None) -> int:
        try:
            async with session.post(
                url + path, json=body, headers=headers or {}, timeout=TIMEOUT
            ) as response:
                await response.read()
                return response.status
        except (aiohttp.ClientError, TimeoutError):
            load.failures += 1
            return 0

    async def one(workflow_id: str) -> None:
        status = await post(
            "/v1/workflows/tests.cli.sink",
            {"id": workflow_id, "input": {"wait_s": WORKFLOW_WAIT_S}},
        )
        if status not in {200, 201}:
            return
        load.starts.add(workflow_id)
        acknowledged()
        for note in range(NOTES_PER_WORKFLOW):
            key = f"{workflow_id}/note-{note}"
            status = await post(
                f"/v1/workflows/{workflow_id}/signals/note", {"key": key}, {"Idempotency-Key": key}
            )
            if status != 202:
                return
            load.notes.setdefault(workflow_id, set()).add(key)
            acknowledged()

    async def worker() -> None:
        while not queue.empty():
            await one(f"wf-{queue.get_nowait():03d}")

    await asyncio.gather(*(worker() for _ in range(WORKERS)))
    assert killing, "the node was never killed: the load ended first"
    await killing[0]
    return load


async def wait_terminal(session: aiohttp.ClientSession, url: str, workflow_id: str) -> Any:
    for _ in range(20):
        async with session.get(
            f"{url}/v1/workflows/{workflow_id}", params={"wait": "10"}, timeout=TIMEOUT
        ) as response:
            assert response.status == 200, (workflow_id, response.status, await response.text())
            described = await response.json()
        if described["status"] in TERMINAL:
            return described
    raise AssertionError(f"{workflow_id} is still {described['status']}: {described}")


async def noted_keys(session: aiohttp.ClientSession, url: str, workflow_id: str) -> list[str]:
    async with session.get(
        f"{url}/v1/workflows/{workflow_id}/history", params={"limit": "1000"}, timeout=TIMEOUT
    ) as response:
        assert response.status == 200, await response.text()
        page = await response.json()
    assert page["next"] is None, page["next"]
    return [
        event["data"]["data"]["d"]["key"]
        for event in page["events"]
        if event["kind"] == "signal" and event["data"]["name"] == "note"
    ]


async def check_durability(node_process: type[NodeProcess], store_url: str) -> None:
    arguments = [
        "--app",
        "tests.cli.apps:durable",
        "--store",
        store_url,
        "--listen",
        "127.0.0.1:0",
        "--node-id",
        "durable-1",
        "--log-level",
        "warning",
    ]
    node = node_process(arguments)
    url = node.start()

    async def kill() -> None:
        await asyncio.to_thread(node.kill)

    async with aiohttp.ClientSession() as session:
        load = await fire_load(session, url, kill)
        assert node.process is not None
        assert node.process.returncode == -9, node.process.returncode
        assert load.acknowledged >= KILL_AFTER_ACKNOWLEDGED
        assert load.notes, "no signal was acknowledged before the kill"
        assert load.failures > 0, "every request was answered: the kill came after the load"

        restarted = node_process(arguments)
        url = restarted.start()
        described = await asyncio.gather(
            *(wait_terminal(session, url, workflow_id) for workflow_id in sorted(load.starts))
        )
        for workflow in described:
            assert workflow["status"] == "completed", workflow
            assert workflow["result"]["step_key"] == f"{workflow['id']}/1", workflow
        for workflow_id, keys in sorted(load.notes.items()):
            recorded = await noted_keys(session, url, workflow_id)
            missing = sorted(keys - set(recorded))
            assert missing == [], (workflow_id, missing, recorded)
            assert len(recorded) == len(set(recorded)), (workflow_id, recorded)
        assert restarted.terminate() == 0, restarted.stderr()


async def test_acknowledged_starts_and_signals_survive_sigkill_on_sqlite(
    tmp_path: Path, node_process: type[NodeProcess]
) -> None:
    """Goal: a 2xx answer means durable, on SQLite. Method: see the module docstring."""
    await check_durability(node_process, f"sqlite:///{tmp_path / 'durable.db'}")


@pytest.mark.postgres
async def test_acknowledged_starts_and_signals_survive_sigkill_on_postgres(
    node_process: type[NodeProcess], postgres_schema: str
) -> None:
    """Goal: a 2xx answer means durable, on PostgreSQL. Method: see the module docstring."""
    await require_postgres()
    try:
        await check_durability(node_process, f"{POSTGRES_DSN}?schema={postgres_schema}")
    finally:
        await drop_postgres_schema(postgres_schema)
