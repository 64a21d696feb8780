"""FaultyStore's decisions and records, and each checker against a hand-made violation."""

from __future__ import annotations

import attrs
import pytest

from mainspring.errors import Fenced, StoreUnavailable
from mainspring.persistence.store import AppendRequest, NewEvent, StoredEvent
from mainspring.simulations import (
    InvariantViolation,
    StoreContents,
    StoreFaults,
    StoreHistory,
    World,
    capture,
    check_gapless,
    check_no_acknowledged_event_lost,
    check_no_stale_epoch_commit,
    check_replay_equals_memory,
    run_checks,
    run_simulation,
)
from tests.simulation.fault_scenarios import add_once
from tests.simulation.scenarios import SIM_CONFIG
from tests.support.ledger import Ledger, LedgerState

STREAM = "test-ledger/x"


def _request(epoch: int, expected_seq: int, message_id: str) -> AppendRequest:
    return AppendRequest(
        stream_id=STREAM,
        epoch=epoch,
        expected_seq=expected_seq,
        events=[NewEvent("test.ledger.added", 1, b"{}", message_id)],
        recorded_at_ms=0,
    )


def test_fault_rates_are_validated() -> None:
    with pytest.raises(ValueError, match="lost_ack"):
        StoreFaults(lost_ack=1.5)
    with pytest.raises(ValueError, match="latency_ms_min"):
        StoreFaults(latency_ms_min=5, latency_ms_max=1)
    with pytest.raises(ValueError, match="at most 1"):
        StoreFaults(error_before_commit=0.6, lost_ack=0.6)


def test_an_error_before_commit_writes_nothing_and_a_lost_ack_commits() -> None:
    async def scenario(world: World) -> list[tuple[str, bool | None]]:
        store = world.faulty_store(world.memory_store())
        await store.open()
        lease = await store.acquire_lease(STREAM, "n1", 0, 1000)
        store.inject_next("error_before_commit")
        with pytest.raises(StoreUnavailable) as before:
            await store.append_batch([_request(lease.epoch, 0, "m-1")])
        assert not before.value.ambiguous
        assert await store.inner.read_events(STREAM) == []
        store.inject_next("lost_ack")
        with pytest.raises(StoreUnavailable) as after:
            await store.append_batch([_request(lease.epoch, 0, "m-1")])
        assert after.value.ambiguous
        assert len(await store.inner.read_events(STREAM)) == 1
        [fenced] = await store.append_batch([_request(lease.epoch + 1, 1, "m-2")])
        assert isinstance(fenced, Fenced)
        assert store.history.faults == {"error_before_commit": 1, "lost_ack": 1}
        return [(append.outcome, append.committed) for append in store.history.appends]

    assert run_simulation(0, scenario).value == [
        ("error", False),
        ("ambiguous", True),
        ("fenced", False),
    ]


def test_fault_decisions_follow_the_seed_and_stop_when_disabled() -> None:
    async def scenario(world: World) -> tuple[list[str], float]:
        store = world.faulty_store(
            world.memory_store(), StoreFaults(error_before_commit=0.5, latency_ms_max=50)
        )
        await store.open()
        outcomes = []
        for _ in range(20):
            try:
                await store.renew_leases("n1", [], 0, 1000)
                outcomes.append("ok")
            except StoreUnavailable:
                outcomes.append("error")
        store.faults_enabled = False
        started = world.now_s
        for _ in range(20):
            await store.renew_leases("n1", [], 0, 1000)
        assert world.now_s == started  # healed: no delay either
        return outcomes, started

    first = run_simulation(4, scenario).value
    assert first == run_simulation(4, scenario).value
    assert first != run_simulation(5, scenario).value
    assert {"ok", "error"} <= set(first[0])
    assert first[1] > 0  # the delays took virtual time


def _contents_with(events: list[StoredEvent]) -> StoreContents:
    """The captured contents of a store holding one event of STREAM, its events then replaced
    by ``events`` (the checkers only read the capture, so it can be doctored)."""

    async def scenario(world: World) -> StoreContents:
        store = world.memory_store()
        await store.open()
        lease = await store.acquire_lease(STREAM, "n1", 0, 1000)
        await store.append_batch([_request(lease.epoch, 0, "m-1")])
        contents = await capture(store)
        contents.events[STREAM][:] = events
        return contents

    return run_simulation(0, scenario).value


def _event(seq: int, epoch: int, message_id: str) -> StoredEvent:
    return StoredEvent(STREAM, seq, epoch, "test.ledger.added", 1, b"{}", message_id, 0)


def test_gapless_reports_a_missing_seq() -> None:
    contents = _contents_with([])
    with pytest.raises(
        InvariantViolation, match=r"\[gapless\] test-ledger/x: head 1 but seqs \[\]"
    ):
        check_gapless(contents, StoreHistory())


def test_a_lost_acknowledged_event_is_reported() -> None:
    contents = _contents_with([_event(1, 1, "m-1")])
    history = StoreHistory()
    history.acknowledge(STREAM, "m-1", 1)
    check_no_acknowledged_event_lost(contents, history)
    history.acknowledge(STREAM, "m-2", 2)
    with pytest.raises(InvariantViolation, match="'m-2' was acknowledged as seq 2 but the log"):
        check_no_acknowledged_event_lost(contents, history)


def test_decreasing_epochs_are_reported() -> None:
    contents = _contents_with([_event(1, 1, "m-1")])
    contents.heads[STREAM] = attrs.evolve(contents.heads[STREAM], epoch=3, head_seq=2)
    contents.events[STREAM].append(_event(2, 1, "m-2"))
    check_no_stale_epoch_commit(contents, StoreHistory())
    contents.events[STREAM][0] = _event(1, 2, "m-1")
    with pytest.raises(InvariantViolation, match="seq 2 has epoch 1 after seq 1 with epoch 2"):
        check_no_stale_epoch_commit(contents, StoreHistory())


def test_replay_equals_memory_catches_a_state_that_drifted_from_the_log() -> None:
    async def scenario(world: World) -> None:
        store = world.faulty_store(world.memory_store())
        await world.start_node("n1", [Ledger], store, config=SIM_CONFIG)
        assert await add_once(world, store, "n1", "x", "m-1") == 1
        await run_checks(world)
        node = world.node("n1")
        contents = await capture(store.inner)
        assert check_replay_equals_memory(node, Ledger, contents) == 1
        node.host.live[STREAM].state = LedgerState(count=5)
        with pytest.raises(InvariantViolation, match=r"\[replay equals memory\] test-ledger/x"):
            await run_checks(world)

    run_simulation(0, scenario)
