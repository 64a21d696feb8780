"""The README's quickstart works exactly as written.

The curl commands of its ``sh`` blocks run, in order, against a ``mainspring node`` process
serving the same app as ``make run`` (on a free port instead of 8080, over a fresh SQLite file),
and each command's output must match the ``# ...`` line written under it, where ``…`` stands
for any text.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.cli.conftest import REPOSITORY, NodeProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

SECTION = "## Quickstart: a workflow over HTTP"
README_URL = "http://127.0.0.1:8080"
MAKE_RUN_COMMAND = "mainspring node --app examples.orders.app --store sqlite:///./mainspring.db"


def quickstart_steps(readme: str) -> list[tuple[str, str]]:
    """The (command, expected output) pairs of the quickstart's ``sh`` blocks, in order."""
    start = readme.index(SECTION)
    end = readme.find("\n## ", start + len(SECTION))
    section = readme[start : end if end != -1 else len(readme)]
    steps: list[tuple[str, str]] = []
    for block in re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL):
        command: list[str] = []
        for line in block.splitlines():
            if line.startswith("# "):
                assert command, f"an output line without a command: {line!r}"
                steps.append(("\n".join(command), line[2:]))
                command = []
            else:
                command.append(line)
        assert not command, f"a command without its output line: {command!r}"
    return steps


def matches(expected: str, actual: str) -> bool:
    pattern = ".*".join(re.escape(part) for part in expected.split("…"))
    return re.fullmatch(pattern, actual, flags=re.DOTALL) is not None


def test_the_quickstart_runs_as_written(tmp_path: Path, node_process: type[NodeProcess]) -> None:
    """Goal: a reader who copies the quickstart gets the answers it shows. Method: parse the
    commands and outputs from README.md, run each with bash against a live node, compare."""
    assert shutil.which("curl"), "the quickstart uses curl"
    readme = (REPOSITORY / "README.md").read_text(encoding="utf-8")
    makefile = (REPOSITORY / "Makefile").read_text(encoding="utf-8")
    assert MAKE_RUN_COMMAND in makefile, "make run no longer serves what this test serves"
    steps = quickstart_steps(readme)
    assert len(steps) >= 4, steps
    assert all(command.startswith("curl ") for command, _ in steps), steps

    node = node_process(
        ["--app", "examples.orders.app", "--store", "sqlite:///./mainspring.db",
         "--listen", "127.0.0.1:0", "--node-id", "quickstart-1"]
    )  # fmt: skip
    url = node.start()
    for command, expected in steps:
        assert README_URL in command, command
        result = subprocess.run(
            ["bash", "-c", command.replace(README_URL, url)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, (command, result.stderr)
        assert matches(expected, result.stdout.strip()), (command, expected, result.stdout)
    assert node.terminate() == 0, node.stderr()
