"""Run a scenario against real ``mainspring.Node`` objects on the deterministic ``SimLoop``.

``run_simulation(seed, scenario)`` builds a fresh loop and a ``World``, runs ``await
scenario(world)`` to completion in virtual time, and returns the scenario's value with the run's
trace digest. The world starts nodes (a real ``Node`` wired to the node's ``SimClock``,
``SimRandom`` and ``SimIds`` over a store the scenario passes in), crashes them (every task of
the node stops where it is; memory is lost, the store survives) and restarts them (a fresh
``Node`` with the same id on the same store).

Scenario code talks to a node through ``world.ask``/``world.tell``: the request crosses into the
node (its delivery and the wait for the reply run in a task of the node), while the caller waits
in its own task. An ask in flight when its node crashes is never answered; the caller's
``timeout_s`` is what ends its wait, as it would for a remote client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Final, Generic, TypeVar, final

import attrs

from mainspring.actors.actor import Actor
from mainspring.actors.workflow import WorkflowDefinition
from mainspring.config import NodeConfig
from mainspring.node import Node
from mainspring.persistence.memory import MemoryStore
from mainspring.persistence.sqlite import InlineRunner, SqliteStore
from mainspring.persistence.store import Store
from mainspring.simulations.clock import SimClock, SimIds, SimRandom
from mainspring.simulations.faults import NO_FAULTS, FaultyStore, StoreFaults, StoreHistory
from mainspring.simulations.loop import (
    NodeTag,
    SimLoop,
    SimulationError,
    node_context,
)
from mainspring.simulations.seeds import substream

__all__ = ["NodeDown", "SimulationResult", "World", "run_simulation"]

T = TypeVar("T")

_STEPS_MAX_DEFAULT: Final = 5_000_000
_TEARDOWN_ROUNDS_MAX: Final = 100


class NodeDown(SimulationError):
    """The scenario addressed a node that is crashed, stopped or was never started."""


@attrs.frozen
class SimulationResult(Generic[T]):
    """The outcome of one ``run_simulation``.

    Attributes:
        seed: the run seed.
        value: what the scenario returned.
        trace_digest: SHA-256 of the whole trace; equal digests mean identical runs.
        trace_events: how many trace lines were recorded.
        trace_tail: the last trace lines, oldest first.
        virtual_s: the virtual time at the end, in seconds.
        steps: how many callbacks the loop ran.
        dropped: callbacks addressed to crashed nodes, never run.
        unhandled_errors: what reached the loop's exception handler.
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


@final
@attrs.define(eq=False)
class _SimNode:
    """What the world knows of one node name across its incarnations."""

    name: str
    store: Store
    actors: tuple[type[Actor[Any]], ...]
    workflows: tuple[WorkflowDefinition[Any, Any], ...]
    config: NodeConfig | None
    clock: SimClock
    tag: NodeTag
    node: Node | None = None
    state: str = "starting"  # starting, running, crashed, stopped


