"""The chaos soak is slow (about a minute): deselect it with `-m "not chaos"`."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "chaos: long randomized fault-injection soak")
