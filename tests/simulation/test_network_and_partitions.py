"""Client requests through the simulated network, and partitions of nodes from their store."""

from __future__ import annotations

from collections import Counter

import pytest

from mainspring.node import Node
from mainspring.simulations import FaultProfile, NetworkFaults, StoreFaults, World, run_simulation
from mainspring.simulations.network import CLIENT, store_endpoint
from tests.simulation.profile_scenarios import add_once, ledger_under_profile
from tests.simulation.scenarios import SIM_CONFIG
from tests.support.ledger import Add, Ledger

SHORT_LEASES = {"lease_ttl_s": 2.0, "lease_renew_interval_s": 0.5}


def test_lost_duplicated_delayed_and_reordered_requests_keep_every_invariant() -> None:
    profile = FaultProfile(
        network=NetworkFaults(
            drop=0.1, reply_drop=0.1, duplicate=0.1, delay_ms_max=20, reorder=0.2
        ),
        duplicate_requests=0.1,
    )
    network: Counter[str] = Counter()
    sometimes: Counter[str] = Counter()
    for seed in range(4):
        result = run_simulation(seed, ledger_under_profile(tokens=30), profile=profile)
        network.update(result.value["network"])
        sometimes.update(result.value["sometimes"])
    for what in ("dropped", "replies_lost", "duplicated", "reordered"):
        assert network[what] > 0, network
    assert sometimes["duplicate_deduplicated"] > 0, sometimes


def test_a_duplicated_request_runs_the_operation_twice_and_the_first_reply_wins() -> None:
    profile = FaultProfile(network=NetworkFaults(duplicate=1.0))

    async def scenario(world: World) -> list[str]:
        await world.start_node("n1", [Ledger], world.memory_store(), config=SIM_CONFIG)
        calls: list[str] = []

        async def operation(node: Node) -> str:
            calls.append(node.node_id)
            return "done"

        assert await world.call("n1", operation) == "done"
        await world.sleep(1)
        return calls

    assert run_simulation(0, scenario, profile=profile).value == ["n1", "n1"]


def test_a_lost_request_without_a_timeout_times_out_after_the_client_default() -> None:
    profile = FaultProfile(network=NetworkFaults(drop=1.0))

    async def scenario(world: World) -> float:
        await world.start_node("n1", [Ledger], world.memory_store(), config=SIM_CONFIG)
        started = world.now_s

        async def operation(node: Node) -> None:
            raise AssertionError("a dropped request never arrives")

        with pytest.raises(TimeoutError, match="was lost"):
            await world.call("n1", operation)
        return world.now_s - started

    assert run_simulation(0, scenario, profile=profile).value == pytest.approx(30.0)


def test_a_node_cut_from_its_store_loses_its_lease_and_its_late_write_is_fenced() -> None:
    """a owns ledger z; a is cut from the store; its pending append is held on the wire while
    b, after the TTL, takes the lease; when the partition heals a's write arrives late and the
    store fences it. Some seeds fail a's calls at once instead of holding them."""
    outcomes: Counter[str] = Counter()
    sometimes: Counter[str] = Counter()

    async def scenario(world: World) -> dict[str, object]:
        store = world.faulty_store(world.memory_store())
        for name in ("a", "b"):
            await world.start_node(name, [Ledger], store, config=SIM_CONFIG)
        assert await add_once(world, store, "a", "z", "z-1")
        world.network.cut("a", store_endpoint(store.label))
        late = world.loop.create_task(add_once(world, store, "a", "z", "z-2"))
        await world.sleep(1)
        world.clock("b").jump(SIM_CONFIG.lease_ttl_ms + 1_000)  # b sees a's lease expired
        for _ in range(10):
            if await add_once(world, store, "b", "z", "z-3"):
                break
            await world.sleep(0.5)
        world.network.mend("a", store_endpoint(store.label))
        await late
        await world.sleep(1)
        from mainspring.simulations import run_checks

        await run_checks(world)
        return {
            "outcomes": sorted({append.outcome for append in store.history.appends}),
            "sometimes": world.sometimes_counts,
        }

    for seed in range(6):
        result = run_simulation(seed, scenario)
        outcomes.update(result.value["outcomes"])
        sometimes.update(result.value["sometimes"])
    assert outcomes["fenced"] > 0, outcomes
    assert sometimes["zombie_write_fenced"] > 0, sometimes
    assert sometimes["lease_taken_over_after_partition"] > 0, sometimes


def test_partitions_from_the_profile_let_leases_move_and_keep_every_invariant() -> None:
    profile = FaultProfile(partitions=6.0, store=StoreFaults(latency_ms_max=5), config=SHORT_LEASES)
    sometimes: Counter[str] = Counter()
    for seed in range(4):
        result = run_simulation(
            seed, ledger_under_profile(tokens=30, nodes=("a", "b", "c")), profile=profile
        )
        sometimes.update(result.value["sometimes"])
    assert sometimes["partition_store"] > 0, sometimes
    assert sometimes["partition_clients"] > 0, sometimes
    assert sometimes["lease_taken_over"] > 0, sometimes


def test_connectivity_follows_cuts_and_heal() -> None:
    async def scenario(world: World) -> list[bool]:
        network = world.network
        seen = [network.connected("a", CLIENT)]
        network.cut("a", CLIENT)
        network.cut("a", CLIENT)
        seen.append(network.connected(CLIENT, "a"))
        network.mend("a", CLIENT)
        seen.append(network.connected("a", CLIENT))
        world.heal()
        seen.append(network.connected("a", CLIENT))
        return seen

    assert run_simulation(0, scenario).value == [True, False, False, True]


@pytest.mark.parametrize(("faults", "expected"), [({"drop": 1.0}, 0), ({"duplicate": 1.0}, 1)])
def test_a_tell_is_lost_or_delivered_twice_and_deduplicated(
    faults: dict[str, float], expected: int
) -> None:
    profile = FaultProfile(network=NetworkFaults(**faults))

    async def scenario(world: World) -> int:
        store = world.faulty_store(world.memory_store())
        await world.start_node("n1", [Ledger], store, config=SIM_CONFIG)
        await world.tell("n1", Ledger, "l", Add("once"), message_id="once")
        await world.sleep(1)
        return len(store.history.appends)

    assert run_simulation(0, scenario, profile=profile).value == expected
