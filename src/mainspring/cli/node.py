"""``mainspring node``: run a node with the HTTP gateway until SIGTERM or SIGINT.

::

    mainspring node --app examples.orders.app --store sqlite:///./orders.db \\
        --listen 127.0.0.1:8080 --token "$SECRET"

Once the gateway listens, one line ``mainspring node: listening on URL ...`` goes to stdout.
A bad configuration (unknown app, unreachable store, port taken, malformed option) exits with
status 2 after ONE line ``mainspring node: error: <reason>`` on stderr. SIGTERM or SIGINT stops
the node gracefully: the gateway stops accepting requests, steps in flight and mailboxes are
drained (each for up to ``--shutdown-timeout`` seconds), leases are released, the store is
closed, and the process exits 0. A second signal during the shutdown exits at once (status 1).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import signal
import socket
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, NoReturn

import attrs
import click

from mainspring.app import App, load_app
from mainspring.cli._store import DEFAULT_STORE_URL, StoreUrl, parse_store_url
from mainspring.cli.cluster import CLUSTER_SECRET_ENVIRONMENT, cluster_settings, lease_settings
from mainspring.cluster.config import ClusterConfig
from mainspring.config import NodeConfig
from mainspring.errors import MainspringError, UsageError
from mainspring.process import GC_THRESHOLD_DEFAULT, tune_garbage_collector

if TYPE_CHECKING:
    from mainspring.gateway import Gateway
    from mainspring.node import Node

__all__ = ["NodeSettings", "default_node_id", "node", "parse_listen", "read_tokens"]

log: Final = logging.getLogger("mainspring.cli.node")

PROGRAM: Final = "mainspring node"
DEFAULT_LISTEN: Final = "127.0.0.1:8080"
TOKENS_ENVIRONMENT: Final = "MAINSPRING_TOKENS"
EXIT_CONFIGURATION: Final = 2
EXIT_FORCED: Final = 1
_LOG_LEVELS: Final = ("debug", "info", "warning", "error")
_NODE_ID_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,99}$")
_TOKEN_LENGTH_MIN: Final = 8


class ConfigurationError(click.ClickException):
    """A bad configuration: shown as ONE line ``mainspring node: error: <reason>``."""

    exit_code = EXIT_CONFIGURATION

    def show(self, file: IO[Any] | None = None) -> None:
        message = " ".join(self.format_message().split())
        click.echo(f"{PROGRAM}: error: {message}", file=file or sys.stderr)


class _OneLineCommand(click.Command):
    """A command whose option errors are one line, like its configuration errors."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as error:
            raise ConfigurationError(f"{error.format_message()} (see '{PROGRAM} --help')") from None


