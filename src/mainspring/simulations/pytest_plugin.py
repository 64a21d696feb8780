"""The pytest plugin of the simulator (registered through the ``pytest11`` entry point).

It gives tests the ``simulate`` fixture, the ``simulation`` marker and five options::

    @pytest.mark.simulation(seeds=50)
    def test_orders(simulate):
        simulate(orders)  # runs the scenario over 50 seeds; fails with the reproduce report

- ``--sim-seeds N``: run N seeds per simulation instead of what the marker or scenario says;
- ``--sim-seed S``: run only seed S (to replay a failure);
- ``--sim-trace-dir DIR``: write the whole trace of each failing seed there;
- ``--sim-shrink``: shrink the first failing seed's profile and report its replay command;
- ``--sim-strict``: fail when an expected ``sometimes`` target never fired.

The plugin loads in every pytest run of an environment where mainspring is installed, so it
imports nothing from the simulator until a test asks for ``simulate``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from mainspring.simulations.campaign import CampaignReport
    from mainspring.simulations.profile import FaultProfile
    from mainspring.simulations.scenario import Scenario

_REPORTS_SHOWN = 3


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the ``--sim-*`` options."""
    group = parser.getgroup("mainspring simulation")
    group.addoption(
        "--sim-seeds",
        type=int,
        default=None,
        metavar="N",
        help="seeds per simulation test (overrides the marker and the scenario's default)",
    )
    group.addoption(
        "--sim-seed",
        type=int,
        default=None,
        metavar="S",
        help="run only this seed in every simulation test (replay a failure)",
    )
    group.addoption(
        "--sim-trace-dir",
        default=None,
        metavar="DIR",
        help="write the whole trace of each failing seed to DIR",
    )
    group.addoption(
        "--sim-shrink",
        action="store_true",
        default=False,
        help="shrink the first failing seed's fault profile and report its replay command",
    )
    group.addoption(
        "--sim-strict",
        action="store_true",
        default=False,
        help="fail a simulation whose expected 'sometimes' targets never fired",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``simulation`` marker."""
    config.addinivalue_line(
        "markers",
        "simulation(seeds=None, strict=False): options of the `simulate` fixture for this test "
        "(seed count; fail when an expected 'sometimes' target never fired)",
    )


def _in_a_running_loop() -> bool:
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _marker_options(request: pytest.FixtureRequest) -> dict[str, Any]:
    marker = request.node.get_closest_marker("simulation")
    if marker is None:
        return {}
    if marker.args:
        raise pytest.UsageError(
            f"{request.node.nodeid}: write @pytest.mark.simulation(seeds=N, strict=...), "
            "with keywords"
        )
    unknown = sorted(set(marker.kwargs) - {"seeds", "strict"})
    if unknown:
        raise pytest.UsageError(
            f"{request.node.nodeid}: @pytest.mark.simulation takes seeds= and strict=, "
            f"not {unknown}"
        )
    return dict(marker.kwargs)


@pytest.fixture
def simulate(request: pytest.FixtureRequest) -> Callable[..., CampaignReport]:
    """``simulate(scenario, *, seeds=None, profile=None, strict=None)``: run ``scenario`` (a
    ``Scenario`` or ``"MODULE:NAME"``) over seeds and return the ``CampaignReport``; any failing
    seed fails the test with its report (seed, profile, invariant, trace tail, replay command).

    Seeds: ``--sim-seed`` if given, else ``--sim-seeds``, else ``seeds=``, else the marker's
    ``seeds``, else the scenario's own default.
    """
    from mainspring.simulations.campaign import run_campaign
    from mainspring.simulations.scenario import Scenario, load_scenario

    options = _marker_options(request)
    config = request.config

    def run(
        scenario: Scenario | str,
        *,
        seeds: int | None = None,
        profile: FaultProfile | None = None,
        strict: bool | None = None,
    ) -> CampaignReport:
        if _in_a_running_loop():
            raise pytest.UsageError(
                f"{request.node.nodeid}: simulate() runs its own event loop; call it from a "
                "plain `def test_...`, not an `async def` test"
            )
        target = scenario if isinstance(scenario, str) else None
        loaded = load_scenario(scenario) if isinstance(scenario, str) else scenario
        if not isinstance(loaded, Scenario):
            raise TypeError(f"simulate() takes a Scenario or 'MODULE:NAME', got {scenario!r}")
        only: int | None = config.getoption("--sim-seed")
        count: int = (
            config.getoption("--sim-seeds") or seeds or options.get("seeds") or loaded.seeds
        )
        seed_list = [only] if only is not None else list(range(count))
        trace_dir = config.getoption("--sim-trace-dir")
        report = run_campaign(
            loaded,
            seed_list,
            profile=profile,
            target=target,
            trace_dir=Path(trace_dir) if trace_dir else None,
        )
        be_strict = bool(
            config.getoption("--sim-strict")
            or (strict if strict is not None else options.get("strict", False))
        )
        if not report.ok(strict=be_strict and only is None):
            lines = [failure.report() for failure in report.failures[:_REPORTS_SHOWN]]
            if report.failures and config.getoption("--sim-shrink"):
                from mainspring.simulations.shrink import shrink

                lines.append(shrink(loaded, report.failures[0], target=target).report())
            if len(report.failures) > _REPORTS_SHOWN:
                lines.append(f"... and {len(report.failures) - _REPORTS_SHOWN} more")
            if report.too_gentle:
                lines.append(
                    "never fired (the faults are too gentle): " + ", ".join(report.too_gentle)
                )
            lines.append(report.summary())
            pytest.fail("\n".join(lines), pytrace=False)
        return report

    return run
