"""Session-wide test setup: logins go to a private config directory, never the user's."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def private_iris_config() -> Iterator[None]:
    """``iris login`` and ``iris cluster start --local`` store tokens under ``$IRIS_CONFIG_DIR``: a
    temporary one for the whole session, inherited by every ``iris`` subprocess the tests run."""
    saved = {k: os.environ.get(k) for k in ("IRIS_CONFIG_DIR", "IRIS_TOKEN")}
    with tempfile.TemporaryDirectory(prefix="iris-config-") as directory:
        os.environ["IRIS_CONFIG_DIR"] = directory
        os.environ.pop("IRIS_TOKEN", None)
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