@attrs.frozen
class NodeSettings:
    """Everything ``mainspring node`` was told, validated."""

    app: App
    app_spec: str
    store_url: StoreUrl
    host: str
    port: int
    node_id: str
    tokens: tuple[str, ...]
    config: NodeConfig
    cluster: ClusterConfig | None = None
    gc_threshold: int = GC_THRESHOLD_DEFAULT


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[IPv6]:PORT`` too; port 0 picks a free one) as ``(host, port)``.

    Raises:
        UsageError: the address is malformed.
    """
    host, separator, port_text = text.rpartition(":")
    if not separator or not host or not port_text.isdigit():
        raise UsageError(f"--listen must be HOST:PORT (e.g. 127.0.0.1:8080), got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise UsageError(f"--listen port must be within 0-65535, got {port}")
    return host, port


def default_node_id(port: int, hostname: str | None = None) -> str:
    """``<host name>-<port>``, reduced to the characters a node id allows."""
    name = hostname if hostname is not None else socket.gethostname()
    name = re.sub(r"[^A-Za-z0-9_.\-]+", "-", name).strip("-._") or "node"
    node_id = f"{name[:90]}-{port}"
    assert _NODE_ID_PATTERN.match(node_id), node_id
    return node_id


def read_tokens(
    options: Sequence[str], environment: str | None, token_file: Path | None
) -> tuple[str, ...]:
    """The bearer tokens from ``--token`` options, ``MAINSPRING_TOKENS`` (comma- or
    whitespace-separated) and ``--token-file`` (one per line; ``#`` starts a comment).

    Raises:
        UsageError: a token is too short or contains whitespace, or the file cannot be read.
    """
    tokens: list[str] = list(options)
    if environment:
        tokens.extend(part for part in re.split(r"[,\s]+", environment) if part)
    if token_file is not None:
        try:
            lines = token_file.read_text(encoding="utf-8").splitlines()
        except OSError as error:
            raise UsageError(
                f"cannot read --token-file {str(token_file)!r}: {error.strerror or error}"
            ) from None
        tokens.extend(line.split("#", 1)[0].strip() for line in lines)
        tokens = [token for token in tokens if token]
    for token in tokens:
        if len(token) < _TOKEN_LENGTH_MIN or any(c.isspace() for c in token):
            raise UsageError(
                f"each token must be at least {_TOKEN_LENGTH_MIN} characters without "
                f"whitespace, got one of {len(token)} characters"
            )
    return tuple(dict.fromkeys(tokens))


def _settings(
    app_spec: str,
    store: str,
    listen: str,
    node_id: str | None,
    tokens: tuple[str, ...],
    shutdown_timeout_s: float | None,
    cluster_options: tuple[str | None, str | None, float | None, float | None] = (
        None,
        None,
        None,
        None,
    ),
) -> NodeSettings:
    """Validate the options (nothing is opened yet); raises UsageError."""
    store_url = parse_store_url(store)
    if store_url.path is not None and not store_url.path.resolve().parent.is_dir():
        raise UsageError(
            f"the directory of the SQLite store {str(store_url.path)!r} does not exist: "
            "create it first"
        )
    host, port = parse_listen(listen)
    if node_id is None:
        node_id = default_node_id(port)
    elif not _NODE_ID_PATTERN.match(node_id):
        raise UsageError(
            f"--node-id must be 1-100 letters, digits, '_', '.', ':' or '-' starting with a "
            f"letter or digit, got {node_id!r}"
        )
    if shutdown_timeout_s is not None and not shutdown_timeout_s > 0:
        raise UsageError(f"--shutdown-timeout must be > 0 seconds, got {shutdown_timeout_s}")
    app = load_app(app_spec)
    config = app.config or NodeConfig()
    if shutdown_timeout_s is not None:
        config = attrs.evolve(config, shutdown_timeout_s=shutdown_timeout_s)
    secret, advertise, lease_ttl_s, member_timeout_s = cluster_options
    config = lease_settings(config, lease_ttl_s)
    cluster = cluster_settings(secret, advertise, host, port, member_timeout_s, tokens)
    return NodeSettings(app, app_spec, store_url, host, port, node_id, tokens, config, cluster)


_RECORD_FIELDS: Final = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class _EventFormatter(logging.Formatter):
    """``time LEVEL logger Event key=value ...``: the log calls' ``extra`` fields shown."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = [
            f"{name}={value}"
            for name, value in vars(record).items()
            if name not in _RECORD_FIELDS and not name.startswith("_")
        ]
        if not fields:
            return line
        head, newline, rest = line.partition("\n")  # a traceback stays below the fields
        return f"{head} {' '.join(fields)}{newline}{rest}"


class _StartupGate(logging.Filter):
    """Holds log records back until the node listens: a failed start shows one error line,
    not the lines of what started before it failed (unless the level is debug)."""

    _RECORDS_MAX: Final = 10_000

    def __init__(self, handler: logging.Handler) -> None:
        super().__init__()
        self.handler = handler
        self.held: list[logging.LogRecord] | None = []

    def filter(self, record: logging.LogRecord) -> bool:
        if self.held is None:
            return True
        if len(self.held) < self._RECORDS_MAX:
            self.held.append(record)
        return False

    def open(self, *, replay: bool) -> None:
        """Let records through from now on; ``replay`` writes the held ones first."""
        held, self.held = self.held, None
        if replay and held:
            for record in held:
                self.handler.handle(record)


def _configure_logging(level: str) -> _StartupGate:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_EventFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    gate = _StartupGate(handler)
    handler.addFilter(gate)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level.upper())
    # The gateway answers every request; its access lines would drown the node's own.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return gate


def _fail(reason: str) -> NoReturn:
    raise ConfigurationError(reason)


def _store_description(store_url: StoreUrl, store: object) -> str:
    """The store URL for the announcement line, and where a SQLite store's writer runs (the
    store's default decides it when the URL does not say)."""
    from mainspring.persistence.sqlite import SqliteStore

    described = store_url.describe()
    if isinstance(store, SqliteStore):
        return f"{described} with its writer in a {store.writer}"
    return described


def _reason(error: BaseException) -> str:
    """A one-line reason for a startup failure."""
    if isinstance(error, MainspringError):
        return str(error)
    if isinstance(error, sqlite3.Error):
        return f"cannot open the SQLite store: {error}"
    if isinstance(error, OSError):
        return f"{error.strerror or error}" + (f": {error.filename}" if error.filename else "")
    return f"{type(error).__name__}: {error}"


