"""``FaultProfile``: which faults one simulation run injects, and how often.

A profile is plain data: the store's fault rates, a probability per named crash point, the
network's rates, how often partitions happen, how wrong the clocks are, how step attempts fail,
how often a client request is sent twice, whether the scheduler perturbs the order of ready
callbacks, and shortened node settings (lease TTL, poll and retry intervals) that make leases
expire and timers fire within a short run. ``run_simulation(seed, scenario, profile=...)``
hands it to the world; every decision it leads to is drawn from the run seed.

``FaultProfile.swarm(seed)`` draws a profile from a seed (swarm testing: each seed switches a
different subset of faults on, at different rates), and ``describe()`` prints it in one line
with every failure, so the failing combination is visible and ``from_json`` rebuilds it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

import attrs

from mainspring.config import NodeConfig
from mainspring.crashpoints import CRASH_POINTS
from mainspring.simulations.clock import ClockFaults
from mainspring.simulations.faults import StoreFaults
from mainspring.simulations.network import NetworkFaults
from mainspring.simulations.seeds import substream

__all__ = ["CONFIG_KEYS", "FAULT_KINDS", "FaultProfile", "StepFaults"]

CONFIG_KEYS: Final = frozenset(
    field.name
    for field in attrs.fields(NodeConfig)
    if field.name not in {"snapshot_on_passivate", "create_with_first_write"}  # bools, not
    # numbers to shorten
)
"""The ``NodeConfig`` settings a profile may override."""

FAULT_KINDS: Final = (
    "store",
    "crash_points",
    "network",
    "partitions",
    "clock",
    "steps",
    "duplicate_requests",
    "perturb",
    "config",
)
"""The switches of a profile; ``fault_kinds()`` names one crash point as
``crash_point:<name>``."""


def _rate(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be a probability in [0, 1], got {value!r}")


def _non_negative(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{attribute.name} must be a number >= 0, got {value!r}")


@attrs.frozen
class StepFaults:
    """How workflow step attempts fail in the simulation (each rate per attempt).

    Attributes:
        error: the attempt raises ``InjectedStepError`` (retryable) before the step runs.
        timeout: the attempt hangs past its timeout (only for steps that have one), before or
            after the step's effect.
        crash_after_effect: the node crashes after the step's function returned and before its
            outcome is recorded (the ``step.after_effect`` crash point).
    """

    error: float = attrs.field(default=0.0, validator=_rate)
    timeout: float = attrs.field(default=0.0, validator=_rate)
    crash_after_effect: float = attrs.field(default=0.0, validator=_rate)

    def __attrs_post_init__(self) -> None:
        if self.error + self.timeout > 1.0:
            raise ValueError("StepFaults: error + timeout must be at most 1")

    @property
    def active(self) -> bool:
        """Whether any step fault is on."""
        return bool(self.error or self.timeout or self.crash_after_effect)

    def describe(self) -> str:
        """A one-line summary."""
        return (
            f"error={self.error:.3f} timeout={self.timeout:.3f} "
            f"crash_after_effect={self.crash_after_effect:.3f}"
        )

    def scaled(self, factor: float) -> StepFaults:
        """Every rate multiplied by ``factor``."""
        return StepFaults(
            self.error * factor, self.timeout * factor, self.crash_after_effect * factor
        )


def _checked_crash_points(value: Mapping[str, float]) -> Mapping[str, float]:
    if not isinstance(value, Mapping):
        raise ValueError(f"crash_points must be a mapping of name to probability, got {value!r}")
    checked: dict[str, float] = {}
    for name in sorted(value):
        probability = value[name]
        if name not in CRASH_POINTS:
            raise ValueError(f"unknown crash point {name!r}; known: {', '.join(CRASH_POINTS)}")
        if isinstance(probability, bool) or not isinstance(probability, int | float):
            raise ValueError(f"crash point {name!r}: probability must be a number")
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"crash point {name!r}: probability {probability!r} not in [0, 1]")
        if probability > 0:
            checked[name] = float(probability)
    return MappingProxyType(checked)


def _checked_config(value: Mapping[str, float | int]) -> Mapping[str, float | int]:
    if not isinstance(value, Mapping):
        raise ValueError(f"config must be a mapping of NodeConfig setting to value, got {value!r}")
    unknown = sorted(set(value) - CONFIG_KEYS)
    if unknown:
        raise ValueError(
            f"config: unknown NodeConfig settings {unknown}; "
            f"known: {', '.join(sorted(CONFIG_KEYS))}"
        )
    checked = {name: value[name] for name in sorted(value)}
    NodeConfig(**checked)  # type: ignore[arg-type]  # raises UsageError naming a bad value
    return MappingProxyType(checked)


@attrs.frozen
class FaultProfile:
    """Which faults a run injects and at what rates; every decision is drawn from the seed.

    Attributes:
        store: the rates of every ``world.faulty_store`` made without explicit rates.
        crash_points: crash-point name (``mainspring.crashpoints.CRASH_POINTS``) to the
            probability that the node crashes at each hit.
        network: the rates of client requests (``world.call``, ``ask``, ``tell``).
        partitions: expected partitions per node per virtual minute: the node is cut from its
            stores or from the clients for a seeded while (longer than its lease TTL, often).
        clock: the nodes' clock offsets, drifts and jumps.
        steps: how workflow step attempts fail.
        duplicate_requests: probability that a client request is sent twice (a client retry
            with the same content, message id included).
        perturb: pick ready callbacks in a seeded random order instead of FIFO.
        config: ``NodeConfig`` overrides (shortened leases, intervals) applied to every node.
    """

    store: StoreFaults = attrs.field(factory=StoreFaults)
    crash_points: Mapping[str, float] = attrs.field(factory=dict, converter=_checked_crash_points)
    network: NetworkFaults = attrs.field(factory=NetworkFaults)
    partitions: float = attrs.field(default=0.0, validator=_non_negative)
    clock: ClockFaults = attrs.field(factory=ClockFaults)
    steps: StepFaults = attrs.field(factory=StepFaults)
    duplicate_requests: float = attrs.field(default=0.0, validator=_rate)
    perturb: bool = False
    config: Mapping[str, float | int] = attrs.field(factory=dict, converter=_checked_config)

    # Building ---------------------------------------------------------------------------------

    @classmethod
    def none(cls) -> FaultProfile:
        """Every fault off, no setting changed."""
        return cls()

    @classmethod
    def swarm(cls, seed: int) -> FaultProfile:
        """A profile drawn from ``seed``: each kind of fault is on or off by a coin flip, with
        rates and shortened settings drawn from small menus. The same seed gives the same
        profile in every process."""
        draw = substream(seed, "swarm")

        def on() -> bool:
            return draw.random() < 0.5

        store = StoreFaults()
        if on():
            latency = draw.choice([0, 2, 10, 30])
            store = StoreFaults(
                error_before_commit=draw.choice([0.0, 0.01, 0.05, 0.1]),
                lost_ack=draw.choice([0.0, 0.01, 0.05, 0.1]),
                latency_ms_min=0,
                latency_ms_max=latency,
            )
        crash_points: dict[str, float] = {}
        if on():
            for name in CRASH_POINTS:
                if on():
                    crash_points[name] = draw.choice([0.01, 0.03, 0.1])
        network = NetworkFaults()
        if on():
            network = NetworkFaults(
                drop=draw.choice([0.0, 0.01, 0.05]),
                reply_drop=draw.choice([0.0, 0.01, 0.05]),
                duplicate=draw.choice([0.0, 0.02, 0.1]),
                delay_ms_max=draw.choice([0, 5, 50]),
                reorder=draw.choice([0.0, 0.05, 0.2]),
            )
        partitions = draw.choice([0.2, 1.0, 3.0]) if on() else 0.0
        clock = ClockFaults()
        if on():
            clock = ClockFaults(
                offset_ms_max=draw.choice([0, 200, 5_000]),
                drift_ppm_max=draw.choice([0, 100, 10_000]),
                jump=draw.choice([0.0, 0.5, 2.0]),
                jump_ms_max=draw.choice([1_000, 10_000, 60_000]),
            )
        steps = StepFaults()
        if on():
            steps = StepFaults(
                error=draw.choice([0.0, 0.05, 0.2]),
                timeout=draw.choice([0.0, 0.05, 0.1]),
                crash_after_effect=draw.choice([0.0, 0.05, 0.1]),
            )
        duplicate_requests = draw.choice([0.05, 0.2]) if on() else 0.0
        perturb = on()
        config: dict[str, float | int] = {}
        if on():
            ttl_s = draw.choice([2.0, 5.0, 10.0, 30.0])
            config = {
                "lease_ttl_s": ttl_s,
                "lease_renew_interval_s": ttl_s / 3,
                "idle_timeout_s": draw.choice([1.0, 10.0, 60.0]),
                "timer_poll_interval_s": draw.choice([0.5, 2.0, 10.0]),
                "outbox_poll_interval_s": draw.choice([0.5, 2.0, 10.0]),
                "outbox_retry_interval_s": draw.choice([0.05, 0.5]),
                "workflow_recovery_interval_s": draw.choice([2.0, 10.0, 60.0]),
            }
        return cls(
            store=store,
            crash_points=crash_points,
            network=network,
            partitions=partitions,
            clock=clock,
            steps=steps,
            duplicate_requests=duplicate_requests,
            perturb=perturb,
            config=config,
        )

    # Reading ----------------------------------------------------------------------------------

    def fault_kinds(self) -> list[str]:
        """The switches that are on, in ``FAULT_KINDS`` order; each crash point on is named
        ``crash_point:<name>``. ``without`` takes any of these names (and ``crash_points``)."""
        kinds: list[str] = []
        store = self.store
        if store.error_before_commit or store.lost_ack or store.latency_ms_max:
            kinds.append("store")
        kinds.extend(f"crash_point:{name}" for name in sorted(self.crash_points))
        if self.network.active:
            kinds.append("network")
        if self.partitions:
            kinds.append("partitions")
        if self.clock.active:
            kinds.append("clock")
        if self.steps.active:
            kinds.append("steps")
        if self.duplicate_requests:
            kinds.append("duplicate_requests")
        if self.perturb:
            kinds.append("perturb")
        if self.config:
            kinds.append("config")
        return kinds

    def describe(self) -> str:
        """One readable line naming every switch that is on and its settings."""
        parts: list[str] = []
        for kind in self.fault_kinds():
            if kind == "store":
                parts.append(f"store({self.store.describe()})")
            elif kind.startswith("crash_point:"):
                name = kind.partition(":")[2]
                parts.append(f"crash_point({name}={self.crash_points[name]:.3f})")
            elif kind == "network":
                parts.append(f"network({self.network.describe()})")
            elif kind == "partitions":
                parts.append(f"partitions({self.partitions:.3f}/min)")
            elif kind == "clock":
                parts.append(f"clock({self.clock.describe()})")
            elif kind == "steps":
                parts.append(f"steps({self.steps.describe()})")
            elif kind == "duplicate_requests":
                parts.append(f"duplicate_requests({self.duplicate_requests:.3f})")
            elif kind == "perturb":
                parts.append("perturb")
            else:
                settings = " ".join(f"{name}={value:g}" for name, value in self.config.items())
                parts.append(f"config({settings})")
        return "faults: " + (" ".join(parts) if parts else "none")

    # Deriving ---------------------------------------------------------------------------------

    def without(self, kind: str) -> FaultProfile:
        """The same profile with one switch off (a name from ``fault_kinds()``,
        ``crash_points`` for all of them, or any of ``FAULT_KINDS``).

        Raises:
            ValueError: ``kind`` names no switch.
        """
        if kind.startswith("crash_point:"):
            name = kind.partition(":")[2]
            if name not in CRASH_POINTS:
                raise ValueError(f"unknown crash point {name!r}; known: {', '.join(CRASH_POINTS)}")
            kept = {key: value for key, value in self.crash_points.items() if key != name}
            return attrs.evolve(self, crash_points=kept)
        defaults: dict[str, Any] = {
            "store": StoreFaults(),
            "crash_points": {},
            "network": NetworkFaults(),
            "partitions": 0.0,
            "clock": ClockFaults(),
            "steps": StepFaults(),
            "duplicate_requests": 0.0,
            "perturb": False,
            "config": {},
        }
        if kind not in defaults:
            raise ValueError(
                f"unknown fault kind {kind!r}; known: {', '.join(FAULT_KINDS)} or "
                "crash_point:<name>"
            )
        return attrs.evolve(self, **{kind: defaults[kind]})

    def scaled(self, factor: float) -> FaultProfile:
        """Every rate and delay multiplied by ``factor`` (in [0, 1]); the shortened settings
        and ``perturb`` stay as they are.

        Raises:
            ValueError: ``factor`` is not in [0, 1].
        """
        if isinstance(factor, bool) or not isinstance(factor, int | float):
            raise ValueError(f"factor must be a number in [0, 1], got {factor!r}")
        if math.isnan(factor) or not 0.0 <= factor <= 1.0:
            raise ValueError(f"factor must be in [0, 1], got {factor!r}")
        store = self.store
        latency_max = int(store.latency_ms_max * factor)
        return attrs.evolve(
            self,
            store=StoreFaults(
                error_before_commit=store.error_before_commit * factor,
                lost_ack=store.lost_ack * factor,
                latency_ms_min=min(int(store.latency_ms_min * factor), latency_max),
                latency_ms_max=latency_max,
            ),
            crash_points={name: p * factor for name, p in self.crash_points.items()},
            network=self.network.scaled(factor),
            partitions=self.partitions * factor,
            clock=self.clock.scaled(factor),
            steps=self.steps.scaled(factor),
            duplicate_requests=self.duplicate_requests * factor,
        )

    def crash_probability(self, name: str) -> float:
        """The probability of crashing at crash point ``name`` (``step.after_effect`` also
        takes ``steps.crash_after_effect``)."""
        probability = self.crash_points.get(name, 0.0)
        if name == "step.after_effect":
            probability = max(probability, self.steps.crash_after_effect)
        return probability

    # JSON -------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data that ``from_json`` turns back into an equal profile."""
        return {
            "store": attrs.asdict(self.store),
            "crash_points": dict(self.crash_points),
            "network": attrs.asdict(self.network),
            "partitions": self.partitions,
            "clock": attrs.asdict(self.clock),
            "steps": attrs.asdict(self.steps),
            "duplicate_requests": self.duplicate_requests,
            "perturb": self.perturb,
            "config": dict(self.config),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FaultProfile:
        """The profile ``to_json`` described; missing keys keep their defaults.

        Raises:
            ValueError: an unknown key or a bad value, named.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"a fault profile is a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(FAULT_KINDS))
        if unknown:
            raise ValueError(f"unknown fault profile keys {unknown}; known: {FAULT_KINDS}")
        nested: dict[str, type[Any]] = {
            "store": StoreFaults,
            "network": NetworkFaults,
            "clock": ClockFaults,
            "steps": StepFaults,
        }
        arguments: dict[str, Any] = {}
        for key, value in data.items():
            if key in nested:
                if not isinstance(value, Mapping):
                    raise ValueError(f"{key} must be a JSON object, got {value!r}")
                known = {field.name for field in attrs.fields(nested[key])}
                extra = sorted(set(value) - known)
                if extra:
                    raise ValueError(f"{key}: unknown keys {extra}; known: {sorted(known)}")
                arguments[key] = nested[key](**value)
            elif key == "perturb":
                if not isinstance(value, bool):
                    raise ValueError(f"perturb must be true or false, got {value!r}")
                arguments[key] = value
            else:
                arguments[key] = value
        return cls(**arguments)

    def node_config(self, base: NodeConfig | None) -> NodeConfig:
        """``base`` (the production defaults when None) with this profile's overrides."""
        config = base if base is not None else NodeConfig()
        if not self.config:
            return config
        overrides: dict[str, Any] = dict(self.config)
        return attrs.evolve(config, **overrides)
