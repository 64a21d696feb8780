"""What a user writes to simulate their own system: a ``Scenario``.

A scenario is a workload over the user's own actors and workflows, run against real nodes in a
``World``. The campaign (``mainspring.simulations.campaign``, the ``mainspring simulate`` command
and the pytest plugin) runs it over many seeds, each seed with its own fault profile, and after
the workload it:

1. heals every fault (``world.heal()``) and runs the scenario's ``settle`` phase (the liveness
   phase: everything the workload started must finish) within ``liveness_s`` virtual seconds;
2. runs every invariant checker over each store made by ``world.faulty_store`` (the built-in
   ones and the scenario's ``invariants``).

Write one with the decorator::

    @scenario(sometimes=("duplicate_deduplicated",))
    async def ledger(world: World) -> None:
        store = world.faulty_store(world.sqlite_store())
        await world.start_node("n1", [Ledger], store)
        ...

or build a ``Scenario`` directly. ``mainspring simulate MODULE:NAME`` finds it by name.
"""

from __future__ import annotations

import asyncio
import importlib
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final, overload

import attrs

from mainspring.simulations.checkers import Checker, InvariantViolation, run_checks

if TYPE_CHECKING:
    from mainspring.simulations.profile import FaultProfile
    from mainspring.simulations.world import World

__all__ = [
    "LIVENESS_S_DEFAULT",
    "ProfilePolicy",
    "Scenario",
    "ScenarioError",
    "load_scenario",
    "scenario",
]

LIVENESS_S_DEFAULT: Final = 3600.0
"""How many virtual seconds the settle phase may take by default."""

ProfilePolicy = Callable[[int], "FaultProfile"]
"""Which faults a seed runs with: ``seed -> FaultProfile`` (``FaultProfile.swarm`` by default)."""

Workload = Callable[["World"], Awaitable[Any]]
Settle = Callable[["World"], Awaitable[Any]]

_NAME: Final = re.compile(r"^[A-Za-z0-9_.:\-/]+$")


class ScenarioError(ValueError):
    """A scenario is defined or named wrongly; the message says what and how to fix it."""


