"""One seed, one trace: in the same process, across processes and string hash seeds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mainspring.simulations import run_simulation
from tests.simulation.scenarios import accounts_scenario, crash_restart_scenario

ROOT = Path(__file__).resolve().parents[2]

_CHILD = """
import sys
from mainspring.simulations import run_simulation
from tests.simulation.scenarios import crash_restart_scenario
result = run_simulation(int(sys.argv[1]), crash_restart_scenario("sqlite"), perturb=True)
print(result.trace_digest)
"""


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_one_seed_run_twice_gives_the_same_trace(kind: str) -> None:
    first = run_simulation(3, crash_restart_scenario(kind))
    second = run_simulation(3, crash_restart_scenario(kind))
    assert first.trace_digest == second.trace_digest
    assert first.trace_tail == second.trace_tail
    assert first.steps == second.steps
    assert first.trace_events > 100


def test_perturbed_runs_are_reproducible_and_differ_by_seed() -> None:
    digests = {
        seed: run_simulation(seed, accounts_scenario("memory"), perturb=True).trace_digest
        for seed in (1, 2)
    }
    assert run_simulation(1, accounts_scenario("memory"), perturb=True).trace_digest == digests[1]
    assert digests[1] != digests[2]
    assert run_simulation(1, accounts_scenario("memory")).trace_digest != digests[1]


def _digest_in_subprocess(seed: int, hash_seed: str) -> str:
    environment = {**os.environ, "PYTHONHASHSEED": hash_seed}
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), str(ROOT / "src"), environment.get("PYTHONPATH", "")]
    )
    completed = subprocess.run(
        [sys.executable, "-c", _CHILD, str(seed)],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.strip()


def test_the_digest_is_the_same_in_fresh_processes_with_different_str_hashing() -> None:
    seed = 5
    in_process = run_simulation(seed, crash_restart_scenario("sqlite"), perturb=True)
    digests = {_digest_in_subprocess(seed, hash_seed) for hash_seed in ("1", "4242")}
    assert digests == {in_process.trace_digest}
