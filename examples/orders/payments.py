"""A small payment-provider HTTP service for the order example, and a client for it.

    python -m examples.orders.payments --db PATH [--host 127.0.0.1] [--port 0]
        [--failure-rate 0.1] [--seed 1] [--limit-cents 10000000]

The service stands in for a card processor that an at-least-once workflow step calls with an
idempotency key. It runs as its own process on its own SQLite file and keeps two kinds of record,
so tests can tell charge *attempts* apart from charge *effects* across crashes of the caller:

- ``attempts``: one row per request to ``/charges`` or ``/refunds``, written before anything else
  and updated with its outcome;
- ``charges`` and ``refunds``: the effects, deduplicated by their idempotency key (the PRIMARY KEY
  decides, so concurrent duplicates produce one row); a charge is refunded at most once.

Endpoints (JSON in and out; errors are ``{"error": "..."}``):

- ``POST /charges`` ``{"idempotency_key", "order_id", "customer_id", "amount_cents"}``:
  201 new charge, 200 the stored charge again (``"duplicate": true``), 409 the key was used for a
  different charge, 402 declined (customer ``declined-*`` or amount over the limit), 503 an injected
  transient failure (nothing charged), 400 invalid body.
- ``POST /refunds`` ``{"idempotency_key", "charge_key"}``: refunds the whole charge made with
  ``charge_key``; 201 new, 200 already refunded (by this key or another), 404 no such charge,
  409 the key was used for another charge, 503 and 400 as above.
- ``GET /charges/{idempotency_key}``: the charge, or 404.
- ``GET /stats``: attempt and effect counters (see ``PaymentsServer.stats``).
- ``GET /health``: 200.

With ``--port 0`` a free port is chosen; once serving, the process prints one JSON line
``{"listening": "http://HOST:PORT"}`` to stdout. SIGTERM or SIGINT stops it cleanly (exit 0).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any, Final

import aiohttp
import aiosqlite
from aiohttp import web

from mainspring.seams import SeededRandom, SystemClock, SystemIds

__all__ = [
    "DEFAULT_LIMIT_CENTS",
    "PaymentDeclined",
    "PaymentError",
    "PaymentTransientError",
    "PaymentsClient",
    "PaymentsServer",
    "start_payments",
]

DEFAULT_LIMIT_CENTS: Final = 10_000_000
MAX_AMOUNT_CENTS: Final = 2**53 - 1  # exact in every JSON reader
MAX_TEXT_LENGTH: Final = 200
DECLINED_PREFIX: Final = "declined-"

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,             -- 'charge' or 'refund'
    idempotency_key TEXT,           -- NULL when the body had none
    outcome TEXT NOT NULL,          -- 'pending' until answered, then e.g. 'created', 'declined'
    status INTEGER,                 -- the HTTP status answered
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS charges (
    idempotency_key TEXT PRIMARY KEY,
    charge_id TEXT NOT NULL UNIQUE,
    order_id TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    amount_cents INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS charges_by_order ON charges (order_id);
CREATE TABLE IF NOT EXISTS refunds (
    idempotency_key TEXT PRIMARY KEY,
    refund_id TEXT NOT NULL UNIQUE,
    charge_key TEXT NOT NULL UNIQUE REFERENCES charges (idempotency_key),
    amount_cents INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
);
"""

_CHARGE_FIELDS: Final = ("idempotency_key", "order_id", "customer_id", "amount_cents")
_REFUND_FIELDS: Final = ("idempotency_key", "charge_key")
_TRANSIENT: Final = {"error": "transient failure, retry"}


class _BadRequest(Exception):
    """An invalid request body; the message says what was wrong and how to fix it."""


# --------------------------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------------------------


