"""The controller daemon's heap policy: what it holds is frozen out of full collections, and cyclic
garbage is still reclaimed at the hourly thaw."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from iris.cluster.clock import FakeClock
from iris.cluster.controller.heap import HeapFreezer


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def _cycle() -> weakref.ref[_Node]:
    """A two-object reference cycle that is garbage as soon as this returns."""
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return weakref.ref(a)


@pytest.fixture(autouse=True)
def _thawed() -> Iterator[None]:
    gc.unfreeze()  # process-wide state: leave the test process as it was
    yield
    gc.unfreeze()


def test_the_first_tick_freezes_what_the_process_holds_and_later_ticks_follow_the_periods() -> None:
    clock = FakeClock()
    heap = HeapFreezer(clock, freeze_every_s=60, thaw_every_s=3600)
    assert gc.get_freeze_count() == 0
    assert heap.tick() == "thawed"
    frozen = gc.get_freeze_count()
    assert frozen > 0
    assert heap.tick() == ""  # nothing is due
    kept = [_Node() for _ in range(1000)]  # made after the freeze: scanned until the next one
    clock.advance(59)
    assert heap.tick() == ""
    clock.advance(1)
    assert heap.tick() == "froze"
    assert gc.get_freeze_count() >= frozen + len(kept)
    clock.advance(3600)
    assert heap.tick() == "thawed"


def test_frozen_cyclic_garbage_is_kept_until_the_thaw_reclaims_it() -> None:
    clock = FakeClock()
    heap = HeapFreezer(clock, freeze_every_s=60, thaw_every_s=3600)
    holder = [_Node(), _Node()]
    holder[0].other, holder[1].other = holder[1], holder[0]
    ref = weakref.ref(holder[0])
    heap.tick()  # the cycle is alive (held): frozen with everything else
    holder.clear()  # now it is cyclic garbage, frozen
    gc.collect()
    assert ref() is not None, "a full collection does not look at frozen objects"
    clock.advance(3600)
    assert heap.tick() == "thawed"
    assert ref() is None


def test_garbage_made_between_freezes_is_collected_as_usual() -> None:
    heap = HeapFreezer(FakeClock())
    heap.tick()
    ref = _cycle()
    gc.collect()
    assert ref() is None


def test_periods_must_make_sense() -> None:
    with pytest.raises(ValueError):
        HeapFreezer(FakeClock(), freeze_every_s=0)
    with pytest.raises(ValueError):
        HeapFreezer(FakeClock(), freeze_every_s=120, thaw_every_s=60)
