"""``mainspring node`` as a real process: it serves, stops cleanly, and refuses bad settings.

Each test starts the command in a child process (``python -m mainspring.cli node``) in a
temporary directory and talks to it over loopback HTTP.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import urllib.request
from pathlib import Path

import pytest

from mainspring.cli.node import default_node_id
from mainspring.persistence.sqlite import SqliteStore
from tests.cli.conftest import NodeProcess, free_port, run_cli
from tests.conftest import POSTGRES_DSN, drop_postgres_schema, require_postgres

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

APP = "examples.orders.app"


def get_json(url: str, token: str | None = None) -> tuple[int, object]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def stream_owners(db: Path) -> dict[str, str | None]:
    async def read() -> dict[str, str | None]:
        store = SqliteStore(db)
        await store.open()
        try:
            return {head.stream_id: head.owner for head in await store.list_streams()}
        finally:
            await store.close()

    return asyncio.run(read())


def test_node_serves_health_then_stops_on_sigterm_and_releases_its_leases(
    tmp_path: Path, node_process: type[NodeProcess]
) -> None:
    """Goal: the node listens, announces its URL, and on SIGTERM exits 0 with every lease
    released. Method: start it over a SQLite file (its app seeds three inventory actors, which
    take leases), read /healthz, SIGTERM it, then read the store's stream heads."""
    db = tmp_path / "node.db"
    node = node_process(
        ["--app", APP, "--store", f"sqlite:///{db}", "--listen", "127.0.0.1:0", "--node-id", "n1"]
    )
    url = node.start()
    assert url.startswith("http://127.0.0.1:")
    status, health = get_json(f"{url}/healthz")
    assert status == 200
    assert isinstance(health, dict)
    assert health["status"] == "ok"

    assert node.terminate(signal.SIGTERM) == 0, node.stderr()

    owners = stream_owners(db)
    assert {"example.inventory/sku-1", "example.inventory/sku-2"} <= set(owners), owners
    assert {stream: owner for stream, owner in owners.items() if owner is not None} == {}
    assert "Traceback" not in node.stderr()


def test_sigint_stops_the_node_like_sigterm(
    tmp_path: Path, node_process: type[NodeProcess]
) -> None:
    """Goal: Ctrl-C (SIGINT) is a graceful stop too. Method: start, SIGINT, expect exit 0."""
    node = node_process(["--app", APP, "--listen", "127.0.0.1:0", "--node-id", "n2"])
    node.start()
    # The announcement says where the default store's writer runs.
    assert "store sqlite:///mainspring.db with its writer in a process," in node.announcement
    assert node.terminate(signal.SIGINT) == 0, node.stderr()
    assert (tmp_path / "mainspring.db").exists()  # the default store URL, in the cwd


def test_default_node_id_comes_from_host_name_and_port(
    tmp_path: Path, node_process: type[NodeProcess]
) -> None:
    """Goal: without --node-id the node is named after the host and port. Method: start on a
    fixed free port and read the announcement line."""
    port = free_port()
    node = node_process(
        ["--app", APP, "--listen", f"127.0.0.1:{port}", "--store", "sqlite:///n.db?writer=thread"]
    )
    node.start()
    assert node.url == f"http://127.0.0.1:{port}"
    assert f"(node id {default_node_id(port)}," in node.announcement, node.announcement
    assert "store sqlite:///n.db?writer=thread with its writer in a thread," in node.announcement
    assert node.terminate() == 0, node.stderr()


