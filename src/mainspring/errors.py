"""One exception hierarchy for mainspring.

Every error says what happened and what to do about it. Errors keep structured fields so callers
(the HTTP gateway, the CLI, user code) can act on them without parsing messages.

Programmer errors inside mainspring are ``MainspringInternalError``; a violated invariant is an
``AssertionError`` raised by an ``assert`` that stays on in production.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CodecError",
    "CommandRejected",
    "ConcurrencyConflict",
    "Fenced",
    "LeaseHeld",
    "MainspringError",
    "MainspringInternalError",
    "NodeClosed",
    "NonDeterminismError",
    "Overloaded",
    "StoreUnavailable",
    "StreamExists",
    "UnknownActorType",
    "UsageError",
    "WorkflowConflict",
    "WorkflowError",
    "WorkflowNotFound",
]


class MainspringError(Exception):
    """Base class of every error mainspring raises on purpose.

    Every one pickles with its fields, whatever its constructor takes (so an error raised in
    another process, such as ``SqliteStore(writer="process")``'s writer, arrives whole).
    """

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuilt, (type(self), self.args, self.__dict__))


def _rebuilt(
    kind: type[MainspringError], args: tuple[Any, ...], fields: dict[str, Any]
) -> MainspringError:
    """An error of type ``kind`` with ``args`` and ``fields``, built without its constructor."""
    error = kind.__new__(kind)
    Exception.__init__(error, *args)
    error.__dict__.update(fields)
    return error


class UsageError(MainspringError, TypeError):
    """The caller passed something invalid: the message names the value, the rule and the fix."""


class UnknownActorType(UsageError):
    """A message was addressed to an actor type that this node does not host."""

    def __init__(self, actor_type: str, known: list[str]) -> None:
        self.actor_type = actor_type
        self.known = sorted(known)
        listed = ", ".join(repr(name) for name in self.known) or "none"
        super().__init__(
            f"unknown actor type {actor_type!r}; this node hosts: {listed}. "
            "Register the type with Node(actors=[...]) on every node."
        )


class CommandRejected(MainspringError):
    """A handler refused a message on business grounds; nothing was written.

    Raise it from a handler to send a clean refusal to the caller (HTTP 422-like). Any other
    exception from a handler also writes nothing, but is treated as a bug in the handler.
    """

    def __init__(self, reason: str, *, code: str = "rejected", details: object = None) -> None:
        self.reason = reason
        self.code = code
        self.details = details
        super().__init__(reason)


class CodecError(MainspringError):
    """A value could not be encoded or decoded (unknown type name, bad shape, missing upcaster)."""


class ConcurrencyConflict(MainspringError):
    """An append expected a sequence number the stream no longer has.

    Retryable: the writer's view of the stream is stale. Under the single-writer rule it means
    another activation wrote to the stream; the actor deactivates and the next message
    re-hydrates it.
    """

    def __init__(self, stream_id: str, expected_seq: int, actual_seq: int) -> None:
        self.stream_id = stream_id
        self.expected_seq = expected_seq
        self.actual_seq = actual_seq
        super().__init__(
            f"append to {stream_id!r} expected head seq {expected_seq} but the stream is at "
            f"{actual_seq}; the actor will re-hydrate, retry the message."
        )


class StreamExists(ConcurrencyConflict):
    """An append that was to create its stream (``AppendRequest.claim``) found it created
    already: by another activation, or by an earlier attempt of its own.

    Nothing was written. The activation that tried starts over the usual way: it takes the
    stream's lease and reads what is there, then handles its messages again.
    """

    def __init__(self, stream_id: str, epoch: int, head_seq: int) -> None:
        self.stream_id = stream_id
        self.expected_seq = 0
        self.actual_seq = head_seq
        self.current_epoch = epoch
        MainspringError.__init__(
            self,
            f"creating stream {stream_id!r} failed: it exists already (epoch {epoch}, head seq "
            f"{head_seq}); the actor will take its lease and read it, retry the message.",
        )


class Fenced(MainspringError):
    """A write carried an epoch older than the stream's current lease: a newer owner exists.

    The stale activation must stop writing and deactivate. Nothing from the rejected write was
    committed. Retry the message: it is routed to the current owner.
    """

    def __init__(self, stream_id: str, epoch: int, current_epoch: int) -> None:
        self.stream_id = stream_id
        self.epoch = epoch
        self.current_epoch = current_epoch
        super().__init__(
            f"write to {stream_id!r} under epoch {epoch} was fenced: the current epoch is "
            f"{current_epoch}, so another activation took the lease. Retry the message."
        )


class LeaseHeld(MainspringError):
    """The actor's lease is held by another node and has not expired yet."""

    def __init__(self, stream_id: str, owner: str, expires_at_ms: int) -> None:
        self.stream_id = stream_id
        self.owner = owner
        self.expires_at_ms = expires_at_ms
        super().__init__(
            f"{stream_id!r} is leased by node {owner!r} until {expires_at_ms} ms (epoch time); "
            "send the message to that node, or retry after the lease expires."
        )


class Overloaded(MainspringError):
    """A bounded queue is full. Retry after ``retry_after_s`` seconds; nothing was accepted."""

    def __init__(self, what: str, limit: int, retry_after_s: float = 1.0) -> None:
        self.what = what
        self.limit = limit
        self.retry_after_s = retry_after_s
        super().__init__(
            f"{what} is full ({limit} messages); nothing was accepted. Retry after "
            f"{retry_after_s:g} s, or raise the limit."
        )


class StoreUnavailable(MainspringError):
    """The durable store could not be reached or failed an operation; the outcome is unknown
    only where ``ambiguous`` is true (the commit may or may not have happened)."""

    def __init__(self, message: str, *, ambiguous: bool = False) -> None:
        self.ambiguous = ambiguous
        super().__init__(message)


class NodeClosed(MainspringError):
    """The node is stopping or stopped and accepts no new messages. Send them to another node."""


class MainspringInternalError(MainspringError):
    """A bug in mainspring itself: please report it with the traceback (and the seed, if any)."""


class NonDeterminismError(MainspringError):
    """A workflow's code no longer issues the commands its history recorded.

    The workflow is parked with status ``stalled`` (nothing is written on its behalf) until code
    that replays its history is deployed: revert the change, or guard it with
    ``ctx.patched(...)`` so old histories take the old path.
    """

    def __init__(self, workflow_id: str, step: int, recorded: str, new: str) -> None:
        self.workflow_id = workflow_id
        self.step = step
        self.recorded = recorded
        self.new = new
        super().__init__(
            f"workflow {workflow_id!r} is not deterministic at step {step}: its history recorded "
            f"{recorded}, but the code now issues {new}. Revert the change or guard it with "
            f"ctx.patched('<name>') so that running workflows replay the old path."
        )


class WorkflowNotFound(MainspringError):
    """No workflow with that id was ever started."""

    def __init__(self, workflow_id: str) -> None:
        self.workflow_id = workflow_id
        super().__init__(f"no workflow {workflow_id!r} was started; start it first (check the id)")


class WorkflowConflict(MainspringError):
    """A start named an existing workflow id with another type or input."""

    def __init__(self, workflow_id: str, reason: str) -> None:
        self.workflow_id = workflow_id
        self.reason = reason
        super().__init__(
            f"workflow {workflow_id!r} already exists with {reason}; starting is idempotent only "
            f"for the same type and input: pick another workflow id"
        )


class WorkflowError(MainspringError):
    """A workflow ended without a result: failed, cancelled, terminated or stalled.

    Attributes:
        workflow_id: the workflow.
        status: its status (``failed``, ``cancelled``, ``terminated``, ``stalled``, ...).
        error: the recorded error (``type``, ``message``, ...), if any.
    """

    def __init__(self, workflow_id: str, status: str, error: dict[str, object] | None) -> None:
        self.workflow_id = workflow_id
        self.status = status
        self.error = error
        detail = ""
        if error:
            detail = f": {error.get('type', 'Error')}: {error.get('message', '')}"
        super().__init__(f"workflow {workflow_id!r} ended {status}{detail}")