@final
class World:
    """The simulated environment a scenario drives. Built by ``run_simulation``.

    Attributes:
        seed: the run seed.
        loop: the simulation loop.
        random: the scenario's own seeded stream, for choices such as when to crash.
    """

    def __init__(self, loop: SimLoop, seed: int) -> None:
        self.seed: Final = seed
        self.loop: Final = loop
        self.random: Final = SimRandom(seed, "world")
        self._nodes: dict[str, _SimNode] = {}
        self._stores: list[Store] = []
        self._faulty: list[FaultyStore] = []

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
        profile: StoreFaults = NO_FAULTS,
        *,
        label: str = "store",
        node_profiles: dict[str, StoreFaults] | None = None,
    ) -> FaultyStore:
        """Wrap ``inner`` in a ``FaultyStore`` whose decisions come from this run's seed.

        The world remembers it: ``checkers.run_checks(world)`` checks every such store.

        Args:
            inner: the store that keeps the data (``memory_store()``, ``sqlite_store()``, ...).
            profile: the fault rates (none by default: the wrapper then only records history).
            label: names the wrapper's PRNG stream; give each wrapper of one run its own.
            node_profiles: per-node fault rates that override ``profile`` for those nodes.
        """
        if any(store.label == label for store in self._faulty):
            raise SimulationError(f"a faulty store labelled {label!r} exists in this run")
        store = FaultyStore(
            inner,
            substream(self.seed, "store-faults", label),
            profile,
            history=StoreHistory(),
            node_profiles=node_profiles,
            label=label,
        )
        self._faulty.append(store)
        return store

    @property
    def faulty_stores(self) -> tuple[FaultyStore, ...]:
        """The stores made by ``faulty_store``, in creation order."""
        return tuple(self._faulty)

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

    async def start_node(
        self,
        name: str,
        actors: Sequence[type[Actor[Any]]],
        store: Store,
        *,
        config: NodeConfig | None = None,
        offset_ms: int = 0,
        drift_ppm: int = 0,
        workflows: Sequence[WorkflowDefinition[Any, Any]] = (),
    ) -> Node:
        """Start a real ``Node`` called ``name`` with its own clock, randomness and ids.

        Args:
            name: the node id (also the lease owner).
            actors: the actor types it hosts.
            store: its store; pass the same object to later nodes or restarts to share data.
            config: the node's settings (the production defaults poll every second, which is
                many wake-ups over simulated days; scenarios often lengthen the intervals).
            offset_ms: how far this node's wall clock is ahead.
            drift_ppm: how fast this node's clock runs.
            workflows: the workflow definitions it runs.
        """
        if name in self._nodes:
            raise SimulationError(f"node {name!r} exists; use restart() after a crash")
        entry = _SimNode(
            name=name,
            store=store,
            actors=tuple(actors),
            workflows=tuple(workflows),
            config=config,
            clock=SimClock(self.loop, name, offset_ms=offset_ms, drift_ppm=drift_ppm),
            tag=self.loop.new_node_tag(name),
        )
        self._nodes[name] = entry
        if all(known is not store for known in self._stores):
            self._stores.append(store)
        return await self._boot(entry)

    async def _boot(self, entry: _SimNode) -> Node:
        tag = entry.tag
        node = Node(
            entry.name,
            store=entry.store,
            actors=entry.actors,
            workflows=entry.workflows,
            config=entry.config,
            clock=entry.clock,
            random=SimRandom(self.seed, "node", entry.name, str(tag.incarnation), "random"),
            ids=SimIds(self.seed, "node", entry.name, str(tag.incarnation), "ids"),
        )
        entry.node = node
        entry.state = "starting"
        self.loop.trace("node.start", str(tag), node=tag)
        await self._in_node(entry, node.start, "start")
        entry.state = "running"
        return node

    def crash(self, name: str) -> None:
        """Kill node ``name`` now: none of its code runs again (no ``finally``, no shutdown),
        its memory is lost and its store is left as the last commit left it."""
        entry = self._nodes.get(name)
        if entry is None or entry.state not in {"starting", "running"}:
            raise NodeDown(f"node {name!r} cannot crash: it is not running")
        self.loop.crash(entry.tag)
        entry.node = None
        entry.state = "crashed"

    async def restart(self, name: str) -> Node:
        """Start a fresh ``Node`` with the same id, actors, config and store after a crash or
        stop; it takes the leases of its previous life back."""
        entry = self._nodes.get(name)
        if entry is None or entry.state not in {"crashed", "stopped"}:
            raise SimulationError(f"node {name!r} can restart only after a crash or stop")
        entry.tag = self.loop.new_node_tag(name)
        return await self._boot(entry)

    async def stop_node(self, name: str) -> None:
        """Stop node ``name`` gracefully (``Node.stop``: drain, snapshot, release, close the
        store). A shared store is then closed for the other nodes too."""
        entry = self._nodes.get(name)
        node = self.node(name)
        assert entry is not None
        entry.state = "stopping"
        await self._in_node(entry, node.stop, "stop")
        entry.state = "stopped"
        entry.node = None
        self.loop.trace("node.stop", str(entry.tag), node=entry.tag)

    async def _in_node(
        self, entry: _SimNode, work: Callable[[], Coroutine[Any, Any, T]], what: str
    ) -> T:
        """Run ``work()`` in a task of the node (so the tasks it creates are the node's)."""
        task = self.loop.create_task(
            work(), name=f"{entry.name}:{what}", context=node_context(entry.tag)
        )
        return await task

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
        """``Node.ask`` on node ``name``, from outside the node.

        The request runs in a task of the node; this coroutine waits for its outcome in the
        caller's task, so a crash of the node leaves it waiting until ``timeout_s``.

        Raises:
            NodeDown: the node is not running when the request is made.
            TimeoutError: ``timeout_s`` passed without an outcome.
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

        Like ``ask``: the operation runs in a task of the node and this coroutine waits in the
        caller's task, so a crash of the node leaves it waiting until ``timeout_s``.

        Raises:
            NodeDown: the node is not running when the call is made.
            TimeoutError: ``timeout_s`` passed without an outcome.
            Whatever the operation raises.
        """
        node = self.node(name)
        entry = self._nodes[name]
        outcome: asyncio.Future[T] = self.loop.create_future()

        def relay(request: asyncio.Task[T]) -> None:
            # Read the outcome even when the caller has given up, so that an error is never
            # reported as "exception was never retrieved" at a time the GC picks.
            error = None if request.cancelled() else request.exception()
            if outcome.done():
                return
            if request.cancelled():
                outcome.cancel()
            elif error is not None:
                outcome.set_exception(error)
            else:
                outcome.set_result(request.result())

        request = self.loop.create_task(
            operation(node), name=f"{name}:{label}", context=node_context(entry.tag)
        )
        request.add_done_callback(relay)
        if timeout_s is None:
            return await outcome
        async with asyncio.timeout(timeout_s):
            return await outcome

    async def tell(
        self,
        name: str,
        actor: type[Actor[Any]] | str,
        actor_id: str,
        message: object,
        *,
        message_id: str | None = None,
    ) -> None:
        """``Node.tell`` on node ``name``, from outside the node.

        Raises:
            NodeDown: the node is not running.
        """
        node = self.node(name)
        entry = self._nodes[name]
        await self._in_node(
            entry, lambda: node.tell(actor, actor_id, message, message_id=message_id), "tell"
        )

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


