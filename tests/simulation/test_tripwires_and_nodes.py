"""Tripwires on the real clock, randomness and ids; several nodes over one store; one seed and
one swarm profile, one trace."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mainspring.crashpoints import CRASH_POINTS
from mainspring.node import Node
from mainspring.simulations import (
    ClockFaults,
    FaultProfile,
    NetworkFaults,
    SimulationEscape,
    StepFaults,
    StoreFaults,
    World,
    run_simulation,
)
from tests.simulation.profile_scenarios import add_once, ledger_under_profile
from tests.simulation.scenarios import SIM_CONFIG
from tests.support.ledger import Ledger

ROOT = Path(__file__).resolve().parents[2]


REAL_WORLD = [
    ("time", "time", ()),
    ("time", "monotonic", ()),
    ("random", "random", ()),
    ("random", "randint", (1, 6)),
    ("uuid", "uuid4", ()),
    ("os", "urandom", (4,)),
    ("secrets", "token_hex", ()),
]
"""Functions simulated code must not call (the lint rule bans them by name: looked up here)."""


def _real(module: str, name: str) -> Callable[..., Any]:
    function: Callable[..., Any] = getattr(importlib.import_module(module), name)
    return function


@pytest.mark.parametrize(("module", "name", "args"), REAL_WORLD)
def test_simulated_code_that_reads_the_real_world_fails_the_run(
    module: str, name: str, args: tuple[Any, ...]
) -> None:
    async def scenario(world: World) -> None:
        await world.start_node("n1", [Ledger], world.memory_store(), config=SIM_CONFIG)

        async def operation(node: Node) -> None:
            with contextlib.suppress(SimulationEscape):  # a swallowed escape fails the run too
                _real(module, name)(*args)

        await world.call("n1", operation)

    with pytest.raises(SimulationEscape, match=rf"{module}\.{name}\(\) called from tests\."):
        run_simulation(0, scenario)


def test_the_real_functions_are_back_after_the_run_and_logging_still_works() -> None:
    originals = [_real(module, name) for module, name, _ in REAL_WORLD]

    async def scenario(world: World) -> bool:
        logging.getLogger("tests.simulation").warning("logging stamps records with time.time")
        return all(_real(m, n) is not o for (m, n, _), o in zip(REAL_WORLD, originals, strict=True))

    assert run_simulation(0, scenario).value is True
    assert [_real(module, name) for module, name, _ in REAL_WORLD] == originals
    assert run_simulation(0, scenario, tripwire=False).value is False


def test_three_nodes_contend_for_the_same_ledgers_and_a_stopped_one_leaves_the_store_open() -> None:
    async def scenario(world: World) -> dict[str, Any]:
        store = world.faulty_store(world.sqlite_store())
        nodes = ("a", "b", "c")
        for name in nodes:
            await world.start_node(name, [Ledger], store, config=SIM_CONFIG)

        def run_ahead(node: str) -> None:
            """The node's clock runs ahead of every other one past the lease TTL: it may take
            over any lease."""
            ahead_ms = max(world.clock(name).skew_ms for name in nodes)
            clock = world.clock(node)
            clock.jump(ahead_ms - clock.skew_ms + SIM_CONFIG.lease_ttl_ms + 1_000)

        async def add(node: str, ledger: str, token: str) -> None:
            for _ in range(20):  # a deposed activation answers Fenced once, then steps down
                if await add_once(world, store, node, ledger, token):
                    return
                await world.sleep(0.5)
            raise AssertionError(f"{token} never acknowledged by {node}")

        for index in range(9):
            node = nodes[index % 3]
            run_ahead(node)
            await add(node, f"l{index % 2}", f"t{index}")
        await world.stop_node("a")
        run_ahead("b")
        await add("b", "l0", "after-stop")  # the store is still open for b and c
        await world.restart("a")
        run_ahead("a")
        await add("a", "l1", "after-restart")
        owners = {grant.owner for grant in store.history.leases}
        from mainspring.simulations import run_checks

        await run_checks(world)
        return {"owners": sorted(owners), "sometimes": world.sometimes_counts}

    result = run_simulation(2, scenario)
    assert result.value["owners"] == ["a", "b", "c"]
    assert result.value["sometimes"].get("lease_taken_over", 0) >= 6


EVERYTHING_ON = FaultProfile(
    store=StoreFaults(error_before_commit=0.05, lost_ack=0.05, latency_ms_max=5),
    crash_points=dict.fromkeys(CRASH_POINTS, 0.05),
    network=NetworkFaults(drop=0.05, reply_drop=0.05, duplicate=0.05, delay_ms_max=10, reorder=0.1),
    partitions=2.0,
    clock=ClockFaults(offset_ms_max=500, drift_ppm_max=1_000, jump=2.0, jump_ms_max=5_000),
    steps=StepFaults(error=0.1, timeout=0.05, crash_after_effect=0.05),
    duplicate_requests=0.1,
    perturb=True,
    config={"lease_ttl_s": 3.0, "lease_renew_interval_s": 1.0, "idle_timeout_s": 1.0},
)

_CHILD = """
import sys
from mainspring.simulations import run_simulation
from tests.simulation.profile_scenarios import ledger_under_profile
from tests.simulation.test_tripwires_and_nodes import EVERYTHING_ON
scenario = ledger_under_profile(tokens=20, nodes=("a", "b", "c"), kind="sqlite")
print(run_simulation(int(sys.argv[1]), scenario, profile=EVERYTHING_ON).trace_digest)
"""


def test_every_fault_on_gives_the_same_trace_for_one_seed_in_any_process() -> None:
    assert set(EVERYTHING_ON.fault_kinds()) >= {
        "store", "network", "partitions", "clock", "steps", "duplicate_requests", "perturb",
    }  # fmt: skip
    scenario = ledger_under_profile(tokens=20, nodes=("a", "b", "c"), kind="sqlite")
    first = run_simulation(4, scenario, profile=EVERYTHING_ON)
    second = run_simulation(4, scenario, profile=EVERYTHING_ON)
    assert first.trace_digest == second.trace_digest
    assert first.sometimes == second.sometimes
    assert len(first.sometimes) >= 4, first.sometimes
    environment = {**os.environ, "PYTHONHASHSEED": "77"}
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), str(ROOT / "src"), environment.get("PYTHONPATH", "")]
    )
    completed = subprocess.run(
        [sys.executable, "-c", _CHILD, "4"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == first.trace_digest


@pytest.mark.parametrize("seed", range(6))
def test_swarm_profiles_keep_every_invariant_on_the_ledger(seed: int) -> None:
    profile = FaultProfile.swarm(seed)
    result = run_simulation(
        seed, ledger_under_profile(tokens=20, nodes=("a", "b")), profile=profile
    )
    assert result.profile == profile
