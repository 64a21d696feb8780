"""How fast the simulator runs seeds: 3 nodes, 100 order workflows, every fault on.

    python bench/simulation.py [--seeds 5] [--orders 100] [--nodes 3] [--json]

Runs the order suite (``simulations.orders``) with a fixed all-faults profile over ``--seeds``
seeds and prints seeds per minute and simulated trace events per second (events are trace
lines: task starts and ends, store faults, crashes, client retries, ...), with the failing seeds
and their invariants. Run it from the repository root.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, bench/ comes first on the path, and bench/http.py would shadow the stdlib.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from simulations.orders import orders_scenario  # noqa: E402

from mainspring.simulations.campaign import run_seed  # noqa: E402
from mainspring.simulations.clock import ClockFaults  # noqa: E402
from mainspring.simulations.faults import StoreFaults  # noqa: E402
from mainspring.simulations.network import NetworkFaults  # noqa: E402
from mainspring.simulations.profile import FaultProfile, StepFaults  # noqa: E402

ALL_FAULTS = FaultProfile(
    store=StoreFaults(error_before_commit=0.02, lost_ack=0.02, latency_ms_max=10),
    crash_points={
        "step.after_effect": 0.01,
        "journal.after_commit": 0.01,
        "host.after_lease": 0.01,
        "host.mid_passivation": 0.01,
    },
    network=NetworkFaults(
        drop=0.01, reply_drop=0.01, duplicate=0.02, delay_ms_max=20, reorder=0.05
    ),
    partitions=0.2,
    clock=ClockFaults(offset_ms_max=200, drift_ppm_max=100, jump=0.2, jump_ms_max=5_000),
    steps=StepFaults(error=0.02, timeout=0.02, crash_after_effect=0.01),
    duplicate_requests=0.05,
    perturb=True,
    config={"lease_ttl_s": 10.0, "lease_renew_interval_s": 3.0},
)


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--orders", type=int, default=100)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=2_000_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.getLogger("mainspring").setLevel(logging.CRITICAL)
    scenario = orders_scenario(
        "bench",
        nodes=args.nodes,
        count=args.orders,
        profile=lambda seed: ALL_FAULTS,
        max_steps=args.max_steps,
    )
    commit = _commit()
    runs = []
    started = time.perf_counter()
    for seed in range(args.seeds):
        runs.append(run_seed(scenario, seed))
    wall_s = time.perf_counter() - started
    events = sum(run.events for run in runs)
    simulated_s = sum(run.simulated_s for run in runs)
    failures = [
        {"seed": run.seed, "invariant": run.failure.invariant}
        for run in runs
        if run.failure is not None
    ]
    result = {
        "benchmark": "simulation",
        "nodes": args.nodes,
        "workflows": args.orders,
        "seeds": args.seeds,
        "wall_s": round(wall_s, 2),
        "seeds_per_minute": round(60 * args.seeds / wall_s, 2),
        "events": events,
        "events_per_s": round(events / wall_s),
        "simulated_s": round(simulated_s, 1),
        "simulated_s_per_wall_s": round(simulated_s / wall_s, 1),
        "failures": failures,
        "passing_seed_wall_s": [round(run.wall_s, 2) for run in runs if run.ok],
        "passing_events_per_s": round(
            sum(run.events for run in runs if run.ok)
            / max(sum(run.wall_s for run in runs if run.ok), 1e-9)
        ),
        "commit": commit,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()
