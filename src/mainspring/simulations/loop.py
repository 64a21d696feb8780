"""SimLoop: a deterministic asyncio event loop over virtual time.

The loop runs every callback in one thread, in an order fixed by the program and the seed:

* Time is an integer count of virtual nanoseconds. It never moves while something is ready;
  when nothing is, it jumps to the earliest timer. ``asyncio.sleep(30 days)`` costs one heap
  push and one pop.
* Ready callbacks run first in, first out. With ``perturb_seed`` set, the next callback is drawn
  from the ready queue by a seeded PRNG instead, to explore other interleavings (this bends
  asyncio's promise that callbacks run in registration order, which is why it is opt-in).
* Timers are ordered by ``(when_ns, sequence)``, so two timers due at the same instant fire in
  the order they were scheduled.
* Tasks and futures hash by a sequence number assigned before ``Task.__init__`` runs, so the sets
  asyncio keeps of them (``asyncio.wait`` results, ``TaskGroup`` abort order, ``all_tasks``) iterate
  in creation order in every run. With the default ``id()``-based hash that order depends on
  memory addresses.
* Nothing touches the outside world: threads, executors, sockets, DNS, pipes, subprocesses and
  signal handlers raise ``SimulationEscape`` naming the call.

Each task carries a *node tag*, read from a context variable when the task is created and thus
inherited by the tasks it creates. ``crash(tag)`` drops the node's ready callbacks and timers and
parks its unfinished tasks in a graveyard: they never run again, so their ``finally`` blocks and
``except CancelledError`` handlers do not run either, as in a real crash. The graveyard keeps them
referenced until the loop closes, because a coroutine freed by the garbage collector is closed,
which would run its ``finally`` in the middle of the simulation.

The loop records a trace of notable events (task started and finished, node crashed, and what
the harness adds) and hashes it as it goes: ``trace_digest()`` identifies a run, byte for byte.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import hashlib
import heapq
import logging
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Final, NoReturn, TypeVar, TypeVarTuple, final

import attrs

from mainspring.simulations.seeds import Stream, substream

__all__ = [
    "Deadlock",
    "NodeTag",
    "SimFuture",
    "SimLoop",
    "SimTask",
    "SimulationError",
    "SimulationEscape",
    "SimulationStuck",
    "current_node",
    "node_context",
]

log: Final = logging.getLogger(__name__)

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

_NS_PER_S: Final = 1_000_000_000
_TRACE_TAIL_LINES: Final = 200
_WORLD: Final = "world"
"""The node name traced for tasks that belong to no node (the scenario itself)."""


class SimulationError(Exception):
    """Base class of the simulator's own errors.

    Attributes:
        invariant: a short stable name of what failed (``"deadlock"``, ``"gapless"``, ...),
            for grouping failures across a campaign.
    """

    invariant: str = "simulation error"


class SimulationEscape(SimulationError):
    """Simulated code tried to reach the real world (a thread, an executor, a socket, ...).

    The loop also remembers every escape, so one that simulated code caught and swallowed
    (``except Exception``) still fails the run.
    """

    invariant = "escape"


class Deadlock(SimulationError):
    """The main coroutine is unfinished, nothing is ready and no timer is pending.

    Attributes:
        blocked: one line per unfinished task: its name, node and what it awaits.
    """

    invariant = "deadlock"

    def __init__(self, virtual_ns: int, blocked: list[str]) -> None:
        self.virtual_ns = virtual_ns
        self.blocked = blocked
        lines = "\n  ".join(blocked) if blocked else "(none)"
        super().__init__(
            f"deadlock at t={virtual_ns / _NS_PER_S:.9f}s: no callback is ready and no timer is "
            f"pending, but the main coroutine is unfinished. Blocked tasks:\n  {lines}"
        )


class SimulationStuck(SimulationError):
    """The run exceeded its step budget: a livelock, or a scenario that never ends."""

    invariant = "stuck"


@final
@attrs.define(eq=False)
class NodeTag:
    """One incarnation of a simulated node: the tag its tasks and callbacks carry.

    A restarted node gets a new tag with the same name, so callbacks still addressed to the
    crashed incarnation stay dead.
    """

    name: str
    incarnation: int
    crashed: bool = False

    def __str__(self) -> str:
        return f"{self.name}#{self.incarnation}"


_NODE: Final[contextvars.ContextVar[NodeTag | None]] = contextvars.ContextVar(
    "mainspring_sim_node", default=None
)


def current_node() -> NodeTag | None:
    """The node tag of the running code (None for the scenario itself)."""
    return _NODE.get()


def node_context(tag: NodeTag | None) -> contextvars.Context:
    """A copy of the current context in which ``current_node()`` is ``tag``.

    Tasks created with it (``create_task(..., context=ctx)``), or created by code run in it
    (``ctx.run(fn)``), belong to that node, and so do the tasks they create in turn.
    """
    context = contextvars.copy_context()
    context.run(_NODE.set, tag)
    return context


def _tag_of(context: contextvars.Context) -> NodeTag | None:
    return context.get(_NODE)


def _node_name(tag: NodeTag | None) -> str:
    return _WORLD if tag is None else tag.name


class SimTask(asyncio.Task[T]):
    """A task that hashes by its creation number, and knows its node."""

    def __init__(
        self,
        coro: Coroutine[Any, Any, T],
        *,
        loop: SimLoop,
        name: str,
        context: contextvars.Context,
        sim_id: int,
    ) -> None:
        # Set before Task.__init__, which registers the task in a WeakSet (hashing it).
        self.sim_id: Final = sim_id
        self.sim_tag: Final = _tag_of(context)
        super().__init__(coro, loop=loop, name=name, context=context)

    def __hash__(self) -> int:
        return self.sim_id


class SimFuture(asyncio.Future[T]):
    """A future that hashes by its creation number."""

    def __init__(self, *, loop: SimLoop, sim_id: int) -> None:
        self.sim_id: Final = sim_id
        super().__init__(loop=loop)

    def __hash__(self) -> int:
        return self.sim_id


class _Handle(asyncio.Handle):
    __slots__ = ("sim_tag",)

    def __init__(
        self,
        callback: Callable[..., object],
        args: tuple[Any, ...],
        loop: SimLoop,
        context: contextvars.Context,
    ) -> None:
        super().__init__(callback, args, loop, context)
        self.sim_tag: NodeTag | None = _tag_of(context)


class _TimerHandle(asyncio.TimerHandle):
    __slots__ = ("sim_tag", "when_ns")
    _scheduled: bool  # asyncio's slot: True while the loop's heap holds the handle

    def __init__(
        self,
        when_ns: int,
        callback: Callable[..., object],
        args: tuple[Any, ...],
        loop: SimLoop,
        context: contextvars.Context,
    ) -> None:
        super().__init__(when_ns / _NS_PER_S, callback, args, loop, context)
        self.when_ns = when_ns
        self.sim_tag: NodeTag | None = _tag_of(context)


def _escape(call: str) -> Callable[..., NoReturn]:
    def escape(self: SimLoop, *args: Any, **kwargs: Any) -> NoReturn:
        self.escape(call)

    escape.__name__ = call
    escape.__doc__ = f"Raises ``SimulationEscape``: ``loop.{call}`` leaves the simulation."
    return escape


def _awaiting(task: asyncio.Task[Any]) -> str:
    """What ``task`` waits on: the chain of coroutines from the task down to the awaited
    object, e.g. ``worker() line 12 -> Event.wait() line 207 -> <a future>``."""
    parts: list[str] = []
    awaited: Any = task.get_coro()
    for _ in range(64):  # a bound, in case of a cycle
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        code = getattr(awaited, "cr_code", None) or getattr(awaited, "gi_code", None)
        if code is None:
            break
        line = frame.f_lineno if frame is not None else "?"
        parts.append(f"{code.co_qualname}() line {line}")
        nested = getattr(awaited, "cr_await", None)
        if nested is None:
            nested = getattr(awaited, "gi_yieldfrom", None)
        if nested is None:
            awaited = None
            break
        awaited = nested
    if awaited is not None:
        # Future.__await__ is a C iterator that does not expose its future: name it plainly.
        kind = type(awaited).__name__
        parts.append("<a future>" if kind == "FutureIter" else f"<{kind}>")
    return " -> ".join(parts) if parts else "<not started>"


@final
class SimLoop(asyncio.AbstractEventLoop):
    """A deterministic, single-threaded event loop over virtual time.

    Args:
        perturb_seed: when not None, pick each next ready callback with a PRNG seeded by it
            instead of first in, first out.
        max_steps: the most callbacks one ``run_until_complete`` may run before it raises
            ``SimulationStuck``; None for no limit.
        keep_trace: keep every trace line (``trace_lines``), not only the tail.
    """

    def __init__(
        self,
        *,
        perturb_seed: int | None = None,
        max_steps: int | None = None,
        keep_trace: bool = False,
    ) -> None:
        self._now_ns = 0
        self._ready: collections.deque[_Handle | _TimerHandle] = collections.deque()
        self._timers: list[tuple[int, int, _TimerHandle]] = []
        self._timers_cancelled = 0
        self._sequence = 0
        self._ids = 0
        self._perturb: Stream | None = (
            None if perturb_seed is None else substream(perturb_seed, "scheduler")
        )
        self._max_steps = max_steps
        self._running = False
        self._closed = False
        self._finalizing = False
        self._debug = False
        self._exception_handler: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], Any] | None
        self._exception_handler = None
        self._live: dict[int, SimTask[Any]] = {}
        self._graveyard: list[SimTask[Any]] = []
        self._incarnations: dict[str, int] = {}
        self._trace_hash = hashlib.sha256()
        self._trace_events = 0
        self._trace_tail: collections.deque[str] = collections.deque(maxlen=_TRACE_TAIL_LINES)
        self._trace_lines: list[str] | None = [] if keep_trace else None
        self.failure: SimulationError | None = None
        """The first error passed to ``fail``: the run stops after the current callback."""
        self.steps = 0
        """Callbacks run so far."""
        self.dropped = 0
        """Callbacks scheduled for crashed nodes, never run."""
        self.escapes: list[SimulationEscape] = []
        """Every ``SimulationEscape`` raised, caught or not."""
        self.unhandled_errors: list[str] = []
        """Messages passed to ``call_exception_handler`` (e.g. a task's exception never
        retrieved); they do not enter the trace, because the garbage collector decides when
        some of them are reported."""

    # Time -------------------------------------------------------------------------------------

    def time(self) -> float:
        """Virtual seconds since the loop was created."""
        return self._now_ns / _NS_PER_S

    @property
    def now_ns(self) -> int:
        """Virtual nanoseconds since the loop was created."""
        return self._now_ns

    # Scheduling -------------------------------------------------------------------------------

    def _next_sequence(self) -> int:
        self._sequence += 1
        return self._sequence

    def call_soon(
        self,
        callback: Callable[[*Ts], object],
        *args: *Ts,
        context: contextvars.Context | None = None,
    ) -> asyncio.Handle:
        """Run ``callback(*args)`` after the callbacks already ready."""
        self._check_open()
        handle = _Handle(
            callback, args, self, context if context is not None else contextvars.copy_context()
        )
        if handle.sim_tag is not None and handle.sim_tag.crashed:
            self.dropped += 1  # addressed to a dead node: it never runs
            return handle
        self._ready.append(handle)
        return handle

    def call_later(
        self,
        delay: float,
        callback: Callable[[*Ts], object],
        *args: *Ts,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        """Run ``callback(*args)`` ``delay`` virtual seconds from now."""
        delay_ns = max(0, round(delay * _NS_PER_S))
        return self._call_at_ns(self._now_ns + delay_ns, callback, args, context)

    def call_at(
        self,
        when: float,
        callback: Callable[[*Ts], object],
        *args: *Ts,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        """Run ``callback(*args)`` at virtual time ``when`` (seconds, as ``time()`` returns)."""
        return self._call_at_ns(round(when * _NS_PER_S), callback, args, context)

    def _call_at_ns(
        self,
        when_ns: int,
        callback: Callable[..., object],
        args: tuple[Any, ...],
        context: contextvars.Context | None,
    ) -> _TimerHandle:
        self._check_open()
        handle = _TimerHandle(
            when_ns,
            callback,
            args,
            self,
            context if context is not None else contextvars.copy_context(),
        )
        if handle.sim_tag is not None and handle.sim_tag.crashed:
            self.dropped += 1
            return handle
        handle._scheduled = True
        heapq.heappush(self._timers, (when_ns, self._next_sequence(), handle))
        return handle

    def _timer_handle_cancelled(self, handle: asyncio.TimerHandle) -> None:
        """Called by ``TimerHandle.cancel``; cancelled timers are removed lazily."""
        self._timers_cancelled += 1

    def _compact_timers(self) -> None:
        # Lazy deletion keeps cancel O(1); rebuild once cancelled entries dominate the heap
        # (every ask with a timeout, every idle wait leaves one behind).
        if self._timers_cancelled > 64 and self._timers_cancelled * 2 > len(self._timers):
            kept = [entry for entry in self._timers if not entry[2].cancelled()]
            for entry in self._timers:
                if entry[2].cancelled():
                    entry[2]._scheduled = False
            heapq.heapify(kept)
            self._timers = kept
            self._timers_cancelled = 0

    def _move_due_timers(self) -> None:
        timers = self._timers
        while timers and (timers[0][2].cancelled() or timers[0][0] <= self._now_ns):
            _, _, handle = heapq.heappop(timers)
            handle._scheduled = False
            if handle.cancelled():
                self._timers_cancelled -= 1
                continue
            self._ready.append(handle)

    def _advance(self) -> bool:
        """Make something ready: due timers now, else jump to the next timer.

        Returns:
            False when nothing is ready and no timer is pending.
        """
        self._move_due_timers()
        if self._ready:
            return True
        while self._timers:
            when_ns, _, handle = self._timers[0]
            if handle.cancelled():
                heapq.heappop(self._timers)
                handle._scheduled = False
                self._timers_cancelled -= 1
                continue
            assert when_ns > self._now_ns, (when_ns, self._now_ns)  # due ones moved above
            self._now_ns = when_ns
            self._move_due_timers()
            return True
        return False

    def _pop_ready(self) -> _Handle | _TimerHandle:
        ready = self._ready
        if self._perturb is None or len(ready) == 1:
            return ready.popleft()
        index = self._perturb.randrange(len(ready))
        handle = ready[index]
        del ready[index]
        return handle

    def run_one(self) -> bool:
        """Run one ready callback, advancing virtual time first if nothing is ready.

        Returns:
            False when there was nothing to run: no ready callback and no pending timer.
        """
        while True:
            timers = self._timers
            if timers and timers[0][0] <= self._now_ns:
                # Due timers join the ready queue even while it is busy, as in asyncio's own
                # loop: a task spinning on sleep(0) must not starve a timeout due now.
                self._move_due_timers()
            if not self._ready and not self._advance():
                return False
            handle = self._pop_ready()
            if handle.cancelled():
                continue
            self.steps += 1
            handle._run()
            self._compact_timers()
            return True

    # Running ----------------------------------------------------------------------------------

    def run_until_complete(self, future: Any) -> Any:
        """Run until ``future`` (a coroutine, task or future) is done; return its result.

        Raises:
            Deadlock: nothing can run, no timer is pending, and ``future`` is not done.
            SimulationStuck: the step budget ran out.
        """
        self._check_open()
        if self._running:
            raise RuntimeError("this SimLoop is already running")
        if asyncio.events._get_running_loop() is not None:
            raise RuntimeError("cannot run a SimLoop inside another running event loop")
        task = asyncio.ensure_future(future, loop=self)
        self._running = True
        asyncio.events._set_running_loop(self)
        steps_before = self.steps
        try:
            while not task.done():
                if self.failure is not None:
                    raise self.failure
                if not self.run_one():
                    raise Deadlock(self._now_ns, self.blocked_tasks())
                if self._max_steps is not None and self.steps - steps_before > self._max_steps:
                    raise SimulationStuck(
                        f"more than {self._max_steps} callbacks without finishing, at "
                        f"t={self.time():.9f}s; blocked tasks:\n  "
                        + "\n  ".join(self.blocked_tasks())
                    )
        finally:
            self._running = False
            asyncio.events._set_running_loop(None)
        if self.failure is not None:
            raise self.failure
        return task.result()

    def run_forever(self) -> None:
        """Not supported: a simulation runs a main coroutine to completion."""
        raise SimulationError("SimLoop runs a coroutine with run_until_complete, not forever")

    def stop(self) -> None:
        """Not supported (see ``run_forever``)."""
        raise SimulationError("SimLoop has no run_forever to stop")

    def is_running(self) -> bool:
        """True while ``run_until_complete`` runs."""
        return self._running

    def is_closed(self) -> bool:
        """True once ``close`` was called."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed and not self._finalizing:
            raise RuntimeError("this SimLoop is closed")

    def close(self) -> None:
        """Close the loop and let go of every unfinished task.

        Parked (crashed) and still pending tasks are never resumed. Their coroutines are closed
        here, with the loop already closed and every scheduling call ignored, so that Python can
        free them without reporting them; this is the only point at which a crashed task's
        ``finally`` runs, after the simulation and its trace are over. Idempotent.
        """
        if self._running:
            raise RuntimeError("cannot close a running SimLoop")
        if self._closed:
            return
        self._closed = True
        self._finalizing = True
        try:
            leftovers = [*self._graveyard, *self._live.values()]
            self._graveyard.clear()
            self._live.clear()
            for task in leftovers:
                if task.done():
                    continue
                task._log_destroy_pending = False  # type: ignore[attr-defined]
                try:
                    task.get_coro().close()
                except BaseException as error:  # the run is over; keep closing
                    log.debug("SimTaskCloseFailed", extra={"task": task.get_name()}, exc_info=error)
            self._ready.clear()
            self._timers.clear()
        finally:
            self._finalizing = False

    async def shutdown_asyncgens(self) -> None:
        """Nothing to do: the loop installs no async generator hooks."""

    async def shutdown_default_executor(self) -> None:
        """Nothing to do: the loop has no executor."""

    # Tasks and futures ------------------------------------------------------------------------

    def create_future(self) -> asyncio.Future[Any]:
        """A future that hashes by its creation number."""
        self._ids += 1
        return SimFuture(loop=self, sim_id=self._ids)

    def create_task(
        self,
        coro: Coroutine[Any, Any, T] | Generator[Any, None, T],
        *,
        name: str | None = None,
        context: contextvars.Context | None = None,
    ) -> SimTask[T]:
        """Wrap ``coro`` in a ``SimTask`` numbered in creation order; it belongs to the node of
        ``context`` (by default, the node of the code creating it)."""
        self._check_open()
        assert asyncio.iscoroutine(coro), f"create_task needs a coroutine, got {coro!r}"
        self._ids += 1
        sim_id = self._ids
        task_context = context if context is not None else contextvars.copy_context()
        # asyncio's default names come from a process-wide counter: not reproducible.
        task_name = name if name is not None else f"sim-task-{sim_id}"
        task: SimTask[T] = SimTask(
            coro,
            loop=self,
            name=task_name,
            context=task_context,
            sim_id=sim_id,
        )
        tag = task.sim_tag
        if tag is not None and tag.crashed:
            # Created by a node that is already dead: its first step was dropped.
            self._graveyard.append(task)
        else:
            self._live[sim_id] = task
            task.add_done_callback(self._on_task_done, context=task_context)
        self.trace("task.start", task_name, node=_node_name(tag))
        return task

    def _on_task_done(self, task: asyncio.Future[Any]) -> None:
        assert isinstance(task, SimTask)
        self._live.pop(task.sim_id, None)
        if task.cancelled():
            outcome = "cancelled"
        elif task.exception() is not None:
            outcome = f"raised {type(task.exception()).__name__}"
        else:
            outcome = "returned"
        self.trace("task.done", f"{task.get_name()} {outcome}", node=_node_name(task.sim_tag))

    def set_task_factory(self, factory: Any) -> None:
        """Not supported: the loop's own task class is what makes runs reproducible."""
        raise SimulationError("SimLoop creates its own SimTask objects; no task factory may be set")

    def get_task_factory(self) -> None:
        """None: tasks are always ``SimTask`` objects."""

    def live_tasks(self) -> list[SimTask[Any]]:
        """Unfinished tasks of live nodes and of the scenario, in creation order."""
        return sorted(self._live.values(), key=lambda task: task.sim_id)

    def blocked_tasks(self) -> list[str]:
        """One line per unfinished, non-crashed task: name, node and what it awaits."""
        return [
            f"{task.get_name()} [{_node_name(task.sim_tag)}] awaiting {_awaiting(task)}"
            for task in self.live_tasks()
            if not task.done()
        ]

    # Nodes ------------------------------------------------------------------------------------

    def new_node_tag(self, name: str) -> NodeTag:
        """A tag for a new incarnation of node ``name``."""
        incarnation = self._incarnations.get(name, -1) + 1
        self._incarnations[name] = incarnation
        return NodeTag(name, incarnation)

    def crash(self, tag: NodeTag) -> int:
        """Kill a node incarnation: its ready callbacks and timers are dropped and its tasks
        parked, never to run again (not even their ``finally`` blocks).

        Returns:
            How many unfinished tasks were parked.
        """
        assert not tag.crashed, f"node {tag} crashed twice"
        tag.crashed = True
        kept_ready = [handle for handle in self._ready if handle.sim_tag is not tag]
        self.dropped += len(self._ready) - len(kept_ready)
        self._ready = collections.deque(kept_ready)
        kept_timers = []
        for entry in self._timers:
            if entry[2].sim_tag is tag:
                entry[2]._scheduled = False
                if entry[2].cancelled():
                    self._timers_cancelled -= 1
                else:
                    self.dropped += 1
            else:
                kept_timers.append(entry)
        heapq.heapify(kept_timers)
        self._timers = kept_timers
        parked = []
        for task in self.live_tasks():
            if task.sim_tag is not tag:
                continue
            del self._live[task.sim_id]
            # A task can be done with its done callback (which forgets it) still queued.
            if not task.done():
                self._graveyard.append(task)
                parked.append(task)
        self.trace("node.crash", f"{tag} parked {len(parked)} tasks", node=tag)
        return len(parked)

    # Trace ------------------------------------------------------------------------------------

    def trace(self, kind: str, detail: str = "", *, node: NodeTag | str | None = None) -> None:
        """Record an event at the current virtual time.

        Args:
            kind: a short event name, such as ``"task.start"`` or ``"deposit.ok"``.
            detail: free text; it must be reproducible (no ``id()``, no memory addresses).
            node: the node it concerns (a tag, a name, or None for the current task's node).
        """
        if isinstance(node, NodeTag):
            name = node.name
        elif isinstance(node, str):
            name = node
        else:
            name = _node_name(current_node())
        line = f"{self._now_ns} {name} {kind} {detail}"
        assert "\n" not in line, line
        self._trace_hash.update(line.encode() + b"\n")
        self._trace_events += 1
        self._trace_tail.append(line)
        if self._trace_lines is not None:
            self._trace_lines.append(line)

    def trace_lines(self) -> list[str] | None:
        """Every trace line, oldest first, when the loop keeps them (``keep_trace``)."""
        return None if self._trace_lines is None else list(self._trace_lines)

    def fail(self, error: SimulationError) -> None:
        """Stop the run with ``error`` after the current callback, whatever the code that
        called this does with it (an invariant checked inside the store, say, whose caller
        catches every exception). Only the first failure counts."""
        if self.failure is None:
            self.failure = error
            self.trace("run.fail", f"{type(error).__name__}: {str(error).splitlines()[0][:300]}")

    def trace_digest(self) -> str:
        """The SHA-256 (hex) of every trace line so far: equal digests mean equal traces."""
        return self._trace_hash.copy().hexdigest()

    @property
    def trace_events(self) -> int:
        """How many trace lines were recorded."""
        return self._trace_events

    def trace_tail(self) -> list[str]:
        """The last trace lines (up to 200), oldest first."""
        return list(self._trace_tail)

    # Errors and debugging ---------------------------------------------------------------------

    def escape(self, call: str) -> NoReturn:
        """Record and raise ``SimulationEscape`` for ``call``."""
        error = SimulationEscape(
            f"{call} leaves the simulation (threads, executors, sockets, DNS, pipes, "
            "subprocesses and signals are not simulated); put it behind a seam the simulator "
            "replaces, or keep it out of simulated code"
        )
        self.escapes.append(error)
        raise error

    def get_exception_handler(
        self,
    ) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], Any] | None:
        """The handler set with ``set_exception_handler``, if any."""
        return self._exception_handler

    def set_exception_handler(
        self, handler: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], Any] | None
    ) -> None:
        """Install ``handler`` for ``call_exception_handler``."""
        self._exception_handler = handler

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        """Remember the message and log it."""
        message = str(context.get("message", "unhandled exception in the event loop"))
        exception = context.get("exception")
        if exception is not None:
            message = f"{message}: {type(exception).__name__}: {exception}"
        self.unhandled_errors.append(message)
        # After close, the garbage collector reports futures of a finished run (typically a
        # reply that a crashed node's caller never read): the run's outcome is already final,
        # so logging them would only attribute noise to whatever runs next.
        if not self._finalizing and not self._closed:
            log.warning("SimLoopUnhandledError", extra={"sim_message": message})

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        """Pass ``context`` to the installed handler, or to ``default_exception_handler``.

        Never raises: it is also called from finalizers, where an exception cannot propagate.
        """
        handler = self._exception_handler
        try:
            if handler is None:
                self.default_exception_handler(context)
            else:
                handler(self, context)
        except Exception as error:  # see the docstring
            self.unhandled_errors.append(f"exception handler failed: {error!r}")

    def get_debug(self) -> bool:
        """asyncio's debug mode (off by default)."""
        return self._debug

    def set_debug(self, enabled: bool) -> None:
        """Turn asyncio's debug mode on or off."""
        self._debug = enabled

    # The real world ---------------------------------------------------------------------------

    # Written out where the type checker needs the generic signature; assigned below otherwise.

    def call_soon_threadsafe(
        self,
        callback: Callable[[*Ts], object],
        *args: *Ts,
        context: contextvars.Context | None = None,
    ) -> NoReturn:
        """Raises ``SimulationEscape``: there are no other threads to call from."""
        self.escape("call_soon_threadsafe")

    def run_in_executor(self, executor: Any, func: Callable[[*Ts], T], *args: *Ts) -> NoReturn:
        """Raises ``SimulationEscape`` (also reached by ``asyncio.to_thread``)."""
        self.escape("run_in_executor")

    def add_reader(self, fd: Any, callback: Callable[[*Ts], Any], *args: *Ts) -> NoReturn:
        """Raises ``SimulationEscape``: there are no file descriptors to watch."""
        self.escape("add_reader")

    def add_writer(self, fd: Any, callback: Callable[[*Ts], Any], *args: *Ts) -> NoReturn:
        """Raises ``SimulationEscape``: there are no file descriptors to watch."""
        self.escape("add_writer")

    def add_signal_handler(
        self, sig: int, callback: Callable[[*Ts], object], *args: *Ts
    ) -> NoReturn:
        """Raises ``SimulationEscape``: signals are not simulated."""
        self.escape("add_signal_handler")

    # Every other call that would reach the operating system.
    set_default_executor = _escape("set_default_executor")
    getaddrinfo = _escape("getaddrinfo")
    getnameinfo = _escape("getnameinfo")
    create_connection = _escape("create_connection")
    create_server = _escape("create_server")
    sendfile = _escape("sendfile")
    start_tls = _escape("start_tls")
    create_unix_connection = _escape("create_unix_connection")
    create_unix_server = _escape("create_unix_server")
    connect_accepted_socket = _escape("connect_accepted_socket")
    create_datagram_endpoint = _escape("create_datagram_endpoint")
    connect_read_pipe = _escape("connect_read_pipe")
    connect_write_pipe = _escape("connect_write_pipe")
    subprocess_shell = _escape("subprocess_shell")
    subprocess_exec = _escape("subprocess_exec")
    remove_reader = _escape("remove_reader")
    remove_writer = _escape("remove_writer")
    sock_recv = _escape("sock_recv")
    sock_recv_into = _escape("sock_recv_into")
    sock_recvfrom = _escape("sock_recvfrom")
    sock_recvfrom_into = _escape("sock_recvfrom_into")
    sock_sendall = _escape("sock_sendall")
    sock_sendto = _escape("sock_sendto")
    sock_connect = _escape("sock_connect")
    sock_accept = _escape("sock_accept")
    sock_sendfile = _escape("sock_sendfile")
    remove_signal_handler = _escape("remove_signal_handler")
