"""The checkers pass on the real stores and fail on deliberately broken ones.

A checker that never fails proves nothing: each broken store removes one guard, and the
scenario that needs that guard must then be reported by the matching invariant.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from mainspring.actors.workflow_runtime import WORKFLOW_ACTOR_TYPE
from mainspring.errors import LeaseHeld
from mainspring.persistence.store import Store, stream_id_of
from mainspring.simulations import InvariantViolation, World, run_simulation
from tests.simulation.broken_stores import (
    ClaimIgnoresLeaseStore,
    DedupeOffStore,
    FencingOffStore,
)
from tests.simulation.fault_scenarios import duplicate_scenario, zombie_scenario
from tests.simulation.profile_scenarios import payments
from tests.simulation.scenarios import SIM_CONFIG


def memory(world: World) -> Store:
    return world.memory_store()


def sqlite(world: World) -> Store:
    return world.sqlite_store()


def fencing_off(world: World) -> Store:
    return FencingOffStore()  # type: ignore[return-value]


def dedupe_off(world: World) -> Store:
    return DedupeOffStore()  # type: ignore[return-value]


@pytest.mark.parametrize("make_inner", [memory, sqlite])
def test_a_zombie_write_is_fenced_by_the_real_store(make_inner: object) -> None:
    result = run_simulation(0, zombie_scenario(make_inner))  # type: ignore[arg-type]
    assert result.value == {"zombie_seq": None, "b_seq": 2}


def test_a_zombie_write_through_a_store_without_fencing_is_reported() -> None:
    with pytest.raises(InvariantViolation, match=r"\[no stale-epoch commit\]") as raised:
        run_simulation(0, zombie_scenario(fencing_off))
    message = str(raised.value)
    assert "test-ledger/z" in message
    assert "under epoch 1 after lease grant" in message
    assert "epoch 2 to b" in message


@pytest.mark.parametrize("retry_after", ["lost_ack", "crash"])
@pytest.mark.parametrize("make_inner", [memory, sqlite])
def test_a_retried_message_is_applied_once_by_the_real_store(
    make_inner: object, retry_after: str
) -> None:
    result = run_simulation(0, duplicate_scenario(make_inner, retry_after))  # type: ignore[arg-type]
    assert result.value == {"retried_seq": 2}  # the stored reply of the first application


@pytest.mark.parametrize("retry_after", ["lost_ack", "crash"])
def test_a_retried_message_applied_twice_without_dedupe_is_reported(retry_after: str) -> None:
    with pytest.raises(InvariantViolation, match=r"\[no message applied twice\]") as raised:
        run_simulation(0, duplicate_scenario(dedupe_off, retry_after))
    assert "message 'm-1' was applied 2 times: seq 2" in str(raised.value)


def claim_scenario(make_inner: Callable[[World], Store]) -> Callable[[World], Awaitable[Any]]:
    """Node ``a`` holds the lease of workflow p-1's stream (nothing written yet) when node ``b``
    starts p-1: ``b`` assumes it new and its first write claims the stream."""

    async def scenario(world: World) -> str:
        store = world.faulty_store(make_inner(world))
        await world.start_node("b", [], store, config=SIM_CONFIG, workflows=[payments])
        stream_id = stream_id_of(WORKFLOW_ACTOR_TYPE, "p-1")
        await store.acquire_lease(stream_id, "a", 0, 10**14)  # held for good
        try:
            await world.call("b", lambda n: n.workflows.start(payments, "p-1", 1), timeout_s=5)
        except LeaseHeld:
            return "lease held"
        return "started"

    return scenario


def test_a_claim_on_a_leased_stream_is_refused_by_the_real_store() -> None:
    result = run_simulation(0, claim_scenario(memory))
    assert result.value == "lease held"  # refused, then the fallback finds a's lease
    assert result.sometimes["stream_exists_refused"] == 1


def test_a_claim_that_takes_a_leased_stream_is_reported() -> None:
    def broken(world: World) -> Store:
        return ClaimIgnoresLeaseStore()  # type: ignore[return-value]

    with pytest.raises(InvariantViolation, match=r"\[no stale-epoch commit\]") as raised:
        run_simulation(0, claim_scenario(broken))
    assert "epoch 1 granted to a and then to b" in str(raised.value)
