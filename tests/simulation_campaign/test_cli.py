"""``mainspring simulate``: JSON lines, exit codes, replay, shrinking, regressions, self-check."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from click.testing import CliRunner, Result

from mainspring.cli import main
from mainspring.simulations.campaign import regression_line
from mainspring.simulations.profile import FaultProfile
from mainspring.simulations.selfcheck import BrokenVariant, run_self_check, tally_scenario

TARGET = "tests.simulation_campaign.scenarios"


def simulate(*args: str) -> Result:
    return CliRunner().invoke(main, ["simulate", *args], catch_exceptions=False)


def json_lines(result: Result) -> list[dict[str, object]]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def test_json_summary_of_a_passing_campaign() -> None:
    result = simulate(f"{TARGET}:passing", "--seeds", "3", "--json")
    assert result.exit_code == 0, result.output
    [data] = json_lines(result)
    assert data["seeds"] == 3
    assert data["failures"] == 0
    assert data["failing_seeds"] == []
    assert isinstance(data["events"], int)
    assert data["events"] > 0
    assert isinstance(data["simulated_s"], float)
    assert isinstance(data["wall_s"], float)
    assert data["sometimes"] == {}


def test_a_failing_seed_exits_1_and_prints_how_to_replay_it(tmp_path: Path) -> None:
    result = simulate(f"{TARGET}:fails_on_seed_3", "--trace-dir", str(tmp_path))
    assert result.exit_code == 1
    out = result.stdout
    assert "FAILED fails_on_seed_3 seed 3" in out
    assert "[planted]" in out
    assert "profile: faults: none" in out
    assert f"replay:  mainspring simulate {TARGET}:fails_on_seed_3 --seed 3" in out
    assert (tmp_path / "fails_on_seed_3-seed3.trace").is_file()
    assert "fails_on_seed_3: 6 seeds, 1 failed [3]" in out
    data = json_lines(simulate(f"{TARGET}:fails_on_seed_3", "--json"))[0]
    assert (data["failures"], data["failing_seeds"], data["invariants"]) == (1, [3], ["planted"])


def test_the_printed_command_replays_the_seed() -> None:
    out = simulate(f"{TARGET}:fails_on_seed_3").stdout
    command = next(line for line in out.splitlines() if "replay:" in line).split("replay:")[1]
    words = shlex.split(command)
    assert words[:2] == ["mainspring", "simulate"]
    again = simulate(*words[2:], "--json")
    assert again.exit_code == 1
    assert json_lines(again)[0]["failing_seeds"] == [3]
    assert simulate(f"{TARGET}:fails_on_seed_3", "--seed", "2").exit_code == 0


def test_strict_fails_a_campaign_that_is_too_gentle() -> None:
    lenient = simulate(f"{TARGET}:gentle")
    assert lenient.exit_code == 0
    assert "never_fired: 0  <- never fired" in lenient.stdout
    strict = simulate(f"{TARGET}:gentle", "--strict", "--json")
    assert strict.exit_code == 1
    assert json_lines(strict)[0]["too_gentle"] == ["never_fired"]


def test_shrink_prints_the_minimal_profile_and_its_command() -> None:
    result = simulate(f"{TARGET}:buggy", "--seeds", "3", "--shrink", "--json")
    assert result.exit_code == 1
    [data] = json_lines(result)
    shrunk = data["shrunk"]
    assert isinstance(shrunk, dict)
    assert shrunk["invariant"] == "no acknowledged event lost"
    assert str(shrunk["command"]).startswith(f"mainspring simulate {TARGET}:buggy --seed ")
    text = simulate(f"{TARGET}:buggy", "--seeds", "3", "--shrink").stdout
    assert f"SHRUNK seed {shrunk['seed']} [no acknowledged event lost]" in text
    assert "minimal:" in text


def test_profile_option_takes_json_a_file_or_none(tmp_path: Path) -> None:
    profile = FaultProfile.swarm(3)
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile.to_json()))
    assert simulate(f"{TARGET}:passing", "--seed", "0", "--profile", str(path)).exit_code == 0
    assert simulate(f"{TARGET}:passing", "--seed", "0", "--profile", "none").exit_code == 0
    bad = CliRunner().invoke(main, ["simulate", f"{TARGET}:passing", "--profile", '{"x": 1}'])
    assert bad.exit_code == 2
    assert "not a fault profile" in bad.output


def test_usage_errors_exit_2_and_say_what_to_do() -> None:
    runner = CliRunner()
    nothing = runner.invoke(main, ["simulate"])
    assert nothing.exit_code == 2
    assert "name a scenario (MODULE:SCENARIO)" in nothing.output
    missing = runner.invoke(main, ["simulate", "no_such_module:x"])
    assert missing.exit_code == 2
    assert "cannot import module 'no_such_module'" in missing.output
    both = runner.invoke(main, ["simulate", f"{TARGET}:passing", "--seed", "1", "--seeds", "2"])
    assert both.exit_code == 2


def test_regressions_run_every_listed_seed(tmp_path: Path) -> None:
    path = tmp_path / "regressions.txt"
    path.write_text(
        "# seeds that failed once\n"
        + regression_line(f"{TARGET}:passing", 1)
        + "\n"
        + regression_line(f"{TARGET}:passing", 2, FaultProfile.none())
        + "\n"
    )
    ok = simulate("--regressions", str(path), "--json")
    assert ok.exit_code == 0
    assert json_lines(ok) == [{"regressions": 2, "failures": 0, "failing": []}]
    path.write_text(regression_line(f"{TARGET}:fails_on_seed_3", 3) + "\n")
    failing = simulate("--regressions", str(path))
    assert failing.exit_code == 1
    assert "regression seed fails again" in failing.stdout


def test_check_determinism_compares_two_runs() -> None:
    result = simulate(f"{TARGET}:sound", "--check-determinism", "--seed", "4", "--json")
    assert result.exit_code == 0
    [data] = json_lines(result)
    assert data["deterministic"] is True
    digests = data["digests"]
    assert isinstance(digests, list)
    assert digests[0] == digests[1]


def test_self_check_reports_the_seed_that_caught_each_broken_variant() -> None:
    result = simulate("--self-check", "--json")
    assert result.exit_code == 0, result.output
    [data] = json_lines(result)
    assert data["survived"] == []
    caught = {entry["variant"]: entry for entry in data["self_check"]}  # type: ignore[attr-defined]
    assert set(caught) == {"fencing-off", "dedupe-off", "reply-before-commit"}
    for entry in caught.values():
        assert isinstance(entry["caught_by_seed"], int)
    assert caught["fencing-off"]["invariant"] == "no stale-epoch commit"
    text = simulate("--self-check").stdout
    assert "dedupe-off: caught by seed" in text


def test_a_variant_that_no_seed_catches_survives() -> None:
    # The real store under the self-check's scenario: nothing is broken, so nothing catches it.
    sound = BrokenVariant(
        "nothing-broken", "no guard removed", "no stale-epoch commit", lambda: tally_scenario()
    )
    [result] = run_self_check(3, variants=[sound])
    assert not result.caught
    assert (result.caught_by, result.seeds_run, result.other_failures) == (None, 3, ())
