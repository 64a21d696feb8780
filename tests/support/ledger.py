"""A ledger actor for crash tests: each accepted token becomes one event at a known position."""

from __future__ import annotations

import attrs

import mainspring
from mainspring import ActorContext, handler


@mainspring.event("test.ledger.added", version=1)
@attrs.frozen
class Added:
    token: str


@mainspring.message("test.ledger.add")
@attrs.frozen
class Add:
    token: str


@mainspring.state("test.ledger.state", version=1)
@attrs.frozen
class LedgerState:
    count: int = 0
    checksum: int = 0


def _mix(checksum: int, token: str) -> int:
    """An order-sensitive digest of the tokens, so a replay in another order would differ."""
    for character in token:
        checksum = (checksum * 31 + ord(character)) % 1_000_000_007
    return checksum


class Ledger(mainspring.Actor[LedgerState]):
    type_name = "test-ledger"
    initial_state = LedgerState()
    snapshot_every = 7
    dedupe_window = 100_000

    @handler
    def add(self, ctx: ActorContext[LedgerState], message: Add) -> int:
        ctx.emit(Added(message.token))
        return ctx.state.count

    def evolve(self, state: LedgerState, event: Added) -> LedgerState:
        return LedgerState(state.count + 1, _mix(state.checksum, event.token))
