"""PostgresStore and MemoryStore, driven through the same random operations, must agree.

The conformance suite states each rule once; this test looks for the corners between rules
(dedupe windows with forgotten ids recorded again, timers cancelled and set in one request,
outbox ids written twice, stale epochs and heads in mixed batches, renewals of lost leases).
After every operation both stores must give the same result (or raise the same error) and hold
the same state, read through every method of the protocol.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mainspring.persistence.memory import MemoryStore
from mainspring.persistence.postgres import PostgresStore
from mainspring.persistence.store import (
    AppendRequest,
    DedupeRecord,
    NewEvent,
    OutboxMessage,
    Snapshot,
    Timer,
)
from tests.conftest import POSTGRES_DSN, drop_postgres_schema, require_postgres

pytestmark = pytest.mark.postgres

TTL_MS = 10_000
START_MS = 1_700_000_000_000
STREAMS = ("acct/a", "acct/b", "order/x")
OWNERS = ("node-1", "node-2")
MESSAGE_IDS = ("m0", "m1", "m2")
OUTBOX_IDS = ("o0", "o1", "o2")
TIMER_NAMES = ("t0", "t1")
STATUSES = (None, "", "active", "done")

_schemas = itertools.count()


@attrs.frozen
class AppendSpec:
    """One request, relative to the stream's state when it runs (stale by the shifts)."""

    stream: str
    epoch_shift: int
    expected_shift: int
    event_count: int
    dedupe: tuple[tuple[str, int], ...]
    window: int
    outbox: tuple[str, ...]
    timers_set: tuple[tuple[str, int, bytes | None], ...]
    timers_cancelled: tuple[str, ...]
    snapshot: bool
    status: str | None


append_specs = st.builds(
    AppendSpec,
    stream=st.sampled_from(STREAMS),
    epoch_shift=st.sampled_from((0, 0, 0, 1)),
    expected_shift=st.sampled_from((0, 0, 0, 1, -1)),
    event_count=st.integers(0, 3),
    dedupe=st.lists(
        st.tuples(st.sampled_from(MESSAGE_IDS), st.integers(1, 3)),
        max_size=3,
        unique_by=lambda record: record[0],
    ).map(tuple),
    window=st.integers(0, 3),
    outbox=st.lists(st.sampled_from(OUTBOX_IDS), max_size=2).map(tuple),
    timers_set=st.lists(
        st.tuples(st.sampled_from(TIMER_NAMES), st.integers(0, 5), st.sampled_from((None, b"p"))),
        max_size=2,
    ).map(tuple),
    timers_cancelled=st.lists(st.sampled_from(TIMER_NAMES), max_size=2).map(tuple),
    snapshot=st.booleans(),
    status=st.sampled_from(STATUSES),
)

lease_lists = st.lists(st.tuples(st.sampled_from(STREAMS), st.sampled_from((0, 1))), max_size=3)
appends = st.tuples(
    st.just("append"), st.lists(append_specs, max_size=3, unique_by=lambda spec: spec.stream)
)

