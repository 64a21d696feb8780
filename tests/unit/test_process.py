"""The garbage-collector settings `mainspring node` applies to its own process."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from mainspring.errors import UsageError
from mainspring.process import GC_THRESHOLD_DEFAULT, tune_garbage_collector


@pytest.fixture
def restored_gc() -> Iterator[None]:
    """Whatever a test does to the collector is undone afterwards."""
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_gc")
def test_tuning_freezes_the_heap_and_raises_the_young_threshold() -> None:
    gc.unfreeze()
    survivor = [object() for _ in range(10)]  # alive now: frozen by the call
    tune_garbage_collector()
    assert gc.get_threshold()[0] == GC_THRESHOLD_DEFAULT
    assert gc.get_freeze_count() > len(survivor)


@pytest.mark.usefixtures("restored_gc")
def test_zero_changes_nothing() -> None:
    gc.unfreeze()
    before = gc.get_threshold()
    tune_garbage_collector(0)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


@pytest.mark.parametrize("bad", [-1, 1.5, True, "100"])
def test_a_bad_threshold_is_refused_with_the_fix(bad: object) -> None:
    with pytest.raises(UsageError, match="an int >= 0"):
        tune_garbage_collector(bad)  # type: ignore[arg-type]
