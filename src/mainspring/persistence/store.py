"""The Store protocol: the durable state every node shares, and the records it holds.

Three implementations pass one conformance suite (``tests/conformance``): ``MemoryStore``
(reference and simulation), ``SqliteStore`` (the embedded default) and ``PostgresStore``
(clusters).

The rules every implementation keeps, inside its own transaction (never by a read in Python
followed by a write):

* A stream's *epoch* rises by one at every lease acquisition. An append commits only if the
  request's epoch equals the stream's epoch (else ``Fenced``) and its ``expected_seq`` equals the
  stream's head (else ``ConcurrencyConflict``).
* Sequence numbers of a stream are ``1..head`` with no gap and no duplicate.
* A request with a ``claim`` creates its stream: it commits only if the stream was never
  leased, and then grants the claim's owner the lease at epoch 1 (recorded in the lease history
  like any grant) together with the request's writes. Otherwise it fails with ``StreamExists``.
* In ``append_batch`` each request succeeds or fails on its own: one request's conflict never
  fails another's events. Everything one request carries (events, dedupe records, outbox rows,
  timers, snapshot, instance status) commits together or not at all.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Final, Protocol, TypeVar

import attrs

from mainspring.errors import LeaseHeld, UsageError

_R = TypeVar("_R")

__all__ = [
    "MEMBER_STATES",
    "SCHEMA_VERSION",
    "AppendRequest",
    "AppendResult",
    "DedupeRecord",
    "InstanceInfo",
    "Lease",
    "LeaseOutcome",
    "LeaseRecord",
    "LeaseRequest",
    "Member",
    "NewEvent",
    "OutboxMessage",
    "Snapshot",
    "Store",
    "StoredEvent",
    "StreamHead",
    "Timer",
    "split_stream_id",
    "stream_id_of",
]

SCHEMA_VERSION: Final = 4
"""The schema version this code writes; stores migrate older schemas at ``open``."""


def stream_id_of(actor_type: str, actor_id: str) -> str:
    """The stream id of an actor: ``"<type>/<id>"``. Type names never contain ``/``."""
    assert "/" not in actor_type, actor_type
    return f"{actor_type}/{actor_id}"


def split_stream_id(stream_id: str) -> tuple[str, str]:
    """Inverse of ``stream_id_of``."""
    actor_type, separator, actor_id = stream_id.partition("/")
    if not separator:
        raise UsageError(f"not a stream id (expected '<type>/<id>'): {stream_id!r}")
    return actor_type, actor_id


def _pickled_as_values(cls: type[_R]) -> type[_R]:
    """Make instances of the attrs class ``cls`` pickle as ``(cls, field values)``.

    Every write of ``SqliteStore(writer="process")`` travels to its writer process pickled, a
    batch of hundreds of requests at a time, on the event loop's thread. attrs pickles a slotted
    instance through a dict it builds in Python for each object; a tuple of the fields (read by
    one ``operator.attrgetter``) pickles and unpickles in about a third of the time, and
    unpickling runs ``__init__``, so the class's checks run on the other side too.
    """
    fields = attrs.fields(cls)  # type: ignore[arg-type]
    assert len(fields) > 1, cls  # attrgetter of one name returns no tuple
    assert all(f.init and not f.kw_only for f in fields), cls
    values = operator.attrgetter(*(f.name for f in fields))

    def __reduce__(self: object) -> tuple[type[_R], tuple[object, ...]]:
        return (cls, values(self))

    cls.__reduce__ = __reduce__  # type: ignore[method-assign]
    return cls


@_pickled_as_values
@attrs.frozen
class Lease:
    """A lease granted by ``acquire_lease``: the epoch to write under and the stream's head."""

    stream_id: str
    owner: str
    epoch: int
    head_seq: int
    expires_at_ms: int


@_pickled_as_values
@attrs.frozen
class LeaseRequest:
    """One lease to take in ``acquire_leases``: the arguments of ``acquire_lease``."""

    stream_id: str
    owner: str
    now_ms: int
    ttl_ms: int
    steal: bool = False


LeaseOutcome = Lease | LeaseHeld
"""Per request of ``acquire_leases``: the ``Lease`` granted, or the ``LeaseHeld`` that refused it
(nothing of that request was written)."""


def check_lease_requests(requests: Sequence[LeaseRequest]) -> None:
    """Check the rules every store's ``acquire_leases`` shares before it writes anything.

    Raises:
        UsageError: two requests name one stream, or a stream id is malformed.
    """
    seen: set[str] = set()
    for request in requests:
        split_stream_id(request.stream_id)
        if request.stream_id in seen:
            raise UsageError(
                f"a lease batch names stream {request.stream_id!r} twice; take one lease per "
                "stream per call"
            )
        seen.add(request.stream_id)