class PaymentsServer:
    """A running payment service: its ``url``, its SQLite file, and ``close()`` to stop it.

    Build it with ``start_payments``. All effects go through one aiosqlite connection in
    autocommit mode, so every statement is its own durable transaction (WAL, synchronous=FULL).
    """

    def __init__(
        self,
        db: aiosqlite.Connection,
        db_path: Path,
        *,
        failure_rate: float,
        seed: int,
        limit_cents: int,
    ) -> None:
        self._db = db
        self.db_path = db_path
        self.failure_rate = failure_rate
        self.limit_cents = limit_cents
        self._random = SeededRandom(seed)
        self._clock = SystemClock()
        self._ids = SystemIds()  # from OS entropy: ids stay unique across restarts with one seed
        self._runner: web.AppRunner | None = None
        self.url = ""
        self.app = web.Application()
        self.app.add_routes(
            [
                web.post("/charges", self._post_charge),
                web.post("/refunds", self._post_refund),
                web.get("/charges/{idempotency_key}", self._get_charge),
                web.get("/stats", self._get_stats),
                web.get("/health", self._get_health),
            ]
        )

    async def _serve(self, host: str, port: int) -> None:
        """Listen on ``host:port`` (0 picks a free port) and set ``url``."""
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        self._runner = runner
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        self.url = f"http://{_url_host(bound_host)}:{bound_port}"

    async def close(self) -> None:
        """Stop serving (letting requests in flight finish) and close the database."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        await self._db.close()

    async def stats(self) -> dict[str, int]:
        """The counters served at ``GET /stats``.

        ``duplicate_charges`` is the number of order ids with more than one charge (charges made
        under different keys for one order): a correct caller keeps it at 0.
        """
        row = await self._one(
            """
            SELECT
              (SELECT COUNT(*) FROM attempts WHERE kind = 'charge'),
              (SELECT COUNT(*) FROM charges),
              (SELECT COUNT(*) FROM (
                  SELECT order_id FROM charges GROUP BY order_id HAVING COUNT(*) > 1)),
              (SELECT COUNT(*) FROM refunds),
              (SELECT COUNT(*) FROM attempts WHERE kind = 'refund'),
              (SELECT COALESCE(SUM(amount_cents), 0) FROM charges),
              (SELECT COALESCE(SUM(amount_cents), 0) FROM refunds)
            """
        )
        assert row is not None
        names = (
            "charge_attempts",
            "charges",
            "duplicate_charges",
            "refunds",
            "refund_attempts",
            "amount_charged_cents",
            "amount_refunded_cents",
        )
        return {name: int(value) for name, value in zip(names, row, strict=True)}

    # -- handlers -------------------------------------------------------------------------------

    async def _post_charge(self, request: web.Request) -> web.Response:
        body = await _read_json(request)
        attempt = await self._record_attempt("charge", body)
        try:
            fields = _validate(body, _CHARGE_FIELDS)
        except _BadRequest as error:
            return await self._answer(attempt, "invalid", 400, {"error": str(error)})
        if self._transient_failure():
            return await self._answer(attempt, "transient", 503, _TRANSIENT)

        key = fields["idempotency_key"]
        existing = await self._charge_row(key)
        if existing is not None:
            return await self._answer_existing_charge(attempt, existing, fields)

        reason = self._decline_reason(fields["customer_id"], fields["amount_cents"])
        if reason is not None:
            declined = {"error": "card declined", "permanent": True, "reason": reason}
            return await self._answer(attempt, "declined", 402, declined)

        cursor = await self._db.execute(
            """
            INSERT INTO charges
                (idempotency_key, charge_id, order_id, customer_id, amount_cents, created_ms)
            VALUES (?, ?, ?, ?, ?, ?)
            ON CONFLICT (idempotency_key) DO NOTHING
            """,
            (
                key,
                f"ch_{self._ids.new_id()}",
                fields["order_id"],
                fields["customer_id"],
                fields["amount_cents"],
                self._clock.wall_ms(),
            ),
        )
        inserted = cursor.rowcount == 1
        await cursor.close()
        row = await self._charge_row(key)
        assert row is not None
        if not inserted:  # a concurrent request with this key inserted first
            return await self._answer_existing_charge(attempt, row, fields)
        return await self._answer(attempt, "created", 201, {**row, "duplicate": False})

    async def _post_refund(self, request: web.Request) -> web.Response:
        body = await _read_json(request)
        attempt = await self._record_attempt("refund", body)
        try:
            fields = _validate(body, _REFUND_FIELDS)
        except _BadRequest as error:
            return await self._answer(attempt, "invalid", 400, {"error": str(error)})
        if self._transient_failure():
            return await self._answer(attempt, "transient", 503, _TRANSIENT)

        key, charge_key = fields["idempotency_key"], fields["charge_key"]
        existing = await self._refund_row("idempotency_key", key)
        if existing is not None:
            return await self._answer_existing_refund(attempt, existing, charge_key)
        charge = await self._charge_row(charge_key)
        if charge is None:
            missing = {"error": f"no charge was made with idempotency_key {charge_key!r}"}
            return await self._answer(attempt, "not_found", 404, missing)

        cursor = await self._db.execute(
            """
            INSERT INTO refunds (idempotency_key, refund_id, charge_key, amount_cents, created_ms)
            VALUES (?, ?, ?, ?, ?)
            ON CONFLICT DO NOTHING
            """,
            (
                key,
                f"re_{self._ids.new_id()}",
                charge_key,
                charge["amount_cents"],
                self._clock.wall_ms(),
            ),
        )
        inserted = cursor.rowcount == 1
        await cursor.close()
        if inserted:
            row = await self._refund_row("idempotency_key", key)
            assert row is not None
            return await self._answer(attempt, "created", 201, {**row, "duplicate": False})
        # A concurrent request took this key, or the charge was refunded under another key.
        row = await self._refund_row("idempotency_key", key)
        if row is None:
            row = await self._refund_row("charge_key", charge_key)
        assert row is not None
        return await self._answer_existing_refund(attempt, row, charge_key)

    async def _get_charge(self, request: web.Request) -> web.Response:
        key = request.match_info["idempotency_key"]
        row = await self._charge_row(key)
        if row is None:
            return web.json_response(
                {"error": f"no charge was made with idempotency_key {key!r}"}, status=404
            )
        return web.json_response(row)

    async def _get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(await self.stats())

    async def _get_health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    # -- helpers ----------------------------------------------------------------------------------

    def _transient_failure(self) -> bool:
        """Whether this request fails transiently (with probability ``failure_rate``)."""
        return self._random.random() < self.failure_rate

    def _decline_reason(self, customer_id: str, amount_cents: int) -> str | None:
        """Why the card is declined, or None: the rule is deterministic, so it is permanent."""
        if customer_id.startswith(DECLINED_PREFIX):
            return f"customer ids starting with {DECLINED_PREFIX!r} are always declined"
        if amount_cents > self.limit_cents:
            return f"amount_cents {amount_cents} is over the limit of {self.limit_cents}"
        return None

    async def _answer_existing_charge(
        self, attempt: int, row: dict[str, Any], fields: dict[str, Any]
    ) -> web.Response:
        """200 with the stored charge, or 409 when the key was used for a different charge."""
        differing = [
            name
            for name in ("order_id", "customer_id", "amount_cents")
            if row[name] != fields[name]
        ]
        if differing:
            conflict = {
                "error": (
                    f"idempotency_key {row['idempotency_key']!r} was already used for a different"
                    f" charge (differs in {', '.join(differing)}); use a new key for a new charge"
                ),
                "charge": row,
            }
            return await self._answer(attempt, "conflict", 409, conflict)
        return await self._answer(attempt, "duplicate", 200, {**row, "duplicate": True})

    async def _answer_existing_refund(
        self, attempt: int, row: dict[str, Any], charge_key: str
    ) -> web.Response:
        """200 with the stored refund, or 409 when the key was used to refund another charge."""
        if row["charge_key"] != charge_key:
            conflict = {
                "error": (
                    f"idempotency_key {row['idempotency_key']!r} was already used to refund"
                    f" charge {row['charge_key']!r}; use a new key for another refund"
                ),
                "refund": row,
            }
            return await self._answer(attempt, "conflict", 409, conflict)
        return await self._answer(attempt, "duplicate", 200, {**row, "duplicate": True})

    async def _record_attempt(self, kind: str, body: object) -> int:
        """Durably record that a request arrived, before acting on it; return its row id."""
        key = body.get("idempotency_key") if isinstance(body, dict) else None
        cursor = await self._db.execute(
            "INSERT INTO attempts (kind, idempotency_key, outcome, created_ms)"
            " VALUES (?, ?, 'pending', ?)",
            (kind, key if isinstance(key, str) else None, self._clock.wall_ms()),
        )
        attempt = cursor.lastrowid
        await cursor.close()
        assert attempt is not None
        return attempt

    async def _answer(
        self, attempt: int, outcome: str, status: int, payload: dict[str, Any]
    ) -> web.Response:
        """Record the attempt's outcome and build the JSON response."""
        await self._db.execute(
            "UPDATE attempts SET outcome = ?, status = ? WHERE id = ?", (outcome, status, attempt)
        )
        return web.json_response(payload, status=status)

    async def _charge_row(self, key: str) -> dict[str, Any] | None:
        return await self._row_dict(
            "SELECT idempotency_key, charge_id, order_id, customer_id, amount_cents, created_ms"
            " FROM charges WHERE idempotency_key = ?",
            (key,),
        )

    async def _refund_row(self, column: str, value: str) -> dict[str, Any] | None:
        assert column in {"idempotency_key", "charge_key"}
        return await self._row_dict(
            "SELECT idempotency_key, refund_id, charge_key, amount_cents, created_ms"
            f" FROM refunds WHERE {column} = ?",
            (value,),
        )

    async def _row_dict(self, sql: str, parameters: tuple[Any, ...]) -> dict[str, Any] | None:
        async with self._db.execute(sql, parameters) as cursor:
            row = await cursor.fetchone()
            if row is None:
                return None
            return {column[0]: value for column, value in zip(cursor.description, row, strict=True)}

    async def _one(self, sql: str) -> sqlite3.Row | tuple[Any, ...] | None:
        async with self._db.execute(sql) as cursor:
            return await cursor.fetchone()


