"""The gateway's server: the aiohttp application, its middleware and its lifecycle.

One middleware wraps every request, matched or not: it traces it (a span per request), counts
it (``Telemetry.http_request``), checks the bearer token on ``/v1``, refuses new requests while
the gateway drains, and turns every error into the JSON error envelope.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable, Sequence
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web
from opentelemetry import propagate
from opentelemetry.trace import SpanKind, Status, StatusCode

from mainspring.errors import UsageError
from mainspring.gateway.errors import ApiError, api_error_of, error_response
from mainspring.gateway.handlers import Handlers
from mainspring.gateway.openapi import openapi_document
from mainspring.gateway.routes import ROUTES
from mainspring.gateway.spec import Call, Route, parse_body, parse_query

if TYPE_CHECKING:
    from mainspring.node import Node

__all__ = ["Gateway"]

log: Final = logging.getLogger(__name__)

_UNMATCHED: Final = "unmatched"
"""The route label of requests that matched no route (so metrics stay bounded)."""
_STATUS_CODES: Final = {
    400: "malformed_json",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
}
_REQUEST_LINE_BYTES_MAX: Final = 65536
"""The longest request line the HTTP parser reads (aiohttp's default, 8190, is shorter than a
path with two percent-encoded ids of the longest length allowed, which must get a JSON 422)."""
_HEADER_BYTES_MAX: Final = 16384
_SHUTDOWN_GRACE_S: Final = 0.5
"""After the drain deadline, how long aiohttp waits before cancelling what still runs."""

RequestHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _api_version() -> str:
    try:
        return package_version("mainspring")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0.0.0"


class Gateway:
    """Serves a node over HTTP: the public JSON API under ``/v1``, health, metrics, OpenAPI.

    Args:
        node: the node whose workflows and actors the API reaches (started by the caller).
        tokens: bearer tokens accepted on ``/v1`` routes; empty means no authentication.
        body_max_bytes: the largest request body accepted (larger ones get 413).
        request_timeout_s: the longest any request waits for the node (then 504).
    """

    def __init__(
        self,
        node: Node,
        *,
        tokens: Sequence[str] = (),
        body_max_bytes: int = 1 << 20,
        request_timeout_s: float = 30.0,
    ) -> None:
        if isinstance(tokens, str):
            raise UsageError("tokens must be a sequence of strings, not one string: use [token]")
        for token in tokens:
            if not isinstance(token, str) or not token or not token.isprintable() or " " in token:
                raise UsageError(
                    "every token must be a non-empty string of printable characters without "
                    f"spaces, got {token!r:.20}"
                )
        if isinstance(body_max_bytes, bool) or not isinstance(body_max_bytes, int):
            raise UsageError(f"body_max_bytes must be an int, got {body_max_bytes!r}")
        if body_max_bytes < 1024:
            raise UsageError(f"body_max_bytes must be >= 1024, got {body_max_bytes}")
        if isinstance(request_timeout_s, bool) or not isinstance(request_timeout_s, int | float):
            raise UsageError(f"request_timeout_s must be a number, got {request_timeout_s!r}")
        if not 0 < request_timeout_s <= 3600:
            raise UsageError(f"request_timeout_s must be in (0, 3600], got {request_timeout_s}")
        self.node: Final = node
        self.tokens: Final = frozenset(tokens)
        self._token_bytes: Final = tuple(token.encode("utf-8") for token in self.tokens)
        self.body_max_bytes: Final = body_max_bytes
        self.routes: Final = ROUTES
        # Without a tracer provider (``Telemetry.tracing`` false) spans would go nowhere:
        # skip making them on the request path.
        self._tracing: Final = bool(getattr(node.telemetry, "tracing", True))
        self._draining = asyncio.Event()
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.handlers: Final = Handlers(
            node, request_timeout_s=float(request_timeout_s), draining=self._draining
        )
        self.handlers.openapi_document = openapi_document(
            ROUTES, title="mainspring node", version=_api_version(), auth=bool(self.tokens)
        )
        self.app: Final = web.Application(
            client_max_size=body_max_bytes, middlewares=[self._middleware]
        )
        for route in ROUTES:
            self.app.router.add_route(route.method, route.path, self._endpoint(route))
        self._runner: web.AppRunner | None = None
        self.url: str | None = None

    @property
    def openapi(self) -> dict[str, Any]:
        """The OpenAPI document served at ``/openapi.json``."""
        return self.handlers.openapi_document

    # Requests --------------------------------------------------------------------------------

    def _endpoint(self, route: Route) -> RequestHandler:
        handler = route.handler

        async def endpoint(request: web.Request) -> web.StreamResponse:
            params = parse_query(route.query, request.query)
            body = None
            if route.body is not None:
                body = parse_body(route.body, await self._read_body(request))
            return await handler(self.handlers, Call(request, route, params, body))

        return endpoint

    async def _read_body(self, request: web.Request) -> bytes:
        """The body, read within ``request_timeout_s`` (a client that stalls mid-body must not
        hold a handler forever)."""
        if request.content.is_eof():
            return await request.read()  # all of it has arrived: nothing to wait for
        limit_s = self.handlers.request_timeout_s
        try:
            async with asyncio.timeout(limit_s):
                return await request.read()
        except TimeoutError:
            raise ApiError(
                408,
                "body_timeout",
                f"the request body did not arrive within {limit_s:g} s; send it at once",
                None,
                {"Connection": "close"},
            ) from None

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: RequestHandler
    ) -> web.StreamResponse:
        clock = self.node.clock
        started_s = clock.monotonic_s()
        route = _route_template(request)
        status = 500
        self._in_flight += 1
        self._idle.clear()
        try:
            if not self._tracing:
                response = await self._answer(request, handler)
                status = response.status
                return response
            with self.node.telemetry.tracer.start_as_current_span(
                f"{request.method} {route}",
                # A client's W3C ``traceparent`` header makes this span part of its trace.
                context=propagate.extract(request.headers),
                kind=SpanKind.SERVER,
                attributes={"http.request.method": request.method, "http.route": route},
            ) as span:
                response = await self._answer(request, handler)
                status = response.status
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
                return response
        finally:
            self._in_flight -= 1
            assert self._in_flight >= 0, self._in_flight
            if self._in_flight == 0:
                self._idle.set()
            self._count(route, request.method, status, clock.monotonic_s() - started_s)

    async def _answer(self, request: web.Request, handler: RequestHandler) -> web.StreamResponse:
        """The handler's response, or the error envelope of whatever went wrong."""
        try:
            if self._draining.is_set():
                raise ApiError(
                    503,
                    "unavailable",
                    "the gateway is stopping; retry on another node",
                    None,
                    {"Retry-After": "1", "Connection": "close"},
                )
            if self.tokens and _needs_token(request.path):
                self._authenticate(request)
            return await handler(request)
        except web.HTTPException as error:
            return _http_error(error)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            mapped = api_error_of(error)
            if mapped is not None:
                return error_response(mapped)
            log.exception(
                "GatewayRequestFailed",
                extra={"method": request.method, "route": _route_template(request)},
            )
            return error_response(
                ApiError(
                    500,
                    "internal",
                    f"the node failed to handle the request ({type(error).__name__}); "
                    "this is a bug: report it with the node's log",
                )
            )

    def _authenticate(self, request: web.Request) -> None:
        header = request.headers.get("Authorization")
        if header is None:
            raise ApiError(
                401,
                "unauthorized",
                "this route needs 'Authorization: Bearer <token>'",
                None,
                {"WWW-Authenticate": 'Bearer realm="mainspring"'},
            )
        scheme, _, token = header.partition(" ")
        given = token.strip().encode("utf-8", "surrogateescape")
        # Compare with every token, so the time taken does not tell which one nearly matched.
        matched = False
        for known in self._token_bytes:
            matched |= hmac.compare_digest(given, known)
        if scheme.lower() != "bearer" or not matched:
            raise ApiError(
                401,
                "unauthorized",
                "the bearer token is not valid for this node",
                None,
                {"WWW-Authenticate": 'Bearer realm="mainspring", error="invalid_token"'},
            )

    def _count(self, route: str, method: str, status: int, duration_s: float) -> None:
        try:
            self.node.telemetry.http_request(route, method, status, max(0.0, duration_s))
        except Exception:  # metrics must never fail a request
            log.exception("GatewayMetricsFailed")

    # Lifecycle -------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 8080) -> str:
        """Listen on ``host:port`` (port 0 picks a free one) and return the base URL.

        Raises:
            UsageError: already started, or the address cannot be bound (port taken, unknown
                host).
        """
        if self._runner is not None:
            raise UsageError(f"the gateway already serves {self.url}; stop() it first")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise UsageError(f"port must be an int in 0..65535, got {port!r}")
        self._draining.clear()
        runner = web.AppRunner(
            self.app,
            access_log=None,
            shutdown_timeout=_SHUTDOWN_GRACE_S,
            max_line_size=_REQUEST_LINE_BYTES_MAX,
            max_field_size=_HEADER_BYTES_MAX,
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as error:
            await runner.cleanup()
            raise UsageError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
        self._runner = runner
        bound = runner.addresses[0]
        bound_host = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        self.url = f"http://{bound_host}:{bound[1]}"
        return self.url

    async def stop(self, *, drain_timeout_s: float = 10.0) -> None:
        """Stop gracefully: stop accepting connections, let requests in flight finish for up
        to ``drain_timeout_s`` (long polls answer at once with the workflow as it is), then
        close every connection. Requests that arrive meanwhile on open connections get 503.
        Idempotent.
        """
        if isinstance(drain_timeout_s, bool) or not isinstance(drain_timeout_s, int | float):
            raise UsageError(f"drain_timeout_s must be a number, got {drain_timeout_s!r}")
        if drain_timeout_s < 0:
            raise UsageError(f"drain_timeout_s must be >= 0, got {drain_timeout_s}")
        if self._runner is None:
            return
        runner, self._runner = self._runner, None
        self._draining.set()
        for site in list(runner.sites):
            await site.stop()
        try:
            async with asyncio.timeout(drain_timeout_s):
                await self._idle.wait()
        except TimeoutError:
            log.warning("GatewayDrainTimedOut", extra={"in_flight": self._in_flight})
        await runner.cleanup()
        self.handlers.close()
        self.url = None


def _needs_token(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


def _route_template(request: web.Request) -> str:
    resource = request.match_info.route.resource
    if resource is None:
        return _UNMATCHED
    return resource.canonical


def _http_error(error: web.HTTPException) -> web.Response:
    """aiohttp's own refusals (no route, wrong method, body too large) as the envelope."""
    status = error.status
    code = _STATUS_CODES.get(status)
    headers: dict[str, str] = {}
    if status == 405:
        headers["Allow"] = error.headers.get("Allow", "")
        message = f"this route does not take the method; it allows {headers['Allow']}"
    elif status == 404:
        message = "no such route; see /openapi.json for the routes this node serves"
    elif status == 413:
        message = f"the body is too large: {error.text or ''}".strip()
    else:
        message = error.reason
    if code is None:
        code = "unavailable" if status >= 500 else "validation_failed"
        status = status if 400 <= status <= 599 else 500
    return error_response(ApiError(status, code, message, None, headers))
