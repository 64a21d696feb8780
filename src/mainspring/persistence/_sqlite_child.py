"""The SQLite writer process's side of ``ProcessRunner`` (see ``_sqlite_process``).

This module is all the child runs besides the store's transaction functions, so it imports
nothing of asyncio or of the rest of mainspring: the child starts in a fraction of the time a
full ``import mainspring`` takes, which every ``SqliteStore.open`` (and every writer restart)
waits for.
"""

from __future__ import annotations

import pickle
import socket
import sqlite3
import struct
import traceback
from typing import Any, Final, cast

__all__ = ["HEADER", "PROTOCOL", "SqliteErrorCarrier", "serve"]

HEADER: Final = struct.Struct("!I")
"""Each frame: its length, 4 bytes big-endian, then a pickle."""
PROTOCOL: Final = pickle.HIGHEST_PROTOCOL


def serve(channel: socket.socket, stream: Any) -> None:
    """The child's loop: open the connection named by the first call, then run each call as it
    comes, until the parent closes the channel."""
    connection: sqlite3.Connection | None = None
    try:
        while True:
            header = stream.read(HEADER.size)
            if len(header) < HEADER.size:
                return  # the parent closed the channel (or died): nothing more to do
            (size,) = HEADER.unpack(header)
            body = stream.read(size)
            if len(body) < size:
                return
            # The frame comes from the parent that started this process, over a private
            # socket pair: nothing else can write to it.
            fn, arguments = pickle.loads(body)  # noqa: S301
            try:
                if connection is None:
                    connection = fn(*arguments)  # the first call opens the connection
                    reply: tuple[bool, Any] = (True, None)
                else:
                    reply = (True, fn(connection, *arguments))
            except Exception as error:  # every failure goes back to the caller
                reply = (False, _portable(error))
            payload = pickle.dumps(reply, PROTOCOL)
            channel.sendall(HEADER.pack(len(payload)) + payload)
    except (BrokenPipeError, ConnectionResetError):
        return  # the parent went away while this process answered
    finally:
        if connection is not None:
            connection.close()


def _portable(error: BaseException) -> BaseException:
    """``error`` as it can travel back to the parent: itself if it pickles, with the child's
    traceback as a note; otherwise a ``RuntimeError`` that carries its type, text and traceback.
    """
    trace = "".join(traceback.format_exception(error)).rstrip()
    if isinstance(error, sqlite3.Error):
        # pickle keeps an exception's args only; the store reads these two attributes.
        code = getattr(error, "sqlite_errorcode", None)
        name = getattr(error, "sqlite_errorname", None)
        error = SqliteErrorCarrier(type(error), error.args, code, name)
    try:
        copy = pickle.loads(pickle.dumps(error, PROTOCOL))  # noqa: S301 - its own bytes
    except Exception:  # an error that does not pickle is described instead
        described = f"{type(error).__qualname__}: {error}"
        return RuntimeError(f"{described}\n\nin the SQLite writer process:\n{trace}")
    if isinstance(copy, BaseException):
        copy.add_note(f"in the SQLite writer process:\n{trace}")
    return cast("BaseException", copy)


class SqliteErrorCarrier(Exception):
    """A ``sqlite3.Error`` on its way to the parent, with the codes pickle would drop."""

    def __init__(
        self, kind: type[sqlite3.Error], args: tuple[Any, ...], code: int | None, name: str | None
    ) -> None:
        super().__init__(kind, args, code, name)

    def rebuild(self) -> sqlite3.Error:
        kind, args, code, name = self.args
        error = kind(*args)
        setattr(error, "sqlite_errorcode", code)  # noqa: B010 - typeshed says int, may be None
        setattr(error, "sqlite_errorname", name)  # noqa: B010
        for note in getattr(self, "__notes__", ()):
            error.add_note(note)
        return cast("sqlite3.Error", error)
