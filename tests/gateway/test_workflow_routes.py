"""The workflow routes through a real server on loopback, over memory and SQLite stores.

Each test drives the public HTTP API only, and checks what it answers against what the node
(and its store) holds.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import orjson

from mainspring.actors.workflow_runtime import WORKFLOW_ACTOR_TYPE
from mainspring.persistence.store import stream_id_of
from tests.gateway.support import FAILS, Served, error_of
from tests.support.waiting import eventually

ORDER = {"order_id": "A-1", "amount_cents": 250, "items": ["pen"]}


async def start(served: Served, type_name: str, workflow_id: str, value: Any) -> tuple[int, Any]:
    status, body, _ = await served.call(
        "POST", f"/v1/workflows/{type_name}", json={"id": workflow_id, "input": value}
    )
    return status, body


async def test_start_is_idempotent_by_id_and_input(served: Served) -> None:
    """A start answers 201, the same start again 200 with the same id, type and run_id;
    another input or type answers 409 and changes nothing."""
    status, body = await start(served, "gw.order", "order-1", ORDER)
    assert status == 201, body
    assert {key: body[key] for key in ("id", "type", "run_id")} == {
        "id": "order-1",
        "type": "gw.order",
        "run_id": 1,
    }
    assert isinstance(body["status"], str)

    again_status, again = await start(served, "gw.order", "order-1", ORDER)
    assert again_status == 200, again
    assert {key: body[key] for key in ("id", "type", "run_id")} == {
        key: again[key] for key in ("id", "type", "run_id")
    }

    status, conflict = await start(served, "gw.order", "order-1", {**ORDER, "amount_cents": 1})
    assert status == 409, conflict
    assert error_of(conflict)["code"] == "conflict"
    status, conflict = await start(served, "gw.count", "order-1", 3)
    assert status == 409, conflict
    assert "type" in error_of(conflict)["message"]

    description = await served.node.workflows.describe("order-1")
    assert description.workflow_type == "gw.order"
    result = await served.node.workflows.result("order-1", timeout_s=20)
    assert result == {"order_id": "A-1", "doubled": 500, "items": ["pen"]}


async def test_start_validates_the_input_against_the_input_type(served: Served) -> None:
    """The input is structured into the workflow's input type: a missing or mistyped field
    is a 422 that names it, and nothing is started."""
    cases = [
        ({"order_id": "A", "amount_cents": "250"}, "input.amount_cents"),
        ({"amount_cents": 250}, "input.order_id"),
        ({"order_id": "A", "amount_cents": 1, "items": [3]}, "input.items[0]"),
        ([1, 2], "input"),
    ]
    for value, field in cases:
        status, body = await start(served, "gw.order", "bad-order", value)
        assert status == 422, (value, body)
        error = error_of(body)
        assert error["code"] == "validation_failed"
        assert error["details"]["field"] == field, (value, error)
    status, body = await start(served, "gw.count", "bad-count", True)
    assert status == 422, body
    assert error_of(body)["details"]["field"] == "input"
    assert await served.node.store.read_events(stream_id_of(WORKFLOW_ACTOR_TYPE, "bad-order")) == []


async def test_start_refuses_a_malformed_body(served: Served) -> None:
    """Missing id, unknown members, wrong types, empty or non-JSON bodies: 400 or 422 that
    name the problem; an unknown workflow type is a 404."""
    cases: list[tuple[bytes, int, str | None]] = [
        (b"{", 400, "body"),
        (b"", 400, "body"),
        (b"[]", 422, "body"),
        (b'{"input": 1}', 422, "id"),
        (b'{"id": 5}', 422, "id"),
        (b'{"id": ""}', 422, "id"),
        (orjson.dumps({"id": "x" * 513}), 422, "id"),
        (b'{"id": "a", "inputs": 1}', 422, "inputs"),
    ]
    for raw, expected, field in cases:
        status, body, _ = await served.call("POST", "/v1/workflows/gw.count", data=raw)
        assert status == expected, (raw, body)
        assert error_of(body)["details"]["field"] == field, (raw, body)
    status, body = await start(served, "gw.nope", "x", None)
    assert status == 404, body
    assert error_of(body)["code"] == "unknown_workflow_type"
    assert "gw.order" in error_of(body)["details"]["registered"]


async def test_json_nesting_is_bounded(served: Served) -> None:
    """Bodies nested up to 64 levels are taken; deeper ones are a 422 naming the body (they
    would exhaust the recursion of the encoders), never a 500."""
    for depth, expected in ((63, 201), (65, 422), (1000, 422)):
        nested = b"[" * depth + b"]" * depth
        raw = b'{"id": "deep-%d", "input": ' % depth + nested + b"}"
        status, body, _ = await served.call("POST", "/v1/workflows/gw.plain", data=raw)
        assert status == expected, (depth, body)
        if expected == 422:
            assert error_of(body)["details"]["field"] == "body"
    await start(served, "gw.waiter", "deep-signal", None)
    status, body, _ = await served.call(
        "POST", "/v1/workflows/deep-signal/signals/item", data=b"[" * 500 + b"]" * 500
    )
    assert status == 422, body


async def test_get_describes_and_long_polls(served: Served) -> None:
    """GET describes the workflow; ?wait= returns once it closes (or when the wait ends, with
    the workflow as it is); an unknown id is 404; bad waits are 422."""
    status, _ = await start(served, "gw.waiter", "waiter-1", None)
    assert status == 201
    status, body, _ = await served.call("GET", "/v1/workflows/waiter-1?wait=0.2")
    assert status == 200, body
    assert body["status"] == "waiting"
    assert body["closed_at"] is None
    assert body["result"] is None
    assert body["started_at"].endswith("Z")

    await served.node.workflows.signal("waiter-1", "item", "done")
    status, body, _ = await served.call("GET", "/v1/workflows/waiter-1?wait=20")
    assert status == 200, body
    assert body["status"] == "completed"
    assert body["result"] == []
    # A closed workflow reports when it closed (the wall clock may step back, so no ordering).
    assert isinstance(body["closed_at_ms"], int)
    assert body["closed_at_ms"] > 0
    assert body["closed_at"].endswith("Z")

    status, body, _ = await served.call("GET", "/v1/workflows/nobody?wait=0.1")
    assert status == 404, body
    assert error_of(body)["code"] == "unknown_workflow"
    for method, path in (
        ("POST", "/v1/workflows/nobody/signals/item"),
        ("GET", "/v1/workflows/nobody/queries/items"),
        ("POST", "/v1/workflows/nobody/cancel"),
    ):
        status, body, _ = await served.call(method, path)
        assert status == 404, (path, body)
    # Unknown ids are answered from the index: no actor (and no lease row) is made for them.
    assert await served.node.store.read_head(stream_id_of(WORKFLOW_ACTOR_TYPE, "nobody")) is None
    for wait in ("-1", "61", "abc", "nan", "inf"):
        status, body, _ = await served.call("GET", f"/v1/workflows/waiter-1?wait={wait}")
        assert status == 422, (wait, body)
        assert error_of(body)["details"]["field"] == "wait"


async def test_failed_workflow_shows_its_error_and_retries(served: Served) -> None:
    """A workflow that failed in a step shows its error; retry reruns the step from there."""
    status, _ = await start(served, "gw.charge", "charge-1", 7)
    assert status == 201
    status, body, _ = await served.call("GET", "/v1/workflows/charge-1?wait=20")
    assert body["status"] == "failed", body
    assert body["error"]["type"]
    assert body["failed_step"] == 1

    status, body, _ = await served.call("POST", "/v1/workflows/order-x/retry", json={})
    assert status == 404, body
    FAILS["charge"] = False
    status, body, _ = await served.call(
        "POST", "/v1/workflows/charge-1/retry", json={"reason": "card fixed"}
    )
    assert status == 200, body
    assert body["id"] == "charge-1"
    status, body, _ = await served.call("GET", "/v1/workflows/charge-1?wait=20")
    assert body["status"] == "completed", body
    assert body["result"] == 7
    status, body, _ = await served.call("POST", "/v1/workflows/charge-1/retry")
    assert status == 409, body


async def test_signals_are_durable_and_idempotent(served: Served) -> None:
    """A signal answers 202 once recorded; the same Idempotency-Key is applied once; a
    closed workflow answers 409 workflow_closed; an unknown one 404."""
    await start(served, "gw.waiter", "sig-1", None)
    for _ in range(2):
        status, body, _ = await served.call(
            "POST",
            "/v1/workflows/sig-1/signals/item",
            json={"n": 1},
            headers={"Idempotency-Key": "first"},
        )
        assert status == 202, body
        assert body == {"id": "sig-1", "signal": "item", "signal_id": "first"}
    status, body, _ = await served.call("POST", "/v1/workflows/sig-1/signals/item", data=b"")
    assert status == 202, body
    status, body, _ = await served.call("POST", "/v1/workflows/sig-1/signals/item", json="done")
    assert status == 202, body
    assert await served.node.workflows.result("sig-1", timeout_s=20) == [{"n": 1}, None]

    status, body, _ = await served.call("POST", "/v1/workflows/sig-1/signals/item", json=1)
    assert status == 409, body
    assert error_of(body)["code"] == "workflow_closed"
    status, body, _ = await served.call("POST", "/v1/workflows/none/signals/item", json=1)
    assert status == 404, body
    status, body, _ = await served.call("POST", "/v1/workflows/sig-1/signals/9bad", json=1)
    assert status == 422, body
    status, body, _ = await served.call(
        "POST", "/v1/workflows/sig-1/signals/item", json=1, headers={"Idempotency-Key": "k" * 201}
    )
    assert status == 422, body
    assert error_of(body)["details"]["field"] == "Idempotency-Key"


async def test_queries_take_json_arguments(served: Served) -> None:
    """Queries answer from the workflow code; ``args`` is a URL-encoded JSON array."""
    await start(served, "gw.waiter", "query-1", None)
    await served.node.workflows.signal("query-1", "item", "a")
    await served.node.workflows.signal("query-1", "item", "b")
    status, body, _ = await served.call("GET", "/v1/workflows/query-1/queries/items")
    assert status == 200, body
    assert body == {"id": "query-1", "query": "items", "result": ["a", "b"]}
    args = urllib.parse.quote("[1]")
    status, body, _ = await served.call("GET", f"/v1/workflows/query-1/queries/nth?args={args}")
    assert body["result"] == "b", body
    status, body, _ = await served.call("GET", "/v1/workflows/query-1/queries/nope")
    assert status == 404, body
    assert error_of(body)["code"] == "unknown_query"
    status, body, _ = await served.call("GET", "/v1/workflows/query-1/queries/nth?args=%5B")
    assert status == 400, body
    assert error_of(body)["details"]["field"] == "args"
    status, body, _ = await served.call("GET", "/v1/workflows/query-1/queries/nth?args=%7B%7D")
    assert status == 422, body
    for args in ("[]", '["x"]', "[1, 2]"):
        path = f"/v1/workflows/query-1/queries/nth?args={urllib.parse.quote(args)}"
        status, body, _ = await served.call("GET", path)
        assert status == 422, (args, body)
        assert error_of(body)["code"] == "query_failed"
        assert error_of(body)["details"]["error"] == "TypeError"


async def test_cancel_pause_resume_terminate(served: Served) -> None:
    """Control routes record the action and answer the workflow; a closed one refuses 409."""
    await start(served, "gw.waiter", "ctl-1", None)
    status, body, _ = await served.call("POST", "/v1/workflows/ctl-1/pause", json={"reason": "x"})
    assert status == 200, body
    assert body["status"] == "paused"
    status, body, _ = await served.call("POST", "/v1/workflows/ctl-1/resume")
    assert status == 200, body
    assert body["status"] == "waiting"
    status, body, _ = await served.call("POST", "/v1/workflows/ctl-1/cancel", json={})
    assert status == 200, body
    status, body, _ = await served.call("GET", "/v1/workflows/ctl-1?wait=20")
    assert body["status"] == "cancelled", body
    status, body, _ = await served.call("POST", "/v1/workflows/ctl-1/pause")
    assert status == 409, body
    assert error_of(body)["code"] == "workflow_closed"
    status, body, _ = await served.call("POST", "/v1/workflows/ctl-1/cancel", json={"reason": 5})
    assert status == 422, body
    assert error_of(body)["details"]["field"] == "reason"

    await start(served, "gw.waiter", "ctl-2", None)
    status, body, _ = await served.call("POST", "/v1/workflows/ctl-2/terminate")
    assert status == 200, body
    assert body["status"] == "terminated"


async def test_history_is_paginated_in_order(served: Served) -> None:
    """Pages of events with seq, kind, time and data; ``next`` reads on; the pages together
    are the stored stream."""
    await start(served, "gw.waiter", "hist-1", None)
    for value in range(5):
        await served.node.workflows.signal("hist-1", "item", value)
    stored = await served.node.store.read_events(stream_id_of(WORKFLOW_ACTOR_TYPE, "hist-1"))
    seen: list[dict[str, Any]] = []
    after = 0
    for _ in range(100):
        status, body, _ = await served.call(
            "GET", f"/v1/workflows/hist-1/history?after={after}&limit=2"
        )
        assert status == 200, body
        assert len(body["events"]) <= 2
        seen.extend(body["events"])
        if body["next"] is None:
            break
        after = body["next"]
    assert [event.seq for event in stored] == [item["seq"] for item in seen]
    assert seen[0]["kind"] == "started"
    assert seen[0]["data"]["name"] == "gw.waiter"
    signals = [item["data"]["data"] for item in seen if item["kind"] == "signal"]
    assert [{"d": value} for value in range(5)] == signals
    assert all(item["time"].endswith("Z") for item in seen)

    status, body, _ = await served.call("GET", "/v1/workflows/nobody/history")
    assert status == 404, body
    status, body, _ = await served.call("GET", f"/v1/workflows/hist-1/history?after={10**6}")
    assert status == 200, body
    assert body == {"id": "hist-1", "events": [], "next": None}
    for query in ("limit=0", "limit=1001", "after=-1", "after=x", "limit=1&limit=2", "foo=1"):
        status, body, _ = await served.call("GET", f"/v1/workflows/hist-1/history?{query}")
        assert status == 422, (query, body)


async def test_list_filters_by_type_and_status_with_a_cursor(served: Served) -> None:
    """The list pages through the index; ``type`` and ``status`` filter it; the pages
    together are exactly the matching workflows."""
    for number in range(7):
        await start(served, "gw.count", f"list-c{number}", number)
    for number in range(4):
        await start(served, "gw.waiter", f"list-w{number}", None)

    async def all_pages(query: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor = ""
        for _ in range(100):
            status, body, _ = await served.call("GET", f"/v1/workflows?{query}{cursor}")
            assert status == 200, body
            items.extend(body["workflows"])
            if body["next"] is None:
                return items
            cursor = f"&cursor={urllib.parse.quote(body['next'])}"
        raise AssertionError("the list never ended")

    waiting = await all_pages("type=gw.waiter&limit=3")
    assert sorted(item["id"] for item in waiting) == [f"list-w{n}" for n in range(4)]
    assert {item["type"] for item in waiting} == {"gw.waiter"}
    everything = await all_pages("limit=2")
    assert [item["id"] for item in everything] == sorted(item["id"] for item in everything)
    assert len(everything) == 11

    async def counted_done() -> bool:
        return len(await all_pages("type=gw.count&status=completed&limit=5")) == 7

    await eventually(counted_done, what="the counting workflows complete")
    assert await all_pages("status=waiting&type=gw.count") == []
    for query in ("status=bogus", "limit=0", "cursor=%%%", "cursor=", "type="):
        status, body, _ = await served.call("GET", f"/v1/workflows?{query}")
        assert status == 422, (query, body)
