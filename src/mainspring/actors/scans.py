"""Scans that keep durable work moving: due reminders and undelivered outbox messages.

Both run on the node that hosts the actors, wake up early when this node writes new work, and
poll the store on an interval so that work left behind by a crash is always found again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Final, final

import attrs

from mainspring.actors.actor import Reminder
from mainspring.actors.host import ActorHost
from mainspring.errors import (
    CodecError,
    CommandRejected,
    ConcurrencyConflict,
    Fenced,
    LeaseHeld,
    NodeClosed,
    Overloaded,
    StoreUnavailable,
    UnknownActorType,
)
from mainspring.persistence.store import OutboxMessage, Timer, split_stream_id

__all__ = ["OutboxRelay", "ScanStatistics", "TimerScanner"]

log: Final = logging.getLogger(__name__)

_RETRYABLE: Final = (
    Overloaded,
    StoreUnavailable,
    LeaseHeld,
    Fenced,
    ConcurrencyConflict,
    NodeClosed,
)
"""Delivery failures that say "not now": the work stays in the store and is tried again."""


@attrs.define
class ScanStatistics:
    """Counters of the scans since the node started."""

    reminders_fired: int = 0
    reminders_failed: int = 0
    outbox_delivered: int = 0
    outbox_retried: int = 0
    outbox_dead_letters: int = 0
    timer_lag_ms: int = 0
    """Now minus the due time of the oldest due timer, at the last timer scan (0: none due)."""


class _Waker:
    """An event with a deadline: ``wait`` returns at ``deadline`` or when ``wake`` is called."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def wake(self) -> None:
        self._event.set()

    async def wait(self, timeout_s: float) -> None:
        try:
            async with asyncio.timeout(max(timeout_s, 0.0)):
                await self._event.wait()
        except TimeoutError:
            pass
        self._event.clear()


@final
class TimerScanner:
    """Fires due reminders as ``Reminder`` messages; a fired timer is deleted only after the
    actor has handled (and committed) its reminder, so a crash in between fires it again."""

    def __init__(
        self, host: ActorHost, statistics: ScanStatistics, *, batch_timers_max: int = 256
    ) -> None:
        self._host = host
        self._statistics = statistics
        self._batch_timers_max = batch_timers_max
        self._waker = _Waker()
        self._planned_wake_ms: int | None = None

    def on_timer_set(self, due_at_ms: int) -> None:
        """Called when this node commits a timer; wakes the scan if it is due earlier."""
        if self._planned_wake_ms is None or due_at_ms < self._planned_wake_ms:
            self._waker.wake()

    async def run(self) -> None:
        """Scan forever (until cancelled)."""
        host = self._host
        poll_s = host.config.timer_poll_interval_s
        while True:
            now_ms = host.clock.wall_ms()
            try:
                due = await host.store.read_due_timers(now_ms, self._batch_timers_max)
                self._statistics.timer_lag_ms = max(now_ms - due[0].due_at_ms, 0) if due else 0
                # In a cluster each node fires only the timers of the actors it owns.
                owned = [timer for timer in due if host.owns(timer.stream_id)]
                fired = await asyncio.gather(*(self._fire(timer) for timer in owned))
                if any(fired):
                    continue  # more may be due behind them
                # Nothing fired: the due timers are owned elsewhere, or every delivery was
                # deferred (the actor's lease is held by another node, say, until it expires).
                # Look again after the poll interval, not at once: that would spin on the store.
                next_due_ms = None if due else await host.store.next_timer_due_ms()
            except StoreUnavailable as error:
                log.warning("TimerScanFailed", extra={"error": str(error)})
                next_due_ms = None
            wait_s = poll_s
            if next_due_ms is not None:
                wait_s = min(poll_s, (next_due_ms - now_ms) / 1000)
            self._planned_wake_ms = now_ms + int(wait_s * 1000)
            await self._waker.wait(wait_s)
            self._planned_wake_ms = None

    async def _fire(self, timer: Timer) -> bool:
        """Deliver one reminder; False when the delivery was deferred (it stays due)."""
        host = self._host
        actor_type, actor_id = split_stream_id(timer.stream_id)
        try:
            payload = None if timer.payload is None else host.codec.loads_any(timer.payload)
            reply = host.deliver(
                actor_type,
                actor_id,
                Reminder(timer.name, timer.due_at_ms, payload),
                f"reminder:{timer.name}:{timer.due_at_ms}",
                want_reply=True,
            )
            assert reply is not None
            await reply
        except _RETRYABLE as error:
            # Left in place: the next scan fires it again.
            log.debug("ReminderDeferred", extra={"stream_id": timer.stream_id, "error": str(error)})
            return False
        except (UnknownActorType, CodecError, CommandRejected, Exception) as error:
            self._statistics.reminders_failed += 1
            log.error(
                "ReminderFailed",
                extra={"stream_id": timer.stream_id, "reminder": timer.name},
                exc_info=error,
            )
        else:
            self._statistics.reminders_fired += 1
        await host.store.delete_timer(timer.stream_id, timer.name, timer.due_at_ms)
        return True


