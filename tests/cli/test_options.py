"""The option parsers of ``mainspring node``: store URLs, addresses, node ids and tokens."""

from __future__ import annotations

from pathlib import Path

import pytest

from mainspring import UsageError
from mainspring.cli._store import parse_store_url
from mainspring.cli.node import default_node_id, parse_listen, read_tokens
from tests.support import sqlite_writer_calls as calls


def test_sqlite_urls_name_relative_and_absolute_files() -> None:
    """Goal: three slashes mean a relative path, four an absolute one. Method: parse both."""
    relative = parse_store_url("sqlite:///./data/node.db")
    assert (relative.kind, relative.path) == ("sqlite", Path("data/node.db"))
    absolute = parse_store_url("sqlite:////var/lib/mainspring/node.db")
    assert absolute.path == Path("/var/lib/mainspring/node.db")
    assert absolute.describe() == "sqlite:////var/lib/mainspring/node.db"
    assert absolute.writer is None  # the store's default
    assert absolute.open_store().writer == "process"  # type: ignore[attr-defined]


def test_a_sqlite_url_may_put_the_writer_in_a_process_of_its_own() -> None:
    """Goal: '?writer=process' reaches the store. Method: parse, then build the store."""
    parsed = parse_store_url("sqlite:///./data/node.db?writer=process")
    assert (parsed.path, parsed.writer) == (Path("data/node.db"), "process")
    assert parsed.describe() == "sqlite:///data/node.db?writer=process"
    assert parsed.open_store().writer == "process"  # type: ignore[attr-defined]
    assert parse_store_url("sqlite:///x.db?writer=thread").open_store().writer == "thread"  # type: ignore[attr-defined]


def test_a_sqlite_url_may_size_the_writers_cache_and_checkpoints() -> None:
    """Goal: 'cache_mib' and 'checkpoint_pages' reach the writer's PRAGMAs. Method: parse,
    build the store, open it and read the PRAGMAs back through its writer."""
    parsed = parse_store_url("sqlite:///x.db?checkpoint_pages=500&writer=process&cache_mib=8")
    assert (parsed.writer, parsed.cache_mib, parsed.checkpoint_pages) == ("process", 8, 500)
    assert parsed.describe() == "sqlite:///x.db?writer=process&cache_mib=8&checkpoint_pages=500"
    store = parse_store_url("sqlite:///x.db?cache_mib=8").open_store()
    assert (store._cache_mib, store._checkpoint_pages) == (8, 10_000)  # type: ignore[attr-defined]
    assert parse_store_url("sqlite:///x.db").describe() == "sqlite:///x.db"


async def test_the_url_sizes_are_in_effect_in_the_opened_store(tmp_path: Path) -> None:
    """Goal: the sizes are not only parsed but applied. Method: open the store and read the
    PRAGMAs on its writer connection."""
    url = f"sqlite:///{tmp_path}/node.db?cache_mib=8&checkpoint_pages=500"
    store = parse_store_url(url).open_store()
    await store.open()
    try:
        assert await store._write("pragmas", calls.cache_and_checkpoint) == (-8 * 1024, 500)  # type: ignore[attr-defined]
    finally:
        await store.close()


def test_postgres_urls_take_the_schema_out_of_the_dsn() -> None:
    """Goal: '?schema=' picks the schema and is not passed to the driver; other parameters
    are. Method: parse URLs with and without it."""
    parsed = parse_store_url("postgresql://app:secret@db:5433/prod?schema=orders&sslmode=require")
    assert parsed.kind == "postgres"
    assert parsed.schema == "orders"
    assert parsed.dsn == "postgresql://app:secret@db:5433/prod?sslmode=require"
    assert "secret" not in parsed.describe()
    assert parsed.describe() == "postgresql://app@db:5433/prod (schema orders)"
    assert parse_store_url("postgres://db/x").schema == "public"
    # No host: the driver's defaults (a local socket, $PGHOST) apply.
    assert parse_store_url("postgresql:///x").dsn == "postgresql:///x"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("", "must not be empty"),
        ("node.db", "has no scheme"),
        ("mysql://db/x", "unsupported scheme 'mysql'"),
        ("sqlite://host/x.db", "three slashes"),
        ("sqlite:///", "names no file"),
        ("sqlite:///data/", "names no file"),
        ("sqlite:///:memory:", "in-memory"),
        ("sqlite:///x.db?mode=ro", "unknown parameter(s) ['mode']"),
        ("sqlite:///x.db?writer=fork", "writer='fork'; use writer=process"),
        ("sqlite:///x.db?writer=process&writer=thread", "'writer' more than once"),
        ("sqlite:///x.db?cache_mib=0", "cache_mib='0'; give a whole number >= 1"),
        ("sqlite:///x.db?cache_mib=-4", "cache_mib='-4'"),
        ("sqlite:///x.db?checkpoint_pages=1e4", "checkpoint_pages='1e4'; give a whole number"),
        ("sqlite:///x.db?checkpoint_pages=", "checkpoint_pages=''"),
        ("sqlite:///x.db?cache_mib=8&cache_mib=9", "'cache_mib' more than once"),
        ("sqlite:///x.db#top", "takes no fragment"),
        ("postgresql://db:notaport/x", "is malformed"),
        ("postgresql://db/x?schema=a&schema=b", "more than once"),
        ("postgresql://db/x?schema=", "empty 'schema'"),
    ],
)
def test_bad_store_urls_are_refused_with_the_reason(url: str, expected: str) -> None:
    """Goal: each malformed URL names its problem. Method: parse it."""
    with pytest.raises(UsageError) as raised:
        parse_store_url(url)
    assert expected in str(raised.value), str(raised.value)


def test_listen_addresses() -> None:
    """Goal: HOST:PORT, [IPv6]:PORT and port 0 parse; the rest is refused. Method: parse."""
    assert parse_listen("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_listen("[::1]:0") == ("::1", 0)
    assert parse_listen("localhost:65535") == ("localhost", 65535)
    for bad in ("8080", ":8080", "host:", "host:http", "host:65536"):
        with pytest.raises(UsageError, match="--listen"):
            parse_listen(bad)


def test_default_node_ids_are_valid_node_ids() -> None:
    """Goal: any host name gives a usable id. Method: derive ids from awkward names."""
    assert default_node_id(8080, "worker-3.example.com") == "worker-3.example.com-8080"
    assert default_node_id(1, "-weird host name!") == "weird-host-name-1"
    assert default_node_id(0, "...") == "node-0"
    assert len(default_node_id(65535, "h" * 300)) <= 100


def test_tokens_come_from_options_the_environment_and_a_file(tmp_path: Path) -> None:
    """Goal: every source adds tokens, duplicates count once, comments and blanks are
    skipped, and a weak token is refused. Method: combine the three sources."""
    token_file = tmp_path / "tokens"
    token_file.write_text("# operators\nfile-token-1\n\n  file-token-2  # ci\nalpha-token-1\n")
    tokens = read_tokens(("alpha-token-1",), "env-token-1, env-token-2", token_file)
    assert tokens == ("alpha-token-1", "env-token-1", "env-token-2", "file-token-1", "file-token-2")
    assert read_tokens((), None, None) == ()
    with pytest.raises(UsageError, match="at least 8 characters"):
        read_tokens(("short",), None, None)
    with pytest.raises(UsageError, match="cannot read --token-file"):
        read_tokens((), None, tmp_path / "missing")
