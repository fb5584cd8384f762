from __future__ import annotations

from collections.abc import Iterator

import pytest

from iris.cluster.clock import FakeClock
from iris.cluster.controller.state import ControllerState

from .fakes import FakeWorkerClients


@pytest.fixture
def state() -> Iterator[ControllerState]:
    """A fresh ControllerState whose invariants are checked after the test."""
    s = ControllerState()
    yield s
    s.check_invariants()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake() -> FakeWorkerClients:
    """Worker clients that record every call (``fakes.py``)."""
    return FakeWorkerClients()


@pytest.fixture
def core() -> ControllerState:
    """The pure state a controller under test drives (the test's own reference to it)."""
    return ControllerState()