@final
class OutboxRelay:
    """Delivers committed outbox messages to their target actors and deletes them once the
    target has committed (or deduplicated) them: at-least-once delivery, exactly-once effect."""

    def __init__(
        self, host: ActorHost, statistics: ScanStatistics, *, batch_messages_max: int = 512
    ) -> None:
        self._host = host
        self._statistics = statistics
        self._batch_messages_max = batch_messages_max
        self._waker = _Waker()

    def on_outbox_written(self) -> None:
        """Called when this node commits outbox messages."""
        self._waker.wake()

    async def run(self) -> None:
        """Relay forever (until cancelled)."""
        config = self._host.config
        while True:
            try:
                pending = await self._host.store.read_outbox(self._batch_messages_max)
                # In a cluster the owner of the sending actor relays its messages.
                pending = [m for m in pending if self._host.owns(m.source_stream_id)]
            except StoreUnavailable as error:
                log.warning("OutboxScanFailed", extra={"error": str(error)})
                await self._waker.wait(config.outbox_retry_interval_s)
                continue
            if not pending:
                await self._waker.wait(config.outbox_poll_interval_s)
                continue
            retry_later = await self._deliver_all(pending)
            if retry_later:
                await self._waker.wait(config.outbox_retry_interval_s)

    async def _deliver_all(self, pending: list[OutboxMessage]) -> bool:
        """Deliver a batch; returns whether some messages must wait for a retry."""
        host = self._host
        blocked_targets: set[tuple[str, str]] = set()
        in_flight: list[tuple[OutboxMessage, asyncio.Future[Any]]] = []
        finished: list[str] = []
        for message in pending:
            target = (message.target_type, message.target_id)
            if target in blocked_targets:
                continue  # keep per-target order: nothing overtakes a message that must wait
            try:
                decoded = host.codec.decode(
                    message.type_name, message.type_version, message.payload
                )
                future = host.deliver(
                    message.target_type,
                    message.target_id,
                    decoded,
                    message.message_id,
                    want_reply=True,
                )
                assert future is not None
                in_flight.append((message, future))
            except _RETRYABLE:
                blocked_targets.add(target)
            except (UnknownActorType, CodecError, Exception) as error:
                self._dead_letter(message, error)
                finished.append(message.message_id)
        for message, future in in_flight:
            try:
                await future
            except _RETRYABLE:
                blocked_targets.add((message.target_type, message.target_id))
                continue
            except Exception as error:
                self._dead_letter(message, error)
            else:
                self._statistics.outbox_delivered += 1
            finished.append(message.message_id)
        if finished:
            await host.store.delete_outbox(finished)
        if blocked_targets:
            self._statistics.outbox_retried += 1
        return bool(blocked_targets)

    def _dead_letter(self, message: OutboxMessage, error: BaseException) -> None:
        self._statistics.outbox_dead_letters += 1
        log.error(
            "OutboxMessageRejected",
            extra={
                "message_id": message.message_id,
                "source": message.source_stream_id,
                "target": f"{message.target_type}/{message.target_id}",
            },
            exc_info=error,
        )


def start_scans(
    host: ActorHost, statistics: ScanStatistics
) -> tuple[TimerScanner, OutboxRelay, Callable[[], None]]:
    """Wire both scans to the host's notifications; returns them and an unwiring function."""
    timers = TimerScanner(host, statistics)
    relay = OutboxRelay(host, statistics)
    host.on_timers_set = timers.on_timer_set
    host.on_outbox_written = relay.on_outbox_written

    def unwire() -> None:
        host.on_timers_set = lambda due_at_ms: None
        host.on_outbox_written = lambda: None

    return timers, relay, unwire
