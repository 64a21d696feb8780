"""The actor programming model: ``Actor`` subclasses, ``@handler`` methods and ``ActorContext``.

An actor type declares its state (``initial_state``), how each event changes it (``evolve``) and
a handler per message type. A handler validates a message against ``ctx.state``, emits events
with ``ctx.emit`` (each is applied to ``ctx.state`` at once), may send messages to other actors
with ``ctx.tell`` (through the transactional outbox) and set durable reminders, and returns a
reply. Nothing a handler does is visible outside until its events commit; a handler that raises
leaves no trace.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Final, Generic, TypeVar, cast, get_type_hints

import attrs

from mainspring.codec import Registry, registry
from mainspring.errors import UsageError
from mainspring.persistence.store import NewEvent, OutboxMessage, StoredEvent, Timer

if TYPE_CHECKING:
    from mainspring.actors.host import Activation

__all__ = [
    "Actor",
    "ActorContext",
    "Reminder",
    "creates_actor",
    "fold_events",
    "handler",
    "replay",
]

S = TypeVar("S")
E = TypeVar("E", bound=BaseException)
F = TypeVar("F", bound=Callable[..., Any])

_HANDLER_MARK: Final = "__mainspring_handler__"
_TYPE_NAME_PATTERN: Final = re.compile(r"^[A-Za-z][A-Za-z0-9_.:\-]{0,99}$")


@attrs.frozen
class Reminder:
    """The message an actor receives when one of its durable reminders fires."""

    name: str
    due_at_ms: int
    payload: Any = None


registry.register(Reminder, "mainspring.reminder", 1, kind="message")


def handler(target: Any = None) -> Any:
    """Mark an ``Actor`` method as the handler of one message type.

    Use it bare (``@handler``), taking the message type from the annotation of the method's
    message parameter, or as ``@handler(MessageType)``. The method is called as
    ``method(self, ctx, message)`` and may be ``async``.
    """
    if isinstance(target, type):
        message_type = target

        def decorate(function: F) -> F:
            setattr(function, _HANDLER_MARK, message_type)
            return function

        return decorate
    if callable(target):
        setattr(target, _HANDLER_MARK, None)
        return target
    raise UsageError(
        f"use @handler or @handler(MessageType) on an Actor method, not @handler({target!r})"
    )


def creates_actor(message: object) -> bool:
    """Whether ``message`` usually reaches an actor that does not exist yet, so that the node
    may assume it new when it activates the actor for it: its class says so with a class
    attribute ``creates_actor = True`` (a workflow start does).

    The assumption saves a store transaction: the activation's first write creates the stream
    and takes its lease together (``NodeConfig.create_with_first_write``). When the actor
    exists after all, nothing is written and the message is handled again by an activation
    that read the actor's state, so the flag is only about speed, never about outcomes.
    """
    return getattr(type(message), "creates_actor", False) is True


def _is_async_function(function: Callable[..., Any]) -> bool:
    """Whether ``function`` is ``async def``, or a wrapper (``functools.wraps``) of one."""
    candidate: object = function
    while candidate is not None:
        if inspect.iscoroutinefunction(candidate):
            return True
        candidate = getattr(candidate, "__wrapped__", None)
    return False


def _message_type_of(function: Callable[..., Any], owner: type) -> type:
    declared = getattr(function, _HANDLER_MARK)
    if declared is not None:
        return cast("type", declared)
    parameters = list(inspect.signature(function).parameters)
    if len(parameters) != 3:
        raise UsageError(
            f"handler {owner.__qualname__}.{function.__name__} must take (self, ctx, message), "
            f"got ({', '.join(parameters)})"
        )
    try:
        hints = get_type_hints(function)
    except NameError as error:
        raise UsageError(
            f"cannot resolve the message annotation of {owner.__qualname__}.{function.__name__}"
            f" ({error}); define the message class at module level or use @handler(MessageType)"
        ) from error
    message_type = hints.get(parameters[2])
    if not isinstance(message_type, type):
        raise UsageError(
            f"handler {owner.__qualname__}.{function.__name__} needs a class annotation on its "
            f"message parameter, or use @handler(MessageType)"
        )
    return message_type


class Actor(Generic[S]):
    """Base class of actor types. Subclass it; this is the only subclassing in the public API.

    Class attributes:
        type_name: the stable name of the type (stored with its data; never rename it).
        initial_state: the state before the first event.
        state_type: the class snapshots decode into (default: the class of ``initial_state``).
        state_version: the schema version of an unregistered state class; bump it when the state
            changes shape, and old snapshots fall back to a full replay instead of misreading.
        snapshot_every: take a snapshot every this many events (0: never).
        dedupe_window: how many accepted message ids are remembered (0: none).
    """

    type_name: ClassVar[str]
    initial_state: Any = None
    state_type: ClassVar[type[Any] | None] = None
    state_version: ClassVar[int] = 1
    snapshot_every: ClassVar[int] = 100
    dedupe_window: ClassVar[int] = 1000
    mutable_state: ClassVar[bool] = False
    """``evolve`` changes the state in place (for large states): a handler that raises after
    emitting then drops the activation, which re-hydrates from the store."""
    _handlers: ClassVar[dict[type, Callable[..., Any]]]
    _async_handlers: ClassVar[frozenset[Callable[..., Any]]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        type_name = cls.__dict__.get("type_name")
        if not isinstance(type_name, str) or not _TYPE_NAME_PATTERN.match(type_name):
            raise UsageError(
                f"{cls.__qualname__} needs a class attribute type_name: 1-100 letters, digits, "
                f"'_', '.', ':' or '-' starting with a letter (no '/'), got {type_name!r}"
            )
        for name in ("snapshot_every", "dedupe_window"):
            value = getattr(cls, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise UsageError(f"{cls.__qualname__}.{name} must be an int >= 0, got {value!r}")
        handlers: dict[type, Callable[..., Any]] = {}
        for klass in reversed(cls.__mro__):
            for function in vars(klass).values():
                if callable(function) and hasattr(function, _HANDLER_MARK):
                    handlers[_message_type_of(function, klass)] = function
        if not handlers:
            raise UsageError(f"{cls.__qualname__} has no @handler methods; it could do nothing")
        cls._handlers = handlers
        cls._async_handlers = frozenset(
            function for function in handlers.values() if _is_async_function(function)
        )

    @classmethod
    def handler_for(cls, message: object) -> Callable[..., Any]:
        """The handler of ``message``'s class (or of its nearest base class that has one).

        Raises:
            UsageError: no handler takes this message type.
        """
        for klass in type(message).__mro__:
            function = cls._handlers.get(klass)
            if function is not None:
                return function
        known = ", ".join(sorted(t.__qualname__ for t in cls._handlers))
        raise UsageError(
            f"actor type {cls.type_name!r} has no handler for {type(message).__qualname__}; "
            f"it handles: {known}"
        )

    @classmethod
    def is_async_handler(cls, function: Callable[..., Any]) -> bool:
        """Whether ``function``, one of this type's handlers, is ``async def`` (its reply is
        awaited; the others' replies are used as they are)."""
        return function in cls._async_handlers

    @classmethod
    def handled_types(cls) -> list[type]:
        """The message classes this actor type has handlers for."""
        return list(cls._handlers)

    def evolve(self, state: S, event: Any) -> S:
        """Return the state after ``event``. Must be pure and deterministic: it runs again on
        replay. Override it in every actor type that emits events."""
        raise NotImplementedError(
            f"{type(self).__qualname__} emitted {type(event).__qualname__} but does not override "
            "evolve(state, event)"
        )

    def status(self, state: S) -> str | None:
        """The status shown in the instance index (None keeps the previous one)."""
        return None

    def keep_alive(self) -> bool:
        """Whether the actor has work in flight and must not be passivated when idle."""
        return False

    def on_deactivate(self) -> None:
        """Called once when the activation ends (passivated, fenced or the node stopping)."""

    def activation_message(self, state: S) -> object | None:
        """A message the runtime queues for this actor right after each hydration, behind the
        messages already waiting, or None (the default) for none.

        It lets an actor resume work its log says is in flight even when every message that
        activated it turns out to be a duplicate, answered from the dedupe records without a
        handler running. It must be a message the actor handles; it has no message id.
        """
        return None


