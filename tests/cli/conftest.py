"""Real ``mainspring node`` processes for the command-line tests."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
MAINSPRING = [sys.executable, "-m", "mainspring.cli"]
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
_LISTENING = re.compile(r"listening on (http://\S+)")


def environment(**extra: str) -> dict[str, str]:
    """The environment of a child process: the repository importable, no inherited tokens."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"MAINSPRING_TOKENS", "MAINSPRING_TOKEN", "MAINSPRING_URL"}
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def run_cli(
    arguments: list[str], *, cwd: Path, timeout_s: float = 60.0, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run ``mainspring ARGUMENTS`` to its end."""
    return subprocess.run(
        [*MAINSPRING, *arguments],
        cwd=cwd,
        env=environment(**env),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


class NodeProcess:
    """A ``mainspring node`` child process; ``url`` once it listens."""

    def __init__(self, arguments: list[str], cwd: Path, **env: str) -> None:
        self.arguments = arguments
        self.cwd = cwd
        self.env = environment(**env)
        self.process: subprocess.Popen[str] | None = None
        self.url = ""
        self.announcement = ""
        self.stderr_lines: list[str] = []
        self._stderr_reader: threading.Thread | None = None

    def start(self) -> str:
        self.stderr_lines = []
        self.process = subprocess.Popen(
            [*MAINSPRING, "node", *self.arguments],
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._stderr_reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._stderr_reader.start()
        assert self.process.stdout is not None
        line_box: list[str] = []
        reader = threading.Thread(
            target=lambda: line_box.append(self.process.stdout.readline()),  # type: ignore[union-attr]
            daemon=True,
        )
        reader.start()
        reader.join(START_TIMEOUT_S)
        line = line_box[0] if line_box else ""
        match = _LISTENING.search(line)
        if match is None:
            self.kill()
            raise AssertionError(
                f"the node did not announce its URL (first stdout line {line!r}); stderr:\n"
                + self.stderr()
            )
        self.url = match.group(1)
        self.announcement = line
        return self.url

    def _read_stderr(self) -> None:
        assert self.process is not None
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr_lines.append(line)

    def stderr(self) -> str:
        return "".join(self.stderr_lines[-200:])

    def terminate(self, signum: int = signal.SIGTERM) -> int:
        """Send ``signum`` and return the exit status."""
        assert self.process is not None
        self.process.send_signal(signum)
        try:
            status = self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"the node did not stop on {signum}; stderr:\n{self.stderr()}"
            ) from None
        if self._stderr_reader is not None:
            self._stderr_reader.join(5)
        return status

    def kill(self) -> None:
        """SIGKILL (no clean-up of any kind) and reap."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(STOP_TIMEOUT_S)
        if self._stderr_reader is not None:
            self._stderr_reader.join(5)


@pytest.fixture
def node_process(tmp_path: Path) -> Iterator[type[NodeProcess]]:
    """A factory of node processes (cwd ``tmp_path``), each killed at the end of the test."""
    started: list[NodeProcess] = []

    class Tracked(NodeProcess):
        def __init__(self, arguments: list[str], cwd: Path = tmp_path, **env: str) -> None:
            super().__init__(arguments, cwd, **env)
            started.append(self)

    yield Tracked
    for process in started:
        with contextlib.suppress(Exception):
            process.kill()
