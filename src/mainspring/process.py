"""Settings of a Python process that runs a node and little else (``mainspring node``).

A node keeps every live actor in memory: its state, its mailbox task, and for a workflow its
history. CPython's cyclic garbage collector walks all of them in every full collection, and
with its default thresholds (700 allocations for a young collection) a busy node starts one
young collection every few hundred microseconds, and a full one each time the heap has grown
by a quarter. ``tune_garbage_collector`` moves what start-up allocated (modules, the app, the
node) out of the collector's reach with ``gc.freeze`` and collects young objects less often.
Reference counting still frees almost everything at once; only cycles wait longer.

An embedding application owns its process, and decides for itself: the node never calls this.
"""

from __future__ import annotations

import gc
from typing import Final

from mainspring.errors import UsageError

__all__ = ["GC_THRESHOLD_DEFAULT", "tune_garbage_collector"]

GC_THRESHOLD_DEFAULT: Final = 50_000
"""The young-generation threshold ``mainspring node`` sets by default (CPython's is 700)."""

_OLDER_THRESHOLDS: Final = (50, 100)
"""Young collections per middle one, middle collections per full one (CPython: 10, 10)."""


def tune_garbage_collector(threshold: int = GC_THRESHOLD_DEFAULT) -> None:
    """Freeze the objects alive now, and collect young objects after ``threshold``
    allocations instead of 700. A ``threshold`` of 0 changes nothing.

    Call it once the node has started, so that what start-up built is frozen.

    Raises:
        UsageError: ``threshold`` is negative or not an int.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0:
        raise UsageError(
            f"the garbage collector threshold must be an int >= 0 (0 keeps CPython's "
            f"defaults), got {threshold!r}"
        )
    if threshold == 0:
        return
    gc.collect()
    gc.freeze()
    gc.set_threshold(threshold, *_OLDER_THRESHOLDS)
