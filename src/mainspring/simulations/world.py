"""Run a scenario against real ``mainspring.Node`` objects on the deterministic ``SimLoop``.

``run_simulation(seed, scenario)`` builds a fresh loop and a ``World``, runs ``await
scenario(world)`` to completion in virtual time, and returns the scenario's value with the run's
trace digest. The world starts nodes (a real ``Node`` wired to the node's ``SimClock``,
``SimRandom`` and ``SimIds`` over a store the scenario passes in), crashes them (every task of
the node stops where it is; memory is lost, the store survives) and restarts them (a fresh
``Node`` with the same id on the same store).

Scenario code talks to a node through ``world.call``/``ask``/``tell``: the request crosses the
simulated network into the node (its delivery and the wait for the reply run in a task of the
node), while the caller waits in its own task. An ask in flight when its node crashes is never
answered; the caller's ``timeout_s`` is what ends its wait, as it would for a remote client.

The run's ``FaultProfile`` (``world.profile``) decides which faults the world injects: store
faults through ``faulty_store``, lost, duplicated, delayed and reordered client requests,
partitions of a node from its store or its clients, clock offsets, drifts and jumps, crashes at
the runtime's named crash points (``mainspring.crashpoints``) and step faults. ``heal()`` turns
them all off for the liveness phase.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable, Coroutine, Generator, Sequence
from typing import Any, Final, Generic, TypeVar, cast, final

import attrs

from mainspring import crashpoints
from mainspring.actors.actor import Actor
from mainspring.actors.workflow import _CURRENT_STEP, WorkflowDefinition
from mainspring.cluster.config import ClusterConfig
from mainspring.config import NodeConfig
from mainspring.node import Node
from mainspring.persistence.memory import MemoryStore
from mainspring.persistence.sqlite import InlineRunner, SqliteStore
from mainspring.persistence.store import Store
from mainspring.simulations.clock import SimClock, SimIds, SimRandom
from mainspring.simulations.effects import EffectLedger
from mainspring.simulations.faults import FaultyStore, StoreFaults, StoreHistory
from mainspring.simulations.loop import (
    NodeTag,
    SimLoop,
    SimulationError,
    current_node,
    node_context,
)
from mainspring.simulations.network import CLIENT, Network, store_endpoint
from mainspring.simulations.profile import FaultProfile
from mainspring.simulations.seeds import substream
from mainspring.simulations.tripwires import tripwires

__all__ = [
    "FailureReport",
    "InjectedStepError",
    "NodeDown",
    "SimulationResult",
    "World",
    "run_simulation",
]

T = TypeVar("T")

_STEPS_MAX_DEFAULT: Final = 5_000_000
_TEARDOWN_ROUNDS_MAX: Final = 100
_CLIENT_TIMEOUT_S: Final = 30.0
"""When a request or its reply is lost and the caller gave no timeout, it gets
``TimeoutError`` after this long (a client library's own timeout)."""
_RESTART_DELAY_MS_MAX: Final = 1_000
"""A node crashed at a crash point is restarted after a seeded delay up to this long."""


class NodeDown(SimulationError):
    """The scenario addressed a node that is crashed, stopped or was never started."""


class InjectedStepError(Exception):
    """A step attempt failed because the fault profile said so (``StepFaults.error``)."""


@attrs.frozen
class SimulationResult(Generic[T]):
    """The outcome of one ``run_simulation``.

    Attributes:
        seed: the run seed.
        value: what the scenario returned.
        trace_digest: SHA-256 of the whole trace; equal digests mean identical runs.
        trace_events: how many trace lines were recorded (``events`` is the same number).
        trace_tail: the last trace lines, oldest first.
        virtual_s: the virtual time at the end, in seconds.
        steps: how many callbacks the loop ran.
        dropped: callbacks addressed to crashed nodes, never run.
        unhandled_errors: what reached the loop's exception handler.
        profile: the fault profile of the run.
        sometimes: how many times each targeted fault reached its code (``world.sometimes``).
        trace_lines: every trace line, when the run was made with ``keep_trace=True``.
    """

    seed: int
    value: T
    trace_digest: str
    trace_events: int
    trace_tail: tuple[str, ...]
    virtual_s: float
    steps: int
    dropped: int
    unhandled_errors: tuple[str, ...]
    profile: FaultProfile = attrs.field(factory=FaultProfile)
    sometimes: dict[str, int] = attrs.Factory(dict)
    trace_lines: tuple[str, ...] | None = None

    @property
    def events(self) -> int:
        """How many trace events the run recorded."""
        return self.trace_events


@final
class _NodeStore:
    """What a simulated node gets as its store: the shared store, minus ``close``.

    Several nodes (and restarts) share one store; a node's graceful stop closes its store,
    which would close it for the others. The world closes every store at the end of the run.
    """

    def __init__(self, shared: Store) -> None:
        self.shared: Final = shared

    async def close(self) -> None:
        """Nothing: the world closes the shared store when the run ends."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self.shared, name)


@final
@attrs.define(eq=False)
class _SimNode:
    """What the world knows of one node name across its incarnations."""

    name: str
    store: Store
    actors: tuple[type[Actor[Any]], ...]
    workflows: tuple[WorkflowDefinition[Any, Any], ...]
    config: NodeConfig
    clock: SimClock
    tag: NodeTag
    node: Node | None = None
    cluster: ClusterConfig | None = None
    state: str = "starting"  # starting, running, stopping, crashed, stopped
    restart_after_crash: bool = False
    waiters: list[asyncio.Future[Any]] = attrs.Factory(list)


@final
class _Never:
    """What a crashed node's task awaits at a crash point: it never completes."""

    def __init__(self, loop: SimLoop) -> None:
        self._future = loop.create_future()

    def __await__(self) -> Generator[Any, None, None]:
        yield from self._future.__await__()
        raise AssertionError("a crashed node resumed after its crash point")


@final
class World:
    """The simulated environment a scenario drives. Built by ``run_simulation``.

    Attributes:
        seed: the run seed.
        loop: the simulation loop.
        profile: the run's fault profile.
        network: the simulated network (client links, partitions).
        random: the scenario's own seeded stream, for choices such as when to crash.
        healed: True once ``heal()`` was called (the liveness phase).
        healed_at_s: the virtual time of ``heal()``.
    """

    def __init__(self, loop: SimLoop, seed: int, profile: FaultProfile | None = None) -> None:
        self.seed: Final = seed
        self.loop: Final = loop
        self.profile: Final = profile if profile is not None else FaultProfile.none()
        self.random: Final = SimRandom(seed, "world")
        self.network: Final = Network(loop, substream(seed, "network"), self.profile.network)
        self.healed = False
        self.healed_at_s: float | None = None
        self._nodes: dict[str, _SimNode] = {}
        self._stores: list[Store] = []
        self._opened: list[Store] = []
        self._faulty: list[FaultyStore] = []
        self._sometimes: dict[str, int] = {}
        self._crash_draws = substream(seed, "crash-points")
        self._step_draws = substream(seed, "step-faults")
        self._request_draws = substream(seed, "duplicate-requests")
        self._clock_draws = substream(seed, "clock-faults")
        self._nemesis_draws = substream(seed, "nemesis")
        self._crashed_steps: set[str] = set()
        self._nemeses: list[asyncio.Task[None]] = []
        self.effects: Final = EffectLedger(loop, self.violation)
        """The simulated outside world's effect ledger (``EffectLedger``): steps call
        ``world.effects.apply(value)``; each key's effect is applied at most once."""
        self.invariants: Final[list[Callable[[World], None]]] = []
        """User invariants checked by ``check_invariants`` (see ``add_invariant``)."""

    # Time and trace ---------------------------------------------------------------------------

    @property
    def now_s(self) -> float:
        """Virtual seconds since the run started."""
        return self.loop.time()

    async def sleep(self, seconds: float) -> None:
        """Let ``seconds`` of virtual time pass (everything due meanwhile runs)."""
        await asyncio.sleep(seconds)

    def record(self, kind: str, detail: str = "", *, node: str | None = None) -> None:
        """Add a line to the run's trace (the detail must be reproducible: no ``id()``)."""
        self.loop.trace(kind, detail, node=node)

    def sometimes(self, name: str, detail: str = "") -> None:
        """Record that a targeted fault reached its code (``"zombie_write_fenced"``, ...).

        A campaign sums these over many seeds: one that never happens means the faults are
        too gentle to test what they aim at.
        """
        self._sometimes[name] = self._sometimes.get(name, 0) + 1
        self.loop.trace("sometimes", f"{name} {detail}".rstrip())

    @property
    def sometimes_counts(self) -> dict[str, int]:
        """How many times each ``sometimes`` name was recorded so far."""
        return dict(sorted(self._sometimes.items()))

    def violation(self, error: SimulationError) -> None:
        """Stop the run with ``error`` after the current callback, even if the code that
        found it is inside a node that catches every exception."""
        self.loop.fail(error)

    # Faults -------------------------------------------------------------------------------------

    def heal(self) -> None:
        """Turn every fault off: the store faults, the network's (partitions mended), crash
        points, step faults, clock jumps and duplicated requests; nodes crashed at a crash point
        are restarted. Offsets and drifts the clocks already have stay. This starts the
        liveness phase."""
        if self.healed:
            return
        self.healed = True
        self.healed_at_s = self.now_s
        self.loop.trace("world.heal")
        for store in self._faulty:
            store.faults_enabled = False
        self.network.heal()
        for task in self._nemeses:
            task.cancel()
        self._nemeses.clear()
        for entry in self._nodes.values():
            if entry.state == "crashed" and entry.restart_after_crash:
                self._spawn_world(self._restart_later(entry, entry.tag, 0.0), "restart")

    def _spawn_world(self, work: Coroutine[Any, Any, None], what: str) -> asyncio.Task[None]:
        """A task of the world itself (no node): it survives every node's crash."""
        return self.loop.create_task(work, name=f"world:{what}", context=node_context(None))

    # Stores -----------------------------------------------------------------------------------

    def sqlite_store(self) -> SqliteStore:
        """A private in-memory ``SqliteStore`` running the production SQL without threads.

        It lives until the run ends (the world closes it), across node crashes and restarts.
        """
        return SqliteStore(
            ":memory:",
            runner_factory=InlineRunner.open,
            clock=SimClock(self.loop, "store"),
        )

    def memory_store(self) -> MemoryStore:
        """A new ``MemoryStore``."""
        return MemoryStore()

    def faulty_store(
        self,
        inner: Store,
        profile: StoreFaults | None = None,
        *,
        label: str = "store",
        node_profiles: dict[str, StoreFaults] | None = None,
        check: bool = True,
    ) -> FaultyStore:
        """Wrap ``inner`` in a ``FaultyStore`` whose decisions come from this run's seed.

        The world remembers it: ``checkers.run_checks(world)`` checks every such store, and its
        commits are checked as they happen (a violation stops the run at once).

        Args:
            inner: the store that keeps the data (``memory_store()``, ``sqlite_store()``, ...).
            profile: the fault rates (by default the run profile's ``store`` rates).
            label: names the wrapper's PRNG stream and its network endpoint
                (``store:<label>``); give each wrapper of one run its own.
            node_profiles: per-node fault rates that override ``profile`` for those nodes.
            check: check every committed append and lease grant as it happens.
        """
        if any(store.label == label for store in self._faulty):
            raise SimulationError(f"a faulty store labelled {label!r} exists in this run")
        store = FaultyStore(
            inner,
            substream(self.seed, "store-faults", label),
            self.profile.store if profile is None else profile,
            history=StoreHistory(),
            node_profiles=node_profiles,
            label=label,
            network=self.network,
            observer=self,
            check=check,
            reminder_tolerance_ms=self.profile.clock.jump_ms_max if self.profile.clock.jump else 0,
        )
        if self.healed:
            store.faults_enabled = False
        self._faulty.append(store)
        return store

    @property
    def faulty_stores(self) -> tuple[FaultyStore, ...]:
        """The stores made by ``faulty_store``, in creation order."""
        return tuple(self._faulty)

    @property
    def stores(self) -> tuple[Store, ...]:
        """Every store a node was started on, in first-use order."""
        return tuple(self._stores)

    # Nodes ------------------------------------------------------------------------------------

    def node(self, name: str) -> Node:
        """The running ``Node`` named ``name``.

        Raises:
            NodeDown: it is crashed, stopped or unknown.
        """
        entry = self._nodes.get(name)
        if entry is None or entry.node is None or entry.state != "running":
            state = "unknown" if entry is None else entry.state
            raise NodeDown(f"node {name!r} is not running ({state})")
        return entry.node

    async def in_node(self, name: str, work: Callable[[], Coroutine[Any, Any, T]], what: str) -> T:
        """Run ``work()`` in a task of running node ``name``, as a request it received would
        run (a crash of the node cuts it short).

        Raises:
            NodeDown: the node is not running, or crashed before ``work`` finished.
        """
        self.node(name)
        return await self._in_node(self._nodes[name], work, what)

    def node_names(self) -> list[str]:
        """Every node name started in this run, in first-start order."""
        return list(self._nodes)

    def node_state(self, name: str) -> str:
        """``starting``, ``running``, ``stopping``, ``crashed`` or ``stopped``."""
        return self._nodes[name].state

    def running_nodes(self) -> list[tuple[str, Node]]:
        """``(name, node)`` of every running node, in the order they were first started."""
        return [
            (name, entry.node)
            for name, entry in self._nodes.items()
            if entry.node is not None and entry.state == "running"
        ]

    def clock(self, name: str) -> SimClock:
        """The clock of node ``name`` (it survives restarts, like a machine's clock)."""
        return self._nodes[name].clock

    def node_config(self, base: NodeConfig | None = None) -> NodeConfig:
        """``base`` with the profile's shortened settings (``profile.config``) applied: what
        ``start_node`` gives every node."""
        return self.profile.node_config(base)

    async def start_node(
        self,
        name: str,
        actors: Sequence[type[Actor[Any]]],
        store: Store,
        *,
        config: NodeConfig | None = None,
        offset_ms: int | None = None,
        drift_ppm: int | None = None,
        workflows: Sequence[WorkflowDefinition[Any, Any]] = (),
        cluster: ClusterConfig | None = None,
    ) -> Node:
        """Start a real ``Node`` called ``name`` with its own clock, randomness and ids.

        Args:
            name: the node id (also the lease owner).
            actors: the actor types it hosts.
            store: its store; pass the same object to other nodes or restarts to share data.
            config: the node's settings (the production defaults poll every second, which is
                many wake-ups over simulated days; scenarios often lengthen the intervals); the
                profile's ``config`` overrides are applied on top.
            offset_ms: how far this node's wall clock is ahead (default: drawn from the
                profile's clock faults, else 0).
            drift_ppm: how fast this node's clock runs (default: drawn, else 0).
            workflows: the workflow definitions it runs.
            cluster: run it as a cluster member (see ``mainspring.simulations.cluster``).
        """
        if name in self._nodes:
            raise SimulationError(f"node {name!r} exists; use restart() after a crash")
        clock_faults = self.profile.clock
        if offset_ms is None:
            bound = clock_faults.offset_ms_max
            offset_ms = self._clock_draws.randint(-bound, bound) if bound else 0
        if drift_ppm is None:
            bound = clock_faults.drift_ppm_max
            drift_ppm = self._clock_draws.randint(-bound, bound) if bound else 0
        entry = _SimNode(
            name=name,
            store=store,
            actors=tuple(actors),
            workflows=tuple(workflows),
            config=self.node_config(config),
            clock=SimClock(self.loop, name, offset_ms=offset_ms, drift_ppm=drift_ppm),
            tag=self.loop.new_node_tag(name),
            cluster=cluster,
        )
        self._nodes[name] = entry
        if offset_ms or drift_ppm:
            self.loop.trace("clock.skew", f"offset={offset_ms}ms drift={drift_ppm}ppm", node=name)
        if all(known is not store for known in self._stores):
            self._stores.append(store)
        if all(known is not store for known in self._opened):
            await store.open()
            self._opened.append(store)
        self._start_nemeses(entry)
        return await self._boot(entry)

    async def _boot(self, entry: _SimNode) -> Node:
        tag = entry.tag
        node = Node(
            entry.name,
            store=cast("Store", _NodeStore(entry.store)),
            actors=entry.actors,
            workflows=entry.workflows,
            config=entry.config,
            clock=entry.clock,
            random=SimRandom(self.seed, "node", entry.name, str(tag.incarnation), "random"),
            ids=SimIds(self.seed, "node", entry.name, str(tag.incarnation), "ids"),
            cluster=entry.cluster,
        )
        entry.node = node
        entry.state = "starting"
        entry.restart_after_crash = False
        self.loop.trace("node.start", str(tag), node=tag)
        await self._in_node(entry, node.start, "start")
        if tag.crashed:
            # A crash point killed it after its start returned, before this resumed.
            raise NodeDown(f"node {entry.name!r} crashed while it started")
        entry.state = "running"
        return node

    def crash(self, name: str) -> None:
        """Kill node ``name`` now: none of its code runs again (no ``finally``, no shutdown),
        its memory is lost and its store is left as the last commit left it."""
        entry = self._nodes.get(name)
        if entry is None or entry.state not in {"starting", "running", "stopping"}:
            raise NodeDown(f"node {name!r} cannot crash: it is not running")
        self.loop.crash(entry.tag)
        entry.node = None
        entry.state = "crashed"
        waiters, entry.waiters = entry.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(NodeDown(f"node {name!r} crashed"))

    async def restart(self, name: str) -> Node:
        """Start a fresh ``Node`` with the same id, actors, config and store after a crash or
        stop; it takes the leases of its previous life back."""
        entry = self._nodes.get(name)
        if entry is None or entry.state not in {"crashed", "stopped"}:
            raise SimulationError(f"node {name!r} can restart only after a crash or stop")
        entry.tag = self.loop.new_node_tag(name)
        return await self._boot(entry)

    async def stop_node(self, name: str) -> None:
        """Stop node ``name`` gracefully (``Node.stop``: drain, snapshot, release). The store
        stays open for the other nodes that share it (the world closes it after the run).

        A crash point that kills the node during its stop leaves it crashed (not restarted).
        """
        entry = self._nodes.get(name)
        node = self.node(name)
        assert entry is not None
        entry.state = "stopping"
        try:
            await self._in_node(entry, node.stop, "stop")
        except NodeDown:
            entry.restart_after_crash = False
            return
        entry.state = "stopped"
        entry.node = None
        self.loop.trace("node.stop", str(entry.tag), node=entry.tag)

    async def _in_node(
        self, entry: _SimNode, work: Callable[[], Coroutine[Any, Any, T]], what: str
    ) -> T:
        """Run ``work()`` in a task of the node (so the tasks it creates are the node's).

        Raises:
            NodeDown: the node crashed before ``work`` finished.
        """
        outcome: asyncio.Future[T] = self.loop.create_future()
        task = self.loop.create_task(
            work(), name=f"{entry.name}:{what}", context=node_context(entry.tag)
        )
        task.add_done_callback(lambda done: _relay(done, outcome))
        entry.waiters.append(outcome)
        try:
            return await outcome
        finally:
            if outcome in entry.waiters:
                entry.waiters.remove(outcome)

    # Client requests --------------------------------------------------------------------------

    async def ask(
        self,
        name: str,
        actor: type[Actor[Any]] | str,
        actor_id: str,
        message: object,
        *,
        message_id: str | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        """``Node.ask`` on node ``name``, from outside the node (through the network).

        The request runs in a task of the node; this coroutine waits for its outcome in the
        caller's task, so a crash of the node leaves it waiting until ``timeout_s``.

        Raises:
            NodeDown: the node is not running when the request is made.
            TimeoutError: ``timeout_s`` passed without an outcome (or the request or its reply
                was lost: then after ``timeout_s``, or 30 s when it is None).
            Whatever ``Node.ask`` raises.
        """
        return await self.call(
            name,
            lambda node: node.ask(actor, actor_id, message, message_id=message_id),
            timeout_s=timeout_s,
            label=f"ask:{actor_id}",
        )

    async def call(
        self,
        name: str,
        operation: Callable[[Node], Coroutine[Any, Any, T]],
        *,
        timeout_s: float | None = None,
        label: str = "call",
    ) -> T:
        """Run ``operation(node)`` on node ``name`` from outside it, e.g.
        ``world.call("n1", lambda node: node.workflows.start(order, "o-1", data))``.

        The request crosses the simulated network: it may be lost (by a fault or a partition
        between the clients and the node), delivered twice (``operation`` is then called
        twice, as a retransmitted request would be), delayed or overtaken, and its reply may be
        lost after the work was done. The operation runs in a task of the node and this
        coroutine waits in the caller's task, so a crash of the node leaves it waiting until
        ``timeout_s``.

        Raises:
            NodeDown: the node is not running when the call is made.
            TimeoutError: ``timeout_s`` passed without an outcome; also when the request or its
                reply was lost (after ``timeout_s``, or 30 s when it is None).
            Whatever the operation raises.
        """
        node = self.node(name)
        entry = self._nodes[name]
        network = self.network
        outcome: asyncio.Future[T] = self.loop.create_future()
        fate = network.request_fate(CLIENT, name)
        copies = 0 if fate == "drop" else 2 if fate == "duplicate" else 1
        if copies == 1 and self._duplicate_request():
            copies = 2
            self.loop.trace("net.duplicate", f"client->{name} {label} (client resent)")
        if copies == 0:
            self._time_out_later(outcome, timeout_s, f"{label}: the request to {name} was lost")
        duplicates_before = node.host.statistics.duplicates

        def reply(request: asyncio.Task[T]) -> None:
            # Read the outcome even when the caller has given up, so that an error is never
            # reported as "exception was never retrieved" at a time the GC picks.
            if not request.cancelled():
                request.exception()
            if copies == 2 and node.host.statistics.duplicates > duplicates_before:
                self.sometimes("duplicate_deduplicated", f"{name} {label}")
            if outcome.done():
                return
            if network.reply_lost(CLIENT, name):
                self._time_out_later(outcome, timeout_s, f"{label}: the reply from {name} was lost")
                return
            delay_s = network.delay_s()
            if delay_s == 0:
                _relay(request, outcome)
            else:
                self.loop.call_later(delay_s, _relay, request, outcome, context=node_context(None))

        for copy in range(copies):
            delay_s = network.delay_s()
            request = self.loop.create_task(
                _after(delay_s, operation, node),
                name=f"{name}:{label}" + ("" if copy == 0 else "#dup"),
                context=node_context(entry.tag),
            )
            request.add_done_callback(reply)
        if timeout_s is None:
            return await outcome
        async with asyncio.timeout(timeout_s):
            return await outcome

    def _duplicate_request(self) -> bool:
        rate = self.profile.duplicate_requests
        if rate == 0 or self.healed:
            return False
        return self._request_draws.random() < rate

    def _time_out_later(
        self, outcome: asyncio.Future[Any], timeout_s: float | None, why: str
    ) -> None:
        if timeout_s is not None:
            return  # the caller's own timeout ends its wait

        def expire() -> None:
            if not outcome.done():
                outcome.set_exception(TimeoutError(why))

        self.loop.call_later(_CLIENT_TIMEOUT_S, expire, context=node_context(None))

    async def tell(
        self,
        name: str,
        actor: type[Actor[Any]] | str,
        actor_id: str,
        message: object,
        *,
        message_id: str | None = None,
    ) -> None:
        """``Node.tell`` on node ``name``, from outside the node (through the network: a lost
        tell is lost silently, a duplicated one delivered twice).

        Raises:
            NodeDown: the node is not running.
        """
        node = self.node(name)
        entry = self._nodes[name]
        fate = self.network.request_fate(CLIENT, name)
        if fate == "drop":
            return
        copies = 2 if fate == "duplicate" or self._duplicate_request() else 1
        for _ in range(copies):
            delay_s = self.network.delay_s()
            if delay_s:
                await asyncio.sleep(delay_s)
            if entry.node is not node or entry.state != "running":
                return  # the node died while the message was on its way
            await self._in_node(
                entry, lambda: node.tell(actor, actor_id, message, message_id=message_id), "tell"
            )

    # Crash points and step faults ---------------------------------------------------------------

    def _crash_hook(self, point: str) -> Awaitable[None]:
        tag = current_node()
        probability = self.profile.crash_probability(point)
        if tag is None or tag.crashed or self.healed or probability == 0:
            return crashpoints.PROCEED
        if self._crash_draws.random() >= probability:
            return crashpoints.PROCEED
        entry = self._nodes.get(tag.name)
        if entry is None or entry.tag is not tag:
            return crashpoints.PROCEED
        if point == "step.after_effect":
            step = _CURRENT_STEP.get()
            if step is not None:
                self._crashed_steps.add(step.idempotency_key)
        self.loop.trace("crash_point", point, node=tag)
        self.sometimes(f"crash_point:{point}")
        never = _Never(self.loop)
        stopping = entry.state == "stopping"
        self.crash(tag.name)
        entry.restart_after_crash = not stopping
        delay_s = self._nemesis_draws.randint(0, _RESTART_DELAY_MS_MAX) / 1000
        self._spawn_world(self._restart_later(entry, tag, delay_s), f"restart:{tag}")
        return never

    async def _restart_later(self, entry: _SimNode, tag: NodeTag, delay_s: float) -> None:
        """Restart a node a crash point killed, as a supervisor would."""
        await asyncio.sleep(delay_s)
        if entry.tag is not tag or entry.state != "crashed" or not entry.restart_after_crash:
            return  # restarted (or stopped) by the scenario meanwhile
        # A crash point may kill it again while it starts; that crash schedules its own restart.
        with contextlib.suppress(NodeDown):
            await self.restart(entry.name)

    def _step_hook(self, work: Awaitable[Any], timeout_s: float | None) -> Awaitable[Any]:
        step = _CURRENT_STEP.get()
        if step is not None and step.idempotency_key in self._crashed_steps:
            self._crashed_steps.discard(step.idempotency_key)
            self.sometimes("step_retried_after_crash", step.idempotency_key)
        faults = self.profile.steps
        if self.healed or current_node() is None or (faults.error == 0 and faults.timeout == 0):
            return work
        draw = self._step_draws.random()
        where = "" if step is None else step.idempotency_key
        if draw < faults.error:
            self.loop.trace("step.fault", f"error {where}")
            self.sometimes("step_error_injected")
            _discard(work)
            return _raise(InjectedStepError(f"injected: step {where} failed"))
        if draw < faults.error + faults.timeout and timeout_s is not None:
            after_effect = self._step_draws.random() < 0.5
            self.loop.trace(
                "step.fault", f"timeout {'after' if after_effect else 'before'} {where}"
            )
            self.sometimes("step_timeout_injected")
            hang_s = timeout_s * 2 + 1
            if not after_effect:
                _discard(work)
                return asyncio.sleep(hang_s)
            return _then_hang(work, hang_s)
        return work

    # Nemeses: partitions and clock jumps ------------------------------------------------------

    def _start_nemeses(self, entry: _SimNode) -> None:
        if self.healed:
            return
        if self.profile.partitions > 0:
            self._nemeses.append(
                self._spawn_world(self._partitions(entry), f"partitions:{entry.name}")
            )
        clock = self.profile.clock
        if clock.jump > 0 and clock.jump_ms_max > 0:
            self._nemeses.append(self._spawn_world(self._jumps(entry), f"jumps:{entry.name}"))

    def _next_in_s(self, per_minute: float) -> float:
        """A seeded exponential wait for an event that happens ``per_minute`` times a minute."""
        return -math.log(1.0 - self._nemesis_draws.random()) * 60.0 / per_minute

    async def _partitions(self, entry: _SimNode) -> None:
        """Now and again, cut the node from its store or from the clients for a while (often
        longer than its lease TTL, so its leases expire and another node may take over)."""
        while not self.healed:
            await asyncio.sleep(self._next_in_s(self.profile.partitions))
            store = entry.store
            targets = [CLIENT]
            if isinstance(store, FaultyStore):
                targets.append(store_endpoint(store.label))
            target = targets[self._nemesis_draws.randint(0, len(targets) - 1)]
            duration_s = entry.config.lease_ttl_s * self._nemesis_draws.uniform(0.5, 3.0)
            self.network.cut(entry.name, target)
            self.sometimes("partition_store" if target != CLIENT else "partition_clients")
            try:
                await asyncio.sleep(duration_s)
            finally:
                self.network.mend(entry.name, target)

    async def _jumps(self, entry: _SimNode) -> None:
        """Now and again, step the node's wall clock forwards or backwards."""
        clock_faults = self.profile.clock
        while not self.healed:
            await asyncio.sleep(self._next_in_s(clock_faults.jump))
            jump_ms = self._nemesis_draws.randint(1, clock_faults.jump_ms_max)
            if self._nemesis_draws.random() < 0.5:
                jump_ms = -jump_ms
            before_ms = entry.clock.wall_ms()
            entry.clock.jump(jump_ms)
            self.sometimes("clock_jump_forward" if jump_ms > 0 else "clock_jump_backward")
            await self._note_lease_crossings(entry.name, before_ms, before_ms + jump_ms)

    async def _note_lease_crossings(self, name: str, before_ms: int, after_ms: int) -> None:
        low, high = min(before_ms, after_ms), max(before_ms, after_ms)
        for store in self._faulty:
            for head in await store.inner.list_streams():
                if head.owner is not None and low < head.lease_expires_at_ms <= high:
                    self.sometimes("clock_jump_crossed_lease_expiry", f"{name} {head.stream_id}")
                    return

    # User invariants --------------------------------------------------------------------------

    def add_invariant(self, invariant: Callable[[World], None]) -> None:
        """Check ``invariant(world)`` at every ``check_invariants`` (and in ``run_checks``):
        it raises ``InvariantViolation`` when the state it looks at is wrong."""
        self.invariants.append(invariant)

    def after_commit(self) -> None:
        """Called by the world's faulty stores after each committed append: the user
        invariants run then, so a violation stops the run at the commit that caused it."""
        if self.invariants:
            self.check_invariants()

    def check_invariants(self) -> None:
        """Run the user invariants now; a violation stops the run."""
        for invariant in self.invariants:
            try:
                invariant(self)
            except SimulationError as error:
                self.violation(error)
                raise

    # End of run -------------------------------------------------------------------------------

    async def _teardown(self) -> None:
        """Cancel what is still running (as ``asyncio.run`` does) and close the stores."""
        current = asyncio.current_task()
        for _ in range(_TEARDOWN_ROUNDS_MAX):
            leftovers = [task for task in self.loop.live_tasks() if task is not current]
            if not leftovers:
                break
            for task in leftovers:
                task.cancel()
            await asyncio.gather(*leftovers, return_exceptions=True)
        else:
            raise SimulationError("tasks kept starting new tasks while the run was torn down")
        for store in self._stores:
            await store.close()


def _relay(request: asyncio.Future[T], outcome: asyncio.Future[T]) -> None:
    """Copy a finished task's outcome into ``outcome`` (unless it is settled already)."""
    error = None if request.cancelled() else request.exception()
    if outcome.done():
        return
    if request.cancelled():
        outcome.cancel()
    elif error is not None:
        outcome.set_exception(error)
    else:
        outcome.set_result(request.result())


async def _after(
    delay_s: float, operation: Callable[[Node], Coroutine[Any, Any, T]], node: Node
) -> T:
    """``operation(node)`` once ``delay_s`` passed (the request's time on the wire)."""
    if delay_s:
        await asyncio.sleep(delay_s)
    return await operation(node)


def _discard(work: Awaitable[Any]) -> None:
    """Let go of a step's awaitable that will not run (close a coroutine never started)."""
    if asyncio.iscoroutine(work):
        work.close()


async def _raise(error: BaseException) -> Any:
    raise error


async def _then_hang(work: Awaitable[Any], hang_s: float) -> Any:
    value = await work
    await asyncio.sleep(hang_s)
    return value


_NOTE_TRACE_LINES: Final = 40


@attrs.frozen
class FailureReport:
    """What a failed run leaves on its exception (``error.simulation``).

    Attributes:
        seed: the run seed.
        profile: the run's fault profile.
        virtual_s: the virtual time of the failure.
        trace_tail: the last trace lines.
        trace_lines: every trace line, when the run kept them.
        sometimes: the ``world.sometimes`` counts so far.
    """

    seed: int
    profile: FaultProfile
    virtual_s: float
    trace_tail: tuple[str, ...]
    trace_lines: tuple[str, ...] | None
    sometimes: dict[str, int]


def _annotate(
    error: Exception, seed: int, profile: FaultProfile, loop: SimLoop, world: World
) -> None:
    """Attach the run's seed, profile and trace to ``error`` (``error.simulation`` and a note
    that pytest prints with the traceback)."""
    lines = loop.trace_lines()
    report = FailureReport(
        seed=seed,
        profile=profile,
        virtual_s=loop.time(),
        trace_tail=tuple(loop.trace_tail()),
        trace_lines=None if lines is None else tuple(lines),
        sometimes=world.sometimes_counts,
    )
    with contextlib.suppress(AttributeError):  # a type with slots: the note says it all
        error.simulation = report  # type: ignore[attr-defined]
    tail = "\n  ".join(report.trace_tail[-_NOTE_TRACE_LINES:])
    error.add_note(
        f"simulation seed={seed} at t={report.virtual_s:.6f}s; {profile.describe()}\n"
        f"last trace lines:\n  {tail}"
    )


def run_simulation(
    seed: int,
    scenario: Callable[[World], Awaitable[T]],
    *,
    profile: FaultProfile | None = None,
    perturb: bool = False,
    max_steps: int | None = _STEPS_MAX_DEFAULT,
    keep_trace: bool = False,
    tripwire: bool = True,
) -> SimulationResult[T]:
    """Run ``await scenario(world)`` on a fresh ``SimLoop`` and return its value and trace.

    The loop is created and closed here and sets no global state beyond the run (the crash
    point hooks and the tripwires are removed when it ends), so runs are independent; it must
    be called from synchronous code (not from inside a running event loop).

    Args:
        seed: the run seed; every random choice of the run derives from it.
        scenario: an async function of the ``World``.
        profile: the faults to inject (``world.profile``); None: ``FaultProfile.none()``.
        perturb: pick each next ready callback with a PRNG seeded by ``seed`` instead of in
            FIFO order, to explore other interleavings (also on when ``profile.perturb``).
        max_steps: the callback budget of the run (``SimulationStuck`` beyond it).
        keep_trace: keep every trace line in ``SimulationResult.trace_lines``.
        tripwire: make ``time.time``, module-level ``random``, ``uuid.uuid4``, ``os.urandom``
            and friends raise ``SimulationEscape`` when simulated code calls them.

    Raises:
        Deadlock: the scenario waits for something that can no longer happen.
        SimulationEscape: simulated code tried to use a thread, socket, clock, ... (even if it
            caught the error).
        SimulationStuck: the budget ran out.
        InvariantViolation: a checker found a broken invariant (possibly inside a node, as it
            happened).
        Whatever the scenario raises.
    """
    if profile is not None and not isinstance(profile, FaultProfile):
        raise TypeError(f"profile must be a FaultProfile, got {type(profile).__name__}")
    profile = profile if profile is not None else FaultProfile.none()
    perturbed = perturb or profile.perturb
    loop = SimLoop(
        perturb_seed=seed if perturbed else None, max_steps=max_steps, keep_trace=keep_trace
    )
    world = World(loop, seed, profile)

    async def main() -> T:
        loop.trace("run.start", f"seed={seed} perturb={perturbed}")
        if profile.fault_kinds():
            loop.trace("run.profile", profile.describe())
        try:
            value = await scenario(world)
        except GeneratorExit:
            raise  # the loop is closing after a deadlock: nothing may be awaited any more
        except BaseException:
            await world._teardown()
            raise
        await world._teardown()
        loop.trace("run.end")
        return value

    restore = crashpoints.install(world._crash_hook, world._step_hook)
    try:
        try:
            with tripwires(loop, enabled=tripwire):
                value = loop.run_until_complete(loop.create_task(main(), name="scenario"))
            if loop.escapes:
                raise loop.escapes[0]
        except Exception as error:
            _annotate(error, seed, profile, loop, world)
            raise
        lines = loop.trace_lines()
        return SimulationResult(
            seed=seed,
            value=value,
            trace_digest=loop.trace_digest(),
            trace_events=loop.trace_events,
            trace_tail=tuple(loop.trace_tail()),
            virtual_s=loop.time(),
            steps=loop.steps,
            dropped=loop.dropped,
            unhandled_errors=tuple(loop.unhandled_errors),
            profile=profile,
            sometimes=world.sometimes_counts,
            trace_lines=None if lines is None else tuple(lines),
        )
    finally:
        restore()
        loop.close()