def _one_error_line(result: object) -> str:
    import subprocess

    assert isinstance(result, subprocess.CompletedProcess)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0, (result.returncode, result.stderr)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mainspring node: error: "), lines[0]
    assert result.stdout == ""
    return lines[0]


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--app", "no_such_module_here"], "cannot import app module 'no_such_module_here'"),
        (["--app", "examples.orders.model"], "has no attribute 'app'"),
        (["--app", "examples.orders.model:order"], "must be a mainspring.App"),
        (["--app", "not a module"], "MODULE[:ATTRIBUTE]"),
        (["--app", APP, "--store", "mysql://db/x"], "unsupported scheme 'mysql'"),
        (["--app", APP, "--store", "sqlite://host/x.db"], "three slashes"),
        (["--app", APP, "--store", "orders.db"], "has no scheme"),
        (
            ["--app", APP, "--store", "postgresql://postgres@127.0.0.1:1/test"],
            "127.0.0.1:1",
        ),
        (["--app", APP, "--listen", "8080"], "--listen must be HOST:PORT"),
        (["--app", APP, "--node-id", "-bad id"], "--node-id must be"),
        (["--app", APP, "--token", "short"], "at least 8 characters"),
        (["--app", APP, "--log-level", "loud"], "--log-level"),
        (["--app", APP, "--shutdown-timeout", "0"], "--shutdown-timeout must be > 0"),
        (["--app", APP, "--gc-threshold", "-1"], "--gc-threshold"),
        ([], "Missing option '--app'"),
    ],
    ids=[
        "unknown-module",
        "missing-attribute",
        "not-an-app",
        "malformed-app",
        "unsupported-store-scheme",
        "sqlite-url-with-host",
        "store-without-scheme",
        "unreachable-postgres",
        "bad-listen",
        "bad-node-id",
        "short-token",
        "bad-log-level",
        "bad-shutdown-timeout",
        "bad-gc-threshold",
        "no-app",
    ],
)
def test_bad_configuration_exits_non_zero_with_one_line(
    tmp_path: Path, arguments: list[str], expected: str
) -> None:
    """Goal: every bad setting ends the process with ONE line that names the problem.
    Method: run the command with it and read stderr."""
    line = _one_error_line(run_cli(["node", *arguments], cwd=tmp_path))
    assert expected in line, line


def test_a_taken_port_exits_non_zero_with_one_line(tmp_path: Path) -> None:
    """Goal: a port in use is reported in one line, after the node was stopped again.
    Method: hold a listening socket on a port and start the node on it."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_cli(
            ["node", "--app", APP, "--listen", f"127.0.0.1:{port}", "--node-id", "n3"],
            cwd=tmp_path,
        )
    line = _one_error_line(result)
    assert f"cannot listen on 127.0.0.1:{port}" in line, line
    owners = stream_owners(tmp_path / "mainspring.db")
    assert {stream: owner for stream, owner in owners.items() if owner is not None} == {}


def test_an_unopenable_sqlite_file_exits_non_zero_with_one_line(tmp_path: Path) -> None:
    """Goal: a SQLite path in a missing directory is a one-line error. Method: point at one."""
    missing = tmp_path / "no" / "such" / "dir" / "x.db"
    line = _one_error_line(
        run_cli(["node", "--app", APP, "--store", f"sqlite:///{missing}"], cwd=tmp_path)
    )
    assert "does not exist: create it first" in line, line


@pytest.mark.postgres
async def test_sigterm_releases_the_leases_on_postgres(
    node_process: type[NodeProcess], postgres_schema: str
) -> None:
    """Goal: a node on PostgreSQL (with ?schema=) stops cleanly and releases its leases.
    Method: start it in a fresh schema, SIGTERM it, read the schema's stream heads."""
    await require_postgres()
    from mainspring.persistence.postgres import PostgresStore

    try:
        node = node_process(
            ["--app", APP, "--store", f"{POSTGRES_DSN}?schema={postgres_schema}",
             "--listen", "127.0.0.1:0", "--node-id", "pg-1"]
        )  # fmt: skip
        node.start()
        assert await asyncio.to_thread(node.terminate) == 0, node.stderr()
        store = PostgresStore(POSTGRES_DSN, schema=postgres_schema)
        await store.open()
        try:
            heads = await store.list_streams()
        finally:
            await store.close()
        assert {head.stream_id for head in heads} >= {"example.inventory/sku-1"}
        assert [head.stream_id for head in heads if head.owner is not None] == []
    finally:
        await drop_postgres_schema(postgres_schema)
