"""Scenarios over the core: single writers under crashes, skew and partitions; snapshots.

All of them run the tally workload of ``mainspring.simulations.selfcheck`` (nodes count tokens
sent by clients that retry with the same message id; every answer is recorded as an
acknowledgement the checkers hold the store to) over the *real* stores, so every seed must
pass; the self-check runs the same workload against broken variants, which must fail.

- ``tally``: two nodes, a swarm profile per seed, crashes and clock jumps past the lease TTL;
- ``tally_sqlite``: the same over the SQLite store (the production SQL);
- ``fencing``: every seed has skewed, drifting, jumping clocks and partitions between nodes
  and the store or the clients, on top of its swarm: leases are stolen, deposed owners keep
  writing, and every such write must be fenced;
- ``snapshots``: one node, snapshots every few events, crashes at every crash point; after
  settling, every node is crashed and restarted and every tally rebuilt from its snapshot and
  log, which must equal a full replay.
"""

from __future__ import annotations

import attrs

from mainspring.persistence.store import Store
from mainspring.simulations.clock import ClockFaults
from mainspring.simulations.profile import FaultProfile
from mainspring.simulations.selfcheck import tally_scenario
from mainspring.simulations.world import World

__all__ = ["fencing", "snapshots", "tally", "tally_sqlite"]


def _sqlite(world: World) -> Store:
    return world.sqlite_store()


def skew_and_partitions(seed: int) -> FaultProfile:
    """The seed's swarm profile with clock faults and partitions always on."""
    swarm = FaultProfile.swarm(seed)
    return attrs.evolve(
        swarm,
        clock=ClockFaults(offset_ms_max=5_000, drift_ppm_max=10_000, jump=1.0, jump_ms_max=20_000),
        partitions=swarm.partitions or 1.0,
    )


def crashes_everywhere(seed: int) -> FaultProfile:
    """The seed's swarm profile with every crash point on."""
    from mainspring.crashpoints import CRASH_POINTS

    swarm = FaultProfile.swarm(seed)
    return attrs.evolve(swarm, crash_points=dict.fromkeys(CRASH_POINTS, 0.05))


tally = tally_scenario(
    "tally",
    seeds=400,
    sometimes=("duplicate_deduplicated", "zombie_write_fenced", "lease_taken_over"),
)
tally_sqlite = tally_scenario(
    "tally-sqlite", make_inner=_sqlite, seeds=150, sometimes=("duplicate_deduplicated",)
)
fencing = tally_scenario(
    "fencing",
    profile=skew_and_partitions,
    duration_s=120.0,
    seeds=200,
    sometimes=(
        "clock_jump_crossed_lease_expiry",
        "zombie_write_fenced",
        "partition_store",
        "lease_taken_over_after_partition",
    ),
)
snapshots = tally_scenario(
    "snapshots",
    nodes=("solo",),
    tokens=40,
    tallies=3,
    duration_s=30.0,
    rehydrate=True,
    profile=crashes_everywhere,
    seeds=200,
    sometimes=("crash_point:journal.after_commit", "crash_point:host.after_lease"),
)
