"""Authentication, the error envelope for every status, health, metrics, bounds and drain."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest
from yarl import URL

from mainspring import NodeConfig
from mainspring.gateway import Gateway
from mainspring.persistence.memory import MemoryStore
from tests.gateway.support import TOKEN, GatedStore, Served, error_of, serve
from tests.support.waiting import eventually


async def test_v1_routes_need_a_bearer_token(served_memory: Served) -> None:
    """Without a token or with a wrong one, /v1 answers 401 with a Bearer challenge; health,
    readiness, metrics and the OpenAPI document stay open."""
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        status, body, response = await served_memory.call(
            "GET", "/v1/workflows", headers=headers, token=None
        )
        assert status == 401, (headers, body)
        assert error_of(body)["code"] == "unauthorized"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    status, body, response = await served_memory.call(
        "GET", "/v1/unknown", headers={"Authorization": "Bearer wrong"}, token=None
    )
    assert status == 401, body
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        status, body, _ = await served_memory.call("GET", path, token=None)
        assert status == 200, (path, body)
    status, body, _ = await served_memory.call("GET", "/v1/workflows")
    assert status == 200, body


async def test_without_tokens_v1_is_open() -> None:
    """A gateway built without tokens does not ask for one."""
    async with serve(MemoryStore(), tokens=()) as served:
        status, body, _ = await served.call("GET", "/v1/workflows", token=None)
        assert status == 200, body
        assert "securitySchemes" not in served.gateway.openapi["components"]


async def test_routing_errors_are_json(served_memory: Served) -> None:
    """Unknown routes are a JSON 404, a wrong method a JSON 405 with Allow."""
    status, body, _ = await served_memory.call("GET", "/nowhere")
    assert status == 404, body
    assert error_of(body)["code"] == "not_found"
    status, body, _ = await served_memory.call("GET", "/v1/workflows/a/b/c/d")
    assert status == 404, body
    status, body, response = await served_memory.call("DELETE", "/v1/workflows/x")
    assert status == 405, body
    assert error_of(body)["code"] == "method_not_allowed"
    assert "GET" in response.headers["Allow"]
    status, body, _ = await served_memory.call("PUT", "/healthz")
    assert status == 405, body


async def test_too_large_bodies_are_413() -> None:
    """A body over ``body_max_bytes`` is refused with 413 before it is parsed."""
    async with serve(MemoryStore(), body_max_bytes=2048) as served:
        status, body, _ = await served.call(
            "POST", "/v1/workflows/gw.plain", json={"id": "big", "input": "x" * 4000}
        )
        assert status == 413, body
        assert error_of(body)["code"] == "body_too_large"
        status, body, _ = await served.call(
            "POST", "/v1/workflows/gw.plain", json={"id": "small", "input": "x" * 100}
        )
        assert status == 201, body


async def test_overloaded_is_429_with_retry_after() -> None:
    """A full mailbox answers 429 with Retry-After, and nothing of that request is kept."""
    store = GatedStore(MemoryStore())
    config = NodeConfig(mailbox_messages_max=1)
    async with serve(store, config=config) as served:
        path = "/v1/actors/test-account/busy/messages"
        message = {"type": "test.account.deposit", "message": {"amount_cents": 1}}
        store.gate.clear()
        first = asyncio.ensure_future(served.call("POST", path, json=message))
        await asyncio.wait_for(store.waiting.wait(), 20)
        second = asyncio.ensure_future(served.call("POST", path, json=message))

        async def queued() -> bool:
            return len(served.node.host.live["test-account/busy"].mailbox) >= 1

        await eventually(queued, what="the second message is queued")
        status, body, response = await served.call("POST", path, json=message)
        assert status == 429, body
        assert error_of(body)["code"] == "overloaded"
        assert int(response.headers["Retry-After"]) >= 1
        store.gate.set()
        assert (await first)[0] == 202
        assert (await second)[0] == 202
        balance = await served.node.ask("test-account", "busy", _balance())
        assert balance == 2


def _balance() -> object:
    from tests.support.accounts import GetBalance

    return GetBalance()


async def test_every_wait_is_bounded() -> None:
    """A store that does not answer makes requests time out with 504, not hang."""
    store = GatedStore(MemoryStore())
    async with serve(store, request_timeout_s=0.3) as served:
        store.gate.clear()
        status, body, _ = await served.call(
            "POST", "/v1/workflows/gw.plain", json={"id": "stuck", "input": 1}
        )
        assert status == 504, body
        assert error_of(body)["code"] == "timeout"
        store.gate.set()
        status, body, _ = await served.call(
            "POST", "/v1/workflows/gw.plain", json={"id": "stuck", "input": 1}
        )
        assert status in {200, 201}, body


async def test_health_readiness_and_metrics() -> None:
    """healthz answers while the process lives; readyz is 503 when the store is unreachable
    or the node is not running; /metrics serves the telemetry's text."""
    store = GatedStore(MemoryStore())
    async with serve(store) as served:
        status, body, _ = await served.call("GET", "/healthz")
        assert (status, body["status"]) == (200, "ok")
        status, body, _ = await served.call("GET", "/readyz")
        assert (status, body["status"]) == (200, "ready")
        store.unreachable = True
        status, body, response = await served.call("GET", "/readyz")
        assert status == 503, body
        assert error_of(body)["code"] == "unavailable"
        assert response.headers["Retry-After"] == "1"
        store.unreachable = False
        exposition = "# TYPE sample_total counter\nsample_total 3\n"
        served.node.telemetry.prometheus_text = lambda: exposition  # type: ignore[method-assign]
        status, text, response = await served.call("GET", "/metrics", token=None)
        assert status == 200
        assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert text == exposition
        await served.node.stop()
        status, body, _ = await served.call("GET", "/readyz")
        assert status == 503, body
        assert "stopped" in error_of(body)["message"]
        status, body, _ = await served.call("GET", "/healthz")
        assert status == 200, body
        status, body, _ = await served.call(
            "POST", "/v1/workflows/gw.plain", json={"id": "late", "input": 1}
        )
        assert status == 503, body


