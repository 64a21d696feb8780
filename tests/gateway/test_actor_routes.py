"""``POST /v1/actors/{type}/{id}/messages`` through a real server: tell, ask, idempotency."""

from __future__ import annotations

from mainspring.persistence.store import stream_id_of
from tests.gateway.support import Served, error_of

DEPOSIT = "test.account.deposit"


async def test_tell_answers_202_once_committed(served: Served) -> None:
    """A tell answers 202 only after the handler's events are in the store."""
    status, body, _ = await served.call(
        "POST",
        "/v1/actors/test-account/acc-1/messages",
        json={"type": DEPOSIT, "message": {"amount_cents": 120}},
    )
    assert status == 202, body
    assert body == {
        "actor_type": "test-account",
        "actor_id": "acc-1",
        "message_id": None,
        "accepted": True,
    }
    events = await served.node.store.read_events(stream_id_of("test-account", "acc-1"))
    assert [event.type_name for event in events] == ["test.account.deposited"]


async def test_ask_returns_the_reply_and_idempotency_key_applies_once(served: Served) -> None:
    """``?reply=true`` returns the handler's reply; a repeated Idempotency-Key is applied
    once and answers the stored reply."""
    for _ in range(3):
        status, body, _ = await served.call(
            "POST",
            "/v1/actors/test-account/acc-2/messages?reply=true",
            json={"type": DEPOSIT, "message": {"amount_cents": 50}},
            headers={"Idempotency-Key": "deposit-1"},
        )
        assert status == 200, body
        assert body["reply"] == 50
        assert body["message_id"] == "deposit-1"
    status, body, _ = await served.call(
        "POST",
        "/v1/actors/test-account/acc-2/messages?reply=true",
        json={"type": "test.account.get-balance"},
    )
    assert status == 200, body
    assert body["reply"] == 50


async def test_actor_message_errors(served: Served) -> None:
    """Unknown actor types are 404; message types the actor does not handle (or internal
    ones) and fields that do not fit are 422 naming the field; a refusal is 422."""
    status, body, _ = await served.call(
        "POST", "/v1/actors/nobody/a/messages", json={"type": DEPOSIT, "message": {}}
    )
    assert status == 404, body
    assert error_of(body)["code"] == "unknown_actor_type"
    status, body, _ = await served.call(
        "POST", "/v1/actors/mainspring.workflow/a/messages", json={"type": DEPOSIT}
    )
    assert status == 404, body
    for type_name in ("test.nothing", "mainspring.reminder", "gateway-test.order"):
        status, body, _ = await served.call(
            "POST", "/v1/actors/test-account/a/messages", json={"type": type_name, "message": {}}
        )
        assert status == 422, (type_name, body)
        error = error_of(body)
        assert error["details"]["field"] == "type"
        assert DEPOSIT in error["details"]["handled"]
    status, body, _ = await served.call(
        "POST",
        "/v1/actors/test-account/a/messages",
        json={"type": DEPOSIT, "message": {"amount_cents": "5"}},
    )
    assert status == 422, body
    assert error_of(body)["details"]["field"] == "message.amount_cents"
    status, body, _ = await served.call(
        "POST",
        "/v1/actors/test-account/a/messages",
        json={"type": DEPOSIT, "message": {"amount_cents": -5}},
    )
    assert status == 422, body
    assert error_of(body)["code"] == "rejected"
    status, body, _ = await served.call(
        "POST", "/v1/actors/test-account/a/messages?reply=yes", json={"type": DEPOSIT}
    )
    assert status == 422, body
    assert error_of(body)["details"]["field"] == "reply"
    status, body, _ = await served.call(
        "POST", "/v1/actors/test-account/a/messages", json={"type": DEPOSIT, "message": [1]}
    )
    assert status == 422, body
    assert error_of(body)["details"]["field"] == "message"
    assert await served.node.store.read_events(stream_id_of("test-account", "a")) == []
