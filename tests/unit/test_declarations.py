"""Actor declarations and node settings are validated when they are made."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

import mainspring
from mainspring import ActorContext, NodeConfig, UsageError, handler
from mainspring.persistence.memory import MemoryStore


@attrs.frozen
class Ping:
    pass


def test_an_actor_needs_a_valid_type_name() -> None:
    with pytest.raises(UsageError, match="type_name"):

        class Nameless(mainspring.Actor[int]):
            @handler(Ping)
            def ping(self, ctx: ActorContext[int], message: Ping) -> None: ...

    with pytest.raises(UsageError, match="type_name"):

        class Slashed(mainspring.Actor[int]):
            type_name = "a/b"

            @handler(Ping)
            def ping(self, ctx: ActorContext[int], message: Ping) -> None: ...


def test_an_actor_needs_a_handler() -> None:
    with pytest.raises(UsageError, match="no @handler methods"):

        class Idle(mainspring.Actor[int]):
            type_name = "idle"


def test_a_bare_handler_needs_a_resolvable_message_annotation() -> None:
    with pytest.raises(UsageError, match="class annotation"):

        class Untyped(mainspring.Actor[int]):
            type_name = "untyped"

            @handler
            def ping(self, ctx, message):  # type: ignore[no-untyped-def]
                return None


def test_policies_must_be_non_negative_ints() -> None:
    with pytest.raises(UsageError, match="snapshot_every must be an int >= 0, got -1"):

        class Bad(mainspring.Actor[int]):
            type_name = "bad"
            snapshot_every = -1

            @handler(Ping)
            def ping(self, ctx: ActorContext[int], message: Ping) -> None: ...


def test_handlers_are_found_by_message_class() -> None:
    class Pinger(mainspring.Actor[int]):
        type_name = "pinger"

        @handler(Ping)
        def ping(self, ctx: ActorContext[int], message: Ping) -> str:
            return "pong"

    assert Pinger.handler_for(Ping()) is Pinger.ping
    with pytest.raises(UsageError, match="has no handler for int"):
        Pinger.handler_for(3)


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"mailbox_messages_max": 0}, "mailbox_messages_max must be an int >= 1, got 0"),
        ({"lease_ttl_s": -1}, "lease_ttl_s must be a number > 0"),
        ({"lease_ttl_s": 10, "lease_renew_interval_s": 6}, "at most half of lease_ttl_s"),
        ({"journal_batch_max": 1.5}, "journal_batch_max must be an int"),
    ],
)
def test_node_config_names_the_bad_value(settings: dict[str, Any], match: str) -> None:
    with pytest.raises(UsageError, match=match):
        NodeConfig(**settings)


def test_node_arguments_are_validated() -> None:
    with pytest.raises(UsageError, match="node_id"):
        mainspring.Node("", store=MemoryStore())
    with pytest.raises(UsageError, match="Actor subclasses"):
        mainspring.Node("n", store=MemoryStore(), actors=[int])  # type: ignore[list-item]
    with pytest.raises(UsageError, match="NodeConfig"):
        mainspring.Node("n", store=MemoryStore(), config={"lease_ttl_s": 1})  # type: ignore[arg-type]


def test_replay_folds_a_log_and_refuses_a_gap() -> None:
    from mainspring.persistence.store import StoredEvent
    from tests.support.accounts import Account, AccountState, Deposited

    encoded = mainspring.registry.encode(Deposited(5))

    def stored(seq: int) -> StoredEvent:
        return StoredEvent(
            "test-account/a",
            seq,
            1,
            encoded.type_name,
            encoded.type_version,
            encoded.payload,
            None,
            0,
        )

    assert mainspring.replay(Account, [stored(1), stored(2)]) == AccountState(10, 2)
    with pytest.raises(AssertionError):
        mainspring.replay(Account, [stored(1), stored(3)])
