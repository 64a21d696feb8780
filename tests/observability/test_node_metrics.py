"""Every metric family gets samples from real traffic on a node over SQLite."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from mainspring import Node, UsageError, WorkflowError
from mainspring.observability import Telemetry
from mainspring.observability.prometheus import render
from mainspring.persistence.sqlite import SqliteStore
from tests.observability import workload
from tests.observability.support import Samples, parse, total
from tests.observability.traffic import check_every_family, make_node, queue_and_fence, samples_of
from tests.support.waiting import eventually


async def test_traffic_on_a_node_shows_in_every_family(tmp_path: Path) -> None:
    workload.ATTEMPTS.clear()
    telemetry = Telemetry(workflow_counts_interval_s=0.05)
    async with make_node(str(tmp_path / "m.db"), telemetry) as node:

        async def read() -> Samples:
            return samples_of(node)

        handle = await node.workflows.start(workload.order, "o-1", 7)
        assert await handle.result(timeout_s=20) == 7
        await node.workflows.start(workload.waiting, "w-1", None)
        await node.workflows.start(workload.doomed, "d-1", None)
        with pytest.raises(WorkflowError, match="no such recipient"):
            await node.workflows.result("d-1", timeout_s=20)
        await queue_and_fence(node, read)
        samples = samples_of(node)
    check_every_family(samples)


async def test_two_nodes_in_one_process_keep_their_metrics_apart(tmp_path: Path) -> None:
    async with (
        make_node(str(tmp_path / "a.db"), Telemetry()) as first,
        make_node(str(tmp_path / "b.db"), Telemetry()) as second,
    ):
        for number in range(3):
            await first.ask(workload.Gate, f"g-{number}", workload.Touch())
        await second.ask(workload.Gate, "g-0", workload.Touch())
        assert total(samples_of(first), "mainspring_actor_messages_total") == 3
        assert total(samples_of(second), "mainspring_actor_messages_total") == 1


async def test_one_telemetry_serves_one_node_at_a_time(tmp_path: Path) -> None:
    telemetry = Telemetry()
    async with make_node(str(tmp_path / "a.db"), telemetry) as node:
        await node.ask(workload.Gate, "g", workload.Touch())
    # The node stopped: its replacement in this process may take its Telemetry over.
    async with make_node(str(tmp_path / "a.db"), telemetry) as node:
        await node.ask(workload.Gate, "g", workload.Touch())
        await node.ask(workload.Gate, "g", workload.Touch())
        assert total(samples_of(node), "mainspring_actor_messages_total") == 2
        with pytest.raises(UsageError, match=r"already serves node 'n1' \(which is running\)"):
            Node("n2", store=SqliteStore(str(tmp_path / "b.db")), telemetry=telemetry)
    with pytest.raises(UsageError, match="telemetry must be a Telemetry"):
        Node("n3", store=SqliteStore(str(tmp_path / "c.db")), telemetry="yes")  # type: ignore[arg-type]


async def test_workflow_counts_need_a_node() -> None:
    with pytest.raises(UsageError, match="serves no node"):
        await Telemetry().refresh_workflow_counts()


async def test_runs_that_continue_as_new_count_as_started_and_ended(tmp_path: Path) -> None:
    async with make_node(str(tmp_path / "r.db"), Telemetry()) as node:
        handle = await node.workflows.start(workload.rounds, "r-1", 1)
        assert await handle.result(timeout_s=20) == 3
        samples = samples_of(node)
    rounds = {"workflow_type": "obs.rounds"}
    assert total(samples, "mainspring_workflow_starts_total", **rounds) == 3
    ended = "mainspring_workflow_completions_total"
    assert total(samples, ended, status="continued-as-new", **rounds) == 2
    assert total(samples, ended, status="completed", **rounds) == 1


async def test_workflows_are_counted_only_once_someone_reads_the_metrics(tmp_path: Path) -> None:
    telemetry = Telemetry(workflow_counts_interval_s=0.01)
    async with make_node(str(tmp_path / "c.db"), telemetry) as node:
        await node.workflows.start(workload.waiting, "w-1", None)
        await asyncio.sleep(0.1)  # ten intervals, and nobody read the metrics
        first = samples_of(node)
        assert not any(name == "mainspring_workflows" for name, _ in first)

        async def counted() -> bool:
            samples = samples_of(node)
            key = ("mainspring_workflows", frozenset({("status", "waiting")}))
            return samples.get(key) == 1

        await eventually(counted, what="the counts after the first read")


async def test_an_extra_reader_on_another_thread_sees_the_same_metrics(tmp_path: Path) -> None:
    extra = InMemoryMetricReader()
    telemetry = Telemetry(metric_readers=[extra], workflow_counts_interval_s=0.01)
    async with make_node(str(tmp_path / "x.db"), telemetry) as node:
        await node.workflows.start(workload.waiting, "w-1", None)
        collected: list[str] = []
        reader = threading.Thread(target=lambda: collected.append(render(extra.get_metrics_data())))
        reader.start()
        await asyncio.to_thread(reader.join)
        assert 'mainspring_workflow_starts_total{workflow_type="obs.waiting"} 1' in collected[0]

        async def counted() -> bool:
            key = ("mainspring_workflows", frozenset({("status", "waiting")}))
            return parse(render(extra.get_metrics_data())).get(key) == 1

        # The collection on the other thread started the counting on the node's loop.
        await eventually(counted, what="the counts after a collection on another thread")
