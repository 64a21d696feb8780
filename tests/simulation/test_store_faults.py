"""The ledger under store faults and crashes, then healed: every checker passes on every seed."""

from __future__ import annotations

import pytest

from mainspring.simulations import run_simulation
from tests.simulation.fault_scenarios import (
    ledger_under_faults,
    profile_for,
    two_nodes_under_faults,
)

SEEDS = range(30)


def test_the_ledger_keeps_every_invariant_under_store_faults_and_crashes() -> None:
    totals = {
        "error_before_commit": 0,
        "lost_ack": 0,
        "crashes": 0,
        "duplicates": 0,
        "acked_in_liveness": 0,
    }
    for seed in SEEDS:
        profile = profile_for(seed)
        try:
            result = run_simulation(seed, ledger_under_faults(profile))
        except Exception as error:
            pytest.fail(f"seed {seed} with faults {profile.describe()}: {error!r}")
        assert result.unhandled_errors == (), (seed, profile.describe(), result.unhandled_errors)
        value = result.value
        for kind, count in value["faults"].items():
            totals[kind] += count
        totals["crashes"] += value["crashes"]
        totals["duplicates"] += value["duplicates"]
        totals["acked_in_liveness"] += value["acked_in_liveness"]
    # The seeds must actually exercise what they claim to (else the test is too gentle).
    assert totals["error_before_commit"] > 0, totals
    assert totals["lost_ack"] > 0, totals
    assert totals["crashes"] > 0, totals
    assert totals["duplicates"] > 0, totals  # a retry after a lost ack was deduplicated
    assert totals["acked_in_liveness"] > 0, totals  # some tokens needed the healed phase


def test_the_sqlite_store_keeps_them_too() -> None:
    for seed in (100, 101, 102):
        profile = profile_for(seed)
        result = run_simulation(seed, ledger_under_faults(profile, kind="sqlite", tokens=12))
        assert result.unhandled_errors == (), (seed, profile.describe())


def test_one_seed_under_faults_gives_one_trace() -> None:
    seed = 7
    first = run_simulation(seed, ledger_under_faults(profile_for(seed)))
    second = run_simulation(seed, ledger_under_faults(profile_for(seed)))
    assert first.trace_digest == second.trace_digest
    assert first.value == second.value
    assert first.steps == second.steps


def test_faults_are_in_the_trace_and_differ_by_seed() -> None:
    digests = set()
    for seed in (1, 2):
        result = run_simulation(seed, ledger_under_faults(profile_for(seed)))
        digests.add(result.trace_digest)
    assert len(digests) == 2


def test_two_nodes_with_skewed_clocks_keep_every_invariant() -> None:
    outcomes: dict[str, int] = {}
    for seed in range(15):
        profile = profile_for(seed)
        try:
            result = run_simulation(seed, two_nodes_under_faults(profile))
        except Exception as error:
            pytest.fail(f"seed {seed} with faults {profile.describe()}: {error!r}")
        assert result.unhandled_errors == (), (seed, profile.describe(), result.unhandled_errors)
        for outcome, count in result.value.items():
            outcomes[outcome] = outcomes.get(outcome, 0) + count
    # Clock jumps made nodes steal leases, and some deposed owner's write was fenced.
    assert outcomes.get("fenced", 0) > 0, outcomes