def single_lease(outcomes: Sequence[LeaseOutcome]) -> Lease:
    """The one outcome of a one-request ``acquire_leases``, as ``acquire_lease`` returns it.

    Raises:
        LeaseHeld: the request was refused.
    """
    [outcome] = outcomes
    if isinstance(outcome, LeaseHeld):
        raise outcome
    return outcome


@attrs.frozen
class LeaseRecord:
    """One entry of a stream's lease history: who took which epoch, when."""

    stream_id: str
    epoch: int
    owner: str
    acquired_at_ms: int


@attrs.frozen
class StreamHead:
    """The current epoch, head sequence number and lease holder of a stream."""

    stream_id: str
    epoch: int
    head_seq: int
    owner: str | None
    lease_expires_at_ms: int


@_pickled_as_values
@attrs.define
class NewEvent:
    """An event to append; its sequence number follows from the request's ``expected_seq``.

    Not frozen, as ``AppendRequest`` is not; treat it as immutable."""

    type_name: str
    type_version: int
    payload: bytes
    message_id: str | None = None


@attrs.frozen
class StoredEvent:
    """An event as stored: its place in the stream and the epoch it was written under."""

    stream_id: str
    seq: int
    epoch: int
    type_name: str
    type_version: int
    payload: bytes
    message_id: str | None
    recorded_at_ms: int


@_pickled_as_values
@attrs.frozen
class Snapshot:
    """The state of a stream after event ``seq``, encoded."""

    stream_id: str
    seq: int
    type_name: str
    type_version: int
    payload: bytes
    recorded_at_ms: int


@_pickled_as_values
@attrs.frozen
class DedupeRecord:
    """An accepted message id, the head seq after its events, and its encoded reply."""

    message_id: str
    seq: int
    reply: bytes


@_pickled_as_values
@attrs.frozen
class OutboxMessage:
    """A message to deliver to another actor once the sender's transaction commits.

    ``message_id`` is derived deterministically by the sender, so redelivery is deduplicated by
    the receiver.
    """

    message_id: str
    source_stream_id: str
    target_type: str
    target_id: str
    type_name: str
    type_version: int
    payload: bytes
    created_at_ms: int


@_pickled_as_values
@attrs.frozen
class Timer:
    """A durable timer of an actor (a reminder): fires at ``due_at_ms`` even after restarts.

    ``(stream_id, name)`` identifies it; setting it again replaces the due time and payload.
    """

    stream_id: str
    name: str
    due_at_ms: int
    payload: bytes | None = None


@attrs.frozen
class InstanceInfo:
    """A row of the instance index, for visibility (list/search by type and status)."""

    actor_type: str
    actor_id: str
    status: str
    created_at_ms: int
    updated_at_ms: int


@_pickled_as_values
@attrs.define
class AppendRequest:
    """Everything one actor commits atomically: events plus what rides with them.

    Not frozen: one is built for every commit of every actor, and a frozen attrs instance
    sets each field through ``object.__setattr__``, which made building one cost three times
    as much. Treat it as immutable: nothing changes a request once it is built."""

    stream_id: str
    epoch: int
    expected_seq: int
    events: Sequence[NewEvent]
    recorded_at_ms: int
    dedupe: Sequence[DedupeRecord] = ()
    """The message ids this request accepts, each once. None of them may be among the stream's
    newest ``dedupe_window`` records (a caller holds those and answers such a duplicate from
    them); an id the window has forgotten may be recorded again, as a new record."""
    dedupe_window: int = 0
    """When > 0, keep only the newest ``dedupe_window`` dedupe records of the stream."""
    outbox: Sequence[OutboxMessage] = ()
    timers_set: Sequence[Timer] = ()
    timers_cancelled: Sequence[str] = ()
    snapshot: Snapshot | None = None
    """Replaces the stored snapshot unless that one is newer (an equal ``seq`` replaces it: the
    same state re-encoded by newer code)."""
    status: str | None = None
    """The instance's status for the index; None leaves it as it is (``active`` when new)."""
    claim: LeaseRequest | None = None
    """Create the stream with this request: it commits only if the stream was never leased,
    and then the claim's owner holds the lease at epoch 1 (``epoch`` must be 1 and
    ``expected_seq`` 0). A stream that exists refuses it with ``StreamExists``. One transaction
    instead of two (a lease grant, then the first append) for an actor that is new."""

    def __attrs_post_init__(self) -> None:
        assert self.epoch >= 1, self
        assert self.expected_seq >= 0, self
        if self.claim is not None:
            assert self.epoch == 1, self
            assert self.expected_seq == 0, self
            assert self.claim.stream_id == self.stream_id, self
            assert not self.claim.steal, self
        if self.snapshot is not None:
            assert self.snapshot.stream_id == self.stream_id
            assert self.snapshot.seq == self.expected_seq + len(self.events)
        for record in self.dedupe:
            # A message that only sends or schedules (no events) is recorded at the head it saw.
            assert self.expected_seq <= record.seq <= self.expected_seq + len(self.events)
        if len(self.dedupe) > 1:
            assert len({record.message_id for record in self.dedupe}) == len(self.dedupe), self
        for timer in self.timers_set:
            assert timer.stream_id == self.stream_id

    def dedupe_in_arrival_order(self) -> Sequence[DedupeRecord]:
        """The dedupe records in the order the store keeps them: by seq, equal seqs in request
        order (a stable sort). They follow every stored record, whose seqs are at most the head
        this request saw."""
        if len(self.dedupe) < 2:
            return self.dedupe
        return sorted(self.dedupe, key=lambda record: record.seq)

    @property
    def new_head_seq(self) -> int:
        """The stream's head after this request commits."""
        return self.expected_seq + len(self.events)


