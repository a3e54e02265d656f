from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted

from tests.daemon import STOCK_REACTOR, Daemon


def _installSockdReactor() -> None:
    """pytest-twisted's "default" reactor, made sockd's default: its I/O core (unless SOCKD_TEST_REACTOR=epoll)."""
    from sockd.core.reactor import SockdReactor, install

    pytest_twisted._install_reactor(reactor_installer=install, reactor_type=SockdReactor)


if not STOCK_REACTOR:
    # In-process tests run on the reactor the daemon runs by default; the stock run keeps Twisted's default (epoll).
    pytest_twisted.reactor_installers["default"] = _installSockdReactor


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


@pytest.fixture(scope="session")
def sockdImage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The sockd image, built by docs/containers.md's build block (tests/podman.py), shared by the podman tests."""
    from tests import podman

    podman.baseImage()
    tag, seconds = podman.buildImage(tmp_path_factory.mktemp("image"))
    print(f"\nsockd image {tag} built in {seconds:.1f}s", flush=True)
    try:
        yield tag
    finally:
        podman.removeImage(tag)
