"""A fault-injecting, history-recording wrapper around any ``Store``.

``FaultyStore`` delegates every call to the store it wraps. Before a write it may wait a seeded
virtual delay, fail without committing (``StoreUnavailable(ambiguous=False)``), or commit and then
lose the acknowledgement (``StoreUnavailable(ambiguous=True)``); reads only get the delay. Every
decision is drawn from one seeded stream, so a seed replays the same faults.

It also keeps the *ghost state* the checkers judge the run by (``StoreHistory``): every append
request with the node incarnation that issued it, its epoch, the virtual time, what the caller
was told and whether it really committed; every lease grant; and the acknowledgements the
scenario reports for its client requests. The wrapped store only keeps the final contents; the
history tells *when* and *by whom* they were written, which is what fencing is about.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Final, Literal, Protocol, final

import attrs

from mainspring.errors import ConcurrencyConflict, Fenced, StoreUnavailable, StreamExists
from mainspring.persistence.store import (
    AppendRequest,
    AppendResult,
    DedupeRecord,
    InstanceInfo,
    Lease,
    LeaseOutcome,
    LeaseRecord,
    LeaseRequest,
    Member,
    OutboxMessage,
    Snapshot,
    Store,
    StoredEvent,
    StreamHead,
    Timer,
    single_lease,
)
from mainspring.simulations.loop import SimLoop, SimulationError, current_node
from mainspring.simulations.network import Network, store_endpoint
from mainspring.simulations.seeds import Stream

__all__ = [
    "NO_FAULTS",
    "Acknowledgement",
    "AppendOutcome",
    "AppendRecord",
    "FaultyStore",
    "LeaseGrant",
    "StoreFaults",
    "StoreHistory",
    "StoreObserver",
]

AppendOutcome = Literal["ok", "fenced", "conflict", "error", "ambiguous"]
"""What the caller of ``append_batch`` was told about one request."""

FaultKind = Literal["error_before_commit", "lost_ack"]

_WRITES: Final = frozenset(
    {
        "acquire_leases",
        "renew_leases",
        "release_leases",
        "append_batch",
        "delete_outbox",
        "delete_timer",
    }
)


def _rate(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be a probability in [0, 1], got {value!r}")


def _non_negative(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


@attrs.frozen
class StoreFaults:
    """How often a ``FaultyStore`` fails, per operation.

    Attributes:
        error_before_commit: probability that a write raises ``StoreUnavailable`` without
            reaching the wrapped store.
        lost_ack: probability that a write commits and then raises
            ``StoreUnavailable(ambiguous=True)``, as a connection lost during ``COMMIT`` does.
        latency_ms_min: the shortest virtual delay before each operation, reads included.
        latency_ms_max: the longest one; each delay is drawn uniformly in ``[min, max]``.
    """

    error_before_commit: float = attrs.field(default=0.0, validator=_rate)
    lost_ack: float = attrs.field(default=0.0, validator=_rate)
    latency_ms_min: int = attrs.field(default=0, validator=_non_negative)
    latency_ms_max: int = attrs.field(default=0, validator=_non_negative)

    def __attrs_post_init__(self) -> None:
        if self.latency_ms_min > self.latency_ms_max:
            raise ValueError(
                f"latency_ms_min ({self.latency_ms_min}) > latency_ms_max ({self.latency_ms_max})"
            )
        if self.error_before_commit + self.lost_ack > 1.0:
            raise ValueError("error_before_commit + lost_ack must be at most 1")

    def describe(self) -> str:
        """A one-line summary, for failure messages and the trace."""
        return (
            f"error_before_commit={self.error_before_commit:.3f} lost_ack={self.lost_ack:.3f} "
            f"latency_ms=[{self.latency_ms_min},{self.latency_ms_max}]"
        )


NO_FAULTS: Final = StoreFaults()
"""No fault and no delay: a ``FaultyStore`` with this profile only records history."""


@attrs.frozen
class AppendRecord:
    """One request of an ``append_batch`` call, as the ghost state saw it.

    Attributes:
        index: position in the history when the wrapped store answered (appends and lease
            grants share one counter).
        invoked_index: position in the history when the request was handed to the wrapped
            store. What completed before it certainly happened before the commit, whatever a
            store that suspends mid-call lets run meanwhile.
        virtual_ns: the loop's virtual time when the wrapped store answered (or was skipped).
        node: the node incarnation that issued it (``"n1#0"``), or ``"world"``.
        stream_id: the request's stream.
        epoch: the epoch the request carried.
        expected_seq: the head it expected; its events take ``expected_seq + 1 ..``.
        message_ids: the ``message_id`` of each event, in order.
        outcome: what the caller was told.
        committed: whether the wrapped store committed it (None: unknown, the store raised).
    """

    index: int
    invoked_index: int
    virtual_ns: int
    node: str
    stream_id: str
    epoch: int
    expected_seq: int
    message_ids: tuple[str | None, ...]
    outcome: AppendOutcome
    committed: bool | None

    @property
    def new_head_seq(self) -> int:
        """The stream's head after this request, had it committed."""
        return self.expected_seq + len(self.message_ids)

    def describe(self) -> str:
        """A one-line summary for violation messages."""
        return (
            f"append #{self.index} by {self.node} at {self.virtual_ns}ns "
            f"(epoch {self.epoch}, seq {self.expected_seq + 1}..{self.new_head_seq}, "
            f"told {self.outcome})"
        )


