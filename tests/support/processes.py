"""Helpers about other processes of the tests."""

from __future__ import annotations

from pathlib import Path


def process_gone(pid: int) -> bool:
    """Whether process ``pid`` has exited (a zombie that no init has reaped yet counts)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status
