from __future__ import annotations

from collections.abc import Iterator

import pytest

from iris.cluster.controller.state import ControllerState


@pytest.fixture
def state() -> Iterator[ControllerState]:
    """A fresh ControllerState whose invariants are checked after the test."""
    s = ControllerState()
    yield s
    s.check_invariants()
