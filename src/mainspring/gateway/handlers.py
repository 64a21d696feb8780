"""The gateway's request handlers: each turns one validated ``Call`` into a node operation.

Every wait on the node is bounded (``request_timeout_s``; a long poll by its ``wait``), and
every id or name taken from a request is checked before it reaches the node.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, TypeVar, final

import attrs
import cattrs
import orjson
from aiohttp import web
from cattrs.gen import make_dict_structure_fn

from mainspring.actors.workflow import WorkflowDefinition
from mainspring.actors.workflow_runtime import (
    CLOSED_STATUSES,
    WORKFLOW_ACTOR_TYPE,
    WorkflowDescription,
    WorkflowEvent,
)
from mainspring.errors import CodecError, MainspringError, WorkflowError, WorkflowNotFound
from mainspring.gateway.errors import ApiError, validation_error
from mainspring.gateway.spec import Call, check_text
from mainspring.persistence.store import InstanceInfo, StoredEvent, stream_id_of

if TYPE_CHECKING:
    from mainspring.node import Node

__all__ = [
    "IDEMPOTENCY_KEY_LENGTH_MAX",
    "ID_LENGTH_MAX",
    "NAME_LENGTH_MAX",
    "WORKFLOW_STATUSES",
    "Handlers",
    "strict_converter",
]

log: Final = logging.getLogger(__name__)

T = TypeVar("T")

ID_LENGTH_MAX: Final = 512
"""The longest workflow or actor id (as ``WorkflowClient`` and ``Node.ask`` accept)."""
IDEMPOTENCY_KEY_LENGTH_MAX: Final = 200
"""The longest ``Idempotency-Key`` (it becomes a message id of at most 256 characters)."""
NAME_LENGTH_MAX: Final = 200
WORKFLOW_STATUSES: Final = (
    "running",
    "waiting",
    "paused",
    "stalled",
    *sorted(CLOSED_STATUSES),
)
"""The statuses of the instance index a list may filter on."""
_LIST_SCAN_ROWS_MAX: Final = 2000
"""The most index rows one filtered list request examines; it answers a ``next`` cursor to go on."""
_LIST_PAGE_ROWS: Final = 200
_TYPE_CACHE_MAX: Final = 100_000
_READY_TIMEOUT_S: Final = 2.0
_READY_PROBE_STREAM: Final = "mainspring.gateway/readiness-probe"
_DEADLINE_CHECK_MAX_S: Final = 0.5
"""The longest interval between two checks of the requests' deadlines."""
_DEADLINE_CHECK_MIN_S: Final = 0.005