async def start_payments(
    db_path: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    failure_rate: float = 0.0,
    seed: int = 0,
    limit_cents: int = DEFAULT_LIMIT_CENTS,
) -> PaymentsServer:
    """Open (or create) the SQLite file and serve the payment API on ``host:port``.

    ``port=0`` picks a free port; read the address from the returned server's ``url``.
    ``failure_rate`` is the probability in [0, 1] that a charge or refund request answers 503
    without effect; the failures are drawn from a ``random.Random(seed)``. Charges above
    ``limit_cents`` are declined. Call ``close()`` on the result to stop.
    """
    if not 0.0 <= failure_rate <= 1.0:
        raise ValueError(f"failure_rate must be within [0, 1], got {failure_rate}")
    if limit_cents < 0:
        raise ValueError(f"limit_cents must not be negative, got {limit_cents}")
    path = Path(db_path)
    db = await aiosqlite.connect(path, isolation_level=None)  # autocommit: one statement, one tx
    try:
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=FULL")
        await db.execute("PRAGMA busy_timeout=5000")
        await db.executescript(_SCHEMA)
        server = PaymentsServer(
            db, path, failure_rate=failure_rate, seed=seed, limit_cents=limit_cents
        )
        await server._serve(host, port)
    except BaseException:
        await db.close()
        raise
    return server