@attrs.frozen
class LeaseGrant:
    """A lease the wrapped store granted (the caller may have been told it failed).

    Attributes:
        index: position in the history.
        virtual_ns: the loop's virtual time of the grant.
        node: the node incarnation that asked.
        stream_id: the stream.
        owner: the owner recorded in the store.
        epoch: the epoch granted.
        acknowledged: False when the grant's acknowledgement was lost.
    """

    index: int
    virtual_ns: int
    node: str
    stream_id: str
    owner: str
    epoch: int
    acknowledged: bool

    def describe(self) -> str:
        """A one-line summary for violation messages."""
        return (
            f"lease grant #{self.index} of epoch {self.epoch} to {self.owner} "
            f"({self.node}) at {self.virtual_ns}ns"
        )


@attrs.frozen
class Acknowledgement:
    """A client request the scenario saw succeed: ``message_id``'s event is at ``seq``."""

    stream_id: str
    message_id: str
    seq: int


@final
class StoreHistory:
    """The ghost state: what was asked of the store, what it did, and what clients were told.

    Attributes:
        appends: every append request, in the order the wrapped store answered them.
        leases: every lease the wrapped store granted.
        acknowledged: what the scenario reported with ``acknowledge``.
        faults: how many faults of each kind were injected.
    """

    def __init__(self) -> None:
        self.appends: Final[list[AppendRecord]] = []
        self.leases: Final[list[LeaseGrant]] = []
        self.acknowledged: Final[list[Acknowledgement]] = []
        self.faults: Final[dict[str, int]] = {}
        self._next_index = 0

    def next_index(self) -> int:
        """The next position in the history."""
        index = self._next_index
        self._next_index += 1
        return index

    def acknowledge(self, stream_id: str, message_id: str, seq: int) -> None:
        """Record that a client was told ``message_id`` was applied as event ``seq``."""
        assert seq >= 1, (stream_id, message_id, seq)
        self.acknowledged.append(Acknowledgement(stream_id, message_id, seq))


def _now_ns() -> int:
    loop = asyncio.get_running_loop()
    if isinstance(loop, SimLoop):
        return loop.now_ns
    return int(loop.time() * 1_000_000_000)


def _node() -> str:
    tag = current_node()
    return "world" if tag is None else str(tag)


def _outcome_of(result: AppendResult) -> AppendOutcome:
    if result is None:
        return "ok"
    if isinstance(result, Fenced):
        return "fenced"
    assert isinstance(result, ConcurrencyConflict), result
    return "conflict"