async def test_stop_drains_in_flight_requests() -> None:
    """stop() closes the listener, lets a request in flight finish, answers long polls at
    once, and then refuses connections."""
    store = GatedStore(MemoryStore())
    async with serve(store) as served:
        status, _, _ = await served.call(
            "POST", "/v1/workflows/gw.waiter", json={"id": "poll", "input": None}
        )
        assert status == 201
        poll = asyncio.ensure_future(served.call("GET", "/v1/workflows/poll?wait=60"))
        store.gate.clear()
        in_flight = asyncio.ensure_future(
            served.call("POST", "/v1/workflows/gw.plain", json={"id": "drained", "input": 2})
        )
        await asyncio.wait_for(store.waiting.wait(), 20)
        stopping = asyncio.ensure_future(served.gateway.stop(drain_timeout_s=30))
        status, body, _ = await asyncio.wait_for(poll, 20)
        assert (status, body["status"]) == (200, "waiting")
        assert not stopping.done()
        store.gate.set()
        status, body, _ = await asyncio.wait_for(in_flight, 20)
        assert status == 201, body
        await asyncio.wait_for(stopping, 20)
        with pytest.raises(aiohttp.ClientConnectionError):
            async with aiohttp.ClientSession() as fresh:
                await fresh.get(served.url + "/healthz")


async def test_constructor_and_start_validate_their_arguments() -> None:
    """Bad tokens, body limits, timeouts and ports are refused with UsageError."""
    from mainspring import Node
    from mainspring.errors import UsageError

    node = Node("check", store=MemoryStore())
    for kwargs in (
        {"tokens": "abc"},
        {"tokens": [""]},
        {"tokens": ["a b"]},
        {"body_max_bytes": 10},
        {"request_timeout_s": 0},
    ):
        with pytest.raises(UsageError):
            Gateway(node, **kwargs)  # type: ignore[arg-type]
    gateway = Gateway(node)
    with pytest.raises(UsageError):
        await gateway.start("127.0.0.1", 70000)
    await gateway.stop()


async def test_a_stalled_body_is_408() -> None:
    """A client that announces a body and stalls gets 408 within the request timeout, with
    ``Connection: close``."""
    async with serve(MemoryStore(), request_timeout_s=0.3) as served:
        url = URL(served.url)
        reader, writer = await asyncio.open_connection(url.host, url.port)
        try:
            writer.write(
                b"POST /v1/workflows/gw.plain HTTP/1.1\r\nHost: x\r\n"
                b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
                b'Content-Length: 100\r\n\r\n{"id": '
            )
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
            assert head.startswith(b"HTTP/1.1 408"), head
            assert b"connection: close" in head.lower(), head
            (length,) = [
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ]
            body = await asyncio.wait_for(reader.readexactly(length), 20)
        finally:
            writer.close()
        assert error_of(orjson.loads(body))["code"] == "body_timeout"


async def test_a_stopped_gateway_starts_again() -> None:
    """stop() then start() serves again (on a new port); a second start() while serving is
    refused."""
    from mainspring import Node
    from mainspring.errors import UsageError

    async with Node("restart", store=MemoryStore()) as node:
        gateway = Gateway(node)
        first = await gateway.start("127.0.0.1", 0)
        with pytest.raises(UsageError):
            await gateway.start("127.0.0.1", 0)
        await gateway.stop()
        await gateway.stop()
        second = await gateway.start("127.0.0.1", 0)
        try:
            async with aiohttp.ClientSession() as session, session.get(second + "/readyz") as r:
                assert r.status == 200
        finally:
            await gateway.stop()
        assert first.startswith("http://127.0.0.1:")


async def test_the_longest_hostile_paths_get_the_envelope(served_memory: Served) -> None:
    """Two path segments of 600 four-byte characters (over 14 KB percent-encoded, beyond
    aiohttp's default request-line limit) still reach the gateway and get a JSON 422."""
    import urllib.parse

    segment = urllib.parse.quote("😀" * 600, safe="")
    path = f"/v1/workflows/{segment}/signals/{segment}"
    assert len(path) > 14_000
    status, body, _ = await served_memory.call("POST", path, json=1)
    assert status == 422, body
    assert error_of(body)["details"]["field"] == "id"
