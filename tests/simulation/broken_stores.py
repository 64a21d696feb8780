"""Deliberately broken stores, to prove that the checkers catch what they claim to catch.

Each wraps a real ``MemoryStore`` (which is final) and delegates everything but the one guard
it removes. They are test fixtures: nothing else may use them. ``FencingOffStore`` and
``DedupeOffStore`` are the ones ``mainspring simulate --self-check`` runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from mainspring.persistence.memory import MemoryStore
from mainspring.persistence.store import AppendRequest, AppendResult
from mainspring.simulations.selfcheck import DedupeOffStore, FencingOffStore

__all__ = ["ClaimIgnoresLeaseStore", "DedupeOffStore", "FencingOffStore"]


class ClaimIgnoresLeaseStore:
    """Takes a stream with no events for new: a request that creates its stream (``claim``)
    takes it over even while another node holds its lease, as a store that checked for events
    instead of for a lease would."""

    def __init__(self) -> None:
        self.inner = MemoryStore()

    def __getattr__(self, name: str) -> Any:
        # Only called for what the class does not define: every other Store method.
        return getattr(self.inner, name)

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
