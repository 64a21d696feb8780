"""The ``make accounts`` example runs end to end in a real process and reports success."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]


def test_account_example_runs_and_checks_itself(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "examples.accounts",
            "--accounts",
            "10",
            "--asks",
            "400",
            "--db",
            str(tmp_path / "accounts.db"),
        ],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "equals full replay: True" in result.stdout
    assert result.stdout.rstrip().endswith("OK")