_STARTUP_LOGS_HELD_S: Final = 5.0
"""A start that takes longer shows its log lines (held back until then) as they come."""


class _NodeRun:
    """One run of ``mainspring node``: signals, start-up, serving, and the graceful stop."""

    def __init__(self, settings: NodeSettings, gate: _StartupGate) -> None:
        self.settings = settings
        self.gate = gate
        self.stop = asyncio.Event()
        self.signals_received: list[int] = []
        self.listening = False
        self.task: asyncio.Task[Any] | None = None

    def on_signal(self, signum: int) -> None:
        """The first SIGTERM/SIGINT stops gracefully (or aborts a start); a second exits."""
        name = signal.Signals(signum).name
        self.signals_received.append(signum)
        if len(self.signals_received) > 1:
            click.echo(f"{PROGRAM}: second {name}: exiting now", err=True)
            os._exit(EXIT_FORCED)
        log.info("NodeStopRequested", extra={"signal": name})
        self.stop.set()
        if not self.listening and self.task is not None:
            self.task.cancel()

    def fail(self, reason: str) -> NoReturn:
        """End a failed start with its one line (held log lines only shown at debug level)."""
        self.gate.open(replay=logging.getLogger().isEnabledFor(logging.DEBUG))
        _fail(reason)

    async def run(self) -> None:
        """Start, serve until a signal, stop. Raises ConfigurationError on a failed start."""
        loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.on_signal, signum)
        reveal = loop.call_later(
            _STARTUP_LOGS_HELD_S, functools.partial(self.gate.open, replay=True)
        )
        try:
            await self._run()
        except asyncio.CancelledError:
            if self.listening or not self.stop.is_set():
                raise
            name = signal.Signals(self.signals_received[0]).name
            self.fail(f"stopped by {name} before the node was ready")
        finally:
            reveal.cancel()
        log.info("NodeExited", extra={"node_id": self.settings.node_id})

    async def _run(self) -> None:
        from mainspring.gateway import Gateway
        from mainspring.node import Node

        settings = self.settings
        app = settings.app
        try:
            store = settings.store_url.open_store()
            node = Node(
                settings.node_id,
                store=store,
                actors=app.actors,
                workflows=app.workflows,
                config=settings.config,
                cluster=settings.cluster,
            )
        except MainspringError as error:
            self.fail(_reason(error))
        early: Gateway | None = None
        try:
            try:
                # Opened first (the node's start finds it open) so that an unreachable
                # database is reported before the app's lifespan starts anything.
                await store.open()
                if settings.cluster is not None:
                    # In a cluster the gateway listens before the node joins: the other nodes
                    # forward to it as soon as they see it (their start-up hooks included).
                    early = Gateway(node, tokens=settings.tokens)
                    await early.start(settings.host, settings.port)
                async with app.running(node):
                    await self._serve(node, early)
            except Exception as error:
                # Before the gateway listens, every failure is a problem of this run's
                # configuration (the store, the app's hooks, the address): one line says which.
                if self.listening:
                    raise
                self.fail(_reason(error))
        finally:
            if early is not None:
                await early.stop(drain_timeout_s=0)  # (already stopped after serving)
            await store.close()

    async def _serve(self, node: Node, gateway: Gateway | None = None) -> None:
        from mainspring.gateway import Gateway

        settings = self.settings
        if gateway is None:
            gateway = Gateway(node, tokens=settings.tokens)
            await gateway.start(settings.host, settings.port)
        url = gateway.url
        tune_garbage_collector(settings.gc_threshold)
        self.listening = True
        self.gate.open(replay=True)
        auth = f"{len(settings.tokens)} token(s)" if settings.tokens else "no authentication"
        click.echo(
            f"{PROGRAM}: listening on {url} (node id {settings.node_id}, store "
            f"{_store_description(settings.store_url, node.store)}, app {settings.app_spec}, "
            f"{auth})"
        )
        sys.stdout.flush()
        try:
            await self.stop.wait()
        finally:
            if node.cluster is not None:
                # Out of every view first: peers stop routing here and actors are handed off
                # while the gateway still forwards what reaches it.
                await node.cluster.leave()
            log.info("GatewayStopping", extra={"node_id": settings.node_id})
            deadline_s = settings.config.shutdown_timeout_s
            try:
                # Requests in flight get the shutdown timeout to finish; closing the
                # connections afterwards gets as long again.
                async with asyncio.timeout(2 * deadline_s):
                    await gateway.stop(drain_timeout_s=deadline_s)
            except TimeoutError:
                log.warning("GatewayStopTimedOut", extra={"node_id": settings.node_id})
            log.info("NodeStopping", extra={"node_id": settings.node_id})