MEMBER_STATES: Final = ("up", "leaving", "left")
"""A member's states in the only order it moves through them (a new incarnation starts at
``up`` again)."""


@attrs.frozen
class Member:
    """A row of the cluster's membership table: one node, as it last reported itself.

    ``incarnation`` rises by one every time the node (re)joins, so a heartbeat of an old process
    with the same node id can never pass for the new one. ``heartbeat_at_ms`` is the wall time of
    the member's own clock at its last heartbeat.
    """

    node_id: str
    address: str
    incarnation: int
    state: str
    heartbeat_at_ms: int
    joined_at_ms: int


def check_member_state(state: object) -> str:
    """``state`` if it is one of ``MEMBER_STATES``.

    Raises:
        UsageError: any other value.
    """
    if state not in MEMBER_STATES:
        raise UsageError(f"member state must be one of {MEMBER_STATES}, got {state!r}")
    assert isinstance(state, str)
    return state


def check_incarnation(incarnation: object) -> int:
    """``incarnation`` if it is an int >= 0 (a member's incarnation, 0 for none yet).

    Raises:
        UsageError: any other value.
    """
    if isinstance(incarnation, bool) or not isinstance(incarnation, int) or incarnation < 0:
        raise UsageError(f"a member incarnation is an int >= 0, got {incarnation!r}")
    return incarnation


AppendResult = BaseException | None
"""Per request of ``append_batch``: None when committed, else the ``Fenced``,
``ConcurrencyConflict`` or ``StreamExists`` that rejected it (nothing of that request was
written)."""


