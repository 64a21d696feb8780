"""Argument checks shared by the public entry points: one wording for one rule."""

from __future__ import annotations

from mainspring.errors import UsageError

__all__ = ["check_id", "check_timeout"]


def check_id(value: object, what: str, length_max: int) -> str:
    """``value`` if it is a usable id: a non-empty str of at most ``length_max`` characters
    without NUL.

    Raises:
        UsageError: naming ``what`` and the rule.
    """
    if not isinstance(value, str) or not value or len(value) > length_max or "\x00" in value:
        raise UsageError(
            f"{what} must be a non-empty str of at most {length_max} characters without NUL, "
            f"got {value!r:.80}"
        )
    return value


def check_timeout(timeout_s: object, what: str = "timeout_s") -> float | None:
    """``timeout_s`` as a float, or None.

    Raises:
        UsageError: it is neither None nor a number > 0.
    """
    if timeout_s is None:
        return None
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or not timeout_s > 0:
        raise UsageError(f"{what} must be None or a number > 0, got {timeout_s!r}")
    return float(timeout_s)