async def _read_json(request: web.Request) -> object:
    """The request body parsed as JSON, or a ``_NotJson`` (rejected by validation)."""
    raw = await request.read()
    try:
        return json.loads(raw)
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError
        return _NotJson(str(error))


class _NotJson:
    """A body that did not parse as JSON, with the parser's message."""

    def __init__(self, message: str) -> None:
        self.message = message


def _validate(body: object, names: tuple[str, ...]) -> dict[str, Any]:
    """The body's fields when it is a JSON object with exactly ``names``, validated; else raise."""
    expected = ", ".join(f'"{name}"' for name in names)
    if isinstance(body, _NotJson):
        raise _BadRequest(
            f"the body is not valid JSON ({body.message}); send a JSON object with {expected}"
        )
    if not isinstance(body, dict):
        raise _BadRequest(f"the body must be a JSON object with {expected}")
    missing = [name for name in names if name not in body]
    if missing:
        raise _BadRequest(f"missing field(s) {', '.join(missing)}; required: {expected}")
    unknown = sorted(set(body) - set(names))
    if unknown:
        raise _BadRequest(f"unknown field(s) {', '.join(unknown)}; allowed: {expected}")
    for name in names:
        value = body[name]
        if name == "amount_cents":
            if not isinstance(value, int) or isinstance(value, bool):
                raise _BadRequest(f"amount_cents must be an integer number of cents, got {value!r}")
            if not 0 < value <= MAX_AMOUNT_CENTS:
                raise _BadRequest(
                    f"amount_cents must be a positive integer at most {MAX_AMOUNT_CENTS},"
                    f" got {value}"
                )
        elif not isinstance(value, str) or not value:
            raise _BadRequest(f"{name} must be a non-empty string, got {value!r}")
        elif len(value) > MAX_TEXT_LENGTH:
            raise _BadRequest(f"{name} must be at most {MAX_TEXT_LENGTH} characters long")
    return dict(body)


def _url_host(host: str) -> str:
    """``host`` as it appears in a URL (IPv6 addresses in brackets)."""
    return f"[{host}]" if ":" in host else host


# --------------------------------------------------------------------------------------------
# Client
# --------------------------------------------------------------------------------------------


