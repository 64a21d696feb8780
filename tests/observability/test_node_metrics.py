"""Every metric family gets samples from real traffic on a node over SQLite."""

from __future__ import annotations

import asyncio
from pathlib import Path

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
WORKFLOWS = [workload.order, workload.waiting, workload.doomed, workload.interrupted]


def _node(db: Path, telemetry: Telemetry) -> Node:
    return Node(
        "n1",
        store=SqliteStore(str(db)),
        actors=[workload.Gate],
        workflows=WORKFLOWS,
        config=FAST,
        telemetry=telemetry,
    )


def _samples(node: Node) -> Samples:
    return parse(node.telemetry.prometheus_text())


async def test_traffic_on_a_node_shows_in_every_family(tmp_path: Path) -> None:
    workload.ATTEMPTS.clear()
    workload.GATE["open"] = asyncio.Event()
    async with _node(tmp_path / "m.db", Telemetry(workflow_counts_interval_s=0.05)) as node:
        assert (
            await node.workflows.result(
                (await node.workflows.start(workload.order, "o-1", 7)).workflow_id, timeout_s=20
            )
            == 7
        )
        await node.workflows.start(workload.waiting, "w-1", None)
        await node.workflows.start(workload.doomed, "d-1", None)
        with pytest.raises(Exception, match="no such recipient"):
            await node.workflows.result("d-1", timeout_s=20)

        # Mailbox depth and age: one handler blocks while three more messages queue behind it.
        blocked = asyncio.ensure_future(node.ask(workload.Gate, "g-1", workload.WaitAtGate()))
        await asyncio.sleep(0.05)
        for _ in range(3):
            await node.tell(workload.Gate, "g-1", workload.WaitAtGate())
        await asyncio.sleep(0.02)
        queued = _samples(node)
        assert total(queued, "mainspring_mailbox_messages") == 3
        assert total(queued, "mainspring_mailbox_messages_max") == 3
        assert total(queued, "mainspring_mailbox_oldest_message_age_seconds") > 0
        workload.GATE["open"].set()
        await blocked

        # A fenced append: another owner takes the actor's lease, so its next commit is refused.
        await node.ask(workload.Gate, "g-2", workload.Touch())
        stream_id = stream_id_of(workload.Gate.type_name, "g-2")
        await node.store.acquire_lease(
            stream_id, "intruder", node.clock.wall_ms(), 60_000, steal=True
        )
        with pytest.raises(Fenced):
            await node.ask(workload.Gate, "g-2", workload.Touch())

        # A lease taken over while the actor idles: the renewal finds it lost.
        await node.ask(workload.Gate, "g-3", workload.Touch())
        stream_id = stream_id_of(workload.Gate.type_name, "g-3")
        await node.store.acquire_lease(
            stream_id, "intruder", node.clock.wall_ms(), 60_000, steal=True
        )

        async def taken_over() -> bool:
            return total(_samples(node), "mainspring_lease_takeovers_total") >= 1

        await eventually(taken_over, what="the lost lease is counted")

        async def counted() -> bool:
            samples = _samples(node)
            return ("mainspring_workflows", frozenset({("status", "waiting")})) in samples and (
                total(samples, "mainspring_workflows", status="waiting") == 1
                and total(samples, "mainspring_workflows", status="failed") == 1
            )

        await eventually(counted, what="the workflow counts are refreshed")
        samples = _samples(node)

    order = {"workflow_type": "obs.order"}
    assert total(samples, "mainspring_workflow_starts_total", **order) == 1
    assert total(samples, "mainspring_workflow_starts_total") == 3
    assert total(samples, "mainspring_workflow_completions_total", status="completed", **order) == 1
    assert total(samples, "mainspring_workflow_completions_total", status="failed") == 1
    assert total(samples, "mainspring_workflows", status="running") == 0
    assert total(samples, "mainspring_step_attempts_total", step="flaky_charge") == 2
    assert total(samples, "mainspring_step_attempts_total", step="broken_notify") == 2
    assert (
        total(
            samples, "mainspring_step_retries_total", step="flaky_charge", error="ConnectionError"
        )
        == 1
    )
    assert (
        total(samples, "mainspring_step_failures_total", step="broken_notify", error="LookupError")
        == 2
    )
    # g-2's refused commit, and maybe the snapshot g-3 writes when it leaves.
    assert total(samples, "mainspring_journal_rejections_total", reason="fenced") >= 1
    assert total(samples, "mainspring_journal_rejections_total", reason="conflict") == 0
    assert total(samples, "mainspring_journal_commit_seconds_count") >= 1
    assert total(samples, "mainspring_journal_commit_seconds_sum") > 0
    assert total(samples, "mainspring_journal_batch_requests_count") == total(
        samples, "mainspring_journal_commits_total"
    )
    assert total(samples, "mainspring_journal_batch_requests_sum") >= total(
        samples, "mainspring_journal_commits_total"
    )
    assert total(samples, "mainspring_journal_events_total") > 0
    assert total(samples, "mainspring_lease_acquisitions_total") >= 5
    assert total(samples, "mainspring_lease_renewals_total") >= 1
    assert total(samples, "mainspring_lease_takeovers_total") == 1
    assert total(samples, "mainspring_actor_messages_total") > 0
    assert total(samples, "mainspring_reminders_fired_total") >= 1
    assert total(samples, "mainspring_timer_lag_seconds") >= 0
    assert total(samples, "mainspring_live_actors") >= 1
    assert total(samples, "mainspring_mailbox_messages") == 0


async def test_two_nodes_in_one_process_keep_their_metrics_apart(tmp_path: Path) -> None:
    workload.ATTEMPTS.clear()
    async with _node(tmp_path / "a.db", Telemetry()) as first:
        async with _node(tmp_path / "b.db", Telemetry()) as second:
            for number in range(3):
                await first.ask(workload.Gate, f"g-{number}", workload.Touch())
            await second.ask(workload.Gate, "g-0", workload.Touch())
            assert total(_samples(first), "mainspring_actor_messages_total") == 3
            assert total(_samples(second), "mainspring_actor_messages_total") == 1


def test_one_telemetry_serves_one_node(tmp_path: Path) -> None:
    telemetry = Telemetry()
    _node(tmp_path / "a.db", telemetry)
    with pytest.raises(Exception, match="already serves node 'n1'"):
        Node("n2", store=SqliteStore(str(tmp_path / "b.db")), telemetry=telemetry)
