"""Property: whatever a client sends to any route, the gateway answers below 500 (never a bug,
never a hang) and every error is the JSON error envelope.

One node and gateway serve all examples from an event loop on a background thread; hypothesis
drives requests at it over loopback (derandomized, so a run is reproducible).
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from yarl import URL

from mainspring.gateway.routes import ROUTES
from mainspring.persistence.memory import MemoryStore
from tests.gateway.support import TOKEN, Served, error_of, serve

BODY_MAX_BYTES = 4096
REQUEST_TIMEOUT_S = 30.0


class BackgroundServer:
    """A served node on its own event loop thread, and a way to send it requests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.served: Served | None = None
        self._stop: asyncio.Event | None = None
        self._done: Any = None

    def start(self) -> None:
        self.thread.start()
        ready = asyncio.run_coroutine_threadsafe(self._ready(), self.loop)
        ready.result(timeout=60)

    async def _ready(self) -> None:
        started = asyncio.Event()
        self._stop = asyncio.Event()

        async def run() -> None:
            async with serve(MemoryStore(), body_max_bytes=BODY_MAX_BYTES) as served:
                self.served = served
                started.set()
                assert self._stop is not None
                await self._stop.wait()

        self._done = asyncio.ensure_future(run())
        await started.wait()

    def request(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, str, bytes]:
        async def send() -> tuple[int, str, bytes]:
            assert self.served is not None
            url = URL(self.served.url + path, encoded=True)
            timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
            async with self.served.session.request(
                method, url, data=body, headers=headers, timeout=timeout
            ) as response:
                return response.status, response.content_type, await response.read()

        return asyncio.run_coroutine_threadsafe(send(), self.loop).result(REQUEST_TIMEOUT_S + 5)

    def stop(self) -> None:
        async def finish() -> None:
            assert self._stop is not None
            self._stop.set()
            await self._done

        asyncio.run_coroutine_threadsafe(finish(), self.loop).result(timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()


@pytest.fixture(scope="module")
def background() -> Iterator[BackgroundServer]:
    server = BackgroundServer()
    server.start()
    yield server
    server.stop()


SPECIAL_SEGMENTS = [
    "gw.count",
    "..",
    "../..",
    "./",
    "a/b",
    " ",
    "\x00",
    "\u202e",
    "é",
    "😀",
    "gw.waiter",
    "test-account",
    "mainspring.workflow",
    "x" * 600,
    "%",
]
segments = st.one_of(
    st.sampled_from(SPECIAL_SEGMENTS),
    st.text(min_size=1, max_size=30),
    st.text(min_size=500, max_size=700),
)
raw_escapes = st.sampled_from(["%FF%FE", "%ED%A0%80", "%C0%AF", "%2e%2e%2f", "%00"])
query_values = st.one_of(
    st.sampled_from(
        ["", "-1", "0", "1", "1e309", "nan", "inf", "-inf", "true", "yes", "[1]", "[", "{}", "1.5"]
    ),
    st.text(max_size=40),
    st.integers().map(str),
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
header_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=300,
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, bytes | None, dict[str, str]]:
    """One hostile request: a route's path with odd segments, odd query parameters, an odd
    body and odd headers."""
    route = draw(st.sampled_from(ROUTES))
    method = draw(
        st.one_of(st.just(route.method), st.sampled_from(["GET", "POST", "PUT", "DELETE"]))
    )
    path = route.path
    for name in route.path_params:
        segment = draw(
            st.one_of(segments.map(lambda s: urllib.parse.quote(s, safe="")), raw_escapes)
        )
        path = path.replace("{" + name + "}", segment)
    names = st.one_of(
        st.sampled_from([param.name for param in route.query] or ["x"]), st.text(max_size=8)
    )
    pairs = draw(st.lists(st.tuples(names, query_values), max_size=4))
    if pairs:
        path += "?" + urllib.parse.urlencode(pairs)
    body = draw(bodies(route))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    if draw(st.booleans()):
        headers["Idempotency-Key"] = draw(header_text)
    if draw(st.booleans()):
        headers["Content-Type"] = draw(
            st.sampled_from(
                [
                    "application/json",
                    "text/plain",
                    "application/x-www-form-urlencoded",
                    "multipart/form-data; boundary=x",
                    "application/json; charset=latin-1",
                ]
            )
        )
    if draw(st.integers(0, 9)) == 9:
        headers["Authorization"] = draw(
            st.sampled_from(["", "Bearer", "Bearer  ", f"bearer {TOKEN}x", "Basic abc"])
        )
    return method, path, body, headers


def bodies(route: Any) -> st.SearchStrategy[bytes | None]:
    fields = [field.name for field in route.body.fields] if route.body is not None else ["id"]
    shaped = st.fixed_dictionaries(
        {},
        optional={
            name: st.one_of(
                st.text(min_size=1, max_size=20),
                st.sampled_from(["gw.count", "test.account.deposit"]),
                json_values,
            )
            for name in fields
        },
    )
    return st.one_of(
        shaped.map(lambda value: json.dumps(value).encode()),
        st.none(),
        st.binary(max_size=200),
        st.sampled_from(
            [
                b"{",
                b"[",
                b'{"id": }',
                b"\xff\xfe",
                b"NaN",
                b'{"id": "a", "id": "b"}',
                b"1" * 400,
                b"[" * 5000,
            ]
        ),
        json_values.map(lambda value: json.dumps(value).encode()),
        st.integers(min_value=30, max_value=1100).map(
            lambda depth: b'{"id": "deep", "input": ' + b"[" * depth + b"]" * depth + b"}"
        ),
        st.integers(min_value=30, max_value=1100).map(lambda depth: b"[" * depth + b"]" * depth),
        st.integers(min_value=2**64).map(
            lambda big: json.dumps({"id": "big", "input": big}).encode()
        ),
        st.just(b'{"id": "x", "input": "' + b"y" * BODY_MAX_BYTES + b'"}'),
    )


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=requests())
def test_no_input_makes_a_500_or_a_bare_error(
    background: BackgroundServer, request: tuple[str, str, bytes | None, dict[str, str]]
) -> None:
    """Any request answers in time, below 500, and an error always has the envelope."""
    method, path, body, headers = request
    status, content_type, raw = background.request(method, path, body, headers)
    event(f"status {status}")
    assert status < 500, (method, path, body, headers, status, raw[:500])
    if status >= 400:
        assert content_type == "application/json", (path, status, raw[:200])
        error_of(orjson.loads(raw))
    elif path.split("?")[0] != "/metrics":
        assert content_type == "application/json", (path, status, raw[:200])
        orjson.loads(raw)
