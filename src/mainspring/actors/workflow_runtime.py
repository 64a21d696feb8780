"""The workflow runtime: a workflow is an actor whose events are its history.

History
    Every workflow event is a ``WorkflowEvent`` of one ``kind``:

    * inbound events bring something from outside into the code (``started``, a step's
      ``step_completed``/``step_failed``, ``timer_fired``, ``signal``, ``child_finished``,
      ``cancel_requested``, an operator's ``retried``);
    * commands are what the code did in reaction (``step_scheduled``, ``timer_started``, a
      ``patch`` marker, ``completed``, ...), each numbered: the number of a step is its
      ``<workflow id>/<number>`` idempotency key;
    * bookkeeping events change the run's state without touching the code (a failed attempt
      waiting for its retry, pause/resume, stalled, terminated).

    An inbound event and the commands the code issued in reaction to it are committed in one
    append, before any step they schedule starts: so a step's arguments are durable before
    its side effects, and a replay sees exactly the inbound events the code saw, in order.

Replay
    ``WorkflowRun.replay`` feeds the code the recorded inbound events one at a time (running
    its loop to quiescence after each, exactly as the first run did) and checks that the code
    issues exactly the recorded commands. A difference raises ``NonDeterminismError``; the
    workflow is parked as ``stalled``, and inbound events that arrive meanwhile are queued in
    the state until code that replays is deployed.

Snapshots
    The state (``WorkflowState``) holds the current run's history, so hydration reads one
    snapshot plus a short tail of events; the code then replays in memory, with no I/O.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import traceback
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Final, cast, final

import attrs
import orjson

from mainspring.actors.actor import Actor, ActorContext, Reminder, handler
from mainspring.actors.retry import RetryPolicy
from mainspring.actors.workflow import (
    _CURRENT_STEP,
    ChildWorkflowFailed,
    ContinueAsNew,
    StepContext,
    StepFailed,
    WorkflowContext,
    WorkflowDefinition,
    step_context,
)
from mainspring.actors.workflow_loop import WorkflowLoop
from mainspring.codec import Registry
from mainspring.codec import event as register_event
from mainspring.codec import message as register_message
from mainspring.codec import registry as codec_registry
from mainspring.codec import state as register_state
from mainspring.crashpoints import crash_point, step_call
from mainspring.errors import (
    CodecError,
    CommandRejected,
    ConcurrencyConflict,
    Fenced,
    LeaseHeld,
    MainspringInternalError,
    NodeClosed,
    NonDeterminismError,
    Overloaded,
    StoreUnavailable,
    UsageError,
    WorkflowConflict,
    WorkflowNotFound,
)
from mainspring.observability import Telemetry, current_traceparent, trace_context
from mainspring.seams import SeededRandom

if TYPE_CHECKING:
    from mainspring.actors.host import ActorHost

__all__ = [
    "CLOSED_STATUSES",
    "WORKFLOW_ACTOR_TYPE",
    "StartReply",
    "WorkflowDescription",
    "WorkflowEvent",
    "WorkflowRun",
    "WorkflowServices",
    "WorkflowState",
    "workflow_actor_type",
]

log: Final = logging.getLogger(__name__)

WORKFLOW_ACTOR_TYPE: Final = "mainspring.workflow"
"""The actor type of every workflow instance; the actor id is the workflow id."""

INBOUND: Final = frozenset(
    {
        "started",
        "step_completed",
        "step_failed",
        "timer_fired",
        "signal",
        "child_finished",
        "cancel_requested",
        "retried",
    }
)
TERMINAL_COMMANDS: Final = frozenset({"completed", "failed", "cancelled", "continued_as_new"})
COMMANDS: Final = frozenset(
    {
        "step_scheduled",
        "step_cancelled",
        "timer_started",
        "timer_cancelled",
        "child_started",
        "message_sent",
        "patch",
        *TERMINAL_COMMANDS,
    }
)
BOOKKEEPING: Final = frozenset(
    {"step_attempt_failed", "step_attempt_started", "paused", "resumed", "stalled", "unstalled",
     "terminated", "parent_closed_early"}
)  # fmt: skip
_KINDS: Final = INBOUND | COMMANDS | BOOKKEEPING
CLOSED_STATUSES: Final = frozenset(
    {"completed", "failed", "cancelled", "terminated", "continued-as-new"}
)
_PHASE_OF: Final = {
    "completed": "completed",
    "failed": "failed",
    "cancelled": "cancelled",
    "continued_as_new": "continued-as-new",
}
_QUEUED: Final = 1
_RELEASED: Final = 2


# History, state, messages -----------------------------------------------------------------------


@register_event("mainspring.workflow.event", 1)
@attrs.frozen
class WorkflowEvent:
    """One entry of a workflow's history (see the module docstring for the kinds).

    Attributes:
        kind: what happened.
        n: the command number (steps, timers, children, markers) it is about.
        name: a step's name, a signal's name, a patch id, a child's type.
        at_ms: the workflow time it happened at.
        data: JSON: a step's result envelope, an error, a signal's payload, ...
        attempt: the step attempt it concerns.
        queued: 1 when it arrived while the run could not take it (paused or stalled), 2 when
            it is later released from that queue into the history.
    """

    kind: str
    n: int = 0
    name: str = ""
    at_ms: int = 0
    data: Any = None
    attempt: int = 0
    queued: int = 0


def _event_json(event: WorkflowEvent) -> dict[str, Any]:
    # ``data`` is JSON already (envelopes from ``Registry.to_value``, plain dicts and strings):
    # it goes to orjson as it is, rather than through cattrs' dispatch on each value's class,
    # which costs more than the rest of the encoding. Anything else in it fails the encoding.
    return {
        "kind": event.kind,
        "n": event.n,
        "name": event.name,
        "at_ms": event.at_ms,
        "data": event.data,
        "attempt": event.attempt,
        "queued": event.queued,
    }


codec_registry.converter.register_unstructure_hook(WorkflowEvent, _event_json)


@attrs.define
class StepInfo:
    """A step scheduled and not finished."""

    n: int
    name: str
    attempts: int = 0
    retry_at_ms: int = 0
    last_error: dict[str, Any] | None = None


@register_state("mainspring.workflow.state", 1)
@attrs.define
class WorkflowState:
    """The fold of a workflow's events: the current run's history and what it waits on."""

    workflow_type: str = ""
    version: int = 0
    run: int = 0
    phase: str = "new"
    start_input: Any = None
    history: list[WorkflowEvent] = attrs.Factory(list)
    inbox: list[WorkflowEvent] = attrs.Factory(list)
    steps: list[StepInfo] = attrs.Factory(list)
    timers: dict[str, int] = attrs.Factory(dict)
    children: list[int] = attrs.Factory(list)
    next_command: int = 1
    result: Any = None
    error: dict[str, Any] | None = None
    failed_step: int = 0
    stall: str = ""
    paused: bool = False
    cancel_requested: bool = False
    parent_id: str = ""
    parent_command: int = 0
    started_at_ms: int = 0
    closed_at_ms: int = 0
    previous_runs: list[dict[str, Any]] = attrs.Factory(list)
    parent_closed_early: dict[str, Any] | None = None
    """A parent's ``ParentClosed`` that arrived before this child's start (``parent_id``,
    ``n``, ``status``): that parent's start, when it comes, is cancelled at once."""

    def step(self, n: int) -> StepInfo | None:
        """The pending step ``n``, if any."""
        for info in self.steps:
            if info.n == n:
                return info
        return None

    @property
    def status(self) -> str:
        """``new``, ``running`` (a step is due), ``waiting`` (only on timers, signals or
        children), ``paused``, ``stalled`` or a closed status."""
        if self.phase != "open":
            return self.phase
        if self.stall:
            return "stalled"
        if self.paused:
            return "paused"
        if any(info.retry_at_ms == 0 for info in self.steps):
            return "running"
        return "waiting"


_INITIAL: Final = WorkflowState()


