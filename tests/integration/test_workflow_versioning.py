"""Replay and versioning: a code change that no longer matches a history parks the workflow as
``stalled`` with a precise diagnosis; a patch marker or a pinned version replays old histories
along the old path; fixed code resumes a stalled workflow with the events it missed."""

from __future__ import annotations

from pathlib import Path

import pytest

import mainspring
from mainspring import Node, NodeConfig, WorkflowContext
from mainspring.actors.workflow_runtime import WorkflowEvent, WorkflowRun, WorkflowState
from mainspring.persistence.sqlite import SqliteStore
from tests.support.waiting import eventually

FAST = NodeConfig(timer_poll_interval_s=0.05, outbox_poll_interval_s=0.05)


async def fetch(what: str) -> str:
    return f"fetched {what}"


async def audit(what: str) -> str:
    return f"audited {what}"


# Version 1 of "review", as it was deployed when the workflows started.
@mainspring.workflow("review")
async def review_v1(ctx: WorkflowContext, item: str) -> list[str]:
    fetched = await ctx.step(fetch, item)
    decision = await ctx.wait_for_signal("decision")
    return [fetched, decision]


# An in-place edit that inserts a step before the wait: not replayable on old histories.
@mainspring.workflow("review")
async def review_edited(ctx: WorkflowContext, item: str) -> list[str]:
    audited = await ctx.step(audit, item)
    fetched = await ctx.step(fetch, item)
    decision = await ctx.wait_for_signal("decision")
    return [audited, fetched, decision]


# The same edit guarded by a patch marker: old histories keep the old path.
@mainspring.workflow("review")
async def review_patched(ctx: WorkflowContext, item: str) -> list[str]:
    fetched = await ctx.step(fetch, item)
    decision = await ctx.wait_for_signal("decision")
    if ctx.patched("audit-after-decision"):
        return [fetched, decision, await ctx.step(audit, item)]
    return [fetched, decision]


# Version 2 as a separate registration, side by side with version 1.
@mainspring.workflow("review", version=2)
async def review_v2(ctx: WorkflowContext, item: str) -> list[str]:
    audited = await ctx.step(audit, item)
    decision = await ctx.wait_for_signal("decision")
    return [audited, decision, "v2"]


async def _waiting(node: Node, workflow_id: str) -> bool:
    return (await node.workflows.describe(workflow_id)).status == "waiting"


async def _start_on_v1(db: str, workflow_id: str) -> None:
    async with Node("n1", store=SqliteStore(db), workflows=[review_v1], config=FAST) as node:
        await node.workflows.start(review_v1, workflow_id, "invoice-7")
        await eventually(lambda: _waiting(node, workflow_id), what="v1 waits for the decision")


async def test_an_incompatible_change_stalls_with_a_precise_diagnosis(tmp_path: Path) -> None:
    db = str(tmp_path / "wf.db")
    await _start_on_v1(db, "r-1")
    async with Node("n1", store=SqliteStore(db), workflows=[review_edited], config=FAST) as node:
        # the node recovers nothing here ("waiting"), so a signal is what activates it
        await node.workflows.signal("r-1", "decision", "approved")
        description = await node.workflows.describe("r-1")
        assert description.status == "stalled"
        assert "not deterministic at step 1" in description.stall
        assert "recorded step 1 'fetch'" in description.stall
        assert "now issues step 1 'audit'" in description.stall
        assert "ctx.patched" in description.stall
        assert description.queued_events == 1  # the signal is kept, not applied, not lost
        rows = await node.workflows.list(status="stalled")
        assert [row.actor_id for row in rows] == ["r-1"]
        with pytest.raises(TimeoutError, match="stalled"):
            await node.workflows.result("r-1", timeout_s=0.2)
        assert node.statistics()["workflows"]["stalls"] == 1
    # Deploying code that replays (here: the original) resumes it with the queued signal.
    async with Node("n1", store=SqliteStore(db), workflows=[review_v1], config=FAST) as node:
        # the first message activates it: the replay succeeds, the queued signal is applied
        # and the run completes, so this later signal finds it closed
        with pytest.raises(mainspring.CommandRejected, match="completed"):
            await node.workflows.signal("r-1", "decision", "second opinion")
        assert await node.workflows.result("r-1", timeout_s=10) == [
            "fetched invoice-7",
            "approved",
        ]
        description = await node.workflows.describe("r-1")
        assert description.stall == ""


async def test_a_patch_marker_replays_old_histories_along_the_old_path(tmp_path: Path) -> None:
    db = str(tmp_path / "wf.db")
    await _start_on_v1(db, "old")
    async with Node("n1", store=SqliteStore(db), workflows=[review_patched], config=FAST) as node:
        await node.workflows.signal("old", "decision", "approved")
        # the old history reaches ctx.patched live, after the replay: the new path is taken
        assert await node.workflows.result("old", timeout_s=10) == [
            "fetched invoice-7",
            "approved",
            "audited invoice-7",
        ]
        await node.workflows.start(review_patched, "new", "invoice-8")
        await node.workflows.signal("new", "decision", "rejected")
        assert await node.workflows.result("new", timeout_s=10) == [
            "fetched invoice-8",
            "rejected",
            "audited invoice-8",
        ]