class ActorContext(Generic[S]):
    """What a handler may see and do. Created by the runtime for each message."""

    __slots__ = (
        "_activation",
        "_codec",
        "after_commit_callbacks",
        "commit_despite",
        "events",
        "message_id",
        "outbox",
        "snapshot_requested",
        "state",
        "timers_cancelled",
        "timers_set",
    )

    def __init__(
        self,
        activation: Activation,
        state: S,
        message_id: str | None,
        codec: Registry,
    ) -> None:
        self._activation = activation
        self._codec = codec
        self.state: S = state
        """The state, including events emitted so far by this handler."""
        self.message_id: Final = message_id
        """The id of the message being handled (None when the sender gave none)."""
        self.events: Final[list[NewEvent]] = []
        # What handlers rarely do gets a container only once one does it.
        self.outbox: list[OutboxMessage] | None = None
        """The messages ``tell`` sent (None until one is)."""
        self.timers_set: dict[str, Timer] | None = None
        """The reminders set, by name (None until one is)."""
        self.timers_cancelled: set[str] | None = None
        """The names of the reminders cancelled (None until one is)."""
        self.after_commit_callbacks: list[Callable[[], None]] | None = None
        self.snapshot_requested = False
        self.commit_despite: BaseException | None = None

    @property
    def activation(self) -> Activation:
        """The live activation handling this message (for mainspring's own runtimes)."""
        return self._activation

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once this handler's writes are committed (at once if it wrote
        nothing); never when the commit fails."""
        if self.after_commit_callbacks is None:
            self.after_commit_callbacks = []
        self.after_commit_callbacks.append(callback)

    def commit_despite_error(self, error: E) -> E:
        """Mark ``error`` so that, when the handler raises it, the events emitted so far still
        commit and the caller gets ``error`` (``raise ctx.commit_despite_error(SomeError())``).
        """
        self.commit_despite = error
        return error

    def request_snapshot(self) -> None:
        """Write a snapshot with this handler's events, whatever the snapshot policy says."""
        self.snapshot_requested = True

    @property
    def actor_id(self) -> str:
        """The id of this actor."""
        return self._activation.actor_id

    @property
    def actor_type(self) -> str:
        """The type name of this actor."""
        return self._activation.actor_cls.type_name

    def now(self) -> datetime:
        """The node's wall-clock time (UTC), from its Clock seam."""
        from datetime import UTC

        return datetime.fromtimestamp(self.now_ms() / 1000, tz=UTC)

    def now_ms(self) -> int:
        """The node's wall-clock time in milliseconds since the Unix epoch."""
        return self._activation.host.clock.wall_ms()

    def emit(self, event: object) -> None:
        """Record ``event`` and apply it to ``ctx.state`` at once.

        Raises:
            CodecError: the event's class is not registered with ``@mainspring.event``.
        """
        encoded = self._codec.encode(event)
        new_state = self._activation.actor.evolve(self.state, event)
        self.events.append(
            NewEvent(encoded.type_name, encoded.type_version, encoded.payload, self.message_id)
        )
        self.state = new_state

    def tell(self, actor: type[Actor[Any]] | str, actor_id: str, message: object) -> None:
        """Send ``message`` to another actor once this handler's events commit.

        Delivered at least once through the transactional outbox and deduplicated by the
        receiver, so the receiver's transition happens exactly once.
        """
        target_type = actor if isinstance(actor, str) else actor.type_name
        if not isinstance(actor_id, str) or not actor_id:
            raise UsageError(f"actor_id must be a non-empty str, got {actor_id!r}")
        encoded = self._codec.encode(message)
        if self.outbox is None:
            self.outbox = []
        self.outbox.append(
            OutboxMessage(
                message_id=self._activation.next_outbox_id(),
                source_stream_id=self._activation.stream_id,
                target_type=target_type,
                target_id=actor_id,
                type_name=encoded.type_name,
                type_version=encoded.type_version,
                payload=encoded.payload,
                created_at_ms=self.now_ms(),
            )
        )

    def set_reminder(
        self,
        name: str,
        *,
        after: timedelta | None = None,
        at: datetime | None = None,
        payload: Any = None,
    ) -> None:
        """Set (or move) the durable reminder ``name``: the actor receives ``Reminder(name, ...)``
        at that time, even after passivation or a restart of the node."""
        if not isinstance(name, str) or not name:
            raise UsageError(f"reminder name must be a non-empty str, got {name!r}")
        if (after is None) == (at is None):
            raise UsageError("set_reminder needs exactly one of after=timedelta or at=datetime")
        if after is not None:
            due_at_ms = self.now_ms() + int(after.total_seconds() * 1000)
        else:
            assert at is not None
            if at.tzinfo is None:
                raise UsageError(f"at= must be timezone-aware, got naive {at!r}")
            due_at_ms = int(at.timestamp() * 1000)
        self.set_reminder_at_ms(name, due_at_ms, payload)

    def set_reminder_at_ms(self, name: str, due_at_ms: int, payload: Any = None) -> None:
        """``set_reminder`` with the due time in milliseconds since the Unix epoch."""
        encoded = None if payload is None else self._codec.dumps_any(payload)
        if self.timers_cancelled is not None:
            self.timers_cancelled.discard(name)
        if self.timers_set is None:
            self.timers_set = {}
        self.timers_set[name] = Timer(self._activation.stream_id, name, due_at_ms, encoded)

    def cancel_reminder(self, name: str) -> None:
        """Cancel the reminder ``name`` if it is set."""
        if self.timers_set is not None:
            self.timers_set.pop(name, None)
        if self.timers_cancelled is None:
            self.timers_cancelled = set()
        self.timers_cancelled.add(name)

    @property
    def wrote_anything(self) -> bool:
        """Whether committing this handler's outcome needs an append."""
        return bool(self.events or self.outbox or self.timers_set or self.timers_cancelled)


