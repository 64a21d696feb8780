"""The gateway's error envelope, and how mainspring's exceptions map onto HTTP statuses.

Every error the gateway answers has the body ``{"error": {"code", "message", "details"}}``:
``code`` is a stable machine-readable word, ``message`` says what was wrong and how to fix it,
``details`` is JSON (often naming the offending ``field``) or null.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

import orjson
from aiohttp import web

from mainspring.errors import (
    CodecError,
    CommandRejected,
    ConcurrencyConflict,
    Fenced,
    LeaseHeld,
    NodeClosed,
    Overloaded,
    StoreUnavailable,
    UnknownActorType,
    UsageError,
    WorkflowConflict,
    WorkflowNotFound,
)

__all__ = ["ERROR_CODES", "ApiError", "api_error_of", "error_response", "validation_error"]

ERROR_CODES: Final[Mapping[str, int]] = {
    "malformed_json": 400,
    "unauthorized": 401,
    "not_found": 404,
    "unknown_workflow": 404,
    "unknown_workflow_type": 404,
    "unknown_actor_type": 404,
    "unknown_query": 404,
    "method_not_allowed": 405,
    "body_timeout": 408,
    "conflict": 409,
    "workflow_closed": 409,
    "body_too_large": 413,
    "validation_failed": 422,
    "rejected": 422,
    "query_failed": 422,
    "overloaded": 429,
    "internal": 500,
    "unavailable": 503,
    "timeout": 504,
}
"""Every ``code`` the gateway answers with, and its HTTP status (documented in docs/http.md)."""

_CONFLICT_CODES: Final = frozenset(
    {"workflow_closed", "not_failed", "not_a_step_failure", "stalled", "unknown_version"}
)
_RETRY_AFTER_S: Final = 1


class ApiError(Exception):
    """An HTTP error answer: raised by handlers, rendered by the gateway's error middleware.

    Args:
        status: the HTTP status (4xx or 5xx).
        code: a stable machine-readable word (see ``ERROR_CODES``).
        message: what was wrong and what to do about it.
        details: JSON about the error (``{"field": ...}`` for validation), or None.
        headers: extra response headers (``Retry-After``, ``WWW-Authenticate``, ``Allow``).
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: object = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        assert 400 <= status <= 599, status
        assert code, "an error needs a code"
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = dict(headers or {})
        super().__init__(message)


def validation_error(field: str, message: str, **details: Any) -> ApiError:
    """A 422 naming ``field`` (``"input.amount"``, ``"wait"``, ``"Idempotency-Key"``)."""
    return ApiError(422, "validation_failed", message, {"field": field, **details})


def error_response(error: ApiError) -> web.Response:
    """The JSON envelope of ``error``."""
    body = {"error": {"code": error.code, "message": error.message, "details": error.details}}
    try:
        payload = orjson.dumps(body)
    except TypeError:
        # Details that are not JSON (they come from handler-raised errors) are shown as text.
        body["error"]["details"] = repr(error.details)
        payload = orjson.dumps(body)
    return web.Response(
        body=payload,
        status=error.status,
        content_type="application/json",
        headers=error.headers,
    )


def _retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def api_error_of(error: BaseException) -> ApiError | None:
    """The HTTP answer for an exception mainspring raises on purpose, or None for any other
    exception (a bug: the gateway answers 500 and logs it)."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, UnknownActorType):
        return ApiError(404, "unknown_actor_type", str(error), {"actor_type": error.actor_type})
    if isinstance(error, WorkflowNotFound):
        return ApiError(404, "unknown_workflow", str(error), {"id": error.workflow_id})
    if isinstance(error, WorkflowConflict):
        return ApiError(409, "conflict", str(error), {"id": error.workflow_id})
    if isinstance(error, CommandRejected):
        return _rejection(error)
    if isinstance(error, Overloaded):
        return ApiError(
            429,
            "overloaded",
            str(error),
            {"retry_after_s": error.retry_after_s},
            _retry_after(error.retry_after_s),
        )
    if isinstance(error, StoreUnavailable | NodeClosed | Fenced | LeaseHeld | ConcurrencyConflict):
        return ApiError(503, "unavailable", str(error), None, _retry_after(_RETRY_AFTER_S))
    if isinstance(error, UsageError | CodecError):
        return ApiError(422, "validation_failed", str(error), None)
    if isinstance(error, TimeoutError):
        return ApiError(504, "timeout", str(error) or "the node did not answer in time", None)
    return None


def _rejection(error: CommandRejected) -> ApiError:
    details = error.details if error.details is not None else None
    if error.code == "unknown_query":
        return ApiError(404, "unknown_query", error.reason, details)
    if error.code == "workflow_closed":
        return ApiError(409, "workflow_closed", error.reason, details)
    if error.code in _CONFLICT_CODES:
        return ApiError(409, "conflict", error.reason, {"reason": error.code, "details": details})
    return ApiError(422, "rejected", error.reason, {"reason": error.code, "details": details})
