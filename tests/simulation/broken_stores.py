"""Deliberately broken stores, to prove that the checkers catch what they claim to catch.

Each wraps a real ``MemoryStore`` (which is final) and delegates everything but the one guard
it removes. They are test fixtures: nothing else may use them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from mainspring.persistence.memory import MemoryStore
from mainspring.persistence.store import AppendRequest, AppendResult, DedupeRecord


class _Delegating:
    def __init__(self) -> None:
        self.inner = MemoryStore()

    def __getattr__(self, name: str) -> Any:
        # Only called for what the class does not define: every other Store method.
        return getattr(self.inner, name)


class FencingOffStore(_Delegating):
    """Accepts appends from any epoch: each request is rewritten to the stream's current epoch
    before the real store checks it, so a deposed owner's write commits (if its seq fits)."""

    async def append_batch(self, requests: Sequence[AppendRequest]) -> list[AppendResult]:
        rewritten = []
        for request in requests:
            head = await self.inner.read_head(request.stream_id)
            epoch = request.epoch if head is None else head.epoch
            rewritten.append(attrs.evolve(request, epoch=epoch))
        return await self.inner.append_batch(rewritten)


class DedupeOffStore(_Delegating):
    """Drops the dedupe records of every append and reads none back, so a fresh activation
    has forgotten every message id it accepted."""

    async def append_batch(self, requests: Sequence[AppendRequest]) -> list[AppendResult]:
        return await self.inner.append_batch(
            [attrs.evolve(request, dedupe=()) for request in requests]
        )

    async def read_dedupe(self, stream_id: str, limit: int) -> list[DedupeRecord]:
        return []


class ClaimIgnoresLeaseStore(_Delegating):
    """Takes a stream with no events for new: a request that creates its stream (``claim``)
    takes it over even while another node holds its lease, as a store that checked for events
    instead of for a lease would."""

    async def append_batch(self, requests: Sequence[AppendRequest]) -> list[AppendResult]:
        rewritten = []
        for request in requests:
            claim = request.claim
            head = await self.inner.read_head(request.stream_id)
            if claim is not None and head is not None and head.head_seq == 0:
                lease = await self.inner.acquire_lease(
                    request.stream_id, claim.owner, claim.now_ms, claim.ttl_ms, steal=True
                )
                request = attrs.evolve(request, claim=None, epoch=lease.epoch)
            rewritten.append(request)
        return await self.inner.append_batch(rewritten)