async def test_a_patch_marker_in_the_history_is_required_on_replay(tmp_path: Path) -> None:
    """A run that took the patched path stalls if the patch is removed too early."""
    db = str(tmp_path / "wf.db")

    @mainspring.workflow("patched-early")
    async def with_patch(ctx: WorkflowContext, _: None) -> str:
        if ctx.patched("p1"):
            await ctx.step(audit, "x")
        return await ctx.wait_for_signal("go")

    @mainspring.workflow("patched-early")
    async def without_patch(ctx: WorkflowContext, _: None) -> str:
        return await ctx.wait_for_signal("go")

    async with Node("n1", store=SqliteStore(db), workflows=[with_patch], config=FAST) as node:
        await node.workflows.start(with_patch, "p-1", None)
        await eventually(lambda: _waiting(node, "p-1"), what="it waits")
    async with Node("n1", store=SqliteStore(db), workflows=[without_patch], config=FAST) as node:
        await node.workflows.signal("p-1", "go", "now")
        stall = (await node.workflows.describe("p-1")).stall
        assert "recorded patch marker 'p1'" in stall, stall


async def test_versions_run_side_by_side_pinned_at_start(tmp_path: Path) -> None:
    db = str(tmp_path / "wf.db")
    await _start_on_v1(db, "on-v1")
    both = [review_v1, review_v2]
    async with Node("n1", store=SqliteStore(db), workflows=both, config=FAST) as node:
        await node.workflows.start("review", "on-v2", "invoice-9")  # the newest version
        await node.workflows.signal("on-v1", "decision", "a")
        await node.workflows.signal("on-v2", "decision", "b")
        assert await node.workflows.result("on-v1", timeout_s=10) == ["fetched invoice-7", "a"]
        assert await node.workflows.result("on-v2", timeout_s=10) == [
            "audited invoice-9",
            "b",
            "v2",
        ]
        assert (await node.workflows.describe("on-v1")).version == 1
        assert (await node.workflows.describe("on-v2")).version == 2


async def test_a_history_of_an_unregistered_version_is_stalled_and_visible(
    tmp_path: Path,
) -> None:
    db = str(tmp_path / "wf.db")
    await _start_on_v1(db, "r-1")
    async with Node("n1", store=SqliteStore(db), workflows=[review_v2], config=FAST) as node:
        await node.workflows.signal("r-1", "decision", "approved")
        description = await node.workflows.describe("r-1")
        assert description.status == "stalled"
        assert "version 1 of workflow type 'review' is not registered" in description.stall


def test_replaying_a_recorded_history_against_changed_code_names_both_commands() -> None:
    """``WorkflowRun.replay`` on its own, from a history recorded by version 1."""
    history = [
        WorkflowEvent(
            "started",
            name="review",
            attempt=1,
            at_ms=1_000,
            data={"input": {"d": "x"}, "seed": 1, "first_command": 1},
        ),
        WorkflowEvent("step_scheduled", 1, "fetch", 1_000),
        WorkflowEvent("step_completed", 1, "fetch", 1_005, {"d": "fetched x"}, 1),
    ]

    class Shell:
        """The least of a workflow actor that a replay needs."""

        codec = mainspring.registry
        services = None

        class host:
            class clock:
                @staticmethod
                def monotonic_s() -> float:
                    return 0.0

            class config:
                workflow_task_warn_s = 1.0

    run = WorkflowRun(Shell(), review_v1, "w", 1)  # type: ignore[arg-type]
    run.replay(history)
    assert run.stall is None
    assert run.main is not None
    assert not run.main.done()  # waiting for the decision

    changed = WorkflowRun(Shell(), review_edited, "w", 1)  # type: ignore[arg-type]
    changed.replay(history)
    assert changed.stall is not None
    assert changed.stall.step == 1
    assert changed.stall.recorded == "step 1 'fetch'"
    assert changed.stall.new == "step 1 'audit'"
    assert WorkflowState().status == "new"


async def test_a_node_with_fixed_code_resumes_stalled_workflows_when_it_starts(
    tmp_path: Path,
) -> None:
    db = str(tmp_path / "wf.db")
    await _start_on_v1(db, "r-1")
    async with Node("n1", store=SqliteStore(db), workflows=[review_edited], config=FAST) as node:
        await node.workflows.signal("r-1", "decision", "approved")
        assert (await node.workflows.describe("r-1")).status == "stalled"
    async with Node("n1", store=SqliteStore(db), workflows=[review_patched], config=FAST) as node:
        # nothing is sent: the node wakes stalled workflows when it starts
        async def resumed() -> bool:
            return (await node.workflows.describe("r-1")).status == "completed"

        await eventually(resumed, what="the stalled workflow resumes")
        assert await node.workflows.result("r-1", timeout_s=10) == [
            "fetched invoice-7",
            "approved",
            "audited invoice-7",
        ]
