"""The command line's HTTP client of a node's ``/v1`` API (standard library only, blocking).

Errors come back as ``ClientError`` with one line that says what went wrong: the gateway's
``{"error": {"code", "message", "details"}}`` answer, or why no answer came.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any, Final

import click

__all__ = [
    "DEFAULT_URL",
    "TOKEN_ENVIRONMENT",
    "URL_ENVIRONMENT",
    "Client",
    "ClientError",
    "path_segment",
]

DEFAULT_URL: Final = "http://127.0.0.1:8080"
URL_ENVIRONMENT: Final = "MAINSPRING_URL"
TOKEN_ENVIRONMENT: Final = "MAINSPRING_TOKEN"  # noqa: S105 (a variable name, not a secret)
_RESPONSE_BYTES_MAX: Final = 64 << 20


class ClientError(click.ClickException):
    """A failed call: shown as ONE line ``mainspring workflows: error: <reason>``, exit 1."""

    exit_code = 1

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(" ".join(message.split()))
        self.status = status
        self.code = code

    def show(self, file: Any = None) -> None:
        click.echo(f"mainspring workflows: error: {self.format_message()}", err=True)


def path_segment(value: str) -> str:
    """``value`` percent-encoded as one path segment (a ``/`` in an id stays inside it)."""
    return urllib.parse.quote(value, safe="")


class Client:
    """Calls a node's HTTP API at ``url`` with an optional bearer ``token``.

    Args:
        url: the node's base URL (``http://HOST:PORT``).
        token: the bearer token, if the node requires one.
        timeout_s: the bound on each call (a long poll adds its wait to it).

    Raises:
        ClientError: the URL is not an http(s) URL.
    """

    def __init__(self, url: str, token: str | None, timeout_s: float) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise ClientError(
                f"--url must be an http(s) URL such as {DEFAULT_URL}, got {url!r} "
                f"(also read from ${URL_ENVIRONMENT})"
            )
        if not timeout_s > 0:
            raise ClientError(f"--timeout must be > 0 seconds, got {timeout_s}")
        self.url: Final = url.rstrip("/")
        self.token: Final = token or None
        self.timeout_s: Final = timeout_s

    def call(
        self,
        method: str,
        path: str,
        *,
        body: object = None,
        query: Mapping[str, object] | None = None,
        headers: Mapping[str, str] | None = None,
        wait_s: float = 0.0,
    ) -> Any:
        """Send one request and return its decoded JSON answer.

        Raises:
            ClientError: no answer, a non-2xx answer (with the gateway's message), or an
                answer that is not JSON.
        """
        assert path.startswith("/v1/") or path in {"/healthz", "/readyz"}, path
        target = self.url + path
        if query:
            pairs = {name: str(value) for name, value in query.items() if value is not None}
            if pairs:
                target += "?" + urllib.parse.urlencode(pairs)
        # The scheme was checked to be http(s) in __init__.
        request = urllib.request.Request(target, method=method)  # noqa: S310
        request.add_header("Accept", "application/json")
        if self.token is not None:
            request.add_header("Authorization", f"Bearer {self.token}")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        if method != "GET":
            request.add_header("Content-Type", "application/json")
            request.data = json.dumps(body).encode()
        try:
            with urllib.request.urlopen(  # noqa: S310 (http(s) only, checked in __init__)
                request, timeout=self.timeout_s + wait_s
            ) as response:
                status = response.status
                raw = response.read(_RESPONSE_BYTES_MAX)
        except urllib.error.HTTPError as error:
            raise _error_of(method, path, error.code, error.read(_RESPONSE_BYTES_MAX)) from None
        except (urllib.error.URLError, OSError) as error:
            raise ClientError(_unreachable(self.url, error)) from None
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            raise ClientError(
                f"{method} {path} answered {status} with a body that is not JSON: {raw[:200]!r}"
            ) from None


def _unreachable(url: str, error: BaseException) -> str:
    reason: object = getattr(error, "reason", error)
    if isinstance(reason, socket.timeout | TimeoutError):
        return f"{url} did not answer in time; raise --timeout or check the node"
    text = getattr(reason, "strerror", None) or str(reason)
    return (
        f"cannot reach a node at {url}: {text} (is 'mainspring node' running there? set --url "
        f"or ${URL_ENVIRONMENT})"
    )


def _error_of(method: str, path: str, status: int, raw: bytes) -> ClientError:
    try:
        answer = json.loads(raw)
    except ValueError:
        answer = None
    error = answer.get("error") if isinstance(answer, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        code = str(error.get("code", ""))
        hint = ""
        if status == 401:
            hint = f" (pass --token or set ${TOKEN_ENVIRONMENT})"
        return ClientError(
            f"{error['message']} [{code}, HTTP {status}]{hint}", status=status, code=code
        )
    text = raw[:200].decode("utf-8", "replace").strip() or "(no body)"
    return ClientError(f"{method} {path} answered HTTP {status}: {text}", status=status)