@register_message("mainspring.workflow.start", 1)
@attrs.frozen
class StartWorkflow:
    """Start a workflow (idempotent by workflow id and input)."""

    resendable: ClassVar[bool] = True
    creates_actor: ClassVar[bool] = True

    workflow_type: str
    input: Any
    version: int = 0
    parent_id: str = ""
    parent_command: int = 0
    traceparent: str = attrs.field(factory=current_traceparent)
    """The W3C trace context of the span the start was made in (taken when the message is
    built): the run's step attempts are traced as its children, on any node, after restarts."""


@register_message("mainspring.workflow.signal", 1)
@attrs.frozen
class SignalWorkflow:
    """Deliver signal ``name`` with a payload envelope."""

    name: str
    payload: Any = None


@register_message("mainspring.workflow.query", 1)
@attrs.frozen
class QueryWorkflow:
    """Ask a query handler of the workflow code (writes nothing)."""

    resendable: ClassVar[bool] = True

    name: str
    args: Any = None


@register_message("mainspring.workflow.describe", 1)
@attrs.frozen
class DescribeWorkflow:
    """Return the workflow's ``WorkflowDescription`` (writes nothing)."""

    resendable: ClassVar[bool] = True


@register_message("mainspring.workflow.control", 1)
@attrs.frozen
class ControlWorkflow:
    """An operator action: ``cancel``, ``terminate``, ``pause``, ``resume`` or ``retry``."""

    action: str
    reason: str = ""


@register_message("mainspring.workflow.child_finished", 1)
@attrs.frozen
class ChildFinished:
    """A child workflow of this one ended (sent by the child through its outbox)."""

    n: int
    child_id: str
    status: str
    result: Any = None
    error: dict[str, Any] | None = None


@register_message("mainspring.workflow.parent_closed", 1)
@attrs.frozen
class ParentClosed:
    """The parent of this workflow ended while this child was running (sent by the parent
    through its outbox): the child is asked to cancel, unless it was started to outlive its
    parent (``on_parent_close="abandon"``)."""

    parent_id: str
    n: int
    """The parent's command number of this child (the child's ``parent_command``)."""
    status: str
    """How the parent ended: ``completed``, ``cancelled``, ``terminated`` or
    ``continued-as-new``."""


@register_message("mainspring.workflow.child_result_wanted", 1)
@attrs.frozen
class ChildResultWanted:
    """The parent of this workflow was retried from its failure point and still waits for
    this child (sent by the parent through its outbox): a child that has ended reports again
    (``ChildFinished``), since the failed run turned its first report away. A child still
    running reports when it ends, as always."""

    parent_id: str
    n: int
    """The parent's command number of this child (the child's ``parent_command``)."""


@register_message("mainspring.workflow.recover", 1)
@attrs.frozen
class RecoverWorkflow:
    """Wake a workflow after a restart so that its in-flight steps run again."""

    resendable: ClassVar[bool] = True


@register_message("mainspring.workflow.step_outcome", 1)
@attrs.frozen
class StepOutcome:
    """How one attempt of a step ended (sent by the attempt to its own workflow)."""

    n: int
    attempt: int
    ok: bool
    value: Any = None
    error: dict[str, Any] | None = None
    retryable: bool = True


@register_state("mainspring.workflow.description", 1)
@attrs.frozen
class WorkflowDescription:
    """What a workflow is doing, for clients and operators."""

    workflow_id: str
    workflow_type: str
    version: int
    run: int
    status: str
    result: Any = None
    error: dict[str, Any] | None = None
    failed_step: int = 0
    stall: str = ""
    pending_steps: list[dict[str, Any]] = attrs.Factory(list)
    timers: dict[str, int] = attrs.Factory(dict)
    queued_events: int = 0
    history_events: int = 0
    cancel_requested: bool = False
    started_at_ms: int = 0
    closed_at_ms: int = 0
    previous_runs: list[dict[str, Any]] = attrs.Factory(list)
    """The last (up to 10) runs that continued as new: run number, version, end time."""

    @property
    def closed(self) -> bool:
        """Whether the run ended (completed, failed, cancelled, terminated, continued)."""
        return self.status in CLOSED_STATUSES


@register_state("mainspring.workflow.start_reply", 1)
@attrs.frozen
class StartReply:
    """The reply to ``StartWorkflow``: the workflow's description (``result`` still encoded)
    and whether this start created it (False: it already existed with the same type and input)."""

    description: WorkflowDescription
    created: bool


def _running_children(state: WorkflowState) -> list[WorkflowEvent]:
    """The ``child_started`` events of the children the run still waits for."""
    if not state.children:
        return []
    running = set(state.children)
    return [e for e in state.history if e.kind == "child_started" and e.n in running]


def _describe(workflow_id: str, state: WorkflowState) -> WorkflowDescription:
    open_ = state.phase == "open"
    return WorkflowDescription(
        workflow_id=workflow_id,
        workflow_type=state.workflow_type,
        version=state.version,
        run=state.run,
        status=state.status,
        result=state.result,
        error=state.error,
        failed_step=state.failed_step,
        stall=state.stall,
        pending_steps=[
            {
                "n": info.n,
                "name": info.name,
                "attempts": info.attempts,
                "retry_at_ms": info.retry_at_ms,
                "last_error": None if info.last_error is None else dict(info.last_error),
            }
            for info in state.steps
        ]
        if open_
        else [],
        timers=dict(state.timers) if open_ else {},
        queued_events=len(state.inbox),
        history_events=len(state.history),
        cancel_requested=state.cancel_requested,
        started_at_ms=state.started_at_ms,
        closed_at_ms=state.closed_at_ms,
        previous_runs=list(state.previous_runs),
    )


def error_info(error: BaseException, **extra: Any) -> dict[str, Any]:
    """An exception as recorded data: its class name, message and (short) traceback."""
    lines = traceback.format_exception(error)
    return {
        "type": type(error).__name__,
        "message": str(error),
        "traceback": "".join(lines)[-4000:],
        **extra,
    }


