"""``mainspring simulate``: run scenarios over many seeds, replay a seed, shrink it, self-check.

Examples::

    mainspring simulate simulations.orders:orders --seeds 200
    mainspring simulate simulations.orders:orders --seed 17 --trace-dir traces
    mainspring simulate simulations.orders:orders --seed 17 --shrink
    mainspring simulate --regressions simulations/regressions.txt
    mainspring simulate --self-check
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from mainspring.simulations.campaign import CampaignReport
    from mainspring.simulations.profile import FaultProfile
    from mainspring.simulations.scenario import Scenario

__all__ = ["simulate"]


def _emit(line: str) -> None:
    click.echo(line)


def _json_line(data: dict[str, Any]) -> None:
    click.echo(json.dumps(data, sort_keys=True, separators=(",", ":")))


def _load_profile(value: str) -> FaultProfile:
    from mainspring.simulations.profile import FaultProfile

    text = value.strip()
    if text == "none":
        return FaultProfile.none()
    if not text.startswith("{"):
        path = Path(text)
        if not path.is_file():
            raise click.BadParameter(
                f"{value!r} is neither a JSON object, 'none', nor a readable file",
                param_hint="--profile",
            )
        text = path.read_text()
    try:
        data = json.loads(text)
        return FaultProfile.from_json(data)
    except (ValueError, TypeError, KeyError) as error:
        raise click.BadParameter(
            f"not a fault profile: {error} (write what `--json` failures print under 'profile')",
            param_hint="--profile",
        ) from error


def _load(target: str) -> Scenario:
    from mainspring.simulations.scenario import ScenarioError, load_scenario

    # Scenario modules live in the project being tested: import them from where we run.
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return load_scenario(target)
    except ScenarioError as error:
        raise click.BadParameter(str(error), param_hint="TARGET") from error


def _print_report(
    report: CampaignReport, *, as_json: bool, max_reports: int, extra: dict[str, Any]
) -> None:
    if as_json:
        _json_line({**report.to_json(), **extra})
        return
    for failure in report.failures[:max_reports]:
        _emit(failure.report())
    if len(report.failures) > max_reports:
        _emit(f"... and {len(report.failures) - max_reports} more failing seeds")
    if report.sometimes:
        _emit("sometimes:")
        _emit(report.sometimes_table())
    _emit(report.summary())


def _run_targets(
    targets: tuple[str, ...],
    *,
    seeds: int | None,
    seed: int | None,
    start: int,
    profile: FaultProfile | None,
    as_json: bool,
    do_shrink: bool,
    trace_dir: Path | None,
    strict: bool,
    max_reports: int,
) -> bool:
    from mainspring.simulations.campaign import run_campaign
    from mainspring.simulations.shrink import shrink

    ok = True
    for target in targets:
        scenario = _load(target)
        if seed is not None:
            seed_list = [seed]
        else:
            seed_list = list(range(start, start + (seeds or scenario.seeds)))
        report = run_campaign(
            scenario, seed_list, profile=profile, target=target, trace_dir=trace_dir
        )
        extra: dict[str, Any] = {}
        if do_shrink and report.failures:
            shrunk = shrink(scenario, report.failures[0], target=target)
            extra["shrunk"] = {
                "seed": shrunk.seed,
                "invariant": shrunk.invariant,
                "runs": shrunk.runs,
                "steps": list(shrunk.steps),
                "profile": shrunk.minimal.to_json(),
                "command": shrunk.command,
            }
            if not as_json:
                _print_report(report, as_json=False, max_reports=max_reports, extra={})
                _emit(shrunk.report())
                ok = False
                continue
        # A single replayed seed checks its own outcome; gentleness is a campaign's matter.
        gentle_counts = strict and seed is None
        _print_report(report, as_json=as_json, max_reports=max_reports, extra=extra)
        ok = ok and report.ok(strict=gentle_counts)
    return ok


def _run_regressions(path: Path, *, as_json: bool, trace_dir: Path | None) -> bool:
    from mainspring.simulations.campaign import RegressionError, read_regressions, run_seed

    try:
        entries = read_regressions(path)
    except (OSError, RegressionError) as error:
        raise click.BadParameter(str(error), param_hint="--regressions") from error
    failed = []
    for entry in entries:
        run = run_seed(
            _load(entry.target),
            entry.seed,
            profile=entry.profile,
            target=entry.target,
            trace_dir=trace_dir,
        )
        if run.failure is not None:
            failed.append(run.failure)
            if not as_json:
                _emit(f"{path}:{entry.line}: regression seed fails again")
                _emit(run.failure.report())
    if as_json:
        _json_line(
            {
                "regressions": len(entries),
                "failures": len(failed),
                "failing": [f"{f.scenario} {f.seed}" for f in failed],
            }
        )
    else:
        _emit(f"{path}: {len(entries)} regression seeds, {len(failed)} failed")
    return not failed


def _run_self_check(seeds: int, *, as_json: bool) -> bool:
    from mainspring.simulations.selfcheck import run_self_check

    results = run_self_check(seeds)
    for result in results:
        if as_json:
            continue
        if result.caught_by is not None:
            _emit(
                f"{result.variant}: caught by seed {result.caught_by} "
                f"[{result.invariant}] after {result.seeds_run} seeds"
            )
        else:
            _emit(
                f"{result.variant}: SURVIVED {result.seeds_run} seeds: no seed broke "
                f"[{result.invariant}]; the simulator is too gentle for this bug"
            )
        if result.other_failures:
            _emit(f"  other failures meanwhile: {', '.join(result.other_failures)}")
    survived = [result.variant for result in results if not result.caught]
    if as_json:
        _json_line({"self_check": [result.to_json() for result in results], "survived": survived})
    return not survived


def _check_determinism(
    targets: tuple[str, ...], seeds: list[int], profile: FaultProfile | None, *, as_json: bool
) -> bool:
    from mainspring.simulations.campaign import check_determinism

    ok = True
    for target in targets:
        scenario = _load(target)
        for seed in seeds:
            result = check_determinism(scenario, seed, profile=profile, target=target)
            if as_json:
                _json_line(
                    {
                        "scenario": scenario.name,
                        "seed": seed,
                        "deterministic": result.ok,
                        "digests": list(result.digests),
                    }
                )
            else:
                verdict = "deterministic" if result.ok else "NOT DETERMINISTIC"
                _emit(
                    f"{scenario.name} seed {seed}: {verdict} "
                    f"({result.digests[0][:16]} vs {result.digests[1][:16]}, "
                    f"{result.events[0]} vs {result.events[1]} events)"
                )
            ok = ok and result.ok
    return ok


@click.command()
@click.argument("targets", nargs=-1, metavar="[MODULE:SCENARIO]...")
@click.option("--seeds", type=click.IntRange(min=1), help="Seeds per scenario (its own default).")
@click.option("--seed", type=click.IntRange(min=0), help="Run (replay) this one seed.")
@click.option(
    "--start",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="First seed of a campaign (seeds START..START+N-1).",
)
@click.option(
    "--profile",
    "profile_text",
    metavar="JSON|FILE|none",
    help="Run every seed with this fault profile instead of the scenario's policy.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON line per scenario.")
@click.option(
    "--shrink",
    "do_shrink",
    is_flag=True,
    help="Shrink the first failing seed's profile and print its replay command.",
)
@click.option(
    "--trace-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=lambda: Path(tempfile.gettempdir()) / "mainspring-traces",
    show_default="$TMPDIR/mainspring-traces",
    help="Write the whole trace of each failing seed here.",
)
@click.option(
    "--strict",
    is_flag=True,
    help="Fail the campaign when an expected 'sometimes' target never fired.",
)
@click.option(
    "--max-reports",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    help="Failure reports printed per scenario.",
)
@click.option(
    "--regressions",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Run every seed listed in this regression file.",
)
@click.option(
    "--self-check",
    is_flag=True,
    help="Run the built-in scenarios against deliberately broken variants.",
)
@click.option(
    "--self-check-seeds",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Seed budget of each broken variant.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error", "critical"]),
    default="critical",
    show_default=True,
    help="Log level of the simulated nodes (their injected failures are logged as errors).",
)
@click.option(
    "--check-determinism",
    is_flag=True,
    help="Run each seed here and in a fresh process; compare the trace digests.",
)
def simulate(
    targets: tuple[str, ...],
    seeds: int | None,
    seed: int | None,
    start: int,
    profile_text: str | None,
    as_json: bool,
    do_shrink: bool,
    trace_dir: Path | None,
    strict: bool,
    max_reports: int,
    regressions: Path | None,
    self_check: bool,
    self_check_seeds: int,
    log_level: str,
    check_determinism: bool,
) -> None:
    """Run simulation scenarios (MODULE:SCENARIO) over seeds; exit 1 when a seed fails.

    Each seed runs with the fault profile the scenario draws for it (a swarm of faults by
    default). A failure prints the seed, the profile, the broken invariant, the trace tail and
    the command that replays it.
    """
    if not targets and regressions is None and not self_check:
        raise click.UsageError(
            "name a scenario (MODULE:SCENARIO), --regressions FILE or --self-check"
        )
    if seed is not None and seeds is not None:
        raise click.UsageError("--seed replays one seed; --seeds runs many: use one of them")
    if (do_shrink or check_determinism) and not targets:
        raise click.UsageError("--shrink and --check-determinism need a MODULE:SCENARIO")
    profile = _load_profile(profile_text) if profile_text is not None else None
    logging.getLogger("mainspring").setLevel(log_level.upper())
    ok = True
    if check_determinism:
        seed_list = [seed] if seed is not None else list(range(start, start + (seeds or 1)))
        ok = _check_determinism(targets, seed_list, profile, as_json=as_json)
    elif targets:
        ok = _run_targets(
            targets,
            seeds=seeds,
            seed=seed,
            start=start,
            profile=profile,
            as_json=as_json,
            do_shrink=do_shrink,
            trace_dir=trace_dir,
            strict=strict,
            max_reports=max_reports,
        )
    if regressions is not None:
        ok = _run_regressions(regressions, as_json=as_json, trace_dir=trace_dir) and ok
    if self_check:
        ok = _run_self_check(self_check_seeds, as_json=as_json) and ok
    if not ok:
        sys.exit(1)