def run_simulation(
    seed: int,
    scenario: Callable[[World], Awaitable[T]],
    *,
    perturb: bool = False,
    max_steps: int | None = _STEPS_MAX_DEFAULT,
) -> SimulationResult[T]:
    """Run ``await scenario(world)`` on a fresh ``SimLoop`` and return its value and trace.

    The loop is created and closed here and sets no global state, so runs are independent;
    it must be called from synchronous code (not from inside a running event loop).

    Args:
        seed: the run seed; every random choice of the run derives from it.
        scenario: an async function of the ``World``.
        perturb: pick each next ready callback with a PRNG seeded by ``seed`` instead of in
            FIFO order, to explore other interleavings.
        max_steps: the callback budget of the run (``SimulationStuck`` beyond it).

    Raises:
        Deadlock: the scenario waits for something that can no longer happen.
        SimulationEscape: simulated code tried to use a thread, socket, ... (even if it
            caught the error).
        SimulationStuck: the budget ran out.
        Whatever the scenario raises.
    """
    loop = SimLoop(perturb_seed=seed if perturb else None, max_steps=max_steps)
    world = World(loop, seed)

    async def main() -> T:
        loop.trace("run.start", f"seed={seed} perturb={perturb}")
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

    try:
        value = loop.run_until_complete(loop.create_task(main(), name="scenario"))
        if loop.escapes:
            raise loop.escapes[0]
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
        )
    finally:
        loop.close()