class PaymentError(Exception):
    """The payment service refused a request (a non-2xx answer); ``status`` is the HTTP status,
    None when no answer arrived."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class PaymentDeclined(PaymentError):
    """The card was declined (402): permanent, retrying will not help."""


class PaymentTransientError(PaymentError):
    """A transient failure (503, connection error or timeout): retry with the same key.

    The request may or may not have taken effect; the idempotency key makes a retry safe.
    """


class PaymentsClient:
    """An async client for the payment service at ``base_url``.

    Uses ``session`` when given (and leaves it open on ``close()``), else its own session.
    Each request times out after ``timeout_s`` seconds, raising ``PaymentTransientError``.
    """

    def __init__(
        self,
        base_url: str,
        session: aiohttp.ClientSession | None = None,
        *,
        timeout_s: float = 10.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._session = session
        self._owns_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def charge(
        self, idempotency_key: str, order_id: str, customer_id: str, amount_cents: int
    ) -> dict[str, Any]:
        """Charge ``amount_cents`` to ``customer_id`` for ``order_id``, once per key.

        Returns the charge (``"duplicate": true`` when the key had already charged). Raises
        ``PaymentDeclined``, ``PaymentTransientError`` or ``PaymentError`` (e.g. 409: the key
        was used for a different charge).
        """
        body = {
            "idempotency_key": idempotency_key,
            "order_id": order_id,
            "customer_id": customer_id,
            "amount_cents": amount_cents,
        }
        return await self._request("POST", "/charges", body)

    async def refund(self, idempotency_key: str, charge_key: str) -> dict[str, Any]:
        """Refund the charge made with ``charge_key`` in full, once per key and once per charge.

        Raises ``PaymentError`` with status 404 when no such charge exists.
        """
        body = {"idempotency_key": idempotency_key, "charge_key": charge_key}
        return await self._request("POST", "/refunds", body)

    async def get_charge(self, idempotency_key: str) -> dict[str, Any] | None:
        """The charge made with ``idempotency_key``, or None when there is none."""
        try:
            return await self._request("GET", f"/charges/{idempotency_key}", None)
        except PaymentError as error:
            if error.status == 404:
                return None
            raise

    async def stats(self) -> dict[str, Any]:
        """The service's attempt and effect counters (``GET /stats``)."""
        return await self._request("GET", "/stats", None)

    async def close(self) -> None:
        """Close the client's own session (a session passed in stays open)."""
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    async def _request(self, method: str, path: str, body: object) -> dict[str, Any]:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        url = self.base_url + path
        try:
            async with self._session.request(
                method, url, json=body, timeout=self._timeout
            ) as response:
                status = response.status
                text = await response.text()
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as error:
            raise PaymentTransientError(
                f"{method} {url} got no answer: {error!r}", status=None
            ) from error
        try:
            payload = json.loads(text)
        except ValueError:
            payload = {"error": text}
        if not isinstance(payload, dict):
            payload = {"error": text}
        if 200 <= status < 300:
            return payload
        message = f"{method} {path} -> {status}: {payload.get('error', text)}"
        if status == 402:
            raise PaymentDeclined(message, status=status)
        if status == 503:
            raise PaymentTransientError(message, status=status)
        raise PaymentError(message, status=status)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m examples.orders.payments",
        description="Serve the example payment provider over HTTP on a SQLite file.",
    )
    parser.add_argument("--db", type=Path, required=True, help="the SQLite file (created if new)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port to listen on; 0 picks one")
    parser.add_argument(
        "--failure-rate",
        type=float,
        default=0.0,
        help="probability in [0, 1] that a charge or refund answers 503 without effect",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for the injected failures")
    parser.add_argument(
        "--limit-cents",
        type=int,
        default=DEFAULT_LIMIT_CENTS,
        help="charges above this amount are declined",
    )
    args = parser.parse_args(argv)
    if not 0.0 <= args.failure_rate <= 1.0:
        parser.error(f"--failure-rate must be within [0, 1], got {args.failure_rate}")
    if args.limit_cents < 0:
        parser.error(f"--limit-cents must not be negative, got {args.limit_cents}")
    return args


async def _serve_until_signalled(args: argparse.Namespace) -> None:
    """Serve until SIGTERM or SIGINT, announcing the URL on stdout once listening."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = await start_payments(
        args.db,
        host=args.host,
        port=args.port,
        failure_rate=args.failure_rate,
        seed=args.seed,
        limit_cents=args.limit_cents,
    )
    try:
        print(json.dumps({"listening": server.url}), flush=True)
        await stop.wait()
    finally:
        await server.close()


def main(argv: list[str] | None = None) -> int:
    """Run the service from the command line; returns the exit code."""
    asyncio.run(_serve_until_signalled(_parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
