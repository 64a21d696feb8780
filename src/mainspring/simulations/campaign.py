"""Run a scenario over many seeds, collect what failed and how to replay it.

``run_campaign(scenario, seeds)`` runs ``scenario`` once per seed, each seed with the fault
profile its policy draws (``FaultProfile.swarm(seed)`` by default), and returns a
``CampaignReport``: the failures (seed, profile, broken invariant, trace tail, the command that
replays it, the trace file), the total trace events, simulated and wall seconds, and the
``world.sometimes`` counters summed over the campaign. A ``sometimes`` target the scenario
expects that never fired is reported as *too gentle*: the faults never reached the code they
were meant to exercise.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs

from mainspring.seams import SystemClock
from mainspring.simulations.loop import SimulationError
from mainspring.simulations.scenario import Scenario

if TYPE_CHECKING:
    from mainspring.simulations.profile import FaultProfile
    from mainspring.simulations.world import World

__all__ = [
    "CampaignReport",
    "DeterminismReport",
    "Failure",
    "Regression",
    "RegressionError",
    "SeedRun",
    "check_determinism",
    "failure_signature",
    "parse_regressions",
    "profile_argument",
    "read_regressions",
    "regression_line",
    "replay_command",
    "run_campaign",
    "run_seed",
]

TRACE_TAIL_LINES: Final = 40
"""How many trace lines a failure report shows."""
_SIGNATURE: Final = re.compile(r"^\[([^\]]{1,80})\]")
_FILE_SAFE: Final = re.compile(r"[^A-Za-z0-9_.\-]+")
_CLOCK: Final = SystemClock()


def failure_signature(error: BaseException) -> str:
    """A short stable name for what failed: the invariant (``error.invariant``, or the
    ``[name]`` a checker's message starts with), else the exception's type name.

    Shrinking keeps a reduced profile only when it fails with the same signature.
    """
    invariant = getattr(error, "invariant", None)
    if isinstance(invariant, str) and invariant:
        return invariant
    match = _SIGNATURE.match(str(error))
    if match:
        return match.group(1)
    return type(error).__name__


def replay_command(target: str, seed: int, profile: FaultProfile | None = None) -> str:
    """The shell command that replays ``seed`` of the scenario ``target`` (``MODULE:NAME``);
    ``profile`` is spelled out when it is not the one the scenario's policy draws."""
    words = ["mainspring", "simulate", target, "--seed", str(seed)]
    if profile is not None:
        words += ["--profile", profile_argument(profile)]
    return shlex.join(words)


def profile_argument(profile: FaultProfile) -> str:
    """``profile`` as ``--profile`` takes it: ``none``, or compact JSON of the switches that
    differ from ``FaultProfile.none()`` (``from_json`` gives the others their defaults)."""
    data = profile.to_json()
    default = type(profile).none().to_json()
    changed = {key: value for key, value in data.items() if value != default[key]}
    if not changed:
        return "none"
    return json.dumps(changed, sort_keys=True, separators=(",", ":"))


@attrs.frozen
class Failure:
    """One failing seed and everything needed to understand and replay it.

    Attributes:
        scenario: the scenario's name.
        seed: the run seed.
        profile: the fault profile it ran with.
        invariant: what broke (``failure_signature``).
        error_type: the exception's class name.
        message: the exception's message.
        trace_tail: the last trace lines before the failure.
        command: the command that replays it exactly.
        trace_file: where the whole trace was written, if it was.
        virtual_s: the virtual time of the failure.
    """

    scenario: str
    seed: int
    profile: FaultProfile
    invariant: str
    error_type: str
    message: str
    trace_tail: tuple[str, ...]
    command: str
    trace_file: str | None = None
    virtual_s: float = 0.0

    def report(self, tail_lines: int = TRACE_TAIL_LINES) -> str:
        """The human report: seed, profile, invariant, trace tail and replay command."""
        tail = self.trace_tail[-tail_lines:] if tail_lines > 0 else ()
        lines = [
            f"FAILED {self.scenario} seed {self.seed} at t={self.virtual_s:.3f}s "
            f"[{self.invariant}]",
            f"  profile: {self.profile.describe()}",
            f"  error:   {self.error_type}: {self.message}",
            f"  trace (last {len(tail)} lines):",
            *(f"    {line}" for line in tail),
        ]
        if self.trace_file is not None:
            lines.append(f"  whole trace: {self.trace_file}")
        lines.append(f"  replay:  {self.command}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary (no trace lines)."""
        return {
            "scenario": self.scenario,
            "seed": self.seed,
            "invariant": self.invariant,
            "error_type": self.error_type,
            "message": self.message,
            "profile": self.profile.to_json(),
            "command": self.command,
            "trace_file": self.trace_file,
        }


@attrs.frozen
class SeedRun:
    """The outcome of one seed.

    Attributes:
        seed: the run seed.
        profile: the profile it ran with.
        failure: what failed, or None when the run passed.
        events: trace events recorded.
        simulated_s: virtual seconds reached.
        wall_s: real seconds the run took.
        sometimes: ``world.sometimes`` counters of the run.
        trace_digest: SHA-256 of the trace (of the part before the failure, on failure).
        value: what the scenario returned (None on failure).
    """

    seed: int
    profile: FaultProfile
    failure: Failure | None
    events: int
    simulated_s: float
    wall_s: float
    sometimes: dict[str, int]
    trace_digest: str
    value: Any = None

    @property
    def ok(self) -> bool:
        """Whether the seed passed."""
        return self.failure is None


@attrs.define
class _Capture:
    world: World | None = None
    tail: list[str] | None = None
    """The trace tail when the scenario raised, before the teardown added its lines."""


def _trace_path(trace_dir: Path, scenario: Scenario, seed: int) -> Path:
    return trace_dir / f"{_FILE_SAFE.sub('_', scenario.name)}-seed{seed}.trace"


def run_seed(
    scenario: Scenario,
    seed: int,
    *,
    profile: FaultProfile | None = None,
    target: str | None = None,
    trace_dir: Path | str | None = None,
    keep_trace: bool | None = None,
) -> SeedRun:
    """Run ``scenario`` once with ``seed`` and report the outcome instead of raising.

    Args:
        scenario: what to run.
        seed: the run seed.
        profile: the faults; None draws them with the scenario's policy.
        target: the ``MODULE:NAME`` the replay command names (the scenario's name if None).
        trace_dir: where a failing seed's whole trace is written (not written if None).
        keep_trace: keep every trace line in memory (default: only when ``trace_dir`` is set).
    """
    from mainspring.simulations.world import run_simulation

    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"a seed is an int >= 0, got {seed!r}")
    explicit = profile is not None
    chosen = profile if profile is not None else scenario.profile_for(seed)
    keep = trace_dir is not None if keep_trace is None else keep_trace
    capture = _Capture()

    async def body(world: World) -> Any:
        capture.world = world
        try:
            return await scenario(world)
        except BaseException:
            capture.tail = world.loop.trace_tail()
            raise

    started = _CLOCK.monotonic_s()
    try:
        if scenario.max_steps is None:
            result = run_simulation(seed, body, profile=chosen, keep_trace=keep)
        else:
            result = run_simulation(
                seed, body, profile=chosen, keep_trace=keep, max_steps=scenario.max_steps
            )
    except (Exception, SimulationError) as error:
        wall_s = _CLOCK.monotonic_s() - started
        return _failed(
            scenario,
            seed,
            chosen,
            error,
            capture.world,
            capture.tail,
            explicit=explicit,
            target=target,
            trace_dir=Path(trace_dir) if trace_dir is not None else None,
            wall_s=wall_s,
        )
    wall_s = _CLOCK.monotonic_s() - started
    return SeedRun(
        seed=seed,
        profile=chosen,
        failure=None,
        events=result.events,
        simulated_s=result.virtual_s,
        wall_s=wall_s,
        sometimes=dict(result.sometimes),
        trace_digest=result.trace_digest,
        value=result.value,
    )


def _failed(
    scenario: Scenario,
    seed: int,
    profile: FaultProfile,
    error: BaseException,
    world: World | None,
    capture_tail: list[str] | None,
    *,
    explicit: bool,
    target: str | None,
    trace_dir: Path | None,
    wall_s: float,
) -> SeedRun:
    tail: tuple[str, ...] = ()
    events = 0
    virtual_s = 0.0
    digest = ""
    sometimes: dict[str, int] = {}
    trace_file = None
    if world is not None:
        loop = world.loop
        tail = tuple(capture_tail if capture_tail is not None else loop.trace_tail())
        events = loop.trace_events
        virtual_s = loop.now_ns / 1e9
        digest = loop.trace_digest()
        sometimes = dict(world.sometimes_counts)
        if trace_dir is not None:
            lines = loop.trace_lines()
            trace_dir.mkdir(parents=True, exist_ok=True)
            path = _trace_path(trace_dir, scenario, seed)
            path.write_text("".join(line + "\n" for line in (lines if lines else tail)))
            trace_file = str(path)
    failure = Failure(
        scenario=scenario.name,
        seed=seed,
        profile=profile,
        invariant=failure_signature(error),
        error_type=type(error).__name__,
        message=str(error),
        trace_tail=tail,
        command=replay_command(target or scenario.name, seed, profile if explicit else None),
        trace_file=trace_file,
        virtual_s=virtual_s,
    )
    return SeedRun(
        seed=seed,
        profile=profile,
        failure=failure,
        events=events,
        simulated_s=virtual_s,
        wall_s=wall_s,
        sometimes=sometimes,
        trace_digest=digest,
    )


@attrs.frozen
class CampaignReport:
    """What a campaign did and found.

    Attributes:
        scenario: the scenario's name.
        seeds: how many seeds ran.
        failures: one per failing seed, in seed order.
        events: trace events over every seed.
        simulated_s: virtual seconds over every seed.
        wall_s: real seconds the campaign took.
        sometimes: ``world.sometimes`` counters summed over every seed (the expected targets
            are present, with 0 when they never fired).
        too_gentle: expected ``sometimes`` targets that never fired.
        first_seed: the first seed run.
    """

    scenario: str
    seeds: int
    failures: tuple[Failure, ...]
    events: int
    simulated_s: float
    wall_s: float
    sometimes: dict[str, int]
    too_gentle: tuple[str, ...]
    first_seed: int = 0

    @property
    def failing_seeds(self) -> list[int]:
        """The seeds that failed, in order."""
        return [failure.seed for failure in self.failures]

    def ok(self, *, strict: bool = False) -> bool:
        """No seed failed (and, when ``strict``, every expected target fired)."""
        return not self.failures and not (strict and self.too_gentle)

    def to_json(self) -> dict[str, Any]:
        """The one-line JSON summary ``mainspring simulate --json`` prints."""
        return {
            "scenario": self.scenario,
            "seeds": self.seeds,
            "first_seed": self.first_seed,
            "failures": len(self.failures),
            "failing_seeds": self.failing_seeds,
            "invariants": sorted({failure.invariant for failure in self.failures}),
            "events": self.events,
            "simulated_s": round(self.simulated_s, 3),
            "wall_s": round(self.wall_s, 3),
            "seeds_per_minute": round(60 * self.seeds / self.wall_s, 1) if self.wall_s else None,
            "events_per_s": round(self.events / self.wall_s) if self.wall_s else None,
            "sometimes": dict(sorted(self.sometimes.items())),
            "too_gentle": list(self.too_gentle),
        }

    def summary(self) -> str:
        """One line: seeds, failures, events, simulated and wall seconds."""
        gentle = f", too gentle: {', '.join(self.too_gentle)}" if self.too_gentle else ""
        return (
            f"{self.scenario}: {self.seeds} seeds, {len(self.failures)} failed"
            f"{' ' + str(self.failing_seeds) if self.failures else ''}, {self.events} events, "
            f"{self.simulated_s:.1f} simulated s in {self.wall_s:.2f} wall s{gentle}"
        )

    def sometimes_table(self) -> str:
        """The ``sometimes`` counters, one per line, targets that never fired marked."""
        lines = []
        for name, count in sorted(self.sometimes.items()):
            mark = "  <- never fired: the faults are too gentle" if name in self.too_gentle else ""
            lines.append(f"  {name}: {count}{mark}")
        return "\n".join(lines)


def run_campaign(
    scenario: Scenario,
    seeds: int | Iterable[int] | None = None,
    *,
    profile: FaultProfile | None = None,
    target: str | None = None,
    trace_dir: Path | str | None = None,
    stop_after_failures: int | None = None,
    expected_sometimes: Sequence[str] | None = None,
) -> CampaignReport:
    """Run ``scenario`` over ``seeds`` (a count from 0, or the seeds themselves; the scenario's
    ``seeds`` when None) and report.

    Args:
        scenario: what to run.
        seeds: a number of seeds (``0..n-1``) or an iterable of seeds.
        profile: one profile for every seed instead of the scenario's policy.
        target: ``MODULE:NAME`` for the replay commands.
        trace_dir: directory for the whole traces of failing seeds.
        stop_after_failures: stop once this many seeds failed (None: run every seed).
        expected_sometimes: the targets that must fire (the scenario's ``sometimes`` if None).
    """
    if seeds is None:
        seed_list = list(range(scenario.seeds))
    elif isinstance(seeds, int):
        if isinstance(seeds, bool) or seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {seeds!r}")
        seed_list = list(range(seeds))
    else:
        seed_list = list(seeds)
        if not seed_list:
            raise ValueError("a campaign needs at least one seed")
    if stop_after_failures is not None and stop_after_failures < 1:
        raise ValueError(f"stop_after_failures must be >= 1, got {stop_after_failures!r}")
    expected = tuple(scenario.sometimes if expected_sometimes is None else expected_sometimes)
    started = _CLOCK.monotonic_s()
    failures: list[Failure] = []
    sometimes: dict[str, int] = dict.fromkeys(expected, 0)
    events = 0
    simulated_s = 0.0
    ran = 0
    for seed in seed_list:
        run = run_seed(scenario, seed, profile=profile, target=target, trace_dir=trace_dir)
        ran += 1
        events += run.events
        simulated_s += run.simulated_s
        for name, count in run.sometimes.items():
            sometimes[name] = sometimes.get(name, 0) + count
        if run.failure is not None:
            failures.append(run.failure)
            if stop_after_failures is not None and len(failures) >= stop_after_failures:
                break
    return CampaignReport(
        scenario=scenario.name,
        seeds=ran,
        failures=tuple(failures),
        events=events,
        simulated_s=simulated_s,
        wall_s=_CLOCK.monotonic_s() - started,
        sometimes=sometimes,
        too_gentle=tuple(name for name in expected if sometimes.get(name, 0) == 0),
        first_seed=seed_list[0],
    )


@attrs.frozen
class DeterminismReport:
    """Two runs of one seed: equal digests mean the run is reproducible."""

    seed: int
    digests: tuple[str, str]
    events: tuple[int, int]

    @property
    def ok(self) -> bool:
        """Whether both runs produced the same trace."""
        return self.digests[0] == self.digests[1] and self.events[0] == self.events[1]


def check_determinism(
    scenario: Scenario,
    seed: int,
    *,
    profile: FaultProfile | None = None,
    target: str | None = None,
) -> DeterminismReport:
    """Run ``seed`` twice and compare the trace digests (a failing seed is compared up to its
    failure).

    With ``target`` (``MODULE:NAME``, importable from the current directory) the second run
    happens in a fresh Python process with another ``PYTHONHASHSEED``, so that anything
    depending on string hashing, object addresses or state left by the first run shows up;
    without it both runs happen in this process.
    """
    first = run_seed(scenario, seed, profile=profile)
    if target is None:
        second = run_seed(scenario, seed, profile=profile)
        other = (second.trace_digest, second.events)
    else:
        other = _digest_in_a_fresh_process(target, seed, profile)
    return DeterminismReport(
        seed=seed,
        digests=(first.trace_digest, other[0]),
        events=(first.events, other[1]),
    )


_FRESH_RUN: Final = """
import json, logging, sys
logging.disable(logging.CRITICAL)
from mainspring.simulations.campaign import run_seed
from mainspring.simulations.profile import FaultProfile
from mainspring.simulations.scenario import load_scenario
target, seed, profile = json.loads(sys.argv[1])
profile = None if profile is None else FaultProfile.from_json(profile)
run = run_seed(load_scenario(target), seed, profile=profile)
print(json.dumps([run.trace_digest, run.events]))
"""


def _digest_in_a_fresh_process(
    target: str, seed: int, profile: FaultProfile | None
) -> tuple[str, int]:
    argument = json.dumps([target, seed, None if profile is None else profile.to_json()])
    environment = {**os.environ, "PYTHONHASHSEED": "20261121"}
    done = subprocess.run(  # noqa: S603 - our own interpreter and code, no shell
        [sys.executable, "-c", _FRESH_RUN, argument],
        capture_output=True,
        text=True,
        env=environment,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"the fresh process replaying {target} seed {seed} failed "
            f"(exit {done.returncode}): {done.stderr.strip()[-2000:]}"
        )
    digest, events = json.loads(done.stdout.strip().splitlines()[-1])
    return str(digest), int(events)


# Regression seeds -------------------------------------------------------------------------------


class RegressionError(ValueError):
    """A regression file has a malformed line; the message names the file, line and fix."""


@attrs.frozen
class Regression:
    """One line of a regression file: a scenario, a seed and optionally its profile.

    Attributes:
        target: ``MODULE:NAME`` of the scenario.
        seed: the seed.
        profile: the profile to replay it with (None: the scenario's policy for the seed).
        line: the line number in the file.
    """

    target: str
    seed: int
    profile: FaultProfile | None
    line: int


def parse_regressions(text: str, source: str = "<regressions>") -> list[Regression]:
    """Parse regression lines: ``MODULE:NAME SEED [PROFILE-JSON]``; ``#`` starts a comment.

    Raises:
        RegressionError: a line is malformed.
    """
    from mainspring.simulations.profile import FaultProfile

    entries = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(maxsplit=2)
        where = f"{source}:{number}"
        if len(parts) < 2 or ":" not in parts[0]:
            raise RegressionError(
                f"{where}: expected 'MODULE:NAME SEED [PROFILE-JSON]', got {line!r}"
            )
        try:
            seed = int(parts[1])
        except ValueError:
            raise RegressionError(
                f"{where}: the seed must be an integer, got {parts[1]!r}"
            ) from None
        if seed < 0:
            raise RegressionError(f"{where}: the seed must be >= 0, got {seed}")
        profile = None
        if len(parts) == 3:
            try:
                profile = FaultProfile.from_json(json.loads(parts[2]))
            except (ValueError, TypeError, KeyError) as error:
                raise RegressionError(
                    f"{where}: the profile is not valid FaultProfile JSON ({error}); copy it "
                    "from the failure's replay command"
                ) from error
        entries.append(Regression(parts[0], seed, profile, number))
    return entries


def read_regressions(path: Path | str) -> list[Regression]:
    """Read a regression file (see ``parse_regressions``)."""
    path = Path(path)
    return parse_regressions(path.read_text(), str(path))


def regression_line(target: str, seed: int, profile: FaultProfile | None = None) -> str:
    """The regression-file line for a failing seed."""
    if profile is None:
        return f"{target} {seed}"
    argument = profile_argument(profile)
    return f"{target} {seed} {'{}' if argument == 'none' else argument}"
