"""The campaign runner, its report, regression files, shrinking and the scenario contract."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from mainspring.simulations.campaign import (
    RegressionError,
    check_determinism,
    failure_signature,
    parse_regressions,
    regression_line,
    replay_command,
    run_campaign,
    run_seed,
)
from mainspring.simulations.checkers import InvariantViolation
from mainspring.simulations.loop import Deadlock
from mainspring.simulations.profile import FaultProfile
from mainspring.simulations.scenario import Scenario, ScenarioError, load_scenario, scenario
from mainspring.simulations.shrink import shrink
from tests.simulation_campaign import scenarios

TARGET = "tests.simulation_campaign.scenarios"


def test_a_passing_campaign_counts_seeds_events_and_time() -> None:
    report = run_campaign(scenarios.passing)
    assert report.seeds == 4
    assert report.failures == ()
    assert report.ok()
    assert report.ok(strict=True)
    assert report.events > 4 * 10
    assert report.simulated_s >= 0
    assert report.wall_s > 0
    data = report.to_json()
    assert data["seeds"] == 4
    assert data["failures"] == 0
    assert data["failing_seeds"] == []


def test_a_failing_seed_is_reported_with_everything_needed_to_replay_it(tmp_path: Path) -> None:
    report = run_campaign(
        scenarios.fails_on_seed_3, target=f"{TARGET}:fails_on_seed_3", trace_dir=tmp_path
    )
    assert report.seeds == 6
    assert report.failing_seeds == [3]
    assert not report.ok()
    failure = report.failures[0]
    assert failure.invariant == "planted"
    assert failure.error_type == "InvariantViolation"
    assert failure.command == f"mainspring simulate {TARGET}:fails_on_seed_3 --seed 3"
    assert any("count.ok" in line or "task" in line for line in failure.trace_tail)
    text = failure.report()
    assert "FAILED fails_on_seed_3 seed 3" in text
    assert "[planted]" in text
    assert "profile: faults: none" in text
    assert f"replay:  mainspring simulate {TARGET}:fails_on_seed_3 --seed 3" in text
    assert failure.trace_file is not None
    trace = Path(failure.trace_file).read_text().splitlines()
    assert any(line.split(" ", 2)[2].startswith("run.start seed=3") for line in trace[:3])
    assert "\n".join(failure.trace_tail) in "\n".join(trace)  # the tail is the failure's
    assert failure.trace_tail[-1] != trace[-1]  # ... not the teardown's that followed it


def test_the_replayed_seed_fails_the_same_way() -> None:
    run = run_seed(scenarios.fails_on_seed_3, 3)
    assert run.failure is not None
    assert run.failure.invariant == "planted"
    assert run_seed(scenarios.fails_on_seed_3, 2).ok


def test_stop_after_failures_ends_the_campaign_early() -> None:
    report = run_campaign(scenarios.fails_on_seed_3, range(10), stop_after_failures=1)
    assert report.seeds == 4
    assert report.failing_seeds == [3]


def test_a_target_that_never_fires_makes_the_campaign_too_gentle() -> None:
    report = run_campaign(scenarios.gentle)
    assert report.sometimes == {"fired": 3, "never_fired": 0}
    assert report.too_gentle == ("never_fired",)
    assert report.ok()
    assert not report.ok(strict=True)
    assert "never_fired: 0  <- never fired" in report.sometimes_table()
    assert report.to_json()["too_gentle"] == ["never_fired"]


def test_a_scenario_that_does_not_settle_fails_liveness() -> None:
    run = run_seed(scenarios.never_settles, 0)
    assert run.failure is not None
    assert run.failure.invariant == "liveness"
    assert "did not settle within 5.0 virtual seconds" in run.failure.message


def test_the_swarm_is_the_default_policy() -> None:
    plain = Scenario(name="plain", run=scenarios.count_three)
    assert plain.profile_for(7) == FaultProfile.swarm(7)
    assert scenarios.passing.profile_for(7) == FaultProfile.none()


def test_the_failure_signature_names_the_invariant() -> None:
    assert failure_signature(InvariantViolation("[gapless] s: 1, 3")) == "gapless"
    assert failure_signature(Deadlock(0, [])) == "deadlock"
    assert failure_signature(AssertionError("x")) == "AssertionError"
    assert failure_signature(ValueError("[not an invariant] x")) == "not an invariant"


def test_the_replay_command_round_trips_the_profile() -> None:
    profile = FaultProfile.swarm(11)
    words = shlex.split(replay_command("pkg.mod:name", 11, profile))
    assert words[:5] == ["mainspring", "simulate", "pkg.mod:name", "--seed", "11"]
    assert words[5] == "--profile"
    assert FaultProfile.from_json(json.loads(words[6])) == profile


def test_regression_lines_parse_and_refuse_what_is_malformed() -> None:
    profile = FaultProfile.swarm(5)
    text = "\n".join(
        [
            "# seeds that once failed",
            "",
            regression_line("a.b:c", 12),
            regression_line("a.b:d", 5, profile) + "  ",
        ]
    )
    entries = parse_regressions(text, "regressions.txt")
    assert [(e.target, e.seed, e.profile, e.line) for e in entries] == [
        ("a.b:c", 12, None, 3),
        ("a.b:d", 5, profile, 4),
    ]
    with pytest.raises(RegressionError, match=r"x\.txt:1: expected 'MODULE:NAME SEED"):
        parse_regressions("a.b 3", "x.txt")
    with pytest.raises(RegressionError, match="the seed must be an integer"):
        parse_regressions("a.b:c three", "x.txt")
    with pytest.raises(RegressionError, match="not valid FaultProfile JSON"):
        parse_regressions('a.b:c 3 {"bogus": 1}', "x.txt")


def test_one_seed_gives_one_trace_in_another_process_too() -> None:
    report = check_determinism(scenarios.sound, 3, target=f"{TARGET}:sound")
    assert report.ok, report
    assert report.events[0] > 100


def test_one_seed_gives_one_trace() -> None:
    report = check_determinism(scenarios.sound, 2)
    assert report.ok, report
    assert report.digests[0]
    assert report.events[0] > 100


def test_shrinking_keeps_the_failure_and_drops_the_faults_it_does_not_need() -> None:
    target = f"{TARGET}:buggy"
    report = run_campaign(scenarios.buggy, target=target, stop_after_failures=1)
    assert report.failures, "the injected bug must be caught by one of the seeds"
    failure = report.failures[0]
    assert failure.invariant == "no acknowledged event lost"
    result = shrink(scenarios.buggy, failure, target=target)
    original = set(result.original.fault_kinds())
    minimal = set(result.minimal.fault_kinds())
    assert minimal < original, result.report()
    assert result.steps
    assert result.runs >= len(result.steps)
    assert result.failure.invariant == failure.invariant
    assert result.command.startswith(f"mainspring simulate {target} --seed {failure.seed}")
    again = run_seed(scenarios.buggy, failure.seed, profile=result.minimal)
    assert again.failure is not None
    assert again.failure.invariant == failure.invariant
    assert "SHRUNK seed" in result.report()
    # The same seed and minimal profile without the bug pass: the bug is what fails.
    assert run_seed(scenarios.sound, failure.seed, profile=result.minimal).ok


def test_load_scenario_finds_scenarios_and_explains_mistakes() -> None:
    assert load_scenario(f"{TARGET}:passing") is scenarios.passing
    wrapped = load_scenario(f"{TARGET}:count_three")
    assert wrapped.name == "count_three"
    assert wrapped.run is scenarios.count_three
    with pytest.raises(ScenarioError, match="MODULE:NAME"):
        load_scenario("no-colon")
    with pytest.raises(ScenarioError, match="cannot import module 'no_such_module'"):
        load_scenario("no_such_module:x")
    with pytest.raises(ScenarioError, match="has no 'missing'"):
        load_scenario(f"{TARGET}:missing")
    with pytest.raises(ScenarioError, match="is int, not a Scenario"):
        load_scenario(f"{TARGET}:not_a_scenario")


def test_the_decorator_and_the_class_validate_their_options() -> None:
    @scenario(seeds=7, sometimes=("x",))
    async def mine(world: object) -> None:
        """My scenario."""

    assert (mine.name, mine.seeds, mine.sometimes, mine.description) == (
        "mine",
        7,
        ("x",),
        "My scenario.",
    )
    with pytest.raises(ScenarioError, match="liveness_s must be > 0"):
        Scenario(name="x", run=scenarios.count_three, liveness_s=0)
    with pytest.raises(ScenarioError, match="seeds must be an int >= 1"):
        Scenario(name="x", run=scenarios.count_three, seeds=0)
    with pytest.raises(ScenarioError, match="a scenario name is"):
        Scenario(name="has space", run=scenarios.count_three)
    with pytest.raises(ScenarioError, match="must be callable"):
        Scenario(name="x", run=42)  # type: ignore[arg-type]
    bad_policy = Scenario(name="x", run=scenarios.count_three, profile=lambda seed: "none")  # type: ignore[arg-type,return-value]
    with pytest.raises(ScenarioError, match="not a FaultProfile"):
        bad_policy.profile_for(0)
    with pytest.raises(ValueError, match="seeds must be >= 1"):
        run_campaign(scenarios.passing, 0)
