"""The soak's own client must not lose requests to its event loop: its loss counts are only worth what it is.

bench/soak.py drives the daemon with asyncio's low-level socket calls.  A socket closed while a cancelled
call on it has not unwound yet leaves its descriptor registered with the loop; a new socket that reuses the
number and waits in the same loop step is then never woken.  These tests reproduce that hang with a plain
close and show that the soak's C{release} avoids it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def loadSoak() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sockd_bench_soak", ROOT / "bench" / "soak.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


async def reuseAfterCancel(closer: Callable[[socket.socket], None]) -> tuple[bool, bool]:
    """Cancel a pending receive, close its socket with C{closer}, then wait on a new socket in the same step.

    Returns whether the new socket got the same descriptor number and whether its datagram arrived.
    """
    loop = asyncio.get_running_loop()
    old = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    old.bind(("127.0.0.1", 0))
    old.setblocking(False)
    pending = asyncio.ensure_future(loop.sock_recvfrom(old, 100))
    await asyncio.sleep(0)
    pending.cancel()
    oldFd = old.fileno()
    closer(old)
    new = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    new.bind(("127.0.0.1", 0))
    new.setblocking(False)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        loop.call_later(0.05, sender.sendto, b"x", new.getsockname())
        try:
            async with asyncio.timeout(2.0):
                await loop.sock_recvfrom(new, 100)
        except TimeoutError:
            return new.fileno() == oldFd, False
        return new.fileno() == oldFd, True
    finally:
        sender.close()
        loop.remove_reader(new.fileno())
        new.close()


def test_a_plain_close_loses_the_next_socket_that_reuses_the_descriptor() -> None:
    """The hazard is real (so the test below can fail): the new socket is never woken."""
    reused, arrived = asyncio.run(reuseAfterCancel(lambda sock: sock.close()))
    assert reused
    assert not arrived


def test_release_unregisters_before_closing() -> None:
    soak = loadSoak()
    reused, arrived = asyncio.run(reuseAfterCancel(soak.release))
    assert reused
    assert arrived
