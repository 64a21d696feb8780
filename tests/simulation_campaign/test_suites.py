"""The suites of simulations/ load, pass their first seeds and exercise what they claim to.

``.ci/run`` runs them over 1,100 seeds; this keeps a broken suite from waiting for CI.
"""

from __future__ import annotations

import pytest

from mainspring.simulations.campaign import run_campaign
from mainspring.simulations.scenario import load_scenario

SUITES = [
    ("simulations.core:tally", 6),
    ("simulations.core:tally_sqlite", 3),
    ("simulations.core:fencing", 3),
    ("simulations.core:snapshots", 4),
    ("simulations.orders:orders", 3),
]


@pytest.mark.parametrize(("target", "seeds"), SUITES)
def test_a_suite_passes_its_first_seeds(target: str, seeds: int) -> None:
    scenario = load_scenario(target)
    report = run_campaign(scenario, seeds, target=target)
    assert report.failures == (), [failure.report() for failure in report.failures]
    assert report.events > 100 * seeds
    assert report.sometimes, "the faults reached nothing"


def test_the_fencing_suite_steals_leases_and_fences_zombies() -> None:
    report = run_campaign(load_scenario("simulations.core:fencing"), 20)
    assert report.ok(strict=True), report.sometimes_table()
    assert report.sometimes["zombie_write_fenced"] > 0
    assert report.sometimes["clock_jump_crossed_lease_expiry"] > 0


def test_the_regression_list_parses() -> None:
    from pathlib import Path

    from mainspring.simulations.campaign import read_regressions

    path = Path(__file__).resolve().parents[2] / "simulations" / "regressions.txt"
    entries = read_regressions(path)
    assert entries
    for entry in entries:
        load_scenario(entry.target)