def _check_name(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ScenarioError(
            f"a scenario name is letters, digits and _.:-/ only, got {value!r}; "
            "pass name= to @scenario"
        )


def _check_callable(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not callable(value):
        raise ScenarioError(f"Scenario.{attribute.name} must be callable, got {value!r}")


def _check_invariants(
    instance: object, attribute: attrs.Attribute[tuple[Checker, ...]], value: tuple[Checker, ...]
) -> None:
    for checker in value:
        if not callable(checker):
            raise ScenarioError(
                f"Scenario.invariants takes functions (contents, history) -> None, got {checker!r}"
            )


def _check_liveness(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ScenarioError(f"Scenario.liveness_s must be > 0 virtual seconds, got {value!r}")


def _check_seeds(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ScenarioError(f"Scenario.seeds must be an int >= 1, got {value!r}")


def _check_sometimes(
    instance: object, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]
) -> None:
    for name in value:
        if not isinstance(name, str) or not name:
            raise ScenarioError(f"Scenario.sometimes takes non-empty names, got {name!r}")


def _checkers(value: Iterable[Checker]) -> tuple[Checker, ...]:
    return tuple(value)


def _names(value: Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        raise ScenarioError(
            f"Scenario.sometimes takes a sequence of names, got the string {value!r}"
        )
    return tuple(value)


@attrs.frozen
class Scenario:
    """A simulated workload and what must hold after it.

    Attributes:
        name: a short stable name (reports, trace files, regression entries).
        run: ``async (world) -> value``: the workload (the safety phase). It starts nodes over
            ``world.faulty_store(...)`` stores so that the checkers see their history, drives
            them through ``world.ask``/``world.call``, and may assert what it observes. Faults
            come from ``world.profile``.
        invariants: extra checkers ``(contents, history) -> None`` run with the built-in ones
            over every faulty store once the run has settled.
        settle: ``async (world) -> None``: the liveness phase, run after ``world.heal()``: it
            waits until everything the workload started is finished (every workflow terminal,
            every request answered) and raises if something is wrong. None: no liveness phase.
        liveness_s: the virtual seconds ``settle`` may take; beyond that the run fails with
            the ``liveness`` invariant.
        profile: which faults a seed runs with (``seed -> FaultProfile``); None means
            ``FaultProfile.swarm(seed)``: each seed switches its own set of faults on.
        sometimes: names passed to ``world.sometimes(name)`` that a campaign expects to fire
            at least once over its seeds; one that never fires makes the campaign *too
            gentle* (a failure under ``--strict``).
        seeds: how many seeds a campaign runs when not told otherwise.
        description: one line shown by the CLI.
        max_steps: the callback budget of one run (``SimulationStuck`` beyond it, e.g. a
            livelock at one virtual instant); None keeps ``run_simulation``'s default.
    """

    name: str = attrs.field(validator=_check_name)
    run: Workload = attrs.field(validator=_check_callable)
    invariants: tuple[Checker, ...] = attrs.field(
        default=(), converter=_checkers, validator=_check_invariants
    )
    settle: Settle | None = attrs.field(default=None, validator=_check_callable)
    liveness_s: float = attrs.field(default=LIVENESS_S_DEFAULT, validator=_check_liveness)
    profile: ProfilePolicy | None = attrs.field(default=None, validator=_check_callable)
    sometimes: tuple[str, ...] = attrs.field(
        default=(), converter=_names, validator=_check_sometimes
    )
    seeds: int = attrs.field(default=100, validator=_check_seeds)
    description: str = ""
    max_steps: int | None = None

    def profile_for(self, seed: int) -> FaultProfile:
        """The fault profile seed ``seed`` runs with under this scenario's policy."""
        from mainspring.simulations.profile import FaultProfile

        if self.profile is None:
            return FaultProfile.swarm(seed)
        profile = self.profile(seed)
        if not isinstance(profile, FaultProfile):
            raise ScenarioError(
                f"scenario {self.name!r}: its profile policy returned {profile!r} for seed "
                f"{seed}, not a FaultProfile"
            )
        return profile

    async def __call__(self, world: World) -> Any:
        """The whole run: the workload, then heal and settle within ``liveness_s``, then the
        checkers. This is what ``run_simulation`` runs."""
        value = await self.run(world)
        if self.settle is not None:
            world.heal()
            world.record("liveness.start", f"bound={self.liveness_s}s")
            started_s = world.now_s
            try:
                async with asyncio.timeout(self.liveness_s):
                    await self.settle(world)
            except TimeoutError:
                raise InvariantViolation(
                    f"[liveness] scenario {self.name!r} did not settle within "
                    f"{self.liveness_s} virtual seconds after every fault healed "
                    f"(started at t={started_s:.3f}s)"
                ) from None
            world.record("liveness.end", f"took={world.now_s - started_s:.3f}s")
        await run_checks(world, extra=self.invariants)
        return value


@overload
def scenario(
    function: Workload,
    /,
    *,
    name: str | None = None,
    invariants: Sequence[Checker] = (),
    settle: Settle | None = None,
    liveness_s: float = LIVENESS_S_DEFAULT,
    profile: ProfilePolicy | None = None,
    sometimes: Sequence[str] = (),
    seeds: int = 100,
) -> Scenario: ...


@overload
def scenario(
    *,
    name: str | None = None,
    invariants: Sequence[Checker] = (),
    settle: Settle | None = None,
    liveness_s: float = LIVENESS_S_DEFAULT,
    profile: ProfilePolicy | None = None,
    sometimes: Sequence[str] = (),
    seeds: int = 100,
) -> Callable[[Workload], Scenario]: ...


def scenario(
    function: Workload | None = None,
    /,
    *,
    name: str | None = None,
    invariants: Sequence[Checker] = (),
    settle: Settle | None = None,
    liveness_s: float = LIVENESS_S_DEFAULT,
    profile: ProfilePolicy | None = None,
    sometimes: Sequence[str] = (),
    seeds: int = 100,
) -> Scenario | Callable[[Workload], Scenario]:
    """Turn ``async def name(world)`` into a ``Scenario`` (see its attributes).

    Use it bare (``@scenario``), with options (``@scenario(sometimes=(...), seeds=50)``), or as
    a call (``scenario(workload, settle=..., name=...)``).
    The name defaults to the function's name; the description to its docstring's first line.
    """

    def wrap(workload: Workload) -> Scenario:
        if not callable(workload):
            raise ScenarioError(
                f"@scenario decorates an async function of the world, got {workload!r}"
            )
        doc = (getattr(workload, "__doc__", None) or "").strip().splitlines()
        return Scenario(
            name=name or str(getattr(workload, "__name__", "scenario")),
            run=workload,
            invariants=tuple(invariants),
            settle=settle,
            liveness_s=liveness_s,
            profile=profile,
            sometimes=tuple(sometimes),
            seeds=seeds,
            description=doc[0] if doc else "",
        )

    if function is not None:
        return wrap(function)
    return wrap


def load_scenario(target: str) -> Scenario:
    """The scenario named by ``MODULE:NAME`` (``NAME`` may be dotted: ``MODULE:Class.attr``).

    ``NAME`` must be a ``Scenario`` (``@scenario`` makes one) or an ``async def name(world)``,
    which is wrapped with the default options.

    Raises:
        ScenarioError: the target is malformed, cannot be imported or is not a scenario.
    """
    if not isinstance(target, str) or target.count(":") != 1:
        raise ScenarioError(
            f"name a scenario as MODULE:NAME (e.g. simulations.orders:orders), got {target!r}"
        )
    module_name, attribute = target.split(":")
    if not module_name or not attribute:
        raise ScenarioError(f"both MODULE and NAME are needed in MODULE:NAME, got {target!r}")
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise ScenarioError(
            f"cannot import module {module_name!r} of {target!r}: {error}; run from the "
            "directory that contains it or put it on PYTHONPATH"
        ) from error
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise ScenarioError(
                f"{module_name!r} has no {attribute!r} (missing {part!r}) for {target!r}"
            ) from None
    if isinstance(found, Scenario):
        return found
    if asyncio.iscoroutinefunction(found):
        return Scenario(name=attribute, run=found)
    raise ScenarioError(
        f"{target!r} is {type(found).__name__}, not a Scenario: decorate an async function of "
        "the world with @scenario (from mainspring.simulations.scenario)"
    )
