"""``ProcessRunner``: the SQLite writer connection in a child process of its own.

Python's ``sqlite3`` releases the GIL around each statement step and must take it back after
every one: one per row of an ``executemany``. On a busy node, the event loop's thread holds the
GIL most of the time, so a writer *thread* waits for it again and again inside each transaction,
and the loop and the writer end up taking turns instead of running side by side. A child process
has a GIL of its own: it runs the store's transaction functions (``_sqlite_sql``) on its own
core while the event loop goes on.

The protocol is private to a parent and the child it started, over a socket pair: each frame is
a 4-byte big-endian length and a pickle. The parent sends ``(function, arguments)`` where the
function is a module-level function of ``_sqlite_sql`` (pickled by name); the child runs them
one at a time, in the order sent, and answers each with ``(True, result)`` or
``(False, error)``. The child ignores SIGINT and SIGTERM (a terminal's Ctrl-C or a service
manager's stop must not take the writer away while the node drains), and exits when the socket
closes: when the store closes it, or when the parent dies, even by SIGKILL. The child's side is
``_sqlite_child``. A runner whose child is gone stays gone (``lost``); ``SqliteStore`` starts a
new one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import pickle
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any, Final, TypeVar, cast, final

from mainspring.errors import UsageError
from mainspring.persistence._sqlite_child import HEADER as _HEADER
from mainspring.persistence._sqlite_child import PROTOCOL as _PROTOCOL
from mainspring.persistence._sqlite_child import SqliteErrorCarrier

__all__ = ["ProcessRunner", "WriterProcessLost"]

T = TypeVar("T")

_EXIT_WAIT_S: Final = 10.0
"""How long ``close`` waits for the child to finish what it was sent and exit, before killing it."""

# The child's first steps, before anything of mainspring can be imported: the parent's sys.path
# arrives in the first frame, so the child imports the very code the parent runs. The two
# packages are entered in sys.modules as bare packages first, so importing their modules does not
# run their __init__ (which imports all of mainspring, asyncio and the PostgreSQL driver): the
# child needs the store's SQL and its records only.
_BOOTSTRAP: Final = """\
import importlib.util, pickle, signal, socket, struct, sys, types
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
channel = socket.socket(fileno=int(sys.argv[1]))
stream = channel.makefile("rb")
(size,) = struct.unpack("!I", stream.read(4))
sys.path[:] = pickle.loads(stream.read(size))
for name in ("mainspring", "mainspring.persistence"):
    package = types.ModuleType(name)
    package.__path__ = list(importlib.util.find_spec(name).submodule_search_locations)
    sys.modules[name] = package
