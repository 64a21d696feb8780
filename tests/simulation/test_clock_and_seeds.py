"""SimClock over virtual time, and the seeded streams behind SimRandom and SimIds."""

from __future__ import annotations

import asyncio
import re

import pytest

from mainspring.seams import Clock, Ids, Random
from mainspring.simulations import EPOCH_MS, SimClock, SimIds, SimRandom, World, run_simulation
from mainspring.simulations.seeds import derive_seed


def test_wall_time_follows_offset_drift_and_jumps_while_monotonic_never_goes_back() -> None:
    async def scenario(world: World) -> dict[str, list[int | float]]:
        plain = SimClock(world.loop, "plain")
        skewed = SimClock(world.loop, "skewed", offset_ms=-1_500, drift_ppm=1_000)
        assert isinstance(plain, Clock)
        readings: dict[str, list[int | float]] = {"wall": [], "skewed": [], "mono": []}
        for step in range(3):
            await asyncio.sleep(1_000)
            if step == 1:
                skewed.jump(-60_000)  # an NTP step backwards
            readings["wall"].append(plain.wall_ms() - EPOCH_MS)
            readings["skewed"].append(skewed.wall_ms() - EPOCH_MS)
            readings["mono"].append(skewed.monotonic_s())
        readings["skew"] = [skewed.skew_ms]
        return readings

    value = run_simulation(0, scenario).value
    assert value["wall"] == [1_000_000, 2_000_000, 3_000_000]
    # 1000 ppm fast is 1 ms per second: 1 s per 1000 s; the jump steps back a minute.
    assert value["skewed"] == [1_001_000 - 1_500, 2_002_000 - 1_500 - 60_000, 3_003_000 - 61_500]
    assert value["mono"] == [1_001.0, 2_002.0, 3_003.0]
    assert value["skew"] == [3_000 - 61_500]


def test_a_clock_that_does_not_run_is_refused() -> None:
    async def scenario(world: World) -> None:
        with pytest.raises(ValueError, match="drift_ppm"):
            SimClock(world.loop, "stopped", drift_ppm=-1_000_000)

    run_simulation(0, scenario)


def test_streams_depend_on_seed_and_labels_only() -> None:
    assert derive_seed(1, "node", "n1") == derive_seed(1, "node", "n1")
    assert derive_seed(1, "node", "n1") != derive_seed(2, "node", "n1")
    assert derive_seed(1, "ab", "c") != derive_seed(1, "a", "bc")
    # A known value: the derivation must not change silently, or recorded seeds stop
    # reproducing their runs.
    assert derive_seed(0) == int.from_bytes(bytes.fromhex("5feceb66ffc86f38"), "big")

    first, again = SimRandom(7, "n1", "random"), SimRandom(7, "n1", "random")
    assert isinstance(first, Random)
    assert [first.random() for _ in range(5)] == [again.random() for _ in range(5)]
    assert first.randbytes(8) == again.randbytes(8)


def test_ids_look_like_uuid4_and_differ_between_incarnations() -> None:
    life_0 = SimIds(7, "node", "n1", "0", "ids")
    life_1 = SimIds(7, "node", "n1", "1", "ids")
    assert isinstance(life_0, Ids)
    ids_0 = [life_0.new_id() for _ in range(100)]
    ids_1 = [life_1.new_id() for _ in range(100)]
    assert all(re.fullmatch(r"[0-9a-f]{12}4[0-9a-f]{3}[89ab][0-9a-f]{15}", id_) for id_ in ids_0)
    assert not set(ids_0) & set(ids_1)
    assert SimIds(7, "node", "n1", "0", "ids").new_id() == ids_0[0]
