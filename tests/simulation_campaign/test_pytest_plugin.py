"""The pytest plugin: the ``simulate`` fixture, the ``simulation`` marker and ``--sim-*``."""

from __future__ import annotations

import pytest

pytest_plugins = ("pytester",)


@pytest.fixture(autouse=True)
def _ini(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )


TESTS = """
import pytest

from mainspring.simulations import InvariantViolation
from mainspring.simulations.profile import FaultProfile
from mainspring.simulations.scenario import scenario

RUNS = []


def no_faults(seed):
    return FaultProfile.none()


@scenario(profile=no_faults, seeds=5)
async def counted(world):
    RUNS.append(world.seed)
    await world.sleep(1)


@scenario(profile=no_faults, seeds=5, sometimes=("never",))
async def gentle(world):
    await world.sleep(1)


@scenario(profile=no_faults, seeds=8)
async def breaks_on_seed_6(world):
    await world.sleep(1)
    world.record("about.to.fail")
    if world.seed == 6:
        raise InvariantViolation("[planted] seed six")


def test_default_seeds(simulate):
    RUNS.clear()
    report = simulate(counted)
    assert RUNS == [0, 1, 2, 3, 4]
    assert report.seeds == 5


@pytest.mark.simulation(seeds=3)
def test_marker_seeds(simulate):
    RUNS.clear()
    simulate(counted)
    assert RUNS == [0, 1, 2]


def test_failing(simulate):
    simulate(breaks_on_seed_6)


@pytest.mark.simulation(strict=True)
def test_too_gentle(simulate):
    simulate(gentle)


def test_lenient(simulate):
    assert simulate(gentle).too_gentle == ("never",)
"""


def test_the_fixture_runs_seeds_and_fails_with_the_reproduce_report(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_sims=TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*FAILED breaks_on_seed_6 seed 6 at t=1.000s [[]planted[]]*",
            "*profile: faults: none*",
            "*about.to.fail*",
            "*replay:  mainspring simulate breaks_on_seed_6 --seed 6*",
            "*breaks_on_seed_6: 8 seeds, 1 failed [[]6[]]*",
            "*never fired (the faults are too gentle): never*",
        ]
    )


def test_sim_seeds_scales_and_sim_seed_replays_one_seed(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_sims=TESTS)
    few = pytester.runpytest("-p", "no:cacheprovider", "--sim-seeds", "2", "-k", "failing")
    few.assert_outcomes(passed=1)  # seed 6 is beyond two seeds
    one = pytester.runpytest("-p", "no:cacheprovider", "--sim-seed", "6", "-k", "failing")
    one.assert_outcomes(failed=1)
    one.stdout.fnmatch_lines(["*breaks_on_seed_6: 1 seeds, 1 failed [[]6[]]*"])
    strict = pytester.runpytest("-p", "no:cacheprovider", "--sim-strict", "-k", "lenient")
    strict.assert_outcomes(failed=1)
    shrunk = pytester.runpytest("-p", "no:cacheprovider", "--sim-shrink", "-k", "failing")
    shrunk.assert_outcomes(failed=1)
    shrunk.stdout.fnmatch_lines(["*SHRUNK seed 6 [[]planted[]] in * runs*"])


def test_the_marker_refuses_unknown_options(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_bad="""
        import pytest

        @pytest.mark.simulation(sedes=3)
        def test_typo(simulate):
            pass
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*simulation takes seeds= and strict=, not [[]'sedes'[]]*"])
    assert result.ret != 0


def test_an_async_test_is_told_to_be_a_plain_function(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_async="""
        async def test_inside_a_loop(simulate):
            simulate("tests_do_not_exist:x")
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*simulate() runs its own event loop; call it from a plain*"])
    assert result.ret != 0


def test_the_plugin_registers_its_options(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(["*--sim-seeds=N*", "*--sim-seed=S*", "*--sim-trace-dir=DIR*"])