async def serve(settings: NodeSettings, gate: _StartupGate) -> None:
    """Run the node and its gateway until SIGTERM or SIGINT (see the module docstring).

    Raises:
        ConfigurationError: the store, the app's hooks or the listening address failed, or a
            signal came before the node was ready.
    """
    await _NodeRun(settings, gate).run()


@click.command(cls=_OneLineCommand)
@click.option(
    "--app",
    "app_spec",
    required=True,
    metavar="MODULE[:ATTR]",
    help="The module defining the app (attribute 'app' by default), e.g. examples.orders.app.",
)
@click.option(
    "--store",
    default=DEFAULT_STORE_URL,
    show_default=True,
    metavar="URL",
    help="sqlite:///PATH[?writer=thread|process] or postgresql://USER@HOST:PORT/DB[?schema=NAME].",
)
@click.option(
    "--listen",
    default=DEFAULT_LISTEN,
    show_default=True,
    metavar="HOST:PORT",
    help="Where the HTTP gateway listens (port 0 picks a free port).",
)
@click.option("--node-id", default=None, help="This node's id [default: <host name>-<port>].")
@click.option(
    "--token",
    "token_options",
    multiple=True,
    metavar="TOKEN",
    help=f"A bearer token clients must send (repeatable; also ${TOKENS_ENVIRONMENT}, "
    "comma-separated). Without any, the API is open.",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A file with one bearer token per line ('#' starts a comment).",
)
@click.option(
    "--shutdown-timeout",
    "shutdown_timeout_s",
    type=float,
    default=None,
    metavar="SECONDS",
    help="How long a stop waits for steps in flight, and then for mailboxes "
    "[default: the app's NodeConfig.shutdown_timeout_s, 10].",
)
@click.option(
    "--cluster-secret",
    default=None,
    metavar="SECRET",
    help="Join the cluster of the nodes over the same store that share this secret "
    f"(also ${CLUSTER_SECRET_ENVIRONMENT}); node-to-node calls carry it. Without it the node "
    "runs alone.",
)
@click.option(
    "--advertise",
    default=None,
    metavar="URL",
    help="The URL the other nodes reach this node's gateway at [default: http://HOST:PORT of "
    "--listen].",
)
@click.option(
    "--lease-ttl",
    "lease_ttl_s",
    type=float,
    default=None,
    metavar="SECONDS",
    help="How long an actor's lease outlives its node: a crashed node's actors move after "
    "this long [default: the app's NodeConfig.lease_ttl_s, 30].",
)
@click.option(
    "--member-timeout",
    "member_timeout_s",
    type=float,
    default=None,
    metavar="SECONDS",
    help="A cluster member silent this long leaves every view [default: 5].",
)
@click.option(
    "--gc-threshold",
    type=click.IntRange(min=0),
    default=GC_THRESHOLD_DEFAULT,
    show_default=True,
    metavar="N",
    help="Once started, freeze the start-up heap and run a young garbage collection every N "
    "allocations (0 keeps CPython's defaults); see docs/node.md.",
)
@click.option(
    "--log-level",
    type=click.Choice(_LOG_LEVELS, case_sensitive=False),
    default="info",
    show_default=True,
)
def node(
    app_spec: str,
    store: str,
    listen: str,
    node_id: str | None,
    token_options: tuple[str, ...],
    token_file: Path | None,
    shutdown_timeout_s: float | None,
    cluster_secret: str | None,
    advertise: str | None,
    lease_ttl_s: float | None,
    member_timeout_s: float | None,
    gc_threshold: int,
    log_level: str,
) -> None:
    """Run a node with its HTTP gateway until SIGTERM or SIGINT."""
    gate = _configure_logging(log_level)
    # The current directory comes first, as with 'python -m': '--app myapp' finds ./myapp.py.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        tokens = read_tokens(token_options, os.environ.get(TOKENS_ENVIRONMENT), token_file)
        secret = cluster_secret or os.environ.get(CLUSTER_SECRET_ENVIRONMENT) or None
        settings = _settings(
            app_spec,
            store,
            listen,
            node_id,
            tokens,
            shutdown_timeout_s,
            (secret, advertise, lease_ttl_s, member_timeout_s),
        )
        settings = attrs.evolve(settings, gc_threshold=gc_threshold)
    except UsageError as error:
        _fail(str(error))
    asyncio.run(serve(settings, gate))