from mainspring.persistence._sqlite_child import serve
serve(channel, stream)
"""


class WriterProcessLost(Exception):
    """The writer process exited, or its channel broke.

    ``ambiguous`` is true for a call that was sent and not answered: the child may have
    committed it before it went.
    """

    def __init__(self, detail: str, *, ambiguous: bool) -> None:
        self.ambiguous = ambiguous
        super().__init__(detail)


# The parent --------------------------------------------------------------------------------


@final
class ProcessRunner:
    """Runs each function in a child process that owns the SQLite connection (see the module
    docstring). Functions must be module-level functions of ``_sqlite_sql`` (or any function
    pickle can name) with picklable arguments and results.

    ``run`` calls may overlap: they are sent at once and run one at a time, in the order sent.
    """

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self._process = process
        self._reader = reader
        self._writer = writer
        self._waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._lost: WriterProcessLost | None = None
        self._closed = False
        self._answers = asyncio.get_running_loop().create_task(
            self._read_answers(), name="mainspring-sqlite-writer-answers"
        )

    @classmethod
    async def open(cls, path: str) -> ProcessRunner:
        """Start the child process and open the connection to ``path`` in it.

        Raises:
            UsageError: this platform cannot pass a socket to a child process (Windows).
            sqlite3.Error: the database could not be opened.
            WriterProcessLost: the child process could not be started or exited at once.
        """
        if os.name != "posix":
            raise UsageError(
                "SqliteStore(writer='process') needs a POSIX system (Linux, macOS); use "
                "writer='thread' here"
            )
        from mainspring.persistence import _sqlite_sql

        parent_end, child_end = socket.socketpair()
        try:
            # The command is fixed: this interpreter running _BOOTSTRAP.
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-S",  # no site: sys.path comes from this process
                "-c",
                _BOOTSTRAP,
                str(child_end.fileno()),
                pass_fds=(child_end.fileno(),),
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as error:
            parent_end.close()
            raise WriterProcessLost(
                f"could not start the SQLite writer process ({error})", ambiguous=False
            ) from error
        finally:
            child_end.close()
        reader, writer = await asyncio.open_connection(sock=parent_end, limit=2**24)
        runner = cls(process, reader, writer)
        path_frame = pickle.dumps(sys.path, _PROTOCOL)
        writer.write(_HEADER.pack(len(path_frame)) + path_frame)
        try:
            await runner._call(_sqlite_sql.connect, (path,))
        except BaseException:
            await runner.close()
            raise
        return runner

    @property
    def pid(self) -> int:
        """The child process's id."""
        return self._process.pid

    @property
    def lost(self) -> WriterProcessLost | None:
        """Why the child process is gone, once it is (it exited or its channel broke); ``None``
        while it serves, and after ``close``."""
        return self._lost

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(connection, *args)`` in the child process and return its result.

        Raises:
            WriterProcessLost: the child process is gone (``ambiguous`` if it was running this
                call or had been sent it).
            UsageError: the runner is closed, or ``fn`` or its arguments cannot be pickled.
            Exception: whatever ``fn`` raised in the child (with its traceback as a note).
        """
        return cast("T", await self._call(fn, args))

    async def _call(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        if self._closed:
            raise UsageError("this ProcessRunner is closed; open a new one")
        if self._lost is not None:
            raise WriterProcessLost(str(self._lost), ambiguous=False)
        try:
            payload = pickle.dumps((fn, args), _PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError) as error:
            raise UsageError(
                f"ProcessRunner.run needs a module-level function and picklable arguments; "
                f"{getattr(fn, '__qualname__', fn)!r} with {len(args)} argument(s) does not "
                f"pickle: {error}"
            ) from error
        answer = asyncio.get_running_loop().create_future()
        self._waiting.append(answer)
        self._writer.write(_HEADER.pack(len(payload)) + payload)
        return await answer

    async def _read_answers(self) -> None:
        reason = "the channel closed"
        try:
            while True:
                header = await self._reader.readexactly(_HEADER.size)
                (size,) = _HEADER.unpack(header)
                ok, value = pickle.loads(await self._reader.readexactly(size))  # noqa: S301
                assert self._waiting, "the writer process answered a call nobody sent"
                answer = self._waiting.popleft()
                if answer.done():
                    continue  # its caller stopped waiting; the call ran all the same
                if ok:
                    answer.set_result(value)
                else:
                    if isinstance(value, SqliteErrorCarrier):
                        value = value.rebuild()
                    answer.set_exception(value)
        except (asyncio.IncompleteReadError, ConnectionError) as error:
            reason = f"the channel broke ({type(error).__name__})"
        finally:
            if not self._closed:
                # Its exit status tells why it went (-9: killed, as by the OOM killer).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self._process.wait()
                if self._process.returncode is None:
                    # Alive without a channel, it is of no use, and it may hold the database's
                    # write lock that the next writer process needs.
                    with contextlib.suppress(ProcessLookupError):
                        self._process.kill()
                    await self._process.wait()
                    reason += "; it was still running, and was killed"
            self._fail_waiting(reason)

    def _fail_waiting(self, reason: str) -> None:
        code = self._process.returncode
        status = "still running" if code is None else f"exit status {code}"
        detail = f"the SQLite writer process (pid {self._process.pid}, {status}) is gone: {reason}"
        if not self._closed:
            self._lost = WriterProcessLost(detail, ambiguous=False)
        while self._waiting:
            answer = self._waiting.popleft()
            if not answer.done():
                answer.set_exception(WriterProcessLost(detail, ambiguous=True))

    async def close(self) -> None:
        """Let the child finish the calls already sent, then stop it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._waiting:
            # The calls already sent still run and are answered before the child sees EOF.
            await asyncio.gather(*self._waiting, return_exceptions=True)
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()
        await self._answers
        try:
            async with asyncio.timeout(_EXIT_WAIT_S):
                await self._process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
            await self._process.wait()