def fold_events(
    actor: Actor[S], state: S, seq: int, events: Iterable[StoredEvent], codec: Registry
) -> tuple[S, int]:
    """Apply stored events that follow ``seq`` to ``state``; return the new state and seq.

    The events must be exactly ``seq + 1, seq + 2, ...`` (the store's gapless rule): a gap or a
    repeat is an invariant violation and fails loudly.
    """
    for stored in events:
        assert stored.seq == seq + 1, (stored.stream_id, stored.seq, seq)
        event = codec.decode(stored.type_name, stored.type_version, stored.payload)
        state = actor.evolve(state, event)
        seq = stored.seq
    return state, seq


def replay(
    actor_cls: type[Actor[S]], events: Iterable[StoredEvent], *, codec: Registry | None = None
) -> S:
    """The state of an actor rebuilt from its full log, ignoring snapshots.

    Use it to check that a state a node holds (or hydrated from a snapshot) equals the fold of
    the log, in tests, tools and the simulator.

    Args:
        actor_cls: the actor type.
        events: the stream's stored events from seq 1, in order (``store.read_events``).
        codec: the registry that decodes the events (the process-wide one by default).
    """
    initial: S = actor_cls.initial_state
    state, _ = fold_events(actor_cls(), initial, 0, events, codec or registry)
    return state