class Store(Protocol):
    """Durable state: streams with leases and epochs, events, snapshots, dedupe records, outbox,
    timers and the instance index. All times are wall-clock milliseconds passed in by the caller
    (from its ``Clock``), so the store itself never reads a clock. A ``limit`` of 0 or less reads
    nothing."""

    async def open(self) -> None:
        """Connect and apply pending schema migrations. Idempotent."""
        ...

    async def close(self) -> None:
        """Release connections. Idempotent."""
        ...

    async def acquire_lease(
        self, stream_id: str, owner: str, now_ms: int, ttl_ms: int, *, steal: bool = False
    ) -> Lease:
        """Take the stream's lease for ``owner`` and bump its epoch (creating the stream at head 0).

        Granted when the stream is unleased, its lease has expired at ``now_ms``, its holder is
        ``owner`` itself (a restarted node reclaims its own leases), or ``steal`` is true.
        Every grant is recorded in the lease history.

        Epoch 1 is granted only by the call that creates the stream, and every write needs a
        lease: a lease of epoch 1 says the stream has no events, snapshot or dedupe records, so
        its holder need not read them.

        Raises:
            LeaseHeld: another owner holds an unexpired lease and ``steal`` is false.
        """
        ...

    async def acquire_leases(self, requests: Sequence[LeaseRequest]) -> list[LeaseOutcome]:
        """Decide many lease requests in one transaction, each on its own as ``acquire_lease``
        decides it: one request's refusal never fails another's grant. Outcomes come in request
        order. Requests must name distinct streams.

        Raises:
            UsageError: two requests name one stream, or a stream id is malformed.
            StoreUnavailable: the whole batch failed (``ambiguous`` if it may have committed).
        """
        ...

    async def renew_leases(
        self, owner: str, leases: Sequence[tuple[str, int]], now_ms: int, ttl_ms: int
    ) -> list[str]:
        """Extend the leases ``(stream_id, epoch)`` that ``owner`` still holds at that epoch.

        Returns the stream ids whose lease was lost (epoch moved on or another owner); the caller
        must deactivate those actors.
        """
        ...

    async def release_leases(self, owner: str, leases: Sequence[tuple[str, int]]) -> None:
        """Give up leases ``owner`` holds at those epochs, so others may take them at once.
        Leases held at another epoch are left alone."""
        ...

    async def append_batch(self, requests: Sequence[AppendRequest]) -> list[AppendResult]:
        """Commit many requests in one transaction, each checked on its own (see module doc).

        Requests in one batch must name distinct streams.

        Raises:
            StoreUnavailable: the whole batch failed (``ambiguous`` if it may have committed).
        """
        ...

    async def read_head(self, stream_id: str) -> StreamHead | None:
        """The stream's epoch, head and lease, or None if it was never leased."""
        ...

    async def read_events(
        self, stream_id: str, after_seq: int = 0, limit: int = 10_000
    ) -> list[StoredEvent]:
        """Up to ``limit`` events with ``seq > after_seq``, in order."""
        ...

    async def read_snapshot(self, stream_id: str) -> Snapshot | None:
        """The newest snapshot of the stream, if any."""
        ...

    async def read_dedupe(self, stream_id: str, limit: int) -> list[DedupeRecord]:
        """The newest ``limit`` dedupe records of the stream, oldest first: by ``seq``, and
        records with equal ``seq`` in the order they were written."""
        ...

    async def read_lease_history(self, stream_id: str) -> list[LeaseRecord]:
        """Every lease grant of the stream, by epoch."""
        ...

    async def read_outbox(self, limit: int) -> list[OutboxMessage]:
        """Up to ``limit`` undelivered outbox messages, oldest first."""
        ...

    async def delete_outbox(self, message_ids: Sequence[str]) -> None:
        """Mark outbox messages delivered (delete them). Unknown ids are ignored."""
        ...

    async def read_due_timers(self, now_ms: int, limit: int) -> list[Timer]:
        """Up to ``limit`` timers with ``due_at_ms <= now_ms``, earliest first."""
        ...

    async def next_timer_due_ms(self) -> int | None:
        """The earliest ``due_at_ms`` of any timer, or None."""
        ...

    async def delete_timer(self, stream_id: str, name: str, due_at_ms: int) -> bool:
        """Delete the timer if it is still due at ``due_at_ms`` (it was not re-set meanwhile).
        Returns whether it was deleted."""
        ...

    async def read_instance(self, actor_type: str, actor_id: str) -> InstanceInfo | None:
        """The index row of one instance."""
        ...

    async def list_instances(
        self,
        actor_type: str | None = None,
        status: str | None = None,
        limit: int = 100,
        after: tuple[str, str] | None = None,
    ) -> list[InstanceInfo]:
        """Index rows ordered by ``(actor_type, actor_id)``, after the cursor ``after``."""
        ...

    async def list_streams(self) -> list[StreamHead]:
        """Every stream's head, ordered by stream id (for checks and tooling)."""
        ...

    async def join_member(
        self, node_id: str, address: str, now_ms: int, after_incarnation: int
    ) -> Member | None:
        """Register ``node_id`` as ``up`` at ``address`` under a new incarnation, provided
        the row's incarnation is still ``after_incarnation`` (0: the caller saw no row);
        returns the row written.

        The new incarnation is ``max(after_incarnation + 1, now_ms)``: higher than the row's,
        and (like a generation number taken from the clock) higher than any an earlier process
        under this id could hold even after ``prune_member`` removed its row, so a long-paused
        old process can never heartbeat its way back in.

        Returns None, writing nothing, when the row has another incarnation: another process
        joined under this id since the caller read it, or an earlier attempt of this very join
        landed after all. A join is thereby conditional on what its caller read, so an attempt
        that reaches the store late (after a partition, or after the caller gave up on it and
        joined again) never replaces the incarnation a later attempt took.

        Raises:
            UsageError: ``after_incarnation`` is not an int >= 0.
        """
        ...

    async def heartbeat_member(
        self, node_id: str, incarnation: int, now_ms: int, state: str = "up"
    ) -> bool:
        """Record a heartbeat of ``node_id`` at ``incarnation`` and move it to ``state``.

        The heartbeat time never moves back and moves on at every heartbeat, to ``now_ms`` or
        by 1 ms when ``now_ms`` is not later (a writer whose clock jumped back still shows
        that it beats: readers judge liveness by the row changing); the state moves only
        forward (``up`` -> ``leaving`` -> ``left``). Returns False, writing nothing, when
        the row has another incarnation (a newer process joined under this id), does not
        exist, or is past ``state``.
        """
        ...

    async def list_members(self) -> list[Member]:
        """Every membership row, ordered by node id (departed members included)."""
        ...

    async def prune_member(self, node_id: str, incarnation: int, heartbeat_at_ms: int) -> bool:
        """Delete ``node_id``'s row, provided it still has this incarnation and heartbeat time
        (the very version the caller saw stay unchanged for long); True when deleted.

        Raises:
            UsageError: ``incarnation`` is not an int >= 0.
        """
        ...