steps = st.one_of(
    appends,
    appends,  # listed thrice: appends are what most of the rules are about
    appends,
    st.tuples(st.just("acquire"), st.sampled_from(STREAMS), st.sampled_from(OWNERS), st.booleans()),
    st.tuples(st.just("renew"), st.sampled_from(OWNERS), lease_lists),
    st.tuples(st.just("release"), st.sampled_from(OWNERS), lease_lists),
    st.tuples(st.just("delete_outbox"), st.lists(st.sampled_from(OUTBOX_IDS), max_size=2)),
    st.tuples(
        st.just("delete_timer"),
        st.sampled_from(STREAMS),
        st.sampled_from(TIMER_NAMES),
        st.integers(0, 5),
    ),
    st.tuples(st.just("advance"), st.sampled_from((1, TTL_MS // 2, TTL_MS))),
)


class World:
    """The two stores and the shared clock; runs one step on both."""

    def __init__(self, store: PostgresStore, reference: MemoryStore) -> None:
        self.store = store
        self.reference = reference
        self.now_ms = START_MS

    async def run(self, step: tuple[Any, ...]) -> None:
        kind = step[0]
        if kind == "advance":
            self.now_ms += step[1]
            return
        call = await getattr(self, f"_{kind}")(*step[1:])
        assert await outcome(call, self.store) == await outcome(call, self.reference), step

    async def _acquire(self, stream: str, owner: str, steal: bool) -> Any:
        now_ms = self.now_ms
        return lambda s: s.acquire_lease(stream, owner, now_ms, TTL_MS, steal=steal)

    async def _append(self, specs: list[AppendSpec]) -> Any:
        requests = [await self._request(spec) for spec in specs]
        return lambda s: s.append_batch(requests)

    async def _renew(self, owner: str, leases: list[tuple[str, int]]) -> Any:
        held = [(stream, await self._epoch(stream, shift)) for stream, shift in leases]
        now_ms = self.now_ms
        return lambda s: s.renew_leases(owner, held, now_ms, TTL_MS)

    async def _release(self, owner: str, leases: list[tuple[str, int]]) -> Any:
        held = [(stream, await self._epoch(stream, shift)) for stream, shift in leases]
        return lambda s: s.release_leases(owner, held)

    async def _delete_outbox(self, message_ids: list[str]) -> Any:
        return lambda s: s.delete_outbox(message_ids)

    async def _delete_timer(self, stream: str, name: str, due_offset: int) -> Any:
        due_at_ms = START_MS + due_offset
        return lambda s: s.delete_timer(stream, name, due_at_ms)

    async def _epoch(self, stream: str, shift: int) -> int:
        head = await self.reference.read_head(stream)
        return max(1, (0 if head is None else head.epoch) - shift)

    async def _request(self, spec: AppendSpec) -> AppendRequest:
        head = await self.reference.read_head(spec.stream)
        expected = max(0, (0 if head is None else head.head_seq) + spec.expected_shift)
        new_head = expected + spec.event_count
        # A caller never records again an id the stream still holds (it answers that duplicate
        # from its window); an id the window forgot may come again.
        held = {record.message_id for record in await self.reference.read_dedupe(spec.stream, 100)}
        return AppendRequest(
            stream_id=spec.stream,
            epoch=await self._epoch(spec.stream, spec.epoch_shift),
            expected_seq=expected,
            events=[NewEvent("test.e", 1, b"%d" % n) for n in range(spec.event_count)],
            recorded_at_ms=self.now_ms,
            dedupe=[
                DedupeRecord(message_id, expected + offset, b"r%d" % offset)
                for message_id, offset in spec.dedupe
                if offset <= spec.event_count and message_id not in held
            ],
            dedupe_window=spec.window,
            outbox=[
                OutboxMessage(m, spec.stream, "acct", "t", "test.m", 1, b"{}", self.now_ms)
                for m in spec.outbox
            ],
            timers_set=[
                Timer(spec.stream, name, START_MS + due, payload)
                for name, due, payload in spec.timers_set
            ],
            timers_cancelled=spec.timers_cancelled,
            snapshot=(
                Snapshot(spec.stream, new_head, "test.s", 1, b"s", self.now_ms)
                if spec.snapshot
                else None
            ),
            status=spec.status,
        )


async def outcome(call: Any, store: Any) -> Any:
    """The call's result, or its error as (type, message), comparable across stores."""
    try:
        result = await call(store)
    except Exception as error:
        return (type(error), str(error))
    if isinstance(result, list):
        return [(type(r), str(r)) if isinstance(r, BaseException) else r for r in result]
    return result


async def state(store: Any) -> dict[str, Any]:
    """Everything a store holds, read through the protocol."""
    seen: dict[str, Any] = {
        "streams": await store.list_streams(),
        "outbox": await store.read_outbox(100),
        "due": await store.read_due_timers(START_MS + 100, 100),
        "next_due": await store.next_timer_due_ms(),
        "instances": await store.list_instances(),
        "acct": await store.list_instances(actor_type="acct", limit=1, after=("acct", "a")),
        "done": await store.list_instances(status="done"),
    }
    for stream in STREAMS:
        actor_type, actor_id = stream.split("/")
        seen[stream] = (
            await store.read_events(stream),
            await store.read_events(stream, after_seq=1, limit=2),
            await store.read_snapshot(stream),
            await store.read_dedupe(stream, 10),
            await store.read_dedupe(stream, 1),
            await store.read_lease_history(stream),
            await store.read_instance(actor_type, actor_id),
        )
    return seen


@pytest.fixture
async def postgres_up() -> None:
    await require_postgres()


@pytest.mark.usefixtures("postgres_up")
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(script=st.lists(steps, max_size=25))
async def test_postgres_store_agrees_with_the_memory_store(script: list[Any]) -> None:
    schema = f"m_{os.getpid()}_{next(_schemas)}"
    store = PostgresStore(POSTGRES_DSN, schema=schema, pool_max_size=2)
    reference = MemoryStore()
    await store.open()
    await reference.open()
    try:
        world = World(store, reference)
        # Start with every stream leased, so that most appends have a chance to commit.
        for stream in STREAMS:
            await world.run(("acquire", stream, OWNERS[0], False))
        for step in script:
            await world.run(step)
            assert await state(store) == await state(reference), step
    finally:
        await store.close()
        await drop_postgres_schema(schema)