class StoreObserver(Protocol):
    """Who a ``FaultyStore`` tells what it saw (the ``World``)."""

    def sometimes(self, name: str, detail: str = "") -> None:
        """A targeted fault reached its code (e.g. a zombie write was fenced)."""
        ...

    def violation(self, error: SimulationError) -> None:
        """An invariant broke: stop the run."""
        ...

    def after_commit(self) -> None:
        """An append committed (user invariants may be checked now)."""
        ...


class _IncrementalChecks:
    """The invariants a ``FaultyStore`` checks at each commit and grant, as it happens, so a
    violation stops the run at the operation that caused it (the checkers of
    ``mainspring.simulations.checkers`` judge the final contents again at the end)."""

    def __init__(self) -> None:
        self.heads: dict[str, int] = {}
        self.epochs: dict[str, int] = {}
        self.owners: dict[tuple[str, int], str] = {}
        self.messages: dict[tuple[str, str], AppendRecord] = {}

    def grant(self, grant: LeaseGrant) -> str | None:
        """A violation message, or None."""
        key = (grant.stream_id, grant.epoch)
        owner = self.owners.setdefault(key, grant.owner)
        if owner != grant.owner:
            return (
                f"[no stale-epoch commit] {grant.stream_id}: epoch {grant.epoch} granted to "
                f"{owner} and then to {grant.owner} ({grant.describe()})"
            )
        previous = self.epochs.get(grant.stream_id, 0)
        if grant.epoch <= previous:
            return (
                f"[no stale-epoch commit] {grant.stream_id}: {grant.describe()} does not raise "
                f"the epoch above {previous}"
            )
        self.epochs[grant.stream_id] = grant.epoch
        return None

    def reminder(self, request: AppendRequest, tolerance_ms: int) -> str | None:
        """A reminder's transition (events carrying the message id ``reminder:<name>:<due>``
        the timer scan gives it) committed before its deadline by the committing node's clock:
        a violation message, or None. (Fired twice would be two commits of one message id.)"""
        for event in request.events:
            message_id = event.message_id
            if message_id is None or not message_id.startswith("reminder:"):
                continue
            due_text = message_id.rpartition(":")[2]
            if not due_text.isdigit():
                continue
            due_ms = int(due_text)
            if request.recorded_at_ms + tolerance_ms < due_ms:
                return (
                    f"[timers fire once and not early] {request.stream_id}: reminder "
                    f"{message_id!r} committed at {request.recorded_at_ms}, "
                    f"{due_ms - request.recorded_at_ms} ms before it was due"
                )
        return None

    def commit(self, append: AppendRecord, newest_before: LeaseGrant | None) -> str | None:
        """A violation message for a committed append, or None."""
        stream_id = append.stream_id
        if newest_before is not None and append.epoch < newest_before.epoch:
            return (
                f"[no stale-epoch commit] {stream_id}: {append.describe()} was committed under "
                f"epoch {append.epoch} after {newest_before.describe()}: a deposed owner wrote"
            )
        owner = self.owners.get((stream_id, append.epoch))
        node_name = append.node.partition("#")[0]
        if owner is not None and node_name not in {owner, "world"}:
            return (
                f"[no stale-epoch commit] {stream_id}: {append.describe()} committed under "
                f"epoch {append.epoch}, which was granted to {owner}"
            )
        head = self.heads.get(stream_id)
        if head is not None and append.expected_seq != head:
            return (
                f"[gapless] {stream_id}: {append.describe()} committed on top of seq "
                f"{append.expected_seq} but the stream's head was {head}"
            )
        self.heads[stream_id] = append.new_head_seq
        for message_id in dict.fromkeys(append.message_ids):
            if message_id is None:
                continue
            earlier = self.messages.setdefault((stream_id, message_id), append)
            if earlier is not append:
                return (
                    f"[no message applied twice] {stream_id}: message {message_id!r} was "
                    f"applied 2 times: seq {earlier.expected_seq + 1} ({earlier.describe()}); "
                    f"seq {append.expected_seq + 1} ({append.describe()})"
                )
        return None


