"""Concurrent starts through the gateway: duplicates never make a second workflow."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

from mainspring.actors.workflow_runtime import WORKFLOW_ACTOR_TYPE
from tests.gateway.support import Served

UNIQUE = 800
DUPLICATES = 200


async def test_1000_concurrent_starts_with_200_duplicates_make_800_workflows(
    served: Served,
) -> None:
    """1,000 concurrent starts over 800 ids (200 of them sent twice, shuffled): the index
    holds exactly 800 workflows, each id got exactly one 201, and its duplicate a 200 with
    the same id, type and run_id."""
    requests = [f"dup-{number:04d}" for number in range(UNIQUE)]
    requests += [f"dup-{number:04d}" for number in range(0, UNIQUE, UNIQUE // DUPLICATES)]
    assert len(requests) == UNIQUE + DUPLICATES
    # A fixed interleaving of the duplicates among the others (7919 is prime to 1000).
    requests = [requests[(index * 7919) % len(requests)] for index in range(len(requests))]
    assert len(set(requests)) == UNIQUE

    async def start(workflow_id: str) -> tuple[str, int, Any]:
        number = int(workflow_id.split("-")[1])
        status, body, _ = await served.call(
            "POST", "/v1/workflows/gw.count", json={"id": workflow_id, "input": number}
        )
        return workflow_id, status, body

    answers = await asyncio.gather(*(start(workflow_id) for workflow_id in requests))
    by_id: dict[str, list[tuple[int, Any]]] = defaultdict(list)
    for workflow_id, status, body in answers:
        by_id[workflow_id].append((status, body))
    assert len(by_id) == UNIQUE
    for workflow_id, replies in by_id.items():
        statuses = sorted(status for status, _ in replies)
        expected = [200, 201] if len(replies) == 2 else [201]
        assert expected == statuses, (workflow_id, replies)
        shapes = {(body["id"], body["type"], body["run_id"]) for _, body in replies}
        assert {(workflow_id, "gw.count", 1)} == shapes, (workflow_id, replies)
    assert sum(len(replies) == 2 for replies in by_id.values()) == DUPLICATES

    listed: list[str] = []
    after: tuple[str, str] | None = None
    for _ in range(100):
        page = await served.node.store.list_instances(WORKFLOW_ACTOR_TYPE, None, 300, after)
        if not page:
            break
        listed.extend(info.actor_id for info in page)
        after = (page[-1].actor_type, page[-1].actor_id)
    assert sorted(by_id) == listed


async def test_concurrent_starts_of_one_id_with_different_inputs(served_memory: Served) -> None:
    """Of concurrent starts of one id with different inputs exactly one wins (201); every
    other answers 409, and the workflow runs the winner's input."""

    async def start(value: int) -> tuple[int, int]:
        status, _, _ = await served_memory.call(
            "POST", "/v1/workflows/gw.count", json={"id": "contested", "input": value}
        )
        return value, status

    answers = await asyncio.gather(*(start(value) for value in range(20)))
    winners = [value for value, status in answers if status == 201]
    assert len(winners) == 1, answers
    assert all(status == 409 for value, status in answers if value != winners[0]), answers
    assert await served_memory.node.workflows.result("contested", timeout_s=20) == winners[0] * 2
