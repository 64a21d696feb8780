"""Spans of a node: batches, step attempts, journal commits, and a workflow's trace kept across
a restart of its node."""

from __future__ import annotations

import asyncio
from pathlib import Path

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from mainspring import Node, NodeConfig
from mainspring.observability import Telemetry, current_traceparent, trace_context
from mainspring.persistence.sqlite import SqliteStore
from mainspring.persistence.store import stream_id_of
from tests.observability import workload
from tests.support.waiting import eventually

QUICK_STOP = NodeConfig(
    timer_poll_interval_s=0.05, outbox_poll_interval_s=0.05, shutdown_timeout_s=0.2
)
WORKFLOWS = [
    workload.order,
    workload.interrupted,
    workload.parent,
    workload.child,
    workload.rounds,
    workload.waiting,
]


def _traced() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def _node(db: Path, provider: TracerProvider) -> Node:
    return Node(
        "n1",
        store=SqliteStore(str(db)),
        actors=[workload.Gate],
        workflows=WORKFLOWS,
        config=QUICK_STOP,
        telemetry=Telemetry(tracer_provider=provider, workflow_counts_interval_s=None),
    )


def _named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


def test_traceparent_round_trips_and_is_empty_outside_a_span() -> None:
    provider, _ = _traced()
    assert current_traceparent() == ""
    assert trace_context("") is None
    assert trace_context("not-a-traceparent") is None
    with provider.get_tracer("t").start_as_current_span("outer") as span:
        traceparent = current_traceparent()
    context = span.get_span_context()
    assert traceparent == (
        f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    )
    assert trace_context(traceparent) is not None


async def test_steps_are_children_of_the_span_that_started_the_workflow(tmp_path: Path) -> None:
    workload.ATTEMPTS.clear()
    provider, exporter = _traced()
    client = provider.get_tracer("client")
    async with _node(tmp_path / "t.db", provider) as node:
        with client.start_as_current_span("checkout", kind=SpanKind.CLIENT) as checkout:
            handle = await node.workflows.start(workload.order, "o-1", 5)
        assert await handle.result(timeout_s=20) == 5
    trace_id = checkout.get_span_context().trace_id
    charges = _named(exporter, "step flaky_charge")
    assert len(charges) == 2  # the failed attempt and its retry
    for span in charges:
        assert span.context is not None
        assert span.parent is not None
        assert span.context.trace_id == trace_id
        assert span.parent.span_id == checkout.get_span_context().span_id
        assert span.attributes is not None
        assert span.attributes["mainspring.workflow_id"] == "o-1"
    assert sorted(span.attributes["mainspring.attempt"] for span in charges if span.attributes) == [
        1,
        2,
    ]
    assert not charges[0].status.is_ok  # the first attempt raised
    notify = _named(exporter, "step broken_notify")
    assert len(notify) == 1
    assert notify[0].context is not None
    assert notify[0].context.trace_id == trace_id
    handled = _named(exporter, "mainspring.actor.handle")
    assert handled
    workflow_stream = stream_id_of("mainspring.workflow", "o-1")
    assert any(
        span.attributes and span.attributes["mainspring.stream_id"] == workflow_stream
        for span in handled
    )
    # The start was one message sent inside the checkout span: its batch is that span's child.
    checkout_id = checkout.get_span_context().span_id
    assert any(span.parent is not None and span.parent.span_id == checkout_id for span in handled)
    commits = _named(exporter, "mainspring.journal.commit")
    assert commits
    assert all(span.parent is None for span in commits)
    assert all(span.attributes and span.attributes["mainspring.requests"] >= 1 for span in commits)


