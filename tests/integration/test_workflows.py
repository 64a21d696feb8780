"""Workflows end to end on real stores: starting, steps and retries, timers, signals, queries,
lifecycle operations, children, actors, continue-as-new and recovery after a restart."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest

import mainspring
from mainspring import (
    CommandRejected,
    Node,
    NodeConfig,
    UsageError,
    WorkflowConflict,
    WorkflowError,
    WorkflowNotFound,
)
from mainspring.actors.workflow_runtime import WORKFLOW_ACTOR_TYPE, ParentClosed, StartWorkflow
from mainspring.persistence.sqlite import SqliteStore
from mainspring.persistence.store import stream_id_of
from tests.support import workflows as w
from tests.support.accounts import Account, Deposit, GetBalance
from tests.support.waiting import eventually

FAST = NodeConfig(
    timer_poll_interval_s=0.05,
    outbox_poll_interval_s=0.05,
    outbox_retry_interval_s=0.05,
    shutdown_timeout_s=2.0,
)
ALL = [
    w.pipeline,
    w.bounded_parent,
    w.interrupted,
    w.keys,
    w.saga_workflow,
    w.fragile,
    w.non_retryable,
    w.timeouts,
    w.signals,
    w.cancellable,
    w.gated,
    w.looping,
    w.child,
    w.parent,
    w.idle_child,
    w.leaving_parent,
    w.child_then_charge,
    w.fanout,
    w.blocking,
]


@pytest.fixture
def effects() -> w.Effects:
    return w.reset_effects()


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "workflows.db")


@pytest.fixture
async def node(db: str) -> AsyncIterator[Node]:
    async with Node("n1", store=SqliteStore(db), actors=[Account], workflows=ALL, config=FAST) as n:
        yield n


# Starting and results -----------------------------------------------------------------


async def test_a_workflow_runs_its_steps_and_returns_over_every_store(
    store_factory: Callable[[], Any], effects: w.Effects
) -> None:
    async with Node("n1", store=store_factory(), workflows=ALL, config=FAST) as node:
        handle = await node.workflows.start(w.pipeline, "p-1", 4)
        result = await handle.result(timeout_s=20)
        assert result["result"] == (4 + 1) * 2 + 3
        description = await handle.describe()
        assert description.status == "completed"
        assert description.closed
        assert description.result == result
        # every step ran once, keyed by <workflow id>/<step number>
        assert dict(effects.attempts) == {"p-1/1": 1, "p-1/2": 1, "p-1/4": 1}
        rows = await node.workflows.list(status="completed")
        assert [row.actor_id for row in rows] == ["p-1"]


async def test_start_is_idempotent_for_the_same_input_and_conflicts_otherwise(
    node: Node, effects: w.Effects
) -> None:
    first = await node.workflows.start(w.pipeline, "p-1", 1)
    again = await node.workflows.start("test.pipeline", "p-1", 1)
    assert await first.result(timeout_s=20) == await again.result(timeout_s=20)
    with pytest.raises(WorkflowConflict, match="different input"):
        await node.workflows.start(w.pipeline, "p-1", 2)
    with pytest.raises(WorkflowConflict, match=r"type 'test\.pipeline'"):
        await node.workflows.start(w.keys, "p-1", None)
    # after completion the same start still returns the existing run
    await node.workflows.start(w.pipeline, "p-1", 1)
    assert effects.attempts["p-1/1"] == 1


async def test_a_start_creates_its_workflow_with_its_first_write_and_falls_back_if_it_exists(
    store_factory: Callable[[], Any], effects: w.Effects
) -> None:
    """A start assumes its workflow is new: the start's own commit creates the stream and takes
    its lease, with no lease transaction before it. A start that finds the workflow there
    (here: after a restart) writes nothing that way and is answered by an activation that took
    the lease and read the workflow, as before; so is a start that writes nothing at all."""
    stream_id = "mainspring.workflow/p-1"
    async with Node("n1", store=store_factory(), workflows=ALL, config=FAST) as node:
        reply = await node.workflows.start_with_outcome(w.pipeline, "p-1", 1)
        assert reply.created
        assert node.host.journal.statistics.lease_batches == 0
        assert node.host.statistics.leases_acquired == 1
        first = await node.workflows.result("p-1", timeout_s=20)
        with pytest.raises(UsageError, match="not registered"):
            await node.workflows.start("test.nope", "x-1", None)
        assert node.host.statistics.claims_abandoned == 1
        history = await node.host.store.read_lease_history(stream_id)
        assert [(record.epoch, record.owner) for record in history] == [(1, "n1")]
    async with Node("n2", store=store_factory(), workflows=ALL, config=FAST) as node:
        again = await node.workflows.start_with_outcome(w.pipeline, "p-1", 1)
        assert not again.created
        assert node.host.statistics.claims_refused == 1
        assert await node.workflows.result("p-1", timeout_s=20) == first
        with pytest.raises(WorkflowConflict, match="different input"):
            await node.workflows.start(w.pipeline, "p-1", 2)
        history = await node.host.store.read_lease_history(stream_id)
        assert [(record.epoch, record.owner) for record in history] == [(1, "n1"), (2, "n2")]
    assert effects.attempts["p-1/1"] == 1
    # Switched off, a start takes its lease first, in a lease transaction.
    config = attrs.evolve(FAST, create_with_first_write=False)
    async with Node("n3", store=store_factory(), workflows=ALL, config=config) as node:
        assert (await node.workflows.start_with_outcome(w.pipeline, "p-2", 1)).created
        assert node.host.journal.statistics.lease_batches >= 1
        assert node.host.statistics.claims_refused == 0


async def test_bad_input_is_refused_with_a_clear_error(node: Node) -> None:
    with pytest.raises(UsageError, match="not registered"):
        await node.workflows.start("test.nope", "x-1", None)
    with pytest.raises(UsageError, match="workflow_id"):
        await node.workflows.start(w.pipeline, "", 1)
    with pytest.raises(mainspring.CodecError, match="cannot encode"):
        await node.workflows.start(w.pipeline, "x-2", object())
    contains_itself: list[object] = []
    contains_itself.append(contains_itself)
    with pytest.raises(mainspring.CodecError, match="contains itself"):
        await node.workflows.start(w.pipeline, "x-2", contains_itself)
    with pytest.raises(UsageError, match="version"):
        await node.workflows.start(w.pipeline, "x-3", 1, version=0)
    with pytest.raises(UsageError, match="version 7"):
        await node.workflows.start(w.pipeline, "x-4", 1, version=7)
    with pytest.raises(WorkflowNotFound):
        await node.workflows.describe("never-started")
    with pytest.raises(WorkflowNotFound):
        await node.workflows.signal("never-started", "go")
    with pytest.raises(UsageError, match="signal name"):
        await node.workflows.signal("x-1", "no spaces allowed")
    with pytest.raises(UsageError, match="timeout_s"):
        await node.workflows.result("x-1", timeout_s=-1)


async def test_result_times_out_with_what_the_workflow_is_doing(node: Node) -> None:
    await node.workflows.start(w.gated, "g-1", None)
    with pytest.raises(TimeoutError, match=r"it is (running|waiting)"):
        await node.workflows.result("g-1", timeout_s=0.2)


# Steps -----------------------------------------------------------------


async def test_step_context_gives_a_stable_idempotency_key(node: Node) -> None:
    result = await (await node.workflows.start(w.keys, "k-1", None)).result(timeout_s=20)
    assert result == [
        {"key": "k-1/1", "attempt": 1, "step": 1},
        {"key": "k-1/2", "attempt": 1, "step": 2},
    ]


async def test_failed_attempts_are_retried_with_the_same_key(
    node: Node, effects: w.Effects
) -> None:
    effects.fail_times["a"] = 2
    result = await (await node.workflows.start(w.pipeline, "r-1", 0)).result(timeout_s=20)
    assert result["result"] == 5
    assert effects.attempts["r-1/1"] == 3  # two failures, then success, all with one key
    assert list(effects.applied) == ["r-1/1", "r-1/2", "r-1/4"]


async def test_a_step_out_of_attempts_raises_in_the_code_which_compensates(
    node: Node, effects: w.Effects
) -> None:
    effects.fail_forever.add("charge")
    result = await (await node.workflows.start(w.saga_workflow, "s-1", 7)).result(timeout_s=20)
    assert result == "compensated"
    assert effects.attempts["s-1/2"] == w.FAST_RETRY.max_attempts
    assert "s-1/3" in effects.applied  # the release ran as a step of its own


async def test_a_non_retryable_error_fails_the_step_at_once(node: Node, effects: w.Effects) -> None:
    result = await (await node.workflows.start(w.non_retryable, "n-1", None)).result(timeout_s=20)
    assert result == "Refused after 1"
    assert effects.attempts["refuse"] == 1


async def test_attempt_and_heartbeat_timeouts_retry_the_step(node: Node) -> None:
    result = await (await node.workflows.start(w.timeouts, "t-1", None)).result(timeout_s=20)
    assert result == ["attempt 2", "attempt 2"]


async def test_an_unhandled_step_failure_fails_the_workflow_with_its_step(
    node: Node, effects: w.Effects
) -> None:
    effects.fail_forever.add("charge")
    handle = await node.workflows.start(w.fragile, "f-1", 1)
    with pytest.raises(WorkflowError) as caught:
        await handle.result(timeout_s=20)
    assert caught.value.status == "failed"
    assert caught.value.error is not None
    assert caught.value.error["type"] == "StepFailed"
    description = await handle.describe()
    assert description.failed_step == 2
    assert "charge is down" in description.error["message"]  # type: ignore[index]


async def test_a_failed_workflow_is_retried_from_its_failing_step(
    node: Node, effects: w.Effects
) -> None:
    effects.fail_forever.add("charge")
    handle = await node.workflows.start(w.fragile, "f-1", 1)
    with pytest.raises(WorkflowError):
        await handle.result(timeout_s=20)
    failed_attempts = effects.attempts["f-1/2"]
    effects.fail_forever.clear()
    await node.workflows.retry("f-1", "the card service is back")
    assert await handle.result(timeout_s=20) == 3
    assert effects.attempts["f-1/1"] == 1  # the first step was not run again
    assert effects.attempts["f-1/2"] == failed_attempts + 1  # same key, one more attempt
    with pytest.raises(CommandRejected, match="only a failed workflow"):
        await node.workflows.retry("f-1")


# Timers, signals, queries -----------------------------------------------------------------


async def test_signals_are_buffered_in_order_and_deduplicated(node: Node) -> None:
    handle = await node.workflows.start(w.signals, "sig-1", 3)
    await handle.signal("item", "a", signal_id="s1")
    await handle.signal("item", "a", signal_id="s1")  # a duplicate delivery: recorded once
    await handle.signal("item", "b", signal_id="s2")
    assert await handle.query("items") == ["a", "b"]
    await handle.signal("done", "early")  # buffered before the code waits for it
    await handle.signal("item", "c", signal_id="s3")
    assert await handle.result(timeout_s=20) == {"items": ["a", "b", "c"], "done": "early"}
    with pytest.raises(CommandRejected, match="no more signals"):
        await handle.signal("item", "late")


async def test_waiting_for_a_signal_times_out_on_a_durable_timer(node: Node) -> None:
    handle = await node.workflows.start(w.signals, "sig-2", 0)
    assert await handle.result(timeout_s=20) == {"items": [], "done": "timed out"}


async def test_an_unknown_query_is_refused_and_queries_write_nothing(node: Node) -> None:
    handle = await node.workflows.start(w.signals, "q-1", 2)
    before = (await handle.describe()).history_events
    with pytest.raises(CommandRejected, match="no query handler 'nope'"):
        await handle.query("nope")
    assert await handle.query("buffered") == 0
    assert (await handle.describe()).history_events == before


# Lifecycle -----------------------------------------------------------------


async def test_cancellation_reaches_the_code_which_compensates(
    node: Node, effects: w.Effects
) -> None:
    handle = await node.workflows.start(w.cancellable, "c-1", 5)

    async def waiting() -> bool:
        return (await handle.describe()).status == "waiting"

    await eventually(waiting, what="the workflow sleeps")
    await handle.cancel("customer asked")
    with pytest.raises(WorkflowError) as caught:
        await handle.result(timeout_s=20)
    assert caught.value.status == "cancelled"
    assert set(effects.applied) == {"c-1/1", "c-1/3"}  # reserve, then the release (2 = timer)
    assert (await handle.describe()).timers == {}


async def test_terminate_ends_a_workflow_without_running_its_code(
    node: Node, effects: w.Effects
) -> None:
    handle = await node.workflows.start(w.cancellable, "c-2", 5)
    await eventually(lambda: _status_is(handle, "waiting"), what="the workflow sleeps")
    description = await node.workflows.terminate("c-2", "operator")
    assert description.status == "terminated"
    with pytest.raises(WorkflowError, match="terminated"):
        await handle.result(timeout_s=5)
    assert set(effects.applied) == {"c-2/1"}


async def _status_is(handle: mainspring.WorkflowHandle, status: str) -> bool:
    return (await handle.describe()).status == status


async def test_pause_queues_events_until_resume(node: Node, effects: w.Effects) -> None:
    handle = await node.workflows.start(w.gated, "g-1", None)
    await eventually(lambda: _status_is(handle, "waiting"), what="the workflow waits for go")
    await node.workflows.pause("g-1")
    await handle.signal("go", "now")
    paused = await handle.describe()
    assert paused.status == "paused"
    assert paused.queued_events == 1
    await asyncio.sleep(0.2)
    assert "g-1/2" not in effects.attempts  # nothing ran while paused
    await node.workflows.resume("g-1")
    assert await handle.result(timeout_s=20) == [1, "now", 2]


async def test_continue_as_new_keeps_the_history_short(node: Node, effects: w.Effects) -> None:
    handle = await node.workflows.start(
        w.looping, "loop-1", {"count": 0, "per_run": 5, "until": 23}
    )
    assert await handle.result(timeout_s=30) == {"count": 23, "run": 5}
    description = await handle.describe()
    assert description.run == 5
    assert [run["run"] for run in description.previous_runs] == [1, 2, 3, 4]
    assert description.history_events < 15  # one run's history, not 23 steps'
    # step numbers keep counting across runs, so idempotency keys never repeat
    assert len(effects.applied) == 23
    assert len(set(effects.applied)) == 23


# Children and actors -----------------------------------------------------------------


async def test_children_run_through_the_outbox_and_report_back(
    node: Node, effects: w.Effects
) -> None:
    handle = await node.workflows.start(w.parent, "par-1", [1, 2, -1])
    result = await handle.result(timeout_s=20)
    assert result == {"children": [2, 4, "failed: failed"]}
    assert (await node.workflows.describe("par-1-child-0")).status == "completed"
    assert (await node.workflows.describe("par-1-child-2")).status == "failed"


async def _status_of(node: Node, workflow_id: str, status: str) -> bool:
    try:
        return (await node.workflows.describe(workflow_id)).status == status
    except WorkflowNotFound:  # not started yet: the start travels through the outbox
        return False


async def test_a_parent_that_ends_cancels_its_running_children_unless_abandoned(
    node: Node,
) -> None:
    """Goal: children do not outlive a parent that completed, unless started to. Method: a
    parent starts two idle children (one with on_parent_close="abandon") and completes."""
    handle = await node.workflows.start(w.leaving_parent, "lp-1", "complete")
    for child_id in ("lp-1-kept", "lp-1-left"):
        await eventually(lambda c=child_id: _status_of(node, c, "waiting"), what=child_id)
    await handle.signal("end")
    assert await handle.result(timeout_s=20) == "done"
    await eventually(lambda: _status_of(node, "lp-1-kept", "cancelled"), what="the cancel")
    stored = await node.store.read_events(stream_id_of(WORKFLOW_ACTOR_TYPE, "lp-1-kept"))
    history = [node.codec.decode(e.type_name, e.type_version, e.payload) for e in stored]
    [requested] = [e for e in history if e.kind == "cancel_requested"]
    assert requested.data == "the parent workflow 'lp-1' ended completed"
    # The abandoned child runs on, and finishes on its own terms.
    assert (await node.workflows.describe("lp-1-left")).status == "waiting"
    await node.workflows.signal("lp-1-left", "go", "later")
    assert await node.workflows.result("lp-1-left", timeout_s=20) == "later"


async def test_cancelling_a_parent_cancels_the_child_it_waits_for(node: Node) -> None:
    handle = await node.workflows.start(w.leaving_parent, "lp-2", "wait")
    await eventually(lambda: _status_of(node, "lp-2-kept", "waiting"), what="the child")
    await node.workflows.cancel("lp-2", "no longer needed")
    await eventually(lambda: _status_of(node, "lp-2", "cancelled"), what="the parent's cancel")
    await eventually(lambda: _status_of(node, "lp-2-kept", "cancelled"), what="the child's")
    assert (await node.workflows.describe("lp-2-left")).status == "waiting"
    with pytest.raises(mainspring.WorkflowError) as ended:
        await handle.result(timeout_s=5)
    assert ended.value.status == "cancelled"


async def test_a_failed_parent_leaves_its_children_running_for_a_retry(node: Node) -> None:
    handle = await node.workflows.start(w.leaving_parent, "lp-3", "fail")
    await eventually(lambda: _status_of(node, "lp-3-kept", "waiting"), what="the child")
    await handle.signal("end")
    await eventually(lambda: _status_of(node, "lp-3", "failed"), what="the parent's failure")
    # The outbox had its chance to deliver anything the failure sent.
    await node.workflows.signal("lp-3-left", "go", "x")
    assert await node.workflows.result("lp-3-left", timeout_s=20) == "x"
    assert (await node.workflows.describe("lp-3-kept")).status == "waiting"


async def test_a_retried_parent_learns_of_a_child_that_finished_while_it_was_failed(
    node: Node, effects: w.Effects
) -> None:
    """Goal: a retry from the failure point does not wait forever for a child whose result
    the failed run turned away. Method: the child finishes while its parent is failed, its
    report is delivered (and dropped) before the retry, then the parent is retried."""
    effects.fail_forever.add("charge")
    handle = await node.workflows.start(w.child_then_charge, "ctc-1", None)
    await eventually(lambda: _status_of(node, "ctc-1", "failed"), what="the parent's failure")
    await eventually(lambda: _status_of(node, "ctc-1-c", "waiting"), what="the child")
    await node.workflows.signal("ctc-1-c", "go", "late")
    assert await node.workflows.result("ctc-1-c", timeout_s=20) == "late"

    async def outbox_empty() -> bool:
        return not await node.store.read_outbox(10)

    await eventually(outbox_empty, what="the child's report delivered to the failed parent")
    assert (await handle.describe()).status == "failed"
    effects.fail_forever.clear()
    await node.workflows.retry("ctc-1", "the card service is back")
    assert await handle.result(timeout_s=20) == "late"


async def test_a_parents_close_that_overtakes_the_childs_start_cancels_the_child(
    node: Node,
) -> None:
    """Goal: a child never runs orphaned because its parent's ParentClosed was delivered
    before its StartWorkflow (as when the start's first delivery failed). Method: deliver the
    two to the child's actor in that order, as the parent's outbox would."""
    await node.ask(WORKFLOW_ACTOR_TYPE, "early-c", ParentClosed("early-p", 1, "completed"))
    start = StartWorkflow("test.idle_child", node.codec.to_value(None), 0, "early-p", 1)
    await node.ask(WORKFLOW_ACTOR_TYPE, "early-c", start)
    await eventually(lambda: _status_of(node, "early-c", "cancelled"), what="the child's cancel")
    stored = await node.store.read_events(stream_id_of(WORKFLOW_ACTOR_TYPE, "early-c"))
    history = [node.codec.decode(e.type_name, e.type_version, e.payload) for e in stored]
    [requested] = [e for e in history if e.kind == "cancel_requested"]
    assert requested.data == "the parent workflow 'early-p' ended completed"
    # Another parent's start is not cancelled by it.
    await node.ask(WORKFLOW_ACTOR_TYPE, "early-d", ParentClosed("early-p", 1, "completed"))
    other = StartWorkflow("test.idle_child", node.codec.to_value(None), 0, "early-q", 1)
    await node.ask(WORKFLOW_ACTOR_TYPE, "early-d", other)
    assert (await node.workflows.describe("early-d")).status == "waiting"


async def test_on_parent_close_is_checked(node: Node) -> None:
    """A policy other than cancel or abandon fails the parent's code, naming the choices."""
    handle = await node.workflows.start(w.leaving_parent, "lp-4", "orphan")
    with pytest.raises(mainspring.WorkflowError) as ended:
        await handle.result(timeout_s=20)
    assert ended.value.status == "failed"
    assert 'on_parent_close must be "cancel" or "abandon"' in str(ended.value.error)


@mainspring.workflow("test.bank")
async def bank(ctx: mainspring.WorkflowContext, amount: int) -> int:
    await ctx.ask(Account, "alice", Deposit(amount))
    ctx.tell(Account, "bob", Deposit(amount))
    balance: int = await ctx.ask(Account, "alice", GetBalance())
    return balance


async def test_workflows_message_actors_exactly_once(db: str) -> None:
    async with Node(
        "n1", store=SqliteStore(db), actors=[Account], workflows=[bank], config=FAST
    ) as node:
        assert await (await node.workflows.start(bank, "b-1", 30)).result(timeout_s=20) == 30

        async def bob_paid() -> bool:
            return bool(await node.ask(Account, "bob", GetBalance()) == 30)

        await eventually(bob_paid, what="the outbox delivers to bob")
        # the same workflow again is the same run: nothing is applied twice
        await node.workflows.start(bank, "b-1", 30)
        assert await node.ask(Account, "alice", GetBalance()) == 30


# Scale, recovery, determinism -----------------------------------------------------------------


async def test_ten_thousand_steps_activate_from_a_snapshot_without_reading_every_event(
    db: str,
) -> None:
    spec = {"rounds": 100, "width": 100}
    expected = sum(r * 100 + sum(range(100)) for r in range(100))
    async with Node("n1", store=SqliteStore(db), workflows=ALL, config=FAST) as node:
        handle = await node.workflows.start(w.fanout, "big-1", spec)
        assert await handle.result(timeout_s=120) == expected
        head = await node.store.read_head("mainspring.workflow/big-1")
        assert head is not None
        assert head.head_seq > 20_000  # scheduled + completed for each of the 10,000 steps
    async with Node("n1", store=SqliteStore(db), workflows=ALL, config=FAST) as node:
        description = await node.workflows.describe("big-1")
        assert description.status == "completed"
        replayed = node.host.statistics.events_replayed
        assert replayed < w.pipeline.max_concurrent_steps * 4, replayed  # a snapshot and a tail
        assert await node.workflows.result("big-1") == expected


async def test_an_interrupted_step_runs_again_after_a_restart(db: str, effects: w.Effects) -> None:
    quick_stop = mainspring.NodeConfig(shutdown_timeout_s=0.2)
    async with Node("n1", store=SqliteStore(db), workflows=ALL, config=quick_stop) as node:
        await node.workflows.start(w.interrupted, "i-1", None)
        await eventually(lambda: _started(effects, "i-1/1"), what="the step starts")
    async with Node("n1", store=SqliteStore(db), workflows=ALL, config=quick_stop) as node:
        # the node woke the running workflow on start: its step ran again, with the same key
        assert await node.workflows.result("i-1", timeout_s=20) == 2


async def _started(effects: w.Effects, key: str) -> bool:
    return effects.attempts[key] >= 1


async def test_replay_after_a_restart_rebuilds_the_same_values(db: str, effects: w.Effects) -> None:
    async with Node("n1", store=SqliteStore(db), workflows=ALL, config=FAST) as node:
        handle = await node.workflows.start(w.signals, "sig-1", 2)
        await handle.signal("item", {"n": 1})
        assert await handle.query("items") == [{"n": 1}]
    async with Node("n1", store=SqliteStore(db), workflows=ALL, config=FAST) as node:
        handle = node.workflows.handle("sig-1")
        assert await handle.query("items") == [{"n": 1}]
        await handle.signal("item", {"n": 2})
        await handle.signal("done", True)
        assert await handle.result(timeout_s=20) == {"items": [{"n": 1}, {"n": 2}], "done": True}
        assert node.statistics()["workflows"]["stalls"] == 0


async def test_blocking_workflow_code_is_reported_not_killed(db: str) -> None:
    config = NodeConfig(workflow_task_warn_s=0.001)
    async with Node("n1", store=SqliteStore(db), workflows=ALL, config=config) as node:
        result = await (await node.workflows.start(w.blocking, "slow-1", 300_000)).result(
            timeout_s=30
        )
        assert result == sum(i * i for i in range(300_000))
        assert node.statistics()["workflows"]["slow_tasks"] >= 1


async def test_a_message_handled_while_an_attempt_reports_does_not_run_the_step_again(
    node: Node, effects: w.Effects
) -> None:
    handles = [await node.workflows.start(w.gated, f"race-{i}", None) for i in range(30)]
    for handle in handles:  # signals land while first steps finish and report
        await handle.signal("go", "now")
    for handle in handles:
        assert await handle.result(timeout_s=20) == [1, "now", 2]
    assert set(effects.attempts.values()) == {1}, effects.attempts


UNDO_GATE: list[asyncio.Event] = []


async def undo_slowly(calls: list[str]) -> None:
    calls.append("started")
    await UNDO_GATE[0].wait()
    calls.append("finished")


UNDO_CALLS: list[str] = []


async def undo_step() -> None:
    await undo_slowly(UNDO_CALLS)


@mainspring.workflow("test.saga_cancel")
async def saga_cancel(ctx: mainspring.WorkflowContext, _: None) -> str:
    saga = ctx.saga()
    saga.add(undo_step, name="undo")
    await ctx.wait_for_signal("fail")
    try:
        await saga.compensate()
    except asyncio.CancelledError:
        assert saga.pending == 1
        await saga.compensate()  # the interrupted compensation is still registered
        raise
    return "compensated"


async def test_a_compensation_interrupted_by_a_cancel_stays_registered(db: str) -> None:
    UNDO_GATE[:] = [asyncio.Event()]
    UNDO_CALLS.clear()
    async with Node("n1", store=SqliteStore(db), workflows=[saga_cancel], config=FAST) as node:
        handle = await node.workflows.start(saga_cancel, "sc-1", None)
        await handle.signal("fail")
        await eventually(lambda: _true(bool(UNDO_CALLS)), what="the undo step starts")
        await handle.cancel("operator")
        UNDO_GATE[0].set()
        with pytest.raises(WorkflowError, match="cancelled"):
            await handle.result(timeout_s=20)
        assert UNDO_CALLS[-1] == "finished"


async def _true(value: bool) -> bool:
    return value


async def test_a_fan_out_over_children_is_bounded(node: Node) -> None:
    handle = await node.workflows.start(w.bounded_parent, "bp-1", [1, 2, 3, 4, 5])
    assert await handle.result(timeout_s=20) == [2, 4, 6, 8, 10]
    events = await node.store.read_events("mainspring.workflow/bp-1")
    waiting, most = 0, 0
    for stored in events:
        event = mainspring.registry.decode(stored.type_name, stored.type_version, stored.payload)
        if event.kind == "child_started":
            waiting += 1
        elif event.kind == "child_finished":
            waiting -= 1
        most = max(most, waiting)
    assert most == 2


async def test_finished_workflows_leave_no_reference_cycles(db: str) -> None:
    """A workflow's run, loop and handler contexts are freed by reference counting as soon as
    it finishes: reference cycles would leave them to the garbage collector, whose pauses grow
    with every live actor."""
    async with Node("n1", store=SqliteStore(db), workflows=ALL, config=FAST) as node:
        handles = [await node.workflows.start(w.pipeline, f"warm-{n}", n) for n in range(3)]
        await asyncio.gather(*(handle.result(timeout_s=20) for handle in handles))
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            handles = [await node.workflows.start(w.pipeline, f"p-{n}", n) for n in range(10)]
            await asyncio.gather(*(handle.result(timeout_s=20) for handle in handles))
            gc.collect()
            ours = sorted(
                {
                    type(garbage).__qualname__
                    for garbage in gc.garbage
                    if type(garbage).__module__.startswith("mainspring")
                }
            )
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
    assert ours == []