def _canonical(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _describe_command(event: WorkflowEvent | None) -> str:
    if event is None:
        return "nothing more"
    kind = event.kind
    if kind == "step_scheduled":
        return f"step {event.n} {event.name!r}"
    if kind == "patch":
        return f"patch marker {event.name!r}"
    if kind in {"timer_started", "timer_cancelled", "step_cancelled"}:
        return f"{kind.replace('_', ' ')} (command {event.n})"
    if kind == "child_started":
        return f"child workflow {event.name!r} (command {event.n})"
    if kind == "message_sent":
        return f"message to {event.name!r} (command {event.n})"
    return f"{kind.replace('_', ' ')} of the run"


# Evolve: the fold of the history ------------------------------------------------------------------


def evolve_workflow(state: WorkflowState, event: WorkflowEvent) -> WorkflowState:
    """Apply one workflow event. Changes ``state`` in place (histories are long) except the
    shared initial state, which is never touched."""
    if state is _INITIAL:
        state = WorkflowState()
    if event.queued == _QUEUED:
        state.inbox.append(event)
        return state
    if event.queued == _RELEASED:
        assert state.inbox, ("released an event from an empty queue", event)
        head = state.inbox.pop(0)
        assert (head.kind, head.n, head.name) == (event.kind, event.n, event.name), (head, event)
    kind = event.kind
    assert kind in _KINDS, ("unknown workflow event kind", event)
    if kind == "started":
        if state.phase == "continued-as-new":
            state.previous_runs.append(
                {"run": state.run, "version": state.version, "closed_at_ms": state.closed_at_ms}
            )
            del state.previous_runs[:-10]
        data = event.data
        state.workflow_type = event.name
        state.version = event.attempt
        state.run += 1
        state.phase = "open"
        if state.run == 1:
            state.start_input = data["input"]
            state.parent_id = data.get("parent_id", "")
            state.parent_command = data.get("parent_command", 0)
        state.history = [event]
        state.inbox = []
        state.steps = []
        state.timers = {}
        state.children = []
        state.next_command = data["first_command"]
        state.result = None
        state.error = None
        state.failed_step = 0
        state.stall = ""
        state.cancel_requested = False
        state.started_at_ms = event.at_ms
        state.closed_at_ms = 0
        return state
    if kind in COMMANDS and kind not in {"step_cancelled", "timer_cancelled"}:
        state.next_command = max(state.next_command, event.n + 1)
    if kind in INBOUND or kind in COMMANDS:
        state.history.append(event)
    if kind == "step_scheduled":
        state.steps.append(StepInfo(event.n, event.name))
    elif kind in {"step_completed", "step_failed", "step_cancelled"}:
        state.steps = [info for info in state.steps if info.n != event.n]
    elif kind == "step_attempt_failed":
        info = state.step(event.n)
        assert info is not None, event
        info.attempts = event.attempt
        info.retry_at_ms = event.data["retry_at_ms"]
        info.last_error = event.data["error"]
    elif kind == "step_attempt_started":
        info = state.step(event.n)
        assert info is not None, event
        info.retry_at_ms = 0
    elif kind == "timer_started":
        state.timers[str(event.n)] = event.data
    elif kind in {"timer_fired", "timer_cancelled"}:
        state.timers.pop(str(event.n), None)
    elif kind == "child_started":
        state.children.append(event.n)
    elif kind == "child_finished":
        state.children = [n for n in state.children if n != event.n]
    elif kind == "cancel_requested":
        state.cancel_requested = True
    elif kind in TERMINAL_COMMANDS or kind == "terminated":
        # Pending steps and timers stay listed: a retry from the failure point re-arms them.
        state.phase = _PHASE_OF.get(kind, kind)
        state.closed_at_ms = event.at_ms
        if kind == "completed":
            state.result = event.data
        elif kind == "failed":
            state.error = event.data
            state.failed_step = event.n
        elif kind == "terminated":
            state.error = {"type": "Terminated", "message": event.data or ""}
    elif kind == "paused":
        state.paused = True
    elif kind == "resumed":
        state.paused = False
    elif kind == "stalled":
        state.stall = event.data
    elif kind == "unstalled":
        state.stall = ""
    elif kind == "parent_closed_early":
        state.parent_closed_early = event.data
    elif kind == "retried":
        keep = event.data["keep"]
        state.history = [*state.history[:keep], event]
        state.phase = "open"
        state.error = None
        state.failed_step = 0
        state.closed_at_ms = 0
        _recount_pending(state)
        state.next_command = event.data["next_command"]
    return state


def _recount_pending(state: WorkflowState) -> None:
    """Rebuild the pending steps, timers and children from the (rewound) history."""
    steps: dict[int, StepInfo] = {}
    timers: dict[str, int] = {}
    children: list[int] = []
    for event in state.history:
        kind = event.kind
        if kind == "step_scheduled":
            steps[event.n] = StepInfo(event.n, event.name)
        elif kind in {"step_completed", "step_failed", "step_cancelled"}:
            steps.pop(event.n, None)
        elif kind == "timer_started":
            timers[str(event.n)] = event.data
        elif kind in {"timer_fired", "timer_cancelled"}:
            timers.pop(str(event.n), None)
        elif kind == "child_started":
            children.append(event.n)
        elif kind == "child_finished":
            children = [n for n in children if n != event.n]
    state.steps = list(steps.values())
    state.timers = timers
    state.children = children


# The run: one execution of the workflow code -------------------------------------------------


@final
class _StepSlot:
    __slots__ = (
        "args",
        "function",
        "future",
        "heartbeat_timeout_s",
        "kwargs",
        "n",
        "name",
        "retry",
        "task",
        "timeout_s",
    )

    def __init__(
        self,
        n: int,
        name: str,
        function: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        retry: RetryPolicy,
        timeout_s: float | None,
        heartbeat_timeout_s: float | None,
        future: asyncio.Future[Any],
    ) -> None:
        self.n = n
        self.name = name
        self.function = function
        self.args = args
        self.kwargs = kwargs
        self.retry = retry
        self.timeout_s = timeout_s
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.future = future
        self.task: asyncio.Task[None] | None = None


@final
class WorkflowRun:
    """One run of a workflow's code on its own deterministic loop (see the module docstring).

    The same ``apply`` drives the code live and in replay: live, the commands it issues are
    collected in ``out`` for the handler to emit and their store effects (reminders, outbox)
    go through the handler's context; in replay, they are checked against the recorded ones.
    """

    def __init__(
        self,
        shell: WorkflowActorBase,
        definition: WorkflowDefinition[Any, Any],
        workflow_id: str,
        run_number: int,
    ) -> None:
        self.shell = shell
        self.definition = definition
        self.workflow_id = workflow_id
        self.run_number = run_number
        self.loop = WorkflowLoop(self)
        self.rng = SeededRandom(0)
        self.next_command = 1
        self.replaying = False
        self.expected: deque[WorkflowEvent] = deque()
        self.out: list[WorkflowEvent] = []
        self.live: ActorContext[Any] | None = None
        self.stall: NonDeterminismError | None = None
        self.main: asyncio.Task[Any] | None = None
        self.closed = False
        self.cancel_requested = False
        self.steps: dict[int, _StepSlot] = {}
        self.timers: dict[int, asyncio.TimerHandle] = {}
        self._timer_numbers: dict[int, int] = {}
        self.children: dict[int, asyncio.Future[Any]] = {}
        self.signals: dict[str, deque[Any]] = {}
        self.signal_waiters: dict[str, deque[asyncio.Future[Any]]] = {}
        self.patches: dict[str, bool] = {}
        self.queries: dict[str, Callable[..., Any]] = {}
        self.in_query = False
        self.abandoned = False
        self._child_slots: asyncio.Semaphore | None = None
        self._now_ms = 0
        self.traceparent = ""
        """The trace the run's start was made in (``""``: none)."""

    @property
    def codec(self) -> Registry:
        return self.shell.codec

    def now_ms(self) -> int:
        return self._now_ms

    # Driving the code ------------------------------------------------------------------------

    def replay(self, history: Sequence[WorkflowEvent]) -> None:
        """Rebuild the run from its recorded history; sets ``stall`` on a mismatch."""
        self.replaying = True
        try:
            index, size = 0, len(history)
            while index < size:
                event = history[index]
                index += 1
                if event.kind not in INBOUND:
                    raise MainspringInternalError(
                        f"workflow {self.workflow_id!r}: history entry {index} ({event.kind}) "
                        "does not follow an inbound event"
                    )
                end = index
                while end < size and history[end].kind not in INBOUND:
                    end += 1
                self.expected = deque(history[index:end])
                index = end
                self.apply(event)
                if self.stall is not None:
                    return
                if self.expected:
                    self._mismatch(self.expected[0].n, self.expected[0], None)
                    return
        finally:
            self.replaying = False
            self.expected.clear()

    def apply(self, event: WorkflowEvent) -> None:
        """Give one inbound event to the code and run it until it waits again."""
        self._now_ms = max(self._now_ms, event.at_ms)
        self.loop.set_time_ms(self._now_ms)
        kind = event.kind
        if kind == "started":
            data = event.data
            self.rng = SeededRandom(data["seed"])
            self.next_command = data["first_command"]
            self.traceparent = data.get("traceparent", "")
            workflow_input = self.codec.from_value(data["input"], self.definition.input_type)
            self.main = self.loop.create_task(
                cast(
                    "Coroutine[Any, Any, Any]",
                    self.definition.function(WorkflowContext(self), workflow_input),
                ),
                name=f"workflow:{self.workflow_id}",
            )
        elif kind == "step_completed":
            slot = self.steps.pop(event.n, None)
            if slot is not None and not slot.future.done():
                slot.future.set_result(self.codec.from_value(event.data))
        elif kind == "step_failed":
            slot = self.steps.pop(event.n, None)
            if slot is not None and not slot.future.done():
                error = event.data
                slot.future.set_exception(
                    StepFailed(event.n, event.name, error["type"], error["message"], event.attempt)
                )
        elif kind == "timer_fired":
            handle = self.timers.pop(event.n, None)
            if handle is not None:
                self._timer_numbers.pop(id(handle), None)
                if not handle.cancelled():
                    self.loop.schedule(handle)
        elif kind == "signal":
            payload = self.codec.from_value(event.data)
            waiters = self.signal_waiters.get(event.name)
            while waiters:
                waiter = waiters.popleft()
                if not waiter.done():
                    waiter.set_result(payload)
                    break
            else:
                self.signals.setdefault(event.name, deque()).append(payload)
        elif kind == "child_finished":
            future = self.children.pop(event.n, None)
            if future is not None and not future.done():
                data = event.data
                if data["status"] == "completed":
                    future.set_result(self.codec.from_value(data["result"]))
                else:
                    future.set_exception(
                        ChildWorkflowFailed(data["child_id"], data["status"], data.get("error"))
                    )
        elif kind == "cancel_requested":
            self.cancel_requested = True
            if self.main is not None and not self.main.done():
                self.main.cancel(msg=event.data or "cancelled")
        elif kind == "retried":
            self.next_command = event.data["next_command"]
        else:
            raise MainspringInternalError(f"not an inbound workflow event: {event!r}")
        self._run_loop()
        self._check_main()

    def _run_loop(self) -> None:
        clock = self.shell.host.clock
        started = clock.monotonic_s()
        self.loop.run_until_quiescent()
        elapsed = clock.monotonic_s() - started
        warn_s = self.shell.host.config.workflow_task_warn_s
        if elapsed > warn_s:
            self.shell.services.slow_tasks += 1
            log.warning(
                "WorkflowTaskSlow",
                extra={
                    "workflow_id": self.workflow_id,
                    "elapsed_s": round(elapsed, 3),
                    "warn_s": warn_s,
                    "hint": "workflow code blocked the loop: move blocking or heavy work into "
                    "a step",
                },
            )

    def _check_main(self) -> None:
        main = self.main
        if self.closed or main is None or not main.done() or self.stall is not None:
            return
        self.closed = True
        if main.cancelled():
            self._command("cancelled", data=None)
            return
        error = main.exception()
        if isinstance(error, ContinueAsNew):
            try:
                value = self.codec.to_value(error.input)
            except CodecError as codec_error:
                self._command("failed", data=error_info(codec_error))
                return
            self._command("continued_as_new", data={"input": value})
            return
        if error is not None:
            step = 0
            cause: BaseException | None = error
            while cause is not None:
                if isinstance(cause, StepFailed):
                    step = cause.step
                    break
                cause = cause.__cause__ or cause.__context__
            self._command("failed", n=step, data=error_info(error))
            return
        try:
            value = self.codec.to_value(main.result())
        except CodecError as codec_error:
            self._command("failed", data=error_info(codec_error))
            return
        self._command("completed", data=value)

    # Commands ------------------------------------------------------------------------------

    def _command(self, kind: str, *, n: int | None = None, name: str = "", data: Any = None) -> int:
        if self.abandoned:
            return n or 0  # the run's coroutines are being collected: nothing is recorded
        if self.in_query:
            raise UsageError("a query handler must only read: it cannot issue workflow commands")
        if n is None:
            if kind in TERMINAL_COMMANDS:
                n = 0
            else:
                n = self.next_command
                self.next_command += 1
        event = WorkflowEvent(kind, n, name, self._now_ms, data)
        if self.replaying:
            if self.stall is None:
                expected = self.expected.popleft() if self.expected else None
                if expected is None or (expected.kind, expected.n, expected.name) != (
                    kind,
                    n,
                    name,
                ):
                    self._mismatch(n, expected, event)
            return n
        if self.live is None:
            raise MainspringInternalError(
                f"workflow {self.workflow_id!r} issued {kind} outside a handler"
            )
        self.out.append(event)
        return n

    def _mismatch(self, n: int, recorded: WorkflowEvent | None, new: WorkflowEvent | None) -> None:
        if self.stall is None:
            self.stall = NonDeterminismError(
                self.workflow_id, n or (recorded.n if recorded else 0), _describe_command(recorded),
                _describe_command(new),
            )  # fmt: skip

    def schedule_step(
        self,
        function: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        name: str,
        retry: RetryPolicy,
        timeout_s: float | None,
        heartbeat_timeout_s: float | None,
    ) -> asyncio.Future[Any]:
        n = self._command("step_scheduled", name=name)
        future = self.loop.create_future()
        self.steps[n] = _StepSlot(
            n, name, function, args, kwargs, retry, timeout_s, heartbeat_timeout_s, future
        )
        future.add_done_callback(lambda done: self._step_future_done(n, done))
        return future

    def _step_future_done(self, n: int, future: asyncio.Future[Any]) -> None:
        if not future.cancelled():
            return
        slot = self.steps.pop(n, None)
        if slot is None:
            return
        self._command("step_cancelled", n=n, name=slot.name)
        if not self.replaying and self.live is not None:
            if slot.task is not None:
                slot.task.cancel()
            self.live.cancel_reminder(f"step:{n}")

    def start_timer(self, when_s: float, handle: asyncio.TimerHandle) -> None:
        fire_at_ms = max(math.ceil(when_s * 1000), self._now_ms)
        n = self._command("timer_started", data=fire_at_ms)
        self.timers[n] = handle
        self._timer_numbers[id(handle)] = n
        if not self.replaying and self.live is not None:
            self.live.set_reminder_at_ms(f"timer:{n}", fire_at_ms)

    def cancel_timer(self, handle: asyncio.TimerHandle) -> None:
        n = self._timer_numbers.pop(id(handle), None)
        if n is None or self.timers.pop(n, None) is None:
            return
        self._command("timer_cancelled", n=n)
        if not self.replaying and self.live is not None:
            self.live.cancel_reminder(f"timer:{n}")

    def signal_future(self, name: str) -> asyncio.Future[Any]:
        future = self.loop.create_future()
        buffered = self.signals.get(name)
        if buffered:
            future.set_result(buffered.popleft())
        else:
            self.signal_waiters.setdefault(name, deque()).append(future)
        return future

    def signals_buffered(self, name: str) -> int:
        return len(self.signals.get(name, ()))

    def start_child(
        self, type_name: str, child_id: str, child_input: Any, *, abandon: bool = False
    ) -> asyncio.Future[Any]:
        envelope = self.codec.to_value(child_input)
        data: dict[str, Any] = {"id": child_id}
        if abandon:
            data["abandon"] = True  # left running when this run ends (see ParentClosed)
        n = self._command("child_started", name=type_name, data=data)
        future = self.loop.create_future()
        self.children[n] = future
        if not self.replaying and self.live is not None:
            self.live.tell(
                WORKFLOW_ACTOR_TYPE,
                child_id,
                StartWorkflow(type_name, envelope, 0, self.workflow_id, n, self.traceparent),
            )
        return future

    def child_slots(self) -> asyncio.Semaphore:
        """The bound on children waited on at once (a semaphore of the workflow's loop)."""
        if self._child_slots is None:
            self._child_slots = asyncio.Semaphore(self.definition.max_concurrent_children)
        return self._child_slots

    def send_message(self, target_type: str, target_id: str, message: object) -> None:
        self._command("message_sent", name=f"{target_type}/{target_id}")
        if not self.replaying and self.live is not None:
            self.live.tell(target_type, target_id, message)

    def patched(self, patch_id: str) -> bool:
        known = self.patches.get(patch_id)
        if known is not None:
            return known
        if self.replaying:
            head = self.expected[0] if self.expected else None
            taken = head is not None and head.kind == "patch" and head.name == patch_id
            if taken:
                self._command("patch", name=patch_id)
        else:
            taken = True
            self._command("patch", name=patch_id)
        self.patches[patch_id] = taken
        return taken

    async def ask_actor(self, target_type: str, target_id: str, message: object) -> Any:
        """The body of ``ctx.ask``'s step: an ask keyed by the step's idempotency key."""
        key = step_context().idempotency_key
        reply = self.shell.host.deliver(target_type, target_id, message, key, want_reply=True)
        assert reply is not None
        return await reply

    # Step attempts (live only) ------------------------------------------------------------------

    def runnable_steps(self, state: WorkflowState) -> list[tuple[_StepSlot, int]]:
        """Steps that should have an attempt running and do not, with the attempt number."""
        if self.closed or self.stall is not None or state.paused or state.phase != "open":
            return []
        running = sum(1 for slot in self.steps.values() if slot.task is not None)
        room = self.definition.max_concurrent_steps - running
        found: list[tuple[_StepSlot, int]] = []
        for info in state.steps:
            if room <= 0:
                break
            slot = self.steps.get(info.n)
            if slot is None or slot.task is not None or info.retry_at_ms != 0:
                continue
            found.append((slot, info.attempts + 1))
            room -= 1
        return found

    def start_attempt(self, slot: _StepSlot, attempt: int) -> None:
        telemetry = self.shell.services.telemetry
        if telemetry is not None:
            telemetry.step_attempt(slot.name)
        slot.task = asyncio.get_running_loop().create_task(
            self._attempt(slot, attempt),
            name=f"mainspring-step:{self.workflow_id}/{slot.n}#{attempt}",
        )

    async def _attempt(self, slot: _StepSlot, attempt: int) -> None:
        host = self.shell.host
        clock = host.clock
        last_beat = [clock.monotonic_s()]

        def beat(details: Any) -> None:
            last_beat[0] = clock.monotonic_s()

        step = StepContext(
            workflow_id=self.workflow_id,
            step=slot.n,
            name=slot.name,
            attempt=attempt,
            idempotency_key=self.idempotency_key(slot.n),
            heartbeat_callback=beat,
        )
        _CURRENT_STEP.set(step)
        outcome: StepOutcome
        try:
            value = await self._call_step_observed(slot, attempt, last_beat)
            try:
                envelope = self.codec.to_value(value)
            except CodecError as error:
                outcome = StepOutcome(
                    slot.n, attempt, False, error=error_info(error), retryable=False
                )
            else:
                outcome = StepOutcome(slot.n, attempt, True, value=envelope)
        except asyncio.CancelledError:
            # The run abandoned the step (cancelled, closed or leaving this node).
            if slot.task is asyncio.current_task():
                slot.task = None
            raise
        except Exception as error:
            outcome = StepOutcome(
                slot.n, attempt, False, error=error_info(error),
                retryable=slot.retry.is_retryable(error),
            )  # fmt: skip
        # The slot stays taken until the outcome is handled: a message handled meanwhile
        # must not start the same attempt again.
        try:
            await crash_point("step.after_effect")
            await self.shell.deliver_to_self(self.workflow_id, outcome)
        finally:
            if slot.task is asyncio.current_task():
                slot.task = None

    async def _call_step_observed(
        self, slot: _StepSlot, attempt: int, last_beat: list[float]
    ) -> Any:
        """``_call_step`` inside a span of the run's trace (when the node traces)."""
        telemetry = self.shell.services.telemetry
        if telemetry is None or not telemetry.tracing:
            return await self._call_step(slot, last_beat)
        with telemetry.tracer.start_as_current_span(
            f"step {slot.name}",
            context=trace_context(self.traceparent),
            attributes={
                "mainspring.workflow_id": self.workflow_id,
                "mainspring.step": slot.n,
                "mainspring.step_name": slot.name,
                "mainspring.attempt": attempt,
            },
        ):
            return await self._call_step(slot, last_beat)

    async def _call_step(self, slot: _StepSlot, last_beat: list[float]) -> Any:
        function = slot.function
        if inspect.iscoroutinefunction(function):
            awaitable: Any = function(*slot.args, **slot.kwargs)
        else:
            awaitable = asyncio.to_thread(function, *slot.args, **slot.kwargs)
        if slot.heartbeat_timeout_s is None:
            # Nothing to watch beside the call: await it in this task (a task of its own would
            # cost a task and two more loop callbacks per attempt).
            if slot.timeout_s is None:
                return await step_call(awaitable, None)
            async with asyncio.timeout(slot.timeout_s):
                return await step_call(awaitable, slot.timeout_s)
        work = asyncio.ensure_future(step_call(awaitable, slot.timeout_s))
        try:
            async with asyncio.timeout(slot.timeout_s):
                clock = self.shell.host.clock
                while True:
                    done, _ = await asyncio.wait({work}, timeout=slot.heartbeat_timeout_s)
                    if done:
                        return work.result()
                    if clock.monotonic_s() - last_beat[0] >= slot.heartbeat_timeout_s:
                        raise StepHeartbeatTimeout(
                            f"step {slot.n} ({slot.name!r}) sent no heartbeat for "
                            f"{slot.heartbeat_timeout_s} s"
                        )
        finally:
            if not work.done():
                work.cancel()

    def idempotency_key(self, n: int) -> str:
        """``<workflow id>/<step number>``."""
        return f"{self.workflow_id}/{n}"

    def abandon(self) -> None:
        """Stop every attempt this run has in flight (the activation is leaving)."""
        self.abandoned = True
        for slot in self.steps.values():
            if slot.task is not None:
                slot.task.cancel()
                slot.task = None
        self.loop.close()
        # The main task holds the loop, which held this run: without it, a finished run is
        # freed at once rather than left to the garbage collector.
        self.main = None


class StepHeartbeatTimeout(Exception):
    """A step attempt stopped sending heartbeats for longer than its heartbeat timeout."""


# Services shared by the workflow actors of one node ------------------------------------------


@final
class WorkflowServices:
    """Node-local wiring of the workflow actors: result waiters and counters."""

    def __init__(self) -> None:
        self.waiters: dict[str, set[asyncio.Future[WorkflowDescription]]] = {}
        self.slow_tasks = 0
        self.stalls = 0
        self.replays = 0
        self.events_replayed = 0
        self.telemetry: Telemetry | None = None
        """Where workflow and step metrics and step spans go (set by the node)."""

    def closed(self, description: WorkflowDescription) -> None:
        """A run ended: wake whoever waits for its result on this node."""
        for future in self.waiters.pop(description.workflow_id, set()):
            if not future.done():
                future.set_result(description)


# The actor ----------------------------------------------------------------------------------------


class WorkflowActorBase(Actor[WorkflowState]):
    """The actor every workflow instance runs in. ``workflow_actor_type`` makes one per node."""

    type_name = WORKFLOW_ACTOR_TYPE
    initial_state = _INITIAL
    snapshot_every = 200
    dedupe_window = 1000
    mutable_state = True
    definitions: ClassVar[dict[str, dict[int, WorkflowDefinition[Any, Any]]]] = {}
    services: ClassVar[WorkflowServices]

    def __init__(self) -> None:
        self.run: WorkflowRun | None = None
        self.workflow_id = ""
        self._host: ActorHost | None = None
        self._replayed = False

    # Plumbing -------------------------------------------------------------------------------

    @property
    def host(self) -> ActorHost:
        assert self._host is not None
        return self._host

    @property
    def codec(self) -> Registry:
        return self.host.codec

    def evolve(self, state: WorkflowState, event: Any) -> WorkflowState:
        return evolve_workflow(state, event)

    def status(self, state: WorkflowState) -> str | None:
        return None if state.phase == "new" else state.status

    def keep_alive(self) -> bool:
        run = self.run
        return run is not None and any(slot.task is not None for slot in run.steps.values())

    def activation_message(self, state: WorkflowState) -> object | None:
        # An open workflow replays its code and starts its due steps on every activation, even
        # one whose messages are all duplicates (a retry after a lost acknowledgement).
        return RecoverWorkflow() if state.phase == "open" else None

    def on_deactivate(self) -> None:
        if self.run is not None:
            self.run.abandon()
            self.run = None

    async def deliver_to_self(self, workflow_id: str, message: object) -> None:
        """Hand a step attempt's outcome to its workflow, until it is recorded (or found
        stale). If this node stops first, the step runs again after the restart."""
        host = self.host
        for attempt in range(100):
            try:
                reply = host.deliver(
                    WORKFLOW_ACTOR_TYPE, workflow_id, message, None, want_reply=True
                )
                assert reply is not None
                await reply
                return
            except NodeClosed:
                return
            except (Overloaded, StoreUnavailable, Fenced, ConcurrencyConflict, LeaseHeld):
                await asyncio.sleep(min(0.05 * 2**attempt, 5.0))
        log.error("StepOutcomeUndelivered", extra={"workflow_id": workflow_id})

    def _enter(self, ctx: ActorContext[WorkflowState]) -> WorkflowState:
        """Bind to the activation and, once per activation, replay the code."""
        if self._host is None:
            self._host = ctx.activation.host
            self.workflow_id = ctx.actor_id
        state = ctx.state
        if state.phase == "open" and not self._replayed:
            self._replayed = True
            self._rebuild(ctx, state)
            # A new activation starts what is due: work that an earlier activation scheduled
            # and could not start (it crashed, or its commit's outcome was lost).
            self._pump(ctx)
        return ctx.state

    def _definition(self, name: str, version: int) -> WorkflowDefinition[Any, Any] | str:
        versions = self.definitions.get(name)
        if not versions:
            return (
                f"workflow type {name!r} is not registered on this node "
                f"(registered: {sorted(self.definitions) or 'none'})"
            )
        definition = versions.get(version)
        if definition is None:
            return (
                f"version {version} of workflow type {name!r} is not registered on this node "
                f"(registered versions: {sorted(versions)})"
            )
        return definition

    def _rebuild(self, ctx: ActorContext[WorkflowState], state: WorkflowState) -> None:
        """Replay the current run's history; park the workflow when the code no longer fits."""
        found = self._definition(state.workflow_type, state.version)
        diagnosis = ""
        if isinstance(found, str):
            diagnosis = found
            self.run = None
        else:
            run = WorkflowRun(self, found, self.workflow_id, state.run)
            self.services.replays += 1
            self.services.events_replayed += len(state.history)
            run.replay(state.history)
            if run.stall is not None:
                diagnosis = str(run.stall)
                run.abandon()
                self.run = None
            else:
                self.run = run
        if diagnosis:
            if state.stall != diagnosis:
                self.services.stalls += 1
                log.error(
                    "WorkflowStalled",
                    extra={"workflow_id": self.workflow_id, "diagnosis": diagnosis},
                )
                ctx.emit(WorkflowEvent("stalled", at_ms=ctx.now_ms(), data=diagnosis))
            return
        if state.stall:
            ctx.emit(WorkflowEvent("unstalled", at_ms=ctx.now_ms()))
            log.info("WorkflowUnstalled", extra={"workflow_id": self.workflow_id})
        self._drain_inbox(ctx)

    def _drain_inbox(self, ctx: ActorContext[WorkflowState]) -> None:
        state = ctx.state
        while state.inbox and self.run is not None and not state.paused and not state.stall:
            queued = state.inbox[0]
            self._apply_live(ctx, attrs.evolve(queued, queued=_RELEASED))
            state = ctx.state

    def _inbound(self, ctx: ActorContext[WorkflowState], event: WorkflowEvent) -> None:
        """Record an inbound event and let the code react (or queue it while parked)."""
        state = ctx.state
        if state.paused or state.stall or self.run is None:
            ctx.emit(attrs.evolve(event, queued=_QUEUED))
            return
        self._apply_live(ctx, event)

    def _apply_live(self, ctx: ActorContext[WorkflowState], event: WorkflowEvent) -> None:
        run = self.run
        assert run is not None
        ctx.emit(event)
        run.live = ctx
        try:
            run.apply(attrs.evolve(event, queued=0) if event.queued else event)
        finally:
            run.live = None
        for command in run.out:
            ctx.emit(command)
        run.out.clear()
        if run.stall is not None:  # cannot happen live; kept as a loud invariant
            raise MainspringInternalError(str(run.stall))
        state = ctx.state
        if state.phase == "continued-as-new":
            self._continue_as_new(ctx, state)
        elif state.phase in CLOSED_STATUSES:
            self._closed(ctx, state)

    def _continue_as_new(self, ctx: ActorContext[WorkflowState], state: WorkflowState) -> None:
        data = state.history[-1].data
        versions = self.definitions[state.workflow_type]
        latest = versions[max(versions)]
        self._stop_work(ctx, state)
        self._release_children(ctx, state, "continued-as-new")
        telemetry = self.services.telemetry
        if telemetry is not None:
            ended_type = state.workflow_type
            ctx.after_commit(lambda: telemetry.workflow_closed(ended_type, "continued-as-new"))
        assert self.run is not None
        traceparent = self.run.traceparent
        self.run.abandon()
        self._start_run(
            ctx, latest, data["input"], state.next_command, state.parent_id, 0, traceparent
        )
        ctx.request_snapshot()

    def _start_run(
        self,
        ctx: ActorContext[WorkflowState],
        definition: WorkflowDefinition[Any, Any],
        envelope: Any,
        first_command: int,
        parent_id: str,
        parent_command: int,
        traceparent: str = "",
    ) -> None:
        seed = int.from_bytes(self.host.random.randbytes(8), "big")
        data = {
            "input": envelope,
            "seed": seed,
            "first_command": first_command,
            "parent_id": parent_id,
            "parent_command": parent_command,
        }
        if traceparent:
            data["traceparent"] = traceparent
        started = WorkflowEvent(
            "started", name=definition.name, attempt=definition.version, at_ms=ctx.now_ms(),
            data=data,
        )  # fmt: skip
        telemetry = self.services.telemetry
        if telemetry is not None:
            ctx.after_commit(lambda: telemetry.workflow_started(definition.name))
        self.run = WorkflowRun(self, definition, self.workflow_id, ctx.state.run + 1)
        self._replayed = True
        self._apply_live(ctx, started)

    def _stop_work(self, ctx: ActorContext[WorkflowState], state: WorkflowState) -> None:
        """Cancel the run's reminders and in-flight attempts (it ended)."""
        for number in state.timers:
            ctx.cancel_reminder(f"timer:{number}")
        for info in state.steps:
            ctx.cancel_reminder(f"step:{info.n}")
        run = self.run
        if run is not None:
            for slot in run.steps.values():
                if slot.task is not None:
                    slot.task.cancel()
                    slot.task = None

    def _release_children(
        self, ctx: ActorContext[WorkflowState], state: WorkflowState, status: str
    ) -> None:
        """The run ended ``status`` with children still running: ask each to cancel (through
        the outbox, with this commit), except those started with ``on_parent_close="abandon"``.
        Not for a run that failed: a retry from its failure point still waits for them."""
        for event in _running_children(state):
            if not event.data.get("abandon"):
                ctx.tell(
                    WORKFLOW_ACTOR_TYPE,
                    event.data["id"],
                    ParentClosed(self.workflow_id, event.n, status),
                )

    def _report_to_parent(self, ctx: ActorContext[WorkflowState], state: WorkflowState) -> None:
        """Tell the parent, if any, how this run ended (through the outbox)."""
        if state.parent_id:
            ctx.tell(
                WORKFLOW_ACTOR_TYPE,
                state.parent_id,
                ChildFinished(
                    state.parent_command, self.workflow_id, state.status, state.result, state.error
                ),
            )

    def _closed(self, ctx: ActorContext[WorkflowState], state: WorkflowState) -> None:
        """The run ended: stop its timers and attempts, tell the parent, the children and the
        waiters."""
        self._stop_work(ctx, state)
        if state.phase != "failed":
            self._release_children(ctx, state, state.status)
        self._report_to_parent(ctx, state)
        services = self.services
        if services.waiters.get(self.workflow_id):
            # Whoever starts waiting from now on asks for the description after this batch.
            description = _describe(self.workflow_id, state)
            ctx.after_commit(lambda: services.closed(description))
        # A closed run's code has nothing left to do: free its loop and context now rather than
        # when the actor passivates (a query replays the run again, as after a reactivation).
        ended = self.run
        ctx.after_commit(lambda: self._forget_run(ended))
        telemetry = services.telemetry
        if telemetry is not None:
            type_name, status = state.workflow_type, state.status
            ctx.after_commit(lambda: telemetry.workflow_closed(type_name, status))

    def _forget_run(self, run: WorkflowRun | None) -> None:
        """Drop ``run`` if it is still this activation's run (the one that just closed)."""
        if run is not None and self.run is run:
            run.abandon()
            self.run = None

    def _pump(self, ctx: ActorContext[WorkflowState]) -> None:
        """After the commit: start the attempts that are due."""
        run = self.run
        if run is None:
            return

        def start() -> None:
            if self.run is not run:
                return
            for slot, attempt in run.runnable_steps(ctx.activation.state):
                run.start_attempt(slot, attempt)

        ctx.after_commit(start)

    # Handlers --------------------------------------------------------------------------------

    @handler
    def on_start(self, ctx: ActorContext[WorkflowState], message: StartWorkflow) -> Any:
        state = self._enter(ctx)
        if state.phase == "new":
            version = message.version
            versions = self.definitions.get(message.workflow_type, {})
            if not version and versions:
                version = max(versions)
            found = self._definition(message.workflow_type, version)
            if isinstance(found, str):
                if message.parent_id:
                    return self._refuse_child(ctx, message, found)
                raise self._refusal(ctx, UsageError(found))
            self._start_run(
                ctx, found, message.input, 1, message.parent_id, message.parent_command,
                message.traceparent,
            )  # fmt: skip
            early = ctx.state.parent_closed_early
            if (
                early is not None
                and message.parent_id
                and (early["parent_id"], early["n"])
                == (
                    message.parent_id,
                    message.parent_command,
                )
            ):
                self._parent_ended(ctx, early["parent_id"], early["status"])
            self._pump(ctx)
            return StartReply(_describe(self.workflow_id, ctx.state), created=True)
        if state.workflow_type != message.workflow_type:
            reason = f"type {state.workflow_type!r} (not {message.workflow_type!r})"
        elif _canonical(state.start_input) != _canonical(message.input):
            reason = "a different input"
        elif message.parent_id and message.parent_id != state.parent_id:
            reason = f"another parent ({state.parent_id or 'none'!r})"
        else:
            self._pump(ctx)
            return StartReply(_describe(self.workflow_id, state), created=False)
        if message.parent_id:
            return self._refuse_child(ctx, message, str(WorkflowConflict(self.workflow_id, reason)))
        raise self._refusal(ctx, WorkflowConflict(self.workflow_id, reason))

    def _refuse_child(
        self, ctx: ActorContext[WorkflowState], message: StartWorkflow, reason: str
    ) -> None:
        """A parent's start cannot succeed: tell the parent (through the outbox) rather than
        leave it waiting forever."""
        log.error("ChildStartRefused", extra={"workflow_id": self.workflow_id, "reason": reason})
        ctx.tell(
            WORKFLOW_ACTOR_TYPE,
            message.parent_id,
            ChildFinished(
                message.parent_command,
                self.workflow_id,
                "failed",
                None,
                {"type": "ChildStartRefused", "message": reason},
            ),
        )

    def _require_started(self, state: WorkflowState) -> None:
        if state.phase == "new":
            raise WorkflowNotFound(self.workflow_id)

    @staticmethod
    def _refusal(ctx: ActorContext[WorkflowState], error: Exception) -> Exception:
        """``error``, to raise; when this handler already recorded events (a replay that
        stalled or resumed the run), those still commit and the caller gets ``error``."""
        return ctx.commit_despite_error(error) if ctx.events else error

    @handler
    def on_describe(
        self, ctx: ActorContext[WorkflowState], message: DescribeWorkflow
    ) -> WorkflowDescription:
        if self._host is None:
            self._host = ctx.activation.host
            self.workflow_id = ctx.actor_id
        state = ctx.state
        self._require_started(state)
        return _describe(self.workflow_id, state)

    @handler
    def on_recover(self, ctx: ActorContext[WorkflowState], message: RecoverWorkflow) -> None:
        state = self._enter(ctx)
        if state.phase == "open":
            self._resume_due_retries(ctx)
            self._pump(ctx)

    @handler
    def on_signal(self, ctx: ActorContext[WorkflowState], message: SignalWorkflow) -> None:
        state = self._enter(ctx)
        self._require_started(state)
        if state.phase != "open":
            raise self._refusal(
                ctx,
                CommandRejected(
                    f"workflow {self.workflow_id!r} is {state.status}; it takes no more signals",
                    code="workflow_closed",
                ),
            )
        self._inbound(
            ctx,
            WorkflowEvent("signal", name=message.name, at_ms=ctx.now_ms(), data=message.payload),
        )
        self._pump(ctx)

    @handler
    def on_query(self, ctx: ActorContext[WorkflowState], message: QueryWorkflow) -> Any:
        state = self._enter(ctx)
        self._require_started(state)
        run = self.run
        if run is None:
            if state.stall:
                raise self._refusal(
                    ctx,
                    CommandRejected(
                        f"workflow {self.workflow_id!r} is stalled: {state.stall}", code="stalled"
                    ),
                )
            # A closed run: replay it to answer from the code's final state.
            found = self._definition(state.workflow_type, state.version)
            if isinstance(found, str):
                raise self._refusal(ctx, CommandRejected(found, code="unknown_version"))
            run = WorkflowRun(self, found, self.workflow_id, state.run)
            run.replay(state.history)
            if run.stall is not None:
                run.abandon()
                raise CommandRejected(
                    f"workflow {self.workflow_id!r} cannot be queried: {run.stall}",
                    code="stalled",
                )
            self.run = run
        query = run.queries.get(message.name)
        if query is None:
            raise self._refusal(
                ctx,
                CommandRejected(
                    f"workflow {self.workflow_id!r} has no query handler {message.name!r} "
                    f"(it has: {sorted(run.queries) or 'none'}); register one with "
                    "ctx.set_query_handler",
                    code="unknown_query",
                ),
            )
        args = self.codec.from_value(message.args) if message.args is not None else []
        run.in_query = True
        try:
            answer = query(*(args or []))
        finally:
            run.in_query = False
        return self.codec.to_value(answer)

    @handler
    def on_control(self, ctx: ActorContext[WorkflowState], message: ControlWorkflow) -> Any:
        state = self._enter(ctx)
        self._require_started(state)
        action = message.action
        now = ctx.now_ms()
        if action == "terminate":
            if state.phase in CLOSED_STATUSES:
                return _describe(self.workflow_id, state)
            ctx.emit(WorkflowEvent("terminated", at_ms=now, data=message.reason))
            self._closed(ctx, ctx.state)
            if self.run is not None:
                self.run.abandon()
                self.run = None
            return _describe(self.workflow_id, ctx.state)
        if action == "retry":
            return self._retry(ctx, state, message.reason)
        if state.phase != "open":
            raise self._refusal(
                ctx,
                CommandRejected(
                    f"workflow {self.workflow_id!r} is {state.status}; cannot {action} it",
                    code="workflow_closed",
                ),
            )
        if action == "cancel":
            if not state.cancel_requested:
                self._inbound(
                    ctx,
                    WorkflowEvent("cancel_requested", at_ms=now, data=message.reason or None),
                )
        elif action == "pause":
            if not state.paused:
                ctx.emit(WorkflowEvent("paused", at_ms=now, data=message.reason))
        elif action == "resume":
            if state.paused:
                ctx.emit(WorkflowEvent("resumed", at_ms=now, data=message.reason))
                self._drain_inbox(ctx)
                self._resume_due_retries(ctx)
        else:
            raise self._refusal(
                ctx,
                UsageError(
                    f"unknown workflow action {action!r}; use cancel, terminate, pause, resume "
                    "or retry"
                ),
            )
        self._pump(ctx)
        return _describe(self.workflow_id, ctx.state)

    def _retry(self, ctx: ActorContext[WorkflowState], state: WorkflowState, reason: str) -> Any:
        if state.phase != "failed":
            raise self._refusal(
                ctx,
                CommandRejected(
                    f"workflow {self.workflow_id!r} is {state.status}; only a failed workflow "
                    "can be retried from its failure point",
                    code="not_failed",
                ),
            )
        if not state.failed_step:
            raise self._refusal(
                ctx,
                CommandRejected(
                    f"workflow {self.workflow_id!r} failed in its own code, not in a step: fix the "
                    "code and start a new workflow (a retry would fail the same way)",
                    code="not_a_step_failure",
                ),
            )
        keep = None
        name = ""
        for index, event in enumerate(state.history):
            if event.kind == "step_failed" and event.n == state.failed_step:
                keep, name = index, event.name
        assert keep is not None, ("failed step not in history", state.failed_step)
        ctx.emit(
            WorkflowEvent(
                "retried",
                n=state.failed_step,
                name=name,
                at_ms=ctx.now_ms(),
                data={"keep": keep, "next_command": state.next_command, "reason": reason},
            )
        )
        self._replayed = False
        if self.run is not None:
            self.run.abandon()
            self.run = None
        state = self._enter(ctx)
        for number, fire_at_ms in state.timers.items():
            ctx.set_reminder_at_ms(f"timer:{number}", fire_at_ms)
        # A child that ended while this run was failed had its report turned away: ask the
        # children still awaited to report again once they have ended.
        for event in _running_children(state):
            ctx.tell(
                WORKFLOW_ACTOR_TYPE,
                event.data["id"],
                ChildResultWanted(self.workflow_id, event.n),
            )
        self._pump(ctx)
        return _describe(self.workflow_id, ctx.state)

    @handler
    def on_child_finished(self, ctx: ActorContext[WorkflowState], message: ChildFinished) -> None:
        state = self._enter(ctx)
        if state.phase != "open" or message.n not in state.children:
            return  # a late or repeated report: the run already moved on
        self._inbound(
            ctx,
            WorkflowEvent(
                "child_finished",
                n=message.n,
                at_ms=ctx.now_ms(),
                data={
                    "status": message.status,
                    "result": message.result,
                    "error": message.error,
                    "child_id": message.child_id,
                },
            ),
        )
        self._pump(ctx)

    @handler
    def on_parent_closed(self, ctx: ActorContext[WorkflowState], message: ParentClosed) -> None:
        state = self._enter(ctx)
        if state.phase == "new":
            # Here before the start (whose first delivery failed, say): kept, so that the start
            # is cancelled at once instead of running with no parent.
            ctx.emit(
                WorkflowEvent(
                    "parent_closed_early",
                    at_ms=ctx.now_ms(),
                    data={"parent_id": message.parent_id, "n": message.n, "status": message.status},
                )
            )
            return
        if (
            state.phase != "open"
            or state.cancel_requested
            or (state.parent_id, state.parent_command) != (message.parent_id, message.n)
        ):
            return  # ended already, cancelling already, or not that parent's child (any more)
        self._parent_ended(ctx, message.parent_id, message.status)
        self._pump(ctx)

    def _parent_ended(self, ctx: ActorContext[WorkflowState], parent_id: str, status: str) -> None:
        """Request this run's cancellation: its parent ended ``status``."""
        self._inbound(
            ctx,
            WorkflowEvent(
                "cancel_requested",
                at_ms=ctx.now_ms(),
                data=f"the parent workflow {parent_id!r} ended {status}",
            ),
        )

    @handler
    def on_child_result_wanted(
        self, ctx: ActorContext[WorkflowState], message: ChildResultWanted
    ) -> None:
        state = self._enter(ctx)
        if state.phase in ("new", "open") or (state.parent_id, state.parent_command) != (
            message.parent_id,
            message.n,
        ):
            return  # not ended yet (it reports when it ends), or not that parent's child
        self._report_to_parent(ctx, state)

    @handler
    def on_step_outcome(self, ctx: ActorContext[WorkflowState], message: StepOutcome) -> None:
        state = self._enter(ctx)
        info = state.step(message.n)
        if state.phase != "open" or info is None or message.attempt != info.attempts + 1:
            return  # stale: the step finished, or this attempt was superseded
        now = ctx.now_ms()
        run = self.run
        slot = run.steps.get(message.n) if run is not None else None
        if message.ok:
            event = WorkflowEvent(
                "step_completed", message.n, info.name, now, message.value, message.attempt
            )
        elif message.retryable and slot is not None and slot.retry.attempts_left(message.attempt):
            delay_s = slot.retry.delay_s(message.attempt, self.host.random)
            retry_at_ms = now + max(int(delay_s * 1000), 1)
            ctx.emit(
                WorkflowEvent(
                    "step_attempt_failed", message.n, info.name, now,
                    {"error": message.error, "retry_at_ms": retry_at_ms}, message.attempt,
                )
            )  # fmt: skip
            ctx.set_reminder_at_ms(f"step:{message.n}", retry_at_ms)
            self._count_step_error(ctx, info.name, message.error, retry=True)
            return
        else:
            assert message.error is not None
            event = WorkflowEvent(
                "step_failed", message.n, info.name, now, message.error, message.attempt
            )
            self._count_step_error(ctx, info.name, message.error, retry=False)
        self._inbound(ctx, event)
        self._pump(ctx)

    def _count_step_error(
        self,
        ctx: ActorContext[WorkflowState],
        step: str,
        error: dict[str, Any] | None,
        *,
        retry: bool,
    ) -> None:
        telemetry = self.services.telemetry
        if telemetry is None:
            return
        error_type = str((error or {}).get("type", "unknown"))
        record = telemetry.step_retry if retry else telemetry.step_failed
        ctx.after_commit(lambda: record(step, error_type))

    @handler
    def on_reminder(self, ctx: ActorContext[WorkflowState], message: Reminder) -> None:
        state = self._enter(ctx)
        if state.phase != "open":
            return
        kind, _, number = message.name.partition(":")
        n = int(number)
        if kind == "timer":
            if str(n) not in state.timers:
                return
            at_ms = max(ctx.now_ms(), message.due_at_ms)
            self._inbound(ctx, WorkflowEvent("timer_fired", n, at_ms=at_ms))
        elif kind == "step":
            info = state.step(n)
            if info is None or info.retry_at_ms == 0 or state.paused or state.stall:
                return
            ctx.emit(
                WorkflowEvent("step_attempt_started", n, info.name, ctx.now_ms(),
                              attempt=info.attempts + 1)
            )  # fmt: skip
        self._pump(ctx)

    def _resume_due_retries(self, ctx: ActorContext[WorkflowState]) -> None:
        """Retries whose timer fired while the run was paused: start them now."""
        state = ctx.state
        if state.paused or state.stall:
            return
        now = ctx.now_ms()
        for info in list(state.steps):
            if 0 < info.retry_at_ms <= now:
                ctx.emit(
                    WorkflowEvent("step_attempt_started", info.n, info.name, now,
                                  attempt=info.attempts + 1)
                )  # fmt: skip


def workflow_actor_type(
    definitions: Sequence[WorkflowDefinition[Any, Any]], services: WorkflowServices
) -> type[WorkflowActorBase]:
    """The workflow actor class of one node, hosting ``definitions``."""
    table: dict[str, dict[int, WorkflowDefinition[Any, Any]]] = {}
    for definition in definitions:
        if not isinstance(definition, WorkflowDefinition):
            raise UsageError(
                f"workflows= takes definitions made with @mainspring.workflow, got {definition!r}"
            )
        versions = table.setdefault(definition.name, {})
        other = versions.get(definition.version)
        if other is not None and other is not definition:
            raise UsageError(
                f"workflow {definition.name!r} version {definition.version} is registered twice"
            )
        versions[definition.version] = definition

    class WorkflowActor(WorkflowActorBase):
        type_name = WORKFLOW_ACTOR_TYPE

    WorkflowActor.definitions = table
    WorkflowActor.services = services
    return WorkflowActor
