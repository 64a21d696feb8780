"""MemoryStore: the reference implementation of the Store protocol, and the simulator's store.

Every operation runs without an ``await`` between its check and its write, so on one event loop
it is atomic, exactly like a transaction in the SQL stores.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import final

import attrs

from mainspring.errors import ConcurrencyConflict, Fenced, LeaseHeld, StreamExists, UsageError
from mainspring.persistence.store import (
    MEMBER_STATES,
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
    StoredEvent,
    StreamHead,
    Timer,
    check_incarnation,
    check_lease_requests,
    check_member_state,
    single_lease,
    split_stream_id,
)

__all__ = ["MemoryStore"]


@attrs.define
class _Stream:
    epoch: int = 0
    owner: str | None = None
    lease_expires_at_ms: int = 0
    events: list[StoredEvent] = attrs.Factory(list)
    dedupe: dict[str, DedupeRecord] = attrs.Factory(dict)
    snapshot: Snapshot | None = None
    leases: list[LeaseRecord] = attrs.Factory(list)


@final
class MemoryStore:
    """Keeps everything in dictionaries. Data lives as long as the object."""

    def __init__(self) -> None:
        self._streams: dict[str, _Stream] = {}
        self._outbox: dict[str, OutboxMessage] = {}
        self._timers: dict[tuple[str, str], Timer] = {}
        self._instances: dict[tuple[str, str], InstanceInfo] = {}
        self._members: dict[str, Member] = {}
        self._opened = False

    async def open(self) -> None:
        """Nothing to connect; marks the store open."""
        self._opened = True

    async def close(self) -> None:
        """Marks the store closed; the data stays for a later ``open``."""
        self._opened = False

    def _check_open(self) -> None:
        if not self._opened:
            raise UsageError("the store is not open; call 'await store.open()' first")

    async def acquire_lease(
        self, stream_id: str, owner: str, now_ms: int, ttl_ms: int, *, steal: bool = False
    ) -> Lease:
        """See ``Store.acquire_lease``."""
        return single_lease(
            await self.acquire_leases([LeaseRequest(stream_id, owner, now_ms, ttl_ms, steal)])
        )

    async def acquire_leases(self, requests: Sequence[LeaseRequest]) -> list[LeaseOutcome]:
        """See ``Store.acquire_leases``."""
        self._check_open()
        check_lease_requests(requests)
        return [self._acquire_one(request) for request in requests]

    def _acquire_one(self, request: LeaseRequest) -> LeaseOutcome:
        stream_id, owner, now_ms = request.stream_id, request.owner, request.now_ms
        stream = self._streams.setdefault(stream_id, _Stream())
        held_by_other = (
            stream.owner is not None
            and stream.owner != owner
            and stream.lease_expires_at_ms > now_ms
        )
        if held_by_other and not request.steal:
            assert stream.owner is not None
            return LeaseHeld(stream_id, stream.owner, stream.lease_expires_at_ms)
        stream.epoch += 1
        stream.owner = owner
        stream.lease_expires_at_ms = now_ms + request.ttl_ms
        stream.leases.append(LeaseRecord(stream_id, stream.epoch, owner, now_ms))
        return Lease(stream_id, owner, stream.epoch, len(stream.events), now_ms + request.ttl_ms)

    async def renew_leases(
        self, owner: str, leases: Sequence[tuple[str, int]], now_ms: int, ttl_ms: int
    ) -> list[str]:
        """See ``Store.renew_leases``."""
        self._check_open()
        lost: list[str] = []
        for stream_id, epoch in leases:
            stream = self._streams.get(stream_id)
            if stream is None or stream.epoch != epoch or stream.owner != owner:
                lost.append(stream_id)
                continue
            stream.lease_expires_at_ms = now_ms + ttl_ms
        return lost

    async def release_leases(self, owner: str, leases: Sequence[tuple[str, int]]) -> None:
        """See ``Store.release_leases``."""
        self._check_open()
        for stream_id, epoch in leases:
            stream = self._streams.get(stream_id)
            if stream is not None and stream.epoch == epoch and stream.owner == owner:
                stream.owner = None
                stream.lease_expires_at_ms = 0

    async def append_batch(self, requests: Sequence[AppendRequest]) -> list[AppendResult]:
        """See ``Store.append_batch``."""
        self._check_open()
        seen: set[str] = set()
        for request in requests:
            if request.stream_id in seen:
                raise UsageError(f"a batch names stream {request.stream_id!r} twice")
            seen.add(request.stream_id)
        return [self._append_one(request) for request in requests]

    def _append_one(self, request: AppendRequest) -> AppendResult:
        stream = self._streams.get(request.stream_id)
        claim = request.claim
        if claim is not None:
            if stream is not None:
                return StreamExists(request.stream_id, stream.epoch, len(stream.events))
            stream = self._streams[request.stream_id] = _Stream(
                epoch=1, owner=claim.owner, lease_expires_at_ms=claim.now_ms + claim.ttl_ms
            )
            stream.leases.append(LeaseRecord(request.stream_id, 1, claim.owner, claim.now_ms))
        if stream is None or stream.epoch != request.epoch:
            current = 0 if stream is None else stream.epoch
            return Fenced(request.stream_id, request.epoch, current)
        head = len(stream.events)
        if head != request.expected_seq:
            return ConcurrencyConflict(request.stream_id, request.expected_seq, head)
        for offset, event in enumerate(request.events, start=1):
            stream.events.append(
                StoredEvent(
                    stream_id=request.stream_id,
                    seq=head + offset,
                    epoch=request.epoch,
                    type_name=event.type_name,
                    type_version=event.type_version,
                    payload=event.payload,
                    message_id=event.message_id,
                    recorded_at_ms=request.recorded_at_ms,
                )
            )
        assert len(stream.events) == request.new_head_seq
        # The dict stays ordered oldest first: the stream's records have seqs up to the head
        # the request saw, its own ones from that head on, and they go in by seq (a stable sort
        # keeps equal seqs in request order).
        records = request.dedupe_in_arrival_order()
        window = request.dedupe_window
        for record in records:
            # The caller answers a duplicate its window holds (every record, without a window);
            # only an id the window forgot comes again, and only a window just made smaller
            # leaves such an id behind for this check to miss.
            assert 0 < window < len(stream.dedupe) or record.message_id not in stream.dedupe, (
                request.stream_id,
                record.message_id,
            )
            stream.dedupe.pop(record.message_id, None)
            stream.dedupe[record.message_id] = record
        if window > 0:
            while len(stream.dedupe) > window:
                del stream.dedupe[next(iter(stream.dedupe))]
        for message in request.outbox:
            self._outbox.setdefault(message.message_id, message)
        for name in request.timers_cancelled:
            self._timers.pop((request.stream_id, name), None)
        for timer in request.timers_set:
            self._timers[(timer.stream_id, timer.name)] = timer
        if request.snapshot is not None and (
            stream.snapshot is None or stream.snapshot.seq <= request.snapshot.seq
        ):
            stream.snapshot = request.snapshot
        self._index(request)
        return None

    def _index(self, request: AppendRequest) -> None:
        key = split_stream_id(request.stream_id)
        current = self._instances.get(key)
        if current is None:
            self._instances[key] = InstanceInfo(
                key[0],
                key[1],
                request.status or "active",
                request.recorded_at_ms,
                request.recorded_at_ms,
            )
        else:
            self._instances[key] = attrs.evolve(
                current,
                status=request.status or current.status,
                updated_at_ms=request.recorded_at_ms,
            )

    async def read_head(self, stream_id: str) -> StreamHead | None:
        """See ``Store.read_head``."""
        self._check_open()
        stream = self._streams.get(stream_id)
        if stream is None:
            return None
        return StreamHead(
            stream_id, stream.epoch, len(stream.events), stream.owner, stream.lease_expires_at_ms
        )

    async def read_events(
        self, stream_id: str, after_seq: int = 0, limit: int = 10_000
    ) -> list[StoredEvent]:
        """See ``Store.read_events``."""
        self._check_open()
        stream = self._streams.get(stream_id)
        if stream is None or limit <= 0:
            return []
        return stream.events[max(after_seq, 0) : max(after_seq, 0) + limit]

    async def read_snapshot(self, stream_id: str) -> Snapshot | None:
        """See ``Store.read_snapshot``."""
        self._check_open()
        stream = self._streams.get(stream_id)
        return None if stream is None else stream.snapshot

    async def read_dedupe(self, stream_id: str, limit: int) -> list[DedupeRecord]:
        """See ``Store.read_dedupe``."""
        self._check_open()
        stream = self._streams.get(stream_id)
        if stream is None or limit <= 0:
            return []
        return list(stream.dedupe.values())[-limit:]

    async def read_lease_history(self, stream_id: str) -> list[LeaseRecord]:
        """See ``Store.read_lease_history``."""
        self._check_open()
        stream = self._streams.get(stream_id)
        return [] if stream is None else list(stream.leases)

    async def read_outbox(self, limit: int) -> list[OutboxMessage]:
        """See ``Store.read_outbox``."""
        self._check_open()
        return list(self._outbox.values())[: max(limit, 0)]

    async def delete_outbox(self, message_ids: Sequence[str]) -> None:
        """See ``Store.delete_outbox``."""
        self._check_open()
        for message_id in message_ids:
            self._outbox.pop(message_id, None)

    async def read_due_timers(self, now_ms: int, limit: int) -> list[Timer]:
        """See ``Store.read_due_timers``."""
        self._check_open()
        due = [timer for timer in self._timers.values() if timer.due_at_ms <= now_ms]
        due.sort(key=lambda timer: (timer.due_at_ms, timer.stream_id, timer.name))
        return due[: max(limit, 0)]

    async def next_timer_due_ms(self) -> int | None:
        """See ``Store.next_timer_due_ms``."""
        self._check_open()
        return min((timer.due_at_ms for timer in self._timers.values()), default=None)

    async def delete_timer(self, stream_id: str, name: str, due_at_ms: int) -> bool:
        """See ``Store.delete_timer``."""
        self._check_open()
        timer = self._timers.get((stream_id, name))
        if timer is None or timer.due_at_ms != due_at_ms:
            return False
        del self._timers[(stream_id, name)]
        return True

    async def read_instance(self, actor_type: str, actor_id: str) -> InstanceInfo | None:
        """See ``Store.read_instance``."""
        self._check_open()
        return self._instances.get((actor_type, actor_id))

    async def list_instances(
        self,
        actor_type: str | None = None,
        status: str | None = None,
        limit: int = 100,
        after: tuple[str, str] | None = None,
    ) -> list[InstanceInfo]:
        """See ``Store.list_instances``."""
        self._check_open()
        keys = sorted(self._instances)
        start = 0 if after is None else bisect.bisect_right(keys, after)
        rows: list[InstanceInfo] = []
        if limit <= 0:
            return rows
        for key in keys[start:]:
            info = self._instances[key]
            if actor_type is not None and info.actor_type != actor_type:
                continue
            if status is not None and info.status != status:
                continue
            rows.append(info)
            if len(rows) >= limit:
                break
        return rows

    async def list_streams(self) -> list[StreamHead]:
        """See ``Store.list_streams``."""
        self._check_open()
        return [
            StreamHead(key, s.epoch, len(s.events), s.owner, s.lease_expires_at_ms)
            for key, s in sorted(self._streams.items())
        ]

    async def join_member(
        self, node_id: str, address: str, now_ms: int, after_incarnation: int
    ) -> Member | None:
        """See ``Store.join_member``."""
        self._check_open()
        check_incarnation(after_incarnation)
        previous = self._members.get(node_id)
        if previous is not None and previous.incarnation != after_incarnation:
            return None
        incarnation = max(after_incarnation + 1, now_ms)
        member = Member(node_id, address, incarnation, "up", now_ms, now_ms)
        self._members[node_id] = member
        return member

    async def heartbeat_member(
        self, node_id: str, incarnation: int, now_ms: int, state: str = "up"
    ) -> bool:
        """See ``Store.heartbeat_member``."""
        self._check_open()
        rank = MEMBER_STATES.index(check_member_state(state))
        member = self._members.get(node_id)
        if (
            member is None
            or member.incarnation != incarnation
            or MEMBER_STATES.index(member.state) > rank
        ):
            return False
        self._members[node_id] = attrs.evolve(
            member, state=state, heartbeat_at_ms=max(member.heartbeat_at_ms + 1, now_ms)
        )
        return True

    async def list_members(self) -> list[Member]:
        """See ``Store.list_members``."""
        self._check_open()
        return [self._members[node_id] for node_id in sorted(self._members)]

    async def prune_member(self, node_id: str, incarnation: int, heartbeat_at_ms: int) -> bool:
        """See ``Store.prune_member``."""
        self._check_open()
        check_incarnation(incarnation)
        member = self._members.get(node_id)
        if member is None or (member.incarnation, member.heartbeat_at_ms) != (
            incarnation,
            heartbeat_at_ms,
        ):
            return False
        del self._members[node_id]
        return True
