"""FaultProfile: swarm drawing, description, derivation, JSON; the world's profile API."""

from __future__ import annotations

import json

import pytest

from mainspring import NodeConfig
from mainspring.crashpoints import CRASH_POINTS
from mainspring.simulations import (
    FaultProfile,
    NetworkFaults,
    StepFaults,
    StoreFaults,
    World,
    run_simulation,
)
from tests.simulation.scenarios import SIM_CONFIG
from tests.support.ledger import Add, Ledger


def test_a_swarm_profile_depends_only_on_its_seed_and_round_trips_through_json() -> None:
    profiles = [FaultProfile.swarm(seed) for seed in range(40)]
    assert profiles == [FaultProfile.swarm(seed) for seed in range(40)]
    assert len({profile.describe() for profile in profiles}) > 30  # seeds differ
    for profile in profiles:
        data = json.loads(json.dumps(profile.to_json()))
        assert FaultProfile.from_json(data) == profile
    kinds = {kind for profile in profiles for kind in profile.fault_kinds()}
    expected = {"store", "network", "partitions", "clock", "steps", "duplicate_requests"}
    assert expected | {"perturb", "config"} <= kinds
    assert {f"crash_point:{name}" for name in CRASH_POINTS} <= kinds


def test_describe_without_and_scaled() -> None:
    profile = FaultProfile(
        store=StoreFaults(error_before_commit=0.2, latency_ms_max=10),
        crash_points={"journal.after_commit": 0.5, "host.after_lease": 0.1},
        network=NetworkFaults(drop=0.1, delay_ms_max=20),
        steps=StepFaults(error=0.4),
        duplicate_requests=0.3,
        config={"lease_ttl_s": 4.0, "lease_renew_interval_s": 1.0},
    )
    assert FaultProfile.none().describe() == "faults: none"
    assert FaultProfile.none().fault_kinds() == []
    line = profile.describe()
    assert "\n" not in line
    for part in ("error_before_commit=0.200", "journal.after_commit=0.500", "drop=0.100"):
        assert part in line
    assert profile.fault_kinds() == [
        "store",
        "crash_point:host.after_lease",
        "crash_point:journal.after_commit",
        "network",
        "steps",
        "duplicate_requests",
        "config",
    ]
    less = profile.without("crash_point:journal.after_commit")
    assert dict(less.crash_points) == {"host.after_lease": 0.1}
    assert "network" not in profile.without("network").fault_kinds()
    assert profile.without("crash_points").crash_points == {}
    half = profile.scaled(0.5)
    assert half.store.error_before_commit == pytest.approx(0.1)
    assert half.store.latency_ms_max == 5
    assert half.crash_points["journal.after_commit"] == pytest.approx(0.25)
    assert half.duplicate_requests == pytest.approx(0.15)
    assert half.config == profile.config
    assert profile.scaled(0.0).fault_kinds() == ["config"]
    config = profile.node_config(SIM_CONFIG)
    assert config.lease_ttl_s == 4.0
    assert config.timer_poll_interval_s == SIM_CONFIG.timer_poll_interval_s


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: FaultProfile(crash_points={"nowhere": 0.1}), "unknown crash point 'nowhere'"),
        (lambda: FaultProfile(crash_points={"host.after_lease": 2}), "not in \\[0, 1\\]"),
        (lambda: FaultProfile(config={"lease_ttl": 1}), "unknown NodeConfig settings"),
        (lambda: FaultProfile(duplicate_requests=1.5), "duplicate_requests must be"),
        (lambda: FaultProfile.from_json({"nework": {}}), "unknown fault profile keys"),
        (lambda: FaultProfile.from_json({"network": {"dorp": 1}}), "network: unknown keys"),
        (lambda: FaultProfile.none().without("gremlins"), "unknown fault kind 'gremlins'"),
        (lambda: FaultProfile.none().scaled(2), "factor must be in \\[0, 1\\]"),
    ],
)
def test_bad_profiles_are_refused_with_the_reason(build: object, message: str) -> None:
    with pytest.raises((ValueError, Exception), match=message):
        build()  # type: ignore[operator]


def test_a_bad_config_value_is_refused() -> None:
    with pytest.raises(Exception, match="lease_renew_interval_s"):
        FaultProfile(config={"lease_ttl_s": 2.0, "lease_renew_interval_s": 5.0})


def test_the_world_exposes_the_profile_heals_and_counts_sometimes() -> None:
    profile = FaultProfile(
        store=StoreFaults(error_before_commit=0.5),
        config={"lease_ttl_s": 6.0, "lease_renew_interval_s": 2.0},
    )

    async def scenario(world: World) -> dict[str, object]:
        store = world.faulty_store(world.memory_store())
        assert store.profile == profile.store
        node = await world.start_node("n1", [Ledger], store, config=SIM_CONFIG)
        assert node.config.lease_ttl_s == 6.0
        assert world.node_config(NodeConfig()).lease_ttl_s == 6.0
        world.sometimes("scenario_reached_here")
        world.heal()
        assert not store.faults_enabled
        assert world.healed
        for token in ("a", "b", "c"):
            await world.ask("n1", Ledger, "l", Add(token), message_id=token)
        return {"profile": world.profile}

    result = run_simulation(1, scenario, profile=profile, keep_trace=True)
    assert result.value["profile"] is profile
    assert result.profile is profile
    assert result.sometimes == {"scenario_reached_here": 1}
    assert result.trace_lines is not None
    assert result.events == result.trace_events == len(result.trace_lines)
    assert result.trace_lines[-len(result.trace_tail) :] == result.trace_tail
    assert any(" world.heal" in line for line in result.trace_lines)
    assert run_simulation(1, scenario, profile=profile).trace_lines is None