def strict_converter(converter: cattrs.Converter) -> cattrs.Converter:
    """A copy of the node's converter that takes JSON values as they are: no string read as an
    int, no float truncated, no number read as a string (cattrs would convert them)."""
    strict = converter.copy()

    def exact(kind: str, accepts: Callable[[object], bool]) -> Callable[[object, type], object]:
        def hook(value: object, _: type) -> object:
            if not accepts(value):
                raise TypeError(f"expected {kind}, got {_json_kind(value)}")
            return value

        return hook

    def number(value: object, _: type) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"expected a number, got {_json_kind(value)}")
        return float(value)

    strict.register_structure_hook(
        int, exact("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool))
    )
    strict.register_structure_hook(float, number)
    strict.register_structure_hook(str, exact("a string", lambda v: isinstance(v, str)))
    strict.register_structure_hook(bool, exact("a boolean", lambda v: isinstance(v, bool)))

    def attrs_class(cls: type) -> Callable[[object, type], object]:
        fields_of: Callable[[Any, Any], Any] = make_dict_structure_fn(cls, strict)

        def hook(value: object, _: type) -> object:
            if not isinstance(value, dict):
                raise TypeError(f"expected a JSON object, got {_json_kind(value)}")
            return fields_of(value, cls)

        return hook

    strict.register_structure_hook_factory(attrs.has, attrs_class)
    return strict


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object" if isinstance(value, dict) else type(value).__name__


def iso_time(ms: int) -> str:
    """Epoch milliseconds as an ISO 8601 UTC time (``2026-01-31T12:00:00.000Z``)."""
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


@final
class _Deadlines:
    """Bounds the waits of many requests with one periodic check instead of a timer each.

    A wait costs a dictionary entry rather than a timer-heap push, its cancellation and a
    ``Timeout`` object. Every wait has the same limit, so the entries are in deadline order and
    a check stops at the first one still in time. A wait is cancelled at most ``period_s``
    after its deadline, and then raises ``TimeoutError`` (as ``asyncio.timeout`` would).
    """

    def __init__(self, limit_s: float) -> None:
        self.limit_s: Final = limit_s
        self.period_s: Final = min(_DEADLINE_CHECK_MAX_S, max(limit_s / 10, _DEADLINE_CHECK_MIN_S))
        self._waits: dict[int, tuple[float, asyncio.Task[Any]]] = {}
        self._expired: set[int] = set()
        self._numbers = itertools.count()
        self._checker: asyncio.Task[None] | None = None

    async def bound(self, work: Awaitable[T]) -> T:
        """``await work`` within ``limit_s``.

        Raises:
            TimeoutError: the limit passed first (``work`` was cancelled).
        """
        task = asyncio.current_task()
        assert task is not None, "bound() runs in a task"
        loop = task.get_loop()
        number = next(self._numbers)
        cancelling = task.cancelling()
        self._waits[number] = (loop.time() + self.limit_s, task)
        if self._checker is None:
            self._checker = loop.create_task(self._check(), name="mainspring-gateway-deadlines")
        try:
            return await work
        except asyncio.CancelledError:
            if number in self._expired:
                self._expired.discard(number)
                if task.uncancel() <= cancelling:  # no other cancellation is pending
                    raise TimeoutError from None
            raise
        finally:
            del self._waits[number]
            if number in self._expired:  # the work swallowed the cancellation and returned
                self._expired.discard(number)
                task.uncancel()

    async def _check(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._waits:
                await asyncio.sleep(self.period_s)
                now = loop.time()
                for number, (deadline, task) in list(self._waits.items()):
                    if deadline > now:
                        break
                    if number not in self._expired:
                        self._expired.add(number)
                        task.cancel()
        finally:
            self._checker = None

    def close(self) -> None:
        """Stop checking (waits still registered are no longer bounded)."""
        if self._checker is not None:
            self._checker.cancel()


class Handlers:
    """The handlers of the route table, bound to one node.

    Args:
        node: the node served.
        request_timeout_s: the bound on every wait for the node.
        draining: set when the gateway stops: long polls answer at once.
    """

    def __init__(self, node: Node, *, request_timeout_s: float, draining: asyncio.Event) -> None:
        assert request_timeout_s > 0, request_timeout_s
        self.node: Final = node
        self.request_timeout_s: Final = request_timeout_s
        self.draining: Final = draining
        self.converter: Final = strict_converter(node.codec.converter)
        self._types: OrderedDict[str, str | None] = OrderedDict()
        self._deadlines: Final = _Deadlines(request_timeout_s)
        self.openapi_document: dict[str, Any] = {}
        """Set by the gateway once the route table is rendered."""

    # Helpers ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the deadline checks (the gateway has stopped)."""
        self._deadlines.close()

    async def _bounded(self, work: Awaitable[T], what: str) -> T:
        try:
            return await self._deadlines.bound(work)
        except TimeoutError:
            raise ApiError(
                504,
                "timeout",
                f"the node did not {what} within {self.request_timeout_s:g} s; the operation "
                "may still happen: retry it (with the same id or Idempotency-Key)",
            ) from None

    def _id(self, call: Call, name: str = "id") -> str:
        return check_text(call.path(name), name, ID_LENGTH_MAX)

    async def _started(self, call: Call) -> str:
        """The workflow id of the path, once known to exist: an unknown id is a 404 before any
        actor is activated for it (activating takes a lease, a write to the store)."""
        workflow_id = self._id(call)
        if stream_id_of(WORKFLOW_ACTOR_TYPE, workflow_id) in self.node.host.live:
            return workflow_id
        found = await self._bounded(
            self.node.store.read_instance(WORKFLOW_ACTOR_TYPE, workflow_id), "find the workflow"
        )
        if found is None:
            raise api_workflow_not_found(workflow_id)
        assert found.actor_id == workflow_id, (found, workflow_id)
        return workflow_id

    def _idempotency_key(self, call: Call) -> str | None:
        raw = call.request.headers.get("Idempotency-Key")
        if raw is None:
            return None
        return check_text(raw, "Idempotency-Key", IDEMPOTENCY_KEY_LENGTH_MAX)

    def _definitions(self) -> Mapping[str, Mapping[int, WorkflowDefinition[Any, Any]]]:
        actor_cls = self.node.host.types[WORKFLOW_ACTOR_TYPE]
        definitions: Mapping[str, Mapping[int, WorkflowDefinition[Any, Any]]] = getattr(
            actor_cls, "definitions", {}
        )
        return definitions

    def structure(self, data: object, cls: Any, field: str) -> Any:
        """``data`` as ``cls`` (an attrs class, a plain type, or ``Any``).

        Raises:
            ApiError: 422 naming the first field that does not fit, listing all of them.
        """
        if cls is Any or cls is object:
            return data
        if cls is None or cls is type(None):
            if data is not None:
                raise validation_error(field, f"{field} must be null, got {_json_kind(data)}")
            return None
        try:
            return self.converter.structure(data, cls)
        except Exception as error:
            problems = cattrs.transform_error(error, path=field) if _is_cattrs(error) else []
            if not problems:
                problems = [f"{error} @ {field}"]
            fields = [problem.rpartition(" @ ")[2] or field for problem in problems]
            described = getattr(cls, "__qualname__", repr(cls))
            raise validation_error(
                fields[0],
                f"{field} does not fit {described}: {'; '.join(problems)[:1000]}",
                errors=[
                    {"field": where, "message": problem.rpartition(" @ ")[0] or problem}
                    for where, problem in zip(fields, problems, strict=True)
                ][:50],
            ) from None

    def unstructure(self, value: object) -> Any:
        """A value as plain JSON data."""
        return self.node.codec.converter.unstructure(value)

    def workflow_body(self, description: WorkflowDescription, *, encoded: bool) -> dict[str, Any]:
        """The JSON of a workflow's description (``encoded``: its result is a value envelope)."""
        result = description.result
        if encoded and isinstance(result, dict):
            result = result.get("d")
        elif not encoded:
            result = self.unstructure(result)
        closed_at_ms = description.closed_at_ms or None
        return {
            "id": description.workflow_id,
            "type": description.workflow_type,
            "version": description.version,
            "run_id": description.run,
            "status": description.status,
            "result": result,
            "error": description.error,
            "failed_step": description.failed_step or None,
            "stall": description.stall or None,
            "cancel_requested": description.cancel_requested,
            "pending_steps": description.pending_steps,
            "timers": description.timers,
            "queued_events": description.queued_events,
            "history_events": description.history_events,
            "started_at": iso_time(description.started_at_ms),
            "started_at_ms": description.started_at_ms,
            "closed_at": iso_time(closed_at_ms) if closed_at_ms else None,
            "closed_at_ms": closed_at_ms,
            "previous_runs": description.previous_runs,
        }

    # Workflows -------------------------------------------------------------------------------

    async def start_workflow(self, call: Call) -> web.StreamResponse:
        """``POST /v1/workflows/{type}``."""
        type_name = check_text(call.path("type"), "type", NAME_LENGTH_MAX)
        versions = self._definitions().get(type_name)
        if not versions:
            known = sorted(self._definitions())
            raise ApiError(
                404,
                "unknown_workflow_type",
                f"workflow type {type_name[:200]!r} is not registered on this node "
                f"(registered: {', '.join(known) or 'none'})",
                {"type": type_name, "registered": known},
            )
        definition = versions[max(versions)]
        workflow_id: str = call.body["id"]
        workflow_input = self.structure(call.body["input"], definition.input_type, "input")
        reply = await self._bounded(
            self.node.workflows.start_with_outcome(type_name, workflow_id, workflow_input),
            "start the workflow",
        )
        description = reply.description
        assert description.workflow_id == workflow_id, (description, workflow_id)
        assert description.workflow_type == type_name, (description, type_name)
        body = {
            "id": workflow_id,
            "type": type_name,
            "status": description.status,
            "run_id": description.run,
        }
        return _json(body, 201 if reply.created else 200)

    async def get_workflow(self, call: Call) -> web.StreamResponse:
        """``GET /v1/workflows/{id}``, optionally long-polling with ``?wait=``."""
        workflow_id = await self._started(call)
        wait_s: float | None = call.params["wait"]
        if wait_s:
            await self._wait_closed(workflow_id, wait_s)
        description = await self._bounded(
            self.node.workflows.describe(workflow_id), "describe the workflow"
        )
        return _json(self.workflow_body(description, encoded=False))

    async def _wait_closed(self, workflow_id: str, wait_s: float) -> None:
        """Return when the workflow is closed, ``wait_s`` passed, or the gateway is stopping."""
        waiter = asyncio.ensure_future(self._await_end(workflow_id, wait_s))
        stopping = asyncio.ensure_future(self.draining.wait())
        try:
            await asyncio.wait({waiter, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not waiter.done():
                waiter.cancel()
        if waiter.done() and not waiter.cancelled():
            error = waiter.exception()
            if error is not None:
                raise error

    async def _await_end(self, workflow_id: str, wait_s: float) -> None:
        try:
            async with asyncio.timeout(wait_s + self.request_timeout_s):
                await self.node.workflows.result(workflow_id, timeout_s=wait_s)
        except (TimeoutError, WorkflowError):
            return

    async def signal_workflow(self, call: Call) -> web.StreamResponse:
        """``POST /v1/workflows/{id}/signals/{name}``: 202 once the signal is durable."""
        workflow_id = await self._started(call)
        name = check_text(call.path("name"), "name", NAME_LENGTH_MAX)
        signal_id = self._idempotency_key(call)
        await self._bounded(
            self.node.workflows.signal(workflow_id, name, call.body, signal_id=signal_id),
            "record the signal",
        )
        return _json({"id": workflow_id, "signal": name, "signal_id": signal_id}, 202)

    async def query_workflow(self, call: Call) -> web.StreamResponse:
        """``GET /v1/workflows/{id}/queries/{name}?args=[...]``."""
        workflow_id = await self._started(call)
        name = check_text(call.path("name"), "name", NAME_LENGTH_MAX)
        args = call.params["args"]
        if args is None:
            args = []
        if not isinstance(args, list):
            raise validation_error("args", f"args must be a JSON array, got {_json_kind(args)}")
        try:
            answer = await self._bounded(
                self.node.workflows.query(workflow_id, name, *args), "answer the query"
            )
        except (MainspringError, ApiError, TimeoutError):
            raise
        except Exception as error:
            # The query handler itself raised (wrong arguments, or a bug in it): a query writes
            # nothing, so say what it raised rather than answer 500.
            raise ApiError(
                422,
                "query_failed",
                f"query {name!r} raised {type(error).__name__}: {str(error)[:500]} "
                f"(check its arguments: args={orjson.dumps(args).decode()[:200]})",
                {"field": "args", "error": type(error).__name__},
            ) from None
        return _json({"id": workflow_id, "query": name, "result": self.unstructure(answer)})

    async def _control(
        self,
        call: Call,
        action: str,
        operation: Callable[[str, str], Awaitable[WorkflowDescription]],
    ) -> web.StreamResponse:
        """Record an operator action; answer the workflow as it is then."""
        workflow_id = await self._started(call)
        reason: str = call.body["reason"]
        description = await self._bounded(operation(workflow_id, reason), f"{action} it")
        assert description.workflow_id == workflow_id, (description, workflow_id)
        return _json(self.workflow_body(description, encoded=True))

    async def cancel_workflow(self, call: Call) -> web.StreamResponse:
        """``POST /v1/workflows/{id}/cancel``."""
        return await self._control(call, "cancel", self.node.workflows.cancel)

    async def terminate_workflow(self, call: Call) -> web.StreamResponse:
        """``POST /v1/workflows/{id}/terminate``."""
        return await self._control(call, "terminate", self.node.workflows.terminate)

    async def pause_workflow(self, call: Call) -> web.StreamResponse:
        """``POST /v1/workflows/{id}/pause``."""
        return await self._control(call, "pause", self.node.workflows.pause)

    async def resume_workflow(self, call: Call) -> web.StreamResponse:
        """``POST /v1/workflows/{id}/resume``."""
        return await self._control(call, "resume", self.node.workflows.resume)

    async def retry_workflow(self, call: Call) -> web.StreamResponse:
        """``POST /v1/workflows/{id}/retry``."""
        return await self._control(call, "retry", self.node.workflows.retry)

    async def workflow_history(self, call: Call) -> web.StreamResponse:
        """``GET /v1/workflows/{id}/history?after=&limit=``: the stored events, paginated."""
        workflow_id = self._id(call)
        after: int = call.params["after"]
        limit: int = call.params["limit"]
        stream_id = stream_id_of(WORKFLOW_ACTOR_TYPE, workflow_id)
        store = self.node.store
        events = await self._bounded(
            store.read_events(stream_id, after, limit + 1), "read the history"
        )
        if not events and (
            after == 0
            or not await self._bounded(store.read_events(stream_id, 0, 1), "read the history")
        ):
            raise api_workflow_not_found(workflow_id)
        page = events[:limit]
        for before, event in itertools.pairwise(page):
            assert event.seq == before.seq + 1, (before.seq, event.seq)
        assert not page or page[0].seq > after, (after, page[0].seq)
        body = {
            "id": workflow_id,
            "events": [self._history_item(event) for event in page],
            "next": page[-1].seq if len(events) > limit else None,
        }
        return _json(body)

    def _history_item(self, event: StoredEvent) -> dict[str, Any]:
        item: dict[str, Any] = {
            "seq": event.seq,
            "time": iso_time(event.recorded_at_ms),
            "recorded_at_ms": event.recorded_at_ms,
        }
        try:
            decoded = self.node.codec.decode(event.type_name, event.type_version, event.payload)
        except CodecError:
            decoded = None
        if isinstance(decoded, WorkflowEvent):
            data = attrs.asdict(decoded, recurse=False)
            item["kind"] = data.pop("kind")
            item["data"] = data
        else:
            item["kind"] = event.type_name
            item["data"] = orjson.loads(event.payload)
        return item

    async def list_workflows(self, call: Call) -> web.StreamResponse:
        """``GET /v1/workflows?type=&status=&limit=&cursor=``: from the instance index."""
        type_filter: str | None = call.params["type"]
        status: str | None = call.params["status"]
        limit: int = call.params["limit"]
        after = _decode_cursor(call.params["cursor"])
        page_rows = limit + 1 if type_filter is None else _LIST_PAGE_ROWS
        items: list[dict[str, Any]] = []
        examined = 0
        store = self.node.store
        while True:
            cursor = (WORKFLOW_ACTOR_TYPE, after) if after is not None else None
            rows = await self._bounded(
                store.list_instances(WORKFLOW_ACTOR_TYPE, status, page_rows, cursor),
                "list workflows",
            )
            types = await self._types_of([row.actor_id for row in rows])
            for row in rows:
                assert row.actor_type == WORKFLOW_ACTOR_TYPE, row
                assert after is None or row.actor_id > after, (after, row.actor_id)
                if len(items) == limit:
                    return _json({"workflows": items, "next": _encode_cursor(after)})
                examined += 1
                after = row.actor_id
                if type_filter is None or types[row.actor_id] == type_filter:
                    items.append(_list_item(row, types[row.actor_id]))
            if len(rows) < page_rows:
                return _json({"workflows": items, "next": None})
            if examined >= _LIST_SCAN_ROWS_MAX:
                return _json({"workflows": items, "next": _encode_cursor(after)})

    async def _types_of(self, workflow_ids: list[str]) -> dict[str, str | None]:
        """The workflow type of each id: from the ``started`` event that opens its stream (a
        workflow's type never changes, so it is cached)."""
        missing = [workflow_id for workflow_id in workflow_ids if workflow_id not in self._types]
        firsts = await self._bounded(
            asyncio.gather(
                *(
                    self.node.store.read_events(
                        stream_id_of(WORKFLOW_ACTOR_TYPE, workflow_id), 0, 1
                    )
                    for workflow_id in missing
                )
            ),
            "read workflow types",
        )
        for workflow_id, events in zip(missing, firsts, strict=True):
            found: str | None = None
            if events:
                try:
                    first = self.node.codec.decode(
                        events[0].type_name, events[0].type_version, events[0].payload
                    )
                except CodecError:
                    first = None
                if isinstance(first, WorkflowEvent) and first.kind == "started":
                    found = first.name
            self._types[workflow_id] = found
            while len(self._types) > _TYPE_CACHE_MAX:
                self._types.popitem(last=False)
        return {workflow_id: self._types.get(workflow_id) for workflow_id in workflow_ids}

    # Actors ----------------------------------------------------------------------------------

    async def message_actor(self, call: Call) -> web.StreamResponse:
        """``POST /v1/actors/{type}/{id}/messages``: tell (202 once committed) or ask (200)."""
        actor_type = check_text(call.path("type"), "type", NAME_LENGTH_MAX)
        if actor_type == WORKFLOW_ACTOR_TYPE:
            raise ApiError(
                404,
                "unknown_actor_type",
                f"actor type {actor_type!r} is not reachable here; use the /v1/workflows routes",
                {"actor_type": actor_type},
            )
        actor_cls = self.node.host.actor_type(actor_type)
        actor_id = self._id(call)
        message_id = self._idempotency_key(call)
        message = self._actor_message(actor_cls.handled_types(), call.body)
        reply = await self._bounded(
            self.node.ask(
                actor_type,
                actor_id,
                message,
                message_id=message_id,
                timeout_s=self.request_timeout_s,
            ),
            "handle the message",
        )
        body: dict[str, Any] = {
            "actor_type": actor_type,
            "actor_id": actor_id,
            "message_id": message_id,
        }
        if call.params["reply"]:
            body["reply"] = self.unstructure(reply)
            return _json(body)
        body["accepted"] = True
        return _json(body, 202)

    def _actor_message(self, handled: list[type], body: Mapping[str, Any]) -> object:
        type_name: str = body["type"]
        registered = {
            info.name: info.cls
            for info in (self._registration(cls) for cls in handled)
            if info is not None
        }
        cls = None
        if not type_name.startswith("mainspring."):
            try:
                cls = self.node.codec.info_by_name(type_name).cls
            except CodecError:
                cls = None
        if cls is None or not any(issubclass(cls, base) for base in handled):
            listed = sorted(name for name in registered if not name.startswith("mainspring."))
            raise validation_error(
                "type",
                f"{type_name[:200]!r} is not a registered message type this actor handles; "
                f"it handles: {', '.join(listed) or 'no registered message types'}",
                handled=listed,
            )
        return self.structure(body["message"], cls, "message")

    def _registration(self, cls: type) -> Any:
        codec = self.node.codec
        return codec.info(cls) if codec.is_registered(cls) else None

    # Operations ------------------------------------------------------------------------------

    async def healthz(self, call: Call) -> web.StreamResponse:
        """``GET /healthz``: the process answers."""
        return _json({"status": "ok", "node_id": self.node.node_id})

    async def readyz(self, call: Call) -> web.StreamResponse:
        """``GET /readyz``: the node runs and its store answers."""
        state = getattr(self.node, "state", "unknown")
        problem = None
        if state != "running":
            problem = f"node {self.node.node_id!r} is {state}"
        elif self.draining.is_set():
            problem = "the gateway is stopping"
        else:
            try:
                async with asyncio.timeout(_READY_TIMEOUT_S):
                    await self.node.store.read_head(_READY_PROBE_STREAM)
            except TimeoutError:
                problem = f"the store did not answer within {_READY_TIMEOUT_S:g} s"
            except MainspringError as error:
                problem = f"the store is unreachable: {error}"
        if problem is not None:
            raise ApiError(
                503,
                "unavailable",
                f"not ready: {problem}",
                {"node_id": self.node.node_id, "node": state},
                {"Retry-After": "1"},
            )
        return _json({"status": "ready", "node_id": self.node.node_id})

    async def openapi(self, call: Call) -> web.StreamResponse:
        """``GET /openapi.json``."""
        assert self.openapi_document, "the gateway renders the document before serving"
        return _json(self.openapi_document)

    async def metrics(self, call: Call) -> web.StreamResponse:
        """``GET /metrics``: Prometheus text exposition (version 0.0.4)."""
        text = self.node.telemetry.prometheus_text()
        response = web.Response(text=text)
        response.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
        return response


def api_workflow_not_found(workflow_id: str) -> ApiError:
    """The 404 of an unknown workflow id."""
    error = WorkflowNotFound(workflow_id)
    return ApiError(404, "unknown_workflow", str(error), {"id": workflow_id})


def _list_item(row: InstanceInfo, workflow_type: str | None) -> dict[str, Any]:
    return {
        "id": row.actor_id,
        "type": workflow_type,
        "status": row.status,
        "created_at": iso_time(row.created_at_ms),
        "updated_at": iso_time(row.updated_at_ms),
    }


def _encode_cursor(after: str | None) -> str | None:
    if after is None:
        return None
    return base64.urlsafe_b64encode(after.encode("utf-8")).decode("ascii").rstrip("=")


def _decode_cursor(cursor: str | None) -> str | None:
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        after = raw.decode("utf-8")
    except (binascii.Error, ValueError):
        raise validation_error(
            "cursor", "cursor is not one this API gave out; pass a 'next' value back unchanged"
        ) from None
    if not after or len(after) > ID_LENGTH_MAX:
        raise validation_error("cursor", "cursor is not one this API gave out")
    return after


def _is_cattrs(error: BaseException) -> bool:
    return isinstance(error, cattrs.BaseValidationError | TypeError | ValueError | KeyError)
