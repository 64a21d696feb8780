"""Store URLs of the command line: ``sqlite:///PATH[?writer=process]`` and
``postgresql://...[?schema=NAME]``."""

from __future__ import annotations

from pathlib import Path
from typing import Final
from urllib.parse import parse_qsl, urlencode, urlsplit

import attrs

from mainspring.errors import UsageError
from mainspring.persistence.store import Store

__all__ = ["DEFAULT_STORE_URL", "StoreUrl", "parse_store_url"]

DEFAULT_STORE_URL: Final = "sqlite:///./mainspring.db"
_POSTGRES_SCHEMES: Final = ("postgresql", "postgres")
_HELP: Final = (
    "use sqlite:///RELATIVE/PATH, sqlite:////ABSOLUTE/PATH (either may end in "
    "?writer=process) or "
    "postgresql://USER@HOST:PORT/DATABASE[?schema=NAME]"
)


@attrs.frozen
class StoreUrl:
    """A parsed store URL: ``kind`` is ``"sqlite"`` (``path``, ``writer``) or ``"postgres"``
    (``dsn``, ``schema``)."""

    kind: str
    path: Path | None = None
    dsn: str | None = None
    schema: str = "public"
    writer: str = "thread"

    def open_store(self) -> Store:
        """A new, unopened store for this URL."""
        if self.kind == "sqlite":
            from mainspring.persistence.sqlite import SqliteStore

            assert self.path is not None
            return SqliteStore(self.path, writer=self.writer)
        assert self.kind == "postgres"
        assert self.dsn is not None
        from mainspring.persistence.postgres import PostgresStore

        return PostgresStore(self.dsn, schema=self.schema)

    def describe(self) -> str:
        """The URL without a password, for logs."""
        if self.kind == "sqlite":
            query = "" if self.writer == "thread" else f"?writer={self.writer}"
            return f"sqlite:///{self.path}{query}"
        assert self.dsn is not None
        parts = urlsplit(self.dsn)
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        user = f"{parts.username}@" if parts.username else ""
        return f"{parts.scheme}://{user}{host}{parts.path} (schema {self.schema})"


def parse_store_url(url: str) -> StoreUrl:
    """Parse ``url``.

    Raises:
        UsageError: the scheme is not ``sqlite`` or ``postgresql``, or the URL is malformed.
    """
    if not isinstance(url, str) or not url.strip():
        raise UsageError(f"the store URL must not be empty; {_HELP}")
    scheme, separator, rest = url.partition("://")
    if not separator:
        raise UsageError(f"store URL {url!r} has no scheme; {_HELP}")
    scheme = scheme.lower()
    if scheme == "sqlite":
        return _sqlite(url, rest)
    if scheme in _POSTGRES_SCHEMES:
        return _postgres(url)
    raise UsageError(f"store URL {url!r} has the unsupported scheme {scheme!r}; {_HELP}")


def _sqlite(url: str, rest: str) -> StoreUrl:
    if not rest.startswith("/"):
        raise UsageError(
            f"SQLite store URL {url!r} names a host; SQLite URLs have three slashes: {_HELP}"
        )
    rest, _, query_text = rest.partition("?")
    if "#" in rest or "#" in query_text:
        raise UsageError(f"SQLite store URL {url!r} takes no fragment; {_HELP}")
    writer = _sqlite_writer(url, query_text)
    path_text = rest[1:]
    if not path_text or path_text.endswith("/"):
        raise UsageError(f"SQLite store URL {url!r} names no file; {_HELP}")
    if path_text == ":memory:":
        raise UsageError(
            f"store URL {url!r} names an in-memory database, which a node process would lose "
            "on exit; name a file"
        )
    return StoreUrl("sqlite", path=Path(path_text), writer=writer)


def _sqlite_writer(url: str, query_text: str) -> str:
    """The ``writer`` of a SQLite URL's query, the only parameter it takes."""
    from mainspring.persistence.sqlite import WRITERS

    query = parse_qsl(query_text, keep_blank_values=True)
    unknown = sorted({name for name, _ in query if name != "writer"})
    if unknown:
        raise UsageError(
            f"SQLite store URL {url!r} has unknown parameter(s) {unknown}; it takes only "
            f"'writer' ({' or '.join(WRITERS)})"
        )
    writers = [value for _, value in query]
    if len(writers) > 1:
        raise UsageError(f"SQLite store URL {url!r} gives 'writer' more than once")
    writer = writers[0] if writers else "thread"
    if writer not in WRITERS:
        raise UsageError(
            f"SQLite store URL {url!r} has writer={writer!r}; use writer=thread (the default) "
            "or writer=process (the writer connection in a process of its own)"
        )
    return writer


def _postgres(url: str) -> StoreUrl:
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError on a non-numeric or out-of-range port
    except ValueError as error:
        raise UsageError(f"PostgreSQL store URL {url!r} is malformed: {error}; {_HELP}") from None
    query = parse_qsl(parts.query, keep_blank_values=True)
    schemas = [value for name, value in query if name == "schema"]
    if len(schemas) > 1:
        raise UsageError(f"PostgreSQL store URL {url!r} gives 'schema' more than once")
    schema = schemas[0] if schemas else "public"
    if not schema:
        raise UsageError(f"PostgreSQL store URL {url!r} has an empty 'schema'")
    others = urlencode([(name, value) for name, value in query if name != "schema"])
    # Built by hand: urlunsplit drops the '//' of an empty host ('postgresql:///db').
    dsn = f"{parts.scheme}://{parts.netloc}{parts.path}" + (f"?{others}" if others else "")
    return StoreUrl("postgres", dsn=dsn, schema=schema)
