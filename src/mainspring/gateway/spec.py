"""The route table's vocabulary: what a route declares, and the checks the declarations drive.

A ``Route`` names its method, path template, handler, query parameters, body and answers. The
gateway registers the aiohttp routes from the table, parses and validates every request's query
string and JSON body from the same declarations, and ``openapi.py`` renders the OpenAPI document
from them: the served API and its document cannot drift apart.
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import attrs
import orjson
from aiohttp import web
from multidict import MultiMapping

from mainspring.gateway.errors import ApiError, validation_error

__all__ = [
    "JSON_DEPTH_MAX",
    "Body",
    "BodyField",
    "Call",
    "Handler",
    "Param",
    "Reply",
    "Route",
    "check_depth",
    "check_text",
    "parse_body",
    "parse_query",
]

PARAM_KINDS: Final = frozenset({"integer", "number", "string", "boolean", "json"})
FIELD_KINDS: Final = frozenset({"string", "object", "any"})
_PATH_PARAM: Final = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_QUERY_VALUE_LENGTH_MAX: Final = 4096
JSON_DEPTH_MAX: Final = 64
"""The deepest nesting of arrays and objects a request's JSON may have (deeper values would
exhaust the recursion of the layers that encode them)."""


@attrs.frozen
class Param:
    """A query-string parameter.

    Attributes:
        name: its name in the query string.
        kind: ``integer``, ``number``, ``string``, ``boolean`` (``true``/``false``) or ``json``
            (a URL-encoded JSON value).
        description: what it does (shown in the OpenAPI document).
        minimum: the smallest number accepted (numbers only).
        maximum: the largest number accepted (numbers only).
        enum: the accepted strings (strings only; empty: any).
        default: its value when absent.
    """

    name: str
    kind: str
    description: str
    minimum: float | None = None
    maximum: float | None = None
    enum: tuple[str, ...] = ()
    default: Any = None

    def __attrs_post_init__(self) -> None:
        assert self.kind in PARAM_KINDS, self.kind
        assert not self.enum or self.kind == "string", self


@attrs.frozen
class BodyField:
    """A member of a JSON object body.

    Attributes:
        name: the member name.
        kind: ``string``, ``object`` or ``any`` (any JSON value).
        description: what it is (shown in the OpenAPI document).
        required: whether it must be present.
        default: its value when absent.
        length_max: the longest string accepted (strings only).
        length_min: the shortest string accepted (strings only).
    """

    name: str
    kind: str
    description: str
    required: bool = False
    default: Any = None
    length_max: int = 10_000
    length_min: int = 1

    def __attrs_post_init__(self) -> None:
        assert self.kind in FIELD_KINDS, self.kind
        assert not (self.required and self.default is not None), self


@attrs.frozen
class Body:
    """A JSON request body: an object with ``fields`` (other members are refused), or, when
    ``fields`` is empty, any JSON value (an empty body then reads as null).

    Attributes:
        description: what it is.
        fields: the object's members.
        required: whether an empty body is refused (objects only).
        schema: the OpenAPI schema of an any-JSON body.
    """

    description: str
    fields: tuple[BodyField, ...] = ()
    required: bool = True
    schema: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class Reply:
    """A documented answer of a route.

    Attributes:
        status: the HTTP status.
        description: when it is given.
        schema: the name of its schema under ``components/schemas`` (JSON bodies).
        content_type: its media type.
    """

    status: int
    description: str
    schema: str | None = None
    content_type: str = "application/json"


@attrs.frozen
class Call:
    """One request as a handler sees it: validated query parameters and body."""

    request: web.Request
    route: Route
    params: Mapping[str, Any]
    body: Any

    def path(self, name: str) -> str:
        """A path parameter (percent-decoded)."""
        return self.request.match_info[name]


Handler = Callable[[Any, Call], Awaitable[web.StreamResponse]]


@attrs.frozen
class Route:
    """One route of the API.

    Attributes:
        method: the HTTP method.
        path: the aiohttp path template (``/v1/workflows/{id}``).
        operation_id: the OpenAPI ``operationId``.
        summary: one line on what it does.
        handler: ``async (handlers, call) -> response``.
        tag: the OpenAPI tag that groups it.
        auth: whether it needs a bearer token (when the gateway has tokens).
        path_params: a description per path parameter.
        query: its query parameters (others are refused).
        body: its JSON body, or None (a body is then ignored).
        idempotency_key: whether it reads the ``Idempotency-Key`` header.
        replies: its documented answers, success first.
        errors: the error statuses it may answer with.
        description: a longer description (markdown).
    """

    method: str
    path: str
    operation_id: str
    summary: str
    handler: Handler
    tag: str
    auth: bool = True
    path_params: Mapping[str, str] = attrs.field(factory=dict)
    query: tuple[Param, ...] = ()
    body: Body | None = None
    idempotency_key: bool = False
    replies: tuple[Reply, ...] = ()
    errors: tuple[int, ...] = ()
    description: str = ""

    def __attrs_post_init__(self) -> None:
        assert self.method in {"GET", "POST", "PUT", "DELETE", "PATCH"}, self.method
        assert self.path.startswith("/"), self.path
        named = set(_PATH_PARAM.findall(self.path))
        assert named == set(self.path_params), (self.path, sorted(self.path_params))
        assert self.replies, f"{self.operation_id} documents no answer"
        assert len({param.name for param in self.query}) == len(self.query), self.path


def check_text(value: str, field: str, length_max: int, length_min: int = 1) -> str:
    """``value`` if it is ``length_min``..``length_max`` characters of UTF-8-encodable text
    without NUL.

    Raises:
        ApiError: 422 naming ``field``.
    """
    if not length_min <= len(value) <= length_max:
        raise validation_error(
            field,
            f"{field} must be {length_min}-{length_max} characters, got {len(value)} characters",
        )
    if "\x00" in value:
        raise validation_error(field, f"{field} must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise validation_error(
            field, f"{field} must be valid Unicode text (it contains a lone surrogate)"
        ) from None
    return value


def check_depth(value: object, field: str) -> None:
    """Refuse JSON nested deeper than ``JSON_DEPTH_MAX`` (checked without recursion).

    Raises:
        ApiError: 422 naming ``field``.
    """
    pending: list[tuple[object, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > JSON_DEPTH_MAX:
            raise validation_error(
                field, f"{field} nests arrays and objects deeper than {JSON_DEPTH_MAX} levels"
            )
        pending.extend((child, depth + 1) for child in children)


def parse_query(params: tuple[Param, ...], query: MultiMapping[str]) -> dict[str, Any]:
    """The declared query parameters, parsed and checked; unknown or repeated ones are refused.

    Raises:
        ApiError: 422 naming the parameter (400 for a ``json`` parameter that is not JSON).
    """
    declared = {param.name: param for param in params}
    for name in query:
        if name not in declared:
            known = ", ".join(sorted(declared)) or "none"
            raise validation_error(
                name, f"unknown query parameter {name[:100]!r}; this route takes: {known}"
            )
        if len(query.getall(name)) > 1:
            raise validation_error(name, f"query parameter {name!r} is given more than once")
    parsed: dict[str, Any] = {}
    for param in params:
        raw = query.get(param.name)
        parsed[param.name] = param.default if raw is None else _parse_param(param, raw)
    return parsed


def _parse_param(param: Param, raw: str) -> Any:
    name = param.name
    if len(raw) > _QUERY_VALUE_LENGTH_MAX:
        raise validation_error(name, f"{name} is longer than {_QUERY_VALUE_LENGTH_MAX} characters")
    if param.kind == "boolean":
        if raw not in {"true", "false"}:
            raise validation_error(name, f"{name} must be 'true' or 'false', got {raw[:100]!r}")
        return raw == "true"
    if param.kind == "string":
        value = check_text(raw, name, _QUERY_VALUE_LENGTH_MAX)
        if param.enum and value not in param.enum:
            raise validation_error(
                name, f"{name} must be one of {', '.join(param.enum)}; got {value[:100]!r}"
            )
        return value
    if param.kind == "json":
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as error:
            raise ApiError(
                400, "malformed_json", f"{name} is not valid JSON: {error}", {"field": name}
            ) from None
        check_depth(value, name)
        return value
    return _parse_number(param, raw)


def _parse_number(param: Param, raw: str) -> int | float:
    name = param.name
    number: int | float
    try:
        number = int(raw) if param.kind == "integer" else float(raw)
    except ValueError:
        raise validation_error(
            name,
            f"{name} must be {'an integer' if param.kind == 'integer' else 'a number'}, "
            f"got {raw[:100]!r}",
        ) from None
    if not math.isfinite(number):
        raise validation_error(name, f"{name} must be a finite number, got {raw[:100]!r}")
    if param.minimum is not None and number < param.minimum:
        raise validation_error(name, f"{name} must be >= {param.minimum:g}, got {number:g}")
    if param.maximum is not None and number > param.maximum:
        raise validation_error(name, f"{name} must be <= {param.maximum:g}, got {number:g}")
    return number


def parse_body(body: Body, raw: bytes) -> Any:
    """The JSON body, checked against ``body``'s fields (absent ones get their defaults).

    Raises:
        ApiError: 400 for malformed JSON, 422 naming the field for a wrong shape.
    """
    if not raw.strip():
        if body.fields and body.required:
            raise ApiError(
                400, "malformed_json", "the request needs a JSON object body", {"field": "body"}
            )
        value: Any = {} if body.fields else None
    else:
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as error:
            raise ApiError(
                400, "malformed_json", f"the body is not valid JSON: {error}", {"field": "body"}
            ) from None
        check_depth(value, "body")
    if not body.fields:
        return value
    if not isinstance(value, dict):
        raise validation_error("body", f"the body must be a JSON object, got {_json_kind(value)}")
    declared = {field.name: field for field in body.fields}
    for name in value:
        if name not in declared:
            raise validation_error(
                name,
                f"unknown member {name[:100]!r}; the body takes: {', '.join(sorted(declared))}",
            )
    parsed: dict[str, Any] = {}
    for field in body.fields:
        if field.name not in value:
            if field.required:
                raise validation_error(field.name, f"{field.name} is required")
            parsed[field.name] = field.default
            continue
        parsed[field.name] = _check_field(field, value[field.name])
    return parsed


def _check_field(field: BodyField, member: Any) -> Any:
    if field.kind == "string":
        if not isinstance(member, str):
            raise validation_error(
                field.name, f"{field.name} must be a string, got {_json_kind(member)}"
            )
        return check_text(member, field.name, field.length_max, field.length_min)
    if field.kind == "object" and not isinstance(member, dict):
        raise validation_error(
            field.name, f"{field.name} must be a JSON object, got {_json_kind(member)}"
        )
    return member


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
    return "an object"
