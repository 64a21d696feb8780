"""Shrink a failing seed's fault profile to the least that still fails the same way.

The seed stays fixed; the profile is reduced greedily, one candidate at a time, and a candidate
is kept only when the run still fails with the same invariant (``failure_signature``):

1. each fault kind switched off in turn (``profile.without(kind)``), repeated until no kind can
   be switched off;
2. every remaining rate and delay scaled down (``profile.scaled(f)`` for f = 0.5, 0.25, 0.1),
   repeated while it keeps failing.

A smaller profile is easier to read (which fault is needed?) and usually fails earlier, with a
shorter trace. The result names the minimal profile and the command that replays it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import attrs

from mainspring.simulations.campaign import Failure, SeedRun, replay_command, run_seed
from mainspring.simulations.scenario import Scenario

if TYPE_CHECKING:
    from mainspring.simulations.profile import FaultProfile

__all__ = ["ShrinkResult", "shrink"]

SCALE_FACTORS: Final = (0.5, 0.25, 0.1)
RUNS_MAX_DEFAULT: Final = 60


@attrs.frozen
class ShrinkResult:
    """The outcome of ``shrink``.

    Attributes:
        seed: the failing seed.
        invariant: the failure kept throughout.
        original: the profile the seed failed with.
        minimal: the smallest profile found that still fails the same way.
        failure: the failure under ``minimal``.
        runs: how many runs shrinking took.
        steps: what was removed or scaled, in order.
        command: the command that replays ``minimal``.
    """

    seed: int
    invariant: str
    original: FaultProfile
    minimal: FaultProfile
    failure: Failure
    runs: int
    steps: tuple[str, ...]
    command: str

    def report(self) -> str:
        """A human summary: before, after and the replay command."""
        removed = ", ".join(self.steps) if self.steps else "nothing could be removed"
        return "\n".join(
            [
                f"SHRUNK seed {self.seed} [{self.invariant}] in {self.runs} runs: {removed}",
                f"  original: {self.original.describe()}",
                f"  minimal:  {self.minimal.describe()}",
                f"  replay:   {self.command}",
            ]
        )


def shrink(
    scenario: Scenario,
    failure: Failure,
    *,
    target: str | None = None,
    runs_max: int = RUNS_MAX_DEFAULT,
) -> ShrinkResult:
    """Reduce ``failure.profile`` while ``failure.seed`` still fails with ``failure.invariant``.

    Args:
        scenario: the scenario that failed.
        failure: the failure to shrink (from ``run_seed`` or ``run_campaign``).
        target: ``MODULE:NAME`` for the replay command (the scenario's name if None).
        runs_max: the most runs to spend.
    """
    if runs_max < 1:
        raise ValueError(f"runs_max must be >= 1, got {runs_max!r}")
    seed = failure.seed
    current = failure.profile
    current_failure = failure
    steps: list[str] = []
    runs = 0

    def still_fails(candidate: FaultProfile) -> SeedRun | None:
        nonlocal runs
        runs += 1
        run = run_seed(scenario, seed, profile=candidate, target=target)
        if run.failure is not None and run.failure.invariant == failure.invariant:
            return run
        return None

    changed = True
    while changed and runs < runs_max:
        changed = False
        for kind in current.fault_kinds():
            if runs >= runs_max:
                break
            candidate = current.without(kind)
            if candidate == current:
                continue
            run = still_fails(candidate)
            if run is not None:
                assert run.failure is not None
                current, current_failure = candidate, run.failure
                steps.append(f"-{kind}")
                changed = True
    for factor in SCALE_FACTORS:
        while runs < runs_max:
            candidate = current.scaled(factor)
            if candidate == current:
                break
            run = still_fails(candidate)
            if run is None:
                break
            assert run.failure is not None
            current, current_failure = candidate, run.failure
            steps.append(f"x{factor}")
    return ShrinkResult(
        seed=seed,
        invariant=failure.invariant,
        original=failure.profile,
        minimal=current,
        failure=current_failure,
        runs=runs,
        steps=tuple(steps),
        command=replay_command(target or scenario.name, seed, current),
    )