async def test_a_workflow_keeps_its_trace_after_its_node_restarts(tmp_path: Path) -> None:
    workload.ATTEMPTS.clear()
    db = tmp_path / "restart.db"
    first_provider, first_exporter = _traced()
    async with _node(db, first_provider) as node:
        with first_provider.get_tracer("client").start_as_current_span("signup") as signup:
            await node.workflows.start(workload.interrupted, "i-1", None)

        async def attempted() -> bool:
            return workload.ATTEMPTS["i-1/1"] >= 1

        await eventually(attempted, what="the first attempt starts")
    # A new node instance, with its own tracer provider, finishes the workflow.
    second_provider, second_exporter = _traced()
    async with _node(db, second_provider) as node:
        assert await node.workflows.result("i-1", timeout_s=20) == "done"
    await asyncio.sleep(0)
    original = signup.get_span_context()
    before = _named(first_exporter, "step stuck_until_released")
    after = _named(second_exporter, "step stuck_until_released")
    assert len(before) == 1
    assert len(after) == 1
    for span in (*before, *after):
        assert span.context is not None
        assert span.parent is not None
        assert span.context.trace_id == original.trace_id
        assert span.parent.span_id == original.span_id


async def test_a_child_workflow_runs_in_its_parents_trace(tmp_path: Path) -> None:
    provider, exporter = _traced()
    async with _node(tmp_path / "child.db", provider) as node:
        with provider.get_tracer("client").start_as_current_span("request") as request:
            handle = await node.workflows.start(workload.parent, "p-1", "hi")
        assert await handle.result(timeout_s=20) == "HI"
    shouts = _named(exporter, "step shout")
    assert len(shouts) == 1
    assert shouts[0].context is not None
    assert shouts[0].context.trace_id == request.get_span_context().trace_id


async def test_a_batch_of_several_messages_links_to_every_sender(tmp_path: Path) -> None:
    provider, exporter = _traced()
    tracer = provider.get_tracer("client")
    workload.GATE["open"] = asyncio.Event()
    async with _node(tmp_path / "batch.db", provider) as node:
        blocked = asyncio.ensure_future(node.ask(workload.Gate, "g", workload.WaitAtGate()))
        await asyncio.sleep(0.05)
        senders = []
        for name in ("first", "second"):
            with tracer.start_as_current_span(name) as sender:
                await node.tell(workload.Gate, "g", workload.Touch())
            senders.append(sender.get_span_context())
        workload.GATE["open"].set()
        await blocked
        assert await node.ask(workload.Gate, "g", workload.Touch()) == 3
    batches = [
        span
        for span in _named(exporter, "mainspring.actor.handle")
        if span.attributes and span.attributes["mainspring.messages"] == 2
    ]
    assert len(batches) == 1
    assert batches[0].parent is None
    assert [link.context for link in batches[0].links] == senders


async def test_runs_that_continue_as_new_stay_in_the_trace(tmp_path: Path) -> None:
    provider, exporter = _traced()
    async with _node(tmp_path / "rounds.db", provider) as node:
        with provider.get_tracer("client").start_as_current_span("subscribe") as subscribe:
            handle = await node.workflows.start(workload.rounds, "r-1", 1)
        assert await handle.result(timeout_s=20) == 3
    shouts = _named(exporter, "step shout")
    assert len(shouts) == 3
    for span in shouts:
        assert span.parent is not None
        assert span.parent.span_id == subscribe.get_span_context().span_id


async def test_a_signal_is_handled_in_the_signallers_trace(tmp_path: Path) -> None:
    provider, exporter = _traced()
    tracer = provider.get_tracer("client")
    async with _node(tmp_path / "signal.db", provider) as node:
        with tracer.start_as_current_span("subscribe") as subscribe:
            handle = await node.workflows.start(workload.waiting, "w-1", None)
        with tracer.start_as_current_span("confirm") as confirm:
            await node.workflows.signal("w-1", "go", "yes")
        assert await handle.result(timeout_s=20) == "yes"
    handled = [
        span
        for span in _named(exporter, "mainspring.actor.handle")
        if span.parent is not None
        and span.parent.span_id
        in {subscribe.get_span_context().span_id, confirm.get_span_context().span_id}
    ]
    assert {span.parent.span_id for span in handled if span.parent} == {
        subscribe.get_span_context().span_id,
        confirm.get_span_context().span_id,
    }
