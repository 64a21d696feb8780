"""Store URLs of the command line: ``sqlite:///PATH[?writer=process&cache_mib=N&checkpoint_pages=N]``
and ``postgresql://...[?schema=NAME]``."""

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
    "?writer=process, cache_mib=N, checkpoint_pages=N, joined by &) or "
    "postgresql://USER@HOST:PORT/DATABASE[?schema=NAME]"
)


@attrs.frozen
class StoreUrl:
    """A parsed store URL: ``kind`` is ``"sqlite"`` (``path``, and ``writer``, ``cache_mib`` and
    ``checkpoint_pages`` when given) or ``"postgres"`` (``dsn``, ``schema``)."""

    kind: str
    path: Path | None = None
    dsn: str | None = None
    schema: str = "public"
    writer: str | None = None
    cache_mib: int | None = None
    checkpoint_pages: int | None = None

    def open_store(self) -> Store:
        """A new, unopened store for this URL."""
        if self.kind == "sqlite":
            from mainspring.persistence.sqlite import SqliteStore

            assert self.path is not None
            from mainspring.persistence import _sqlite_sql as sql

            return SqliteStore(
                self.path,
                writer=self.writer,
                cache_mib=sql.CACHE_MIB_DEFAULT if self.cache_mib is None else self.cache_mib,
                checkpoint_pages=(
                    sql.CHECKPOINT_PAGES_DEFAULT
                    if self.checkpoint_pages is None
                    else self.checkpoint_pages
                ),
            )
        assert self.kind == "postgres"
        assert self.dsn is not None
        from mainspring.persistence.postgres import PostgresStore

        return PostgresStore(self.dsn, schema=self.schema)

    def describe(self) -> str:
        """The URL without a password, for logs."""
        if self.kind == "sqlite":
            given = [("writer", self.writer)] if self.writer is not None else []
            given += [
                (name, str(value))
                for name, value in (
                    ("cache_mib", self.cache_mib),
                    ("checkpoint_pages", self.checkpoint_pages),
                )
                if value is not None
            ]
            query = f"?{urlencode(given)}" if given else ""
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
    writer, sizes = _sqlite_options(url, query_text)
    path_text = rest[1:]
    if not path_text or path_text.endswith("/"):
        raise UsageError(f"SQLite store URL {url!r} names no file; {_HELP}")
    if path_text == ":memory:":
        raise UsageError(
            f"store URL {url!r} names an in-memory database, which a node process would lose "
            "on exit; name a file"
        )
    return StoreUrl(
        "sqlite",
        path=Path(path_text),
        writer=writer,
        cache_mib=sizes.get("cache_mib"),
        checkpoint_pages=sizes.get("checkpoint_pages"),
    )


_SQLITE_PARAMETERS: Final = ("writer", "cache_mib", "checkpoint_pages")


def _sqlite_options(url: str, query_text: str) -> tuple[str | None, dict[str, int]]:
    """The ``writer``, ``cache_mib`` and ``checkpoint_pages`` (see ``SqliteStore``) of a SQLite
    URL's query, where given."""
    from mainspring.persistence.sqlite import WRITERS

    query = parse_qsl(query_text, keep_blank_values=True)
    unknown = sorted({name for name, _ in query if name not in _SQLITE_PARAMETERS})
    if unknown:
        raise UsageError(
            f"SQLite store URL {url!r} has unknown parameter(s) {unknown}; it takes "
            f"'writer' ({' or '.join(WRITERS)}), 'cache_mib' and 'checkpoint_pages'"
        )
    values: dict[str, str] = {}
    for name, value in query:
        if name in values:
            raise UsageError(f"SQLite store URL {url!r} gives {name!r} more than once")
        values[name] = value
    writer = values.pop("writer", None)
    if writer is not None and writer not in WRITERS:
        raise UsageError(
            f"SQLite store URL {url!r} has writer={writer!r}; use writer=process (the writer "
            "connection in a process of its own, the default) or writer=thread (in this process)"
        )
    sizes: dict[str, int] = {}
    for name, value in values.items():
        if not value.isascii() or not value.isdigit() or int(value) < 1:
            raise UsageError(
                f"SQLite store URL {url!r} has {name}={value!r}; give a whole number >= 1 "
                f"(for example {name}={64 if name == 'cache_mib' else 10000})"
            )
        sizes[name] = int(value)
    return writer, sizes


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
