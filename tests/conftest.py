from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import Daemon


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator:
    """Start sockd with the given arguments; every daemon started is stopped after the test."""
    started: list[Daemon] = []

    def start(*args: str, **kwargs) -> Daemon:
        d = Daemon(list(args), kwargs.pop("cwd", tmp_path), **kwargs)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()
