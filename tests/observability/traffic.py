"""Traffic on a node that gives every metric family a sample, and the checks of those samples."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from mainspring import Fenced, Node, NodeConfig
from mainspring.observability import Telemetry
from mainspring.persistence.sqlite import SqliteStore
from mainspring.persistence.store import stream_id_of
from tests.observability import workload
from tests.observability.support import Samples, parse, total
from tests.support.waiting import eventually

FAST = NodeConfig(
    timer_poll_interval_s=0.05,
    outbox_poll_interval_s=0.05,
    outbox_retry_interval_s=0.05,
    lease_ttl_s=1.0,
    lease_renew_interval_s=0.05,
    shutdown_timeout_s=1.0,
)
WORKFLOWS = [
    workload.order,
    workload.waiting,
    workload.doomed,
    workload.interrupted,
    workload.rounds,
]


def make_node(db: str, telemetry: Telemetry, node_id: str = "n1") -> Node:
    """A node over SQLite at ``db`` hosting the workload."""
    return Node(
        node_id,
        store=SqliteStore(db),
        actors=[workload.Gate],
        workflows=WORKFLOWS,
        config=FAST,
        telemetry=telemetry,
    )


def samples_of(node: Node) -> Samples:
    """The node's metrics, parsed."""
    return parse(node.telemetry.prometheus_text())


async def queue_and_fence(node: Node, read: Callable[[], Awaitable[Samples]]) -> None:
    """Queue messages behind a blocked handler (checked through ``read`` while queued), make
    one append fenced, and let another node take over an idle actor's lease."""
    workload.GATE["open"] = asyncio.Event()
    blocked = asyncio.ensure_future(node.ask(workload.Gate, "g-1", workload.WaitAtGate()))
    await asyncio.sleep(0.05)
    for _ in range(3):
        await node.tell(workload.Gate, "g-1", workload.WaitAtGate())
    await asyncio.sleep(0.02)
    queued = await read()
    assert total(queued, "mainspring_mailbox_messages") == 3
    assert total(queued, "mainspring_mailbox_messages_max") == 3
    assert total(queued, "mainspring_mailbox_oldest_message_age_seconds") > 0
    workload.GATE["open"].set()
    await blocked

    # A fenced append: another owner takes the actor's lease, so its next commit is refused.
    await node.ask(workload.Gate, "g-2", workload.Touch())
    stream_id = stream_id_of(workload.Gate.type_name, "g-2")
    await node.store.acquire_lease(stream_id, "intruder", node.clock.wall_ms(), 60_000, steal=True)
    with pytest.raises(Fenced):
        await node.ask(workload.Gate, "g-2", workload.Touch())

    # A lease taken over while the actor idles: the renewal finds it lost.
    await node.ask(workload.Gate, "g-3", workload.Touch())
    stream_id = stream_id_of(workload.Gate.type_name, "g-3")
    await node.store.acquire_lease(stream_id, "intruder", node.clock.wall_ms(), 60_000, steal=True)

    async def taken_over() -> bool:
        return total(await read(), "mainspring_lease_takeovers_total") >= 1

    await eventually(taken_over, what="the lost lease is counted")

    async def counted() -> bool:
        samples = await read()
        return ("mainspring_workflows", frozenset({("status", "waiting")})) in samples and (
            total(samples, "mainspring_workflows", status="waiting") == 1
            and total(samples, "mainspring_workflows", status="failed") == 1
        )

    await eventually(counted, what="the workflow counts are refreshed")


def check_every_family(samples: Samples) -> None:
    """After ``order`` completed, ``waiting`` waits, ``doomed`` failed and ``queue_and_fence``."""
    order = {"workflow_type": "obs.order"}
    assert total(samples, "mainspring_workflow_starts_total", **order) == 1
    assert total(samples, "mainspring_workflow_starts_total") == 3
    assert total(samples, "mainspring_workflow_completions_total", status="completed", **order) == 1
    assert total(samples, "mainspring_workflow_completions_total", status="failed") == 1
    assert total(samples, "mainspring_workflows", status="waiting") == 1
    assert total(samples, "mainspring_workflows", status="failed") == 1
    assert total(samples, "mainspring_workflows", status="running") == 0
    assert total(samples, "mainspring_step_attempts_total", step="flaky_charge") == 2
    assert total(samples, "mainspring_step_attempts_total", step="broken_notify") == 2
    retried = {"step": "flaky_charge", "error": "ConnectionError"}
    assert total(samples, "mainspring_step_retries_total", **retried) == 1
    failed = {"step": "broken_notify", "error": "LookupError"}
    assert total(samples, "mainspring_step_failures_total", **failed) == 2
    # g-2's refused commit, and maybe the snapshot g-3 writes when it leaves.
    assert total(samples, "mainspring_journal_rejections_total", reason="fenced") >= 1
    assert total(samples, "mainspring_journal_rejections_total", reason="conflict") == 0
    commits = total(samples, "mainspring_journal_commits_total")
    assert total(samples, "mainspring_journal_commit_seconds_count") == commits
    assert total(samples, "mainspring_journal_commit_seconds_sum") > 0
    assert total(samples, "mainspring_journal_batch_requests_count") == commits
    assert total(samples, "mainspring_journal_batch_requests_sum") >= commits
    assert total(samples, "mainspring_journal_events_total") > 0
    assert total(samples, "mainspring_lease_acquisitions_total") >= 5
    assert total(samples, "mainspring_lease_renewals_total") >= 1
    assert total(samples, "mainspring_lease_takeovers_total") == 1
    assert total(samples, "mainspring_actor_messages_total") > 0
    assert total(samples, "mainspring_actor_activations_total") >= 5
    assert total(samples, "mainspring_reminders_fired_total") >= 1
    assert total(samples, "mainspring_timer_lag_seconds") >= 0
    assert total(samples, "mainspring_live_actors") >= 1
    assert total(samples, "mainspring_mailbox_messages") == 0
    assert total(samples, "mainspring_mailbox_messages_max") == 0
