"""The real Node on the SimLoop: accounts, outbox, a month-long reminder, crash and restart."""

from __future__ import annotations

import pytest

from mainspring.simulations import run_simulation
from tests.simulation.scenarios import accounts_scenario, crash_restart_scenario

STORES = ["memory", "sqlite"]
THIRTY_ONE_DAYS_S = 31 * 24 * 3600


@pytest.mark.parametrize("kind", STORES)
def test_accounts_with_transfer_and_a_reminder_a_month_ahead(kind: str) -> None:
    result = run_simulation(7, accounts_scenario(kind))
    # alice: 10_000 - 2_500 transferred + 70 interest 30 days later; bob: 500 + 2_500.
    assert result.value["balances"] == {"alice": 7_570, "bob": 3_000}
    assert result.value["streams"] == ["test-account/alice", "test-account/bob"]
    assert result.value["slept_s"] == THIRTY_ONE_DAYS_S
    assert result.unhandled_errors == ()


@pytest.mark.parametrize("kind", STORES)
def test_a_crash_under_load_loses_no_acknowledged_deposit_and_leaves_no_gap(kind: str) -> None:
    lost_seen = acked_seen = ambiguous_seen = 0
    for seed in range(10):
        value = run_simulation(seed, crash_restart_scenario(kind)).value
        for account, acknowledged in value["acknowledged"].items():
            logged = value["logged"][account]
            missing = set(acknowledged) - set(logged)
            assert not missing, (seed, account, sorted(missing))
            assert len(logged) == len(set(logged)), (seed, account, logged)  # no duplicates
            assert value["seqs"][account] == list(range(1, len(logged) + 1)), (seed, account)
            ambiguous_seen += len(set(logged) - set(acknowledged))
        lost_seen += value["lost"]
        acked_seen += value["acked"]
    # The seeds crash the node with asks in flight, some committed before their reply.
    assert lost_seen > 0
    assert acked_seen > 0
    assert ambiguous_seen > 0