@final
class FaultyStore:
    """A ``Store`` that delegates to ``inner``, injecting seeded faults and recording history.

    Args:
        inner: the store that really keeps the data.
        stream: the seeded PRNG every fault decision is drawn from (``seeds.substream``).
        profile: the fault rates.
        history: where to record; pass one ``StoreHistory`` to several wrappers of one store.
        node_profiles: fault rates for the calls of particular nodes (by node name), e.g. a
            node with a slow link to the database; the others get ``profile``.
        network: the simulated network: a node cut from ``store:<label>`` by a partition gets
            its calls failed, or held until the partition heals and then delivered (late).
        observer: told of targeted faults that reached their code and of violations.
        check: check every committed append and lease grant as it happens.
        reminder_tolerance_ms: how early (by the committing node's clock) a reminder's
            transition may commit before the check reports it (a clock stepped back between
            the scan that found it due and the commit).

    Attributes:
        inner: the wrapped store.
        label: its name.
        profile: the fault rates in force when faults are enabled.
        node_profiles: the per-node overrides of ``profile``.
        history: the ghost state.
        faults_enabled: False turns every fault and delay off (the liveness phase).
    """

    def __init__(
        self,
        inner: Store,
        stream: Stream,
        profile: StoreFaults = NO_FAULTS,
        *,
        history: StoreHistory | None = None,
        node_profiles: Mapping[str, StoreFaults] | None = None,
        label: str = "store",
        network: Network | None = None,
        observer: StoreObserver | None = None,
        check: bool = False,
        reminder_tolerance_ms: int = 0,
    ) -> None:
        self.inner: Final = inner
        self.label: Final = label
        self.profile = profile
        self.node_profiles: dict[str, StoreFaults] = dict(node_profiles or {})
        self.history: Final = history if history is not None else StoreHistory()
        self.faults_enabled = True
        self._stream = stream
        self._scripted: list[tuple[str, FaultKind]] = []
        self._network = network
        self._observer = observer
        self._checks: _IncrementalChecks | None = _IncrementalChecks() if check else None
        self._reminder_tolerance_ms = reminder_tolerance_ms
        self._grants: dict[str, list[LeaseGrant]] = {}
        """Per stream: every grant, for the incremental checks."""

    # Fault decisions --------------------------------------------------------------------------

    def inject_next(self, kind: FaultKind, operation: str = "append_batch") -> None:
        """Force ``kind`` on the next ``operation`` call (a write), whatever the rates say and
        even with faults disabled: scripted scenarios use it to hit one precise moment."""
        assert operation in _WRITES, operation
        self._scripted.append((operation, kind))

    def _profile(self) -> StoreFaults:
        tag = current_node()
        if tag is not None and tag.name in self.node_profiles:
            return self.node_profiles[tag.name]
        return self.profile

    async def _link(self, operation: str) -> None:
        """A node cut from this store by a partition: its call fails at once, or hangs until
        the partition heals and is then delivered (a late write, which fencing must stop)."""
        network = self._network
        tag = current_node()
        if network is None or tag is None:
            return
        endpoint = store_endpoint(self.label)
        if network.connected(tag.name, endpoint):
            return
        loop = asyncio.get_running_loop()
        if self._stream.random() < 0.5:
            if isinstance(loop, SimLoop):
                loop.trace("store.partitioned", f"{self.label} {operation} failed")
            raise StoreUnavailable(f"partitioned: {operation} cannot reach the store")
        if isinstance(loop, SimLoop):
            loop.trace("store.partitioned", f"{self.label} {operation} held")
        await network.wait_connected(tag.name, endpoint)
        if isinstance(loop, SimLoop):
            loop.trace("store.late", f"{self.label} {operation} delivered after the partition")

    def _tell(self, name: str, detail: str = "") -> None:
        if self._observer is not None:
            self._observer.sometimes(name, detail)

    def _violated(self, message: str) -> None:
        from mainspring.simulations.checkers import InvariantViolation

        error = InvariantViolation(message)
        if self._observer is not None:
            self._observer.violation(error)
        raise error

    async def _delay(self) -> None:
        await self._link("read")
        profile = self._profile()
        if not self.faults_enabled or profile.latency_ms_max == 0:
            return
        delay_ms = self._stream.randint(profile.latency_ms_min, profile.latency_ms_max)
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)

    def _fault(self, operation: str) -> FaultKind | None:
        """The fault for this write, if any. One draw per write when enabled, whatever the
        outcome, so earlier outcomes never shift which draw a later write gets."""
        for position, (scripted_operation, kind) in enumerate(self._scripted):
            if scripted_operation == operation:
                del self._scripted[position]
                return kind
        if not self.faults_enabled:
            return None
        draw = self._stream.random()
        profile = self._profile()
        if draw < profile.error_before_commit:
            return "error_before_commit"
        if draw < profile.error_before_commit + profile.lost_ack:
            return "lost_ack"
        return None

    def _note(self, kind: FaultKind, operation: str) -> None:
        self.history.faults[kind] = self.history.faults.get(kind, 0) + 1
        loop = asyncio.get_running_loop()
        if isinstance(loop, SimLoop):
            loop.trace("store.fault", f"{self.label} {kind} {operation}")

    async def _write_prologue(self, operation: str) -> FaultKind | None:
        """Delay, draw the fault, and raise it at once when it strikes before the commit."""
        await self._link(operation)
        await self._delay()
        fault = self._fault(operation)
        if fault == "error_before_commit":
            self._note(fault, operation)
            raise StoreUnavailable(f"injected: {operation} failed before commit")
        return fault

    def _lose_ack(self, operation: str) -> StoreUnavailable:
        self._note("lost_ack", operation)
        return StoreUnavailable(
            f"injected: {operation} committed, acknowledgement lost", ambiguous=True
        )

    # Lifecycle (never faulted: the world opens and closes stores around the run) ---------------

    async def open(self) -> None:
        """See ``Store.open``."""
        await self.inner.open()

    async def close(self) -> None:
        """See ``Store.close``."""
        await self.inner.close()

    # Writes -------------------------------------------------------------------------------------

    async def acquire_lease(
        self, stream_id: str, owner: str, now_ms: int, ttl_ms: int, *, steal: bool = False
    ) -> Lease:
        """See ``Store.acquire_lease``: a batch of one (see ``acquire_leases``)."""
        return single_lease(
            await self.acquire_leases([LeaseRequest(stream_id, owner, now_ms, ttl_ms, steal)])
        )

    async def acquire_leases(self, requests: Sequence[LeaseRequest]) -> list[LeaseOutcome]:
        """See ``Store.acquire_leases``; grants are recorded, lost acknowledgements included."""
        fault = await self._write_prologue("acquire_leases")
        outcomes = await self.inner.acquire_leases(requests)
        for outcome in outcomes:
            if isinstance(outcome, Lease):
                self._record_grant(outcome, acknowledged=fault is None)
        if fault == "lost_ack":
            raise self._lose_ack("acquire_leases")
        return outcomes

    def _record_grant(self, lease: Lease, *, acknowledged: bool) -> None:
        stream_id = lease.stream_id
        grant = LeaseGrant(
            index=self.history.next_index(),
            virtual_ns=_now_ns(),
            node=_node(),
            stream_id=stream_id,
            owner=lease.owner,
            epoch=lease.epoch,
            acknowledged=acknowledged,
        )
        previous = self._previous_grant(stream_id)
        self.history.leases.append(grant)
        self._grants.setdefault(stream_id, []).append(grant)
        if self._checks is not None:
            message = self._checks.grant(grant)
            if message is not None:
                self._violated(message)
        if previous is not None and previous.owner != grant.owner:
            self._tell("lease_taken_over", f"{stream_id} {previous.owner}->{grant.owner}")
            network = self._network
            if network is not None and not network.connected(
                previous.owner, store_endpoint(self.label)
            ):
                self._tell("lease_taken_over_after_partition", stream_id)

    def _previous_grant(self, stream_id: str) -> LeaseGrant | None:
        for grant in reversed(self.history.leases):
            if grant.stream_id == stream_id:
                return grant
        return None

    async def renew_leases(
        self, owner: str, leases: Sequence[tuple[str, int]], now_ms: int, ttl_ms: int
    ) -> list[str]:
        """See ``Store.renew_leases``."""
        fault = await self._write_prologue("renew_leases")
        lost = await self.inner.renew_leases(owner, leases, now_ms, ttl_ms)
        if fault == "lost_ack":
            raise self._lose_ack("renew_leases")
        return lost

    async def release_leases(self, owner: str, leases: Sequence[tuple[str, int]]) -> None:
        """See ``Store.release_leases``."""
        fault = await self._write_prologue("release_leases")
        await self.inner.release_leases(owner, leases)
        if fault == "lost_ack":
            raise self._lose_ack("release_leases")

    async def append_batch(self, requests: Sequence[AppendRequest]) -> list[AppendResult]:
        """See ``Store.append_batch``; every request's outcome is recorded."""
        try:
            fault = await self._write_prologue("append_batch")
        except StoreUnavailable:
            self._record(requests, self.history.next_index(), None, "error", committed=False)
            raise
        invoked = self.history.next_index()
        try:
            results = await self.inner.append_batch(requests)
        except StoreUnavailable as error:
            self._record(
                requests,
                invoked,
                None,
                "ambiguous" if error.ambiguous else "error",
                committed=None if error.ambiguous else False,
            )
            raise
        assert len(results) == len(requests), (len(results), len(requests))
        for request, result in zip(requests, results, strict=True):
            claim = request.claim
            if claim is not None and result is None:  # it created the stream: a grant
                lease = Lease(request.stream_id, claim.owner, 1, 0, claim.now_ms + claim.ttl_ms)
                self._record_grant(lease, acknowledged=fault is None)
            elif claim is not None and isinstance(result, StreamExists):
                self._tell("stream_exists_refused", request.stream_id)
        if fault == "lost_ack":
            self._record(requests, invoked, results, "ambiguous", committed=None)
            raise self._lose_ack("append_batch")
        self._record(requests, invoked, results, None, committed=None)
        return results

    def _record(
        self,
        requests: Sequence[AppendRequest],
        invoked: int,
        results: Sequence[AppendResult] | None,
        told: AppendOutcome | None,
        *,
        committed: bool | None,
    ) -> None:
        now_ns = _now_ns()
        node = _node()
        for position, request in enumerate(requests):
            result = None if results is None else results[position]
            truly_committed = committed if results is None else result is None
            record = AppendRecord(
                index=self.history.next_index(),
                invoked_index=invoked,
                virtual_ns=now_ns,
                node=node,
                stream_id=request.stream_id,
                epoch=request.epoch,
                expected_seq=request.expected_seq,
                message_ids=tuple(event.message_id for event in request.events),
                outcome=told if told is not None else _outcome_of(result),
                committed=truly_committed,
            )
            self.history.appends.append(record)
            if isinstance(result, Fenced):
                self._tell("zombie_write_fenced", f"{record.stream_id} by {node}")
            if truly_committed and self._checks is not None:
                newest = max(
                    (
                        grant
                        for grant in self._grants.get(record.stream_id, ())
                        if grant.index < invoked
                    ),
                    key=lambda grant: grant.epoch,
                    default=None,
                )
                message = self._checks.commit(record, newest)
                if message is None:
                    message = self._checks.reminder(request, self._reminder_tolerance_ms)
                if message is not None:
                    self._violated(message)
            if truly_committed and self._observer is not None:
                self._observer.after_commit()

    async def delete_outbox(self, message_ids: Sequence[str]) -> None:
        """See ``Store.delete_outbox``."""
        fault = await self._write_prologue("delete_outbox")
        await self.inner.delete_outbox(message_ids)
        if fault == "lost_ack":
            raise self._lose_ack("delete_outbox")

    async def delete_timer(self, stream_id: str, name: str, due_at_ms: int) -> bool:
        """See ``Store.delete_timer``."""
        fault = await self._write_prologue("delete_timer")
        deleted = await self.inner.delete_timer(stream_id, name, due_at_ms)
        if fault == "lost_ack":
            raise self._lose_ack("delete_timer")
        return deleted

    # Reads (delayed, never failed) --------------------------------------------------------------

    async def read_head(self, stream_id: str) -> StreamHead | None:
        """See ``Store.read_head``."""
        await self._delay()
        return await self.inner.read_head(stream_id)

    async def read_events(
        self, stream_id: str, after_seq: int = 0, limit: int = 10_000
    ) -> list[StoredEvent]:
        """See ``Store.read_events``."""
        await self._delay()
        return await self.inner.read_events(stream_id, after_seq, limit)

    async def read_snapshot(self, stream_id: str) -> Snapshot | None:
        """See ``Store.read_snapshot``."""
        await self._delay()
        return await self.inner.read_snapshot(stream_id)

    async def read_dedupe(self, stream_id: str, limit: int) -> list[DedupeRecord]:
        """See ``Store.read_dedupe``."""
        await self._delay()
        return await self.inner.read_dedupe(stream_id, limit)

    async def read_lease_history(self, stream_id: str) -> list[LeaseRecord]:
        """See ``Store.read_lease_history``."""
        await self._delay()
        return await self.inner.read_lease_history(stream_id)

    async def read_outbox(self, limit: int) -> list[OutboxMessage]:
        """See ``Store.read_outbox``."""
        await self._delay()
        return await self.inner.read_outbox(limit)

    async def read_due_timers(self, now_ms: int, limit: int) -> list[Timer]:
        """See ``Store.read_due_timers``."""
        await self._delay()
        return await self.inner.read_due_timers(now_ms, limit)

    async def next_timer_due_ms(self) -> int | None:
        """See ``Store.next_timer_due_ms``."""
        await self._delay()
        return await self.inner.next_timer_due_ms()

    async def read_instance(self, actor_type: str, actor_id: str) -> InstanceInfo | None:
        """See ``Store.read_instance``."""
        await self._delay()
        return await self.inner.read_instance(actor_type, actor_id)

    async def list_instances(
        self,
        actor_type: str | None = None,
        status: str | None = None,
        limit: int = 100,
        after: tuple[str, str] | None = None,
    ) -> list[InstanceInfo]:
        """See ``Store.list_instances``."""
        await self._delay()
        return await self.inner.list_instances(actor_type, status, limit, after)

    async def list_streams(self) -> list[StreamHead]:
        """See ``Store.list_streams``."""
        await self._delay()
        return await self.inner.list_streams()

    # Cluster membership (faulted like any other write, delayed like any other read) ------------

    async def join_member(
        self, node_id: str, address: str, now_ms: int, after_incarnation: int
    ) -> Member | None:
        """See ``Store.join_member``."""
        fault = await self._write_prologue("join_member")
        member = await self.inner.join_member(node_id, address, now_ms, after_incarnation)
        if fault == "lost_ack":
            raise self._lose_ack("join_member")
        return member

    async def heartbeat_member(
        self, node_id: str, incarnation: int, now_ms: int, state: str = "up"
    ) -> bool:
        """See ``Store.heartbeat_member``."""
        fault = await self._write_prologue("heartbeat_member")
        recorded = await self.inner.heartbeat_member(node_id, incarnation, now_ms, state)
        if fault == "lost_ack":
            raise self._lose_ack("heartbeat_member")
        return recorded

    async def list_members(self) -> list[Member]:
        """See ``Store.list_members``."""
        await self._delay()
        return await self.inner.list_members()

    async def prune_member(self, node_id: str, incarnation: int, heartbeat_at_ms: int) -> bool:
        """See ``Store.prune_member``."""
        fault = await self._write_prologue("prune_member")
        pruned = await self.inner.prune_member(node_id, incarnation, heartbeat_at_ms)
        if pruned:
            self._tell("member_pruned", node_id)
        if fault == "lost_ack":
            raise self._lose_ack("prune_member")
        return pruned


def _is_a_store(store: FaultyStore) -> Store:
    """Never called: makes mypy prove that ``FaultyStore`` implements the ``Store`` protocol."""
    return store
