"""sockd under both of Twisted's runners: C{twistd} and C{twist} (which never calls privilegedStartService).

Each test runs the installed plugin end to end under each runner: it binds and
serves, tells a notify socket it is ready, reloads on SIGHUP, drains on
SIGTERM, and runs C{--workers}.
"""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest

from tests.daemon import RUNNERS, children, connect, recvAll, recvExactly, udpExchange, waitFor


def notifications(sock: socket.socket) -> list[str]:
    """Every sd_notify state received so far on C{sock} (non-blocking)."""
    states = []
    while True:
        try:
            states.extend(sock.recv(4096).decode().split("\n"))
        except BlockingIOError:
            return states


@pytest.mark.parametrize("runner", RUNNERS)
def test_binds_serves_notifies_reloads_and_drains(daemon, tmp_path: Path, runner: str) -> None:
    config = tmp_path / "sockd.toml"
    config.write_text('[listen]\nack = ["tcp:0:interface=127.0.0.1", "udp:0:interface=127.0.0.1", "unix:ack.sock"]\n')
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(tmp_path / "notify.sock"))
        notify.setblocking(False)
        d = daemon("--config", str(config), "--exempt", "none", expect=3, runner=runner,
                   env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
        with connect(d.address("ack", "tcp")) as s:
            s.sendall(b"hello\n")
            assert recvExactly(s, 18) == b"I got your message"
        assert udpExchange(d.address("ack", "udp"), b"hi") == b"Got your message\n"
        seen: list[str] = []
        waitFor(lambda: seen.extend(notifications(notify)) or "READY=1" in seen, "READY=1")

        config.write_text('deny = ["127.0.0.1/32"]\n' + config.read_text())
        os.kill(d.pid, signal.SIGHUP)
        waitFor(lambda: "reloaded" in d.log(), "a reload:\n" + d.log())
        assert d.process.poll() is None, "SIGHUP killed sockd"
        with connect(d.address("ack", "tcp")) as s:
            assert recvAll(s) == b""  # the new deny rule applies

        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as held:  # an open connection, drained at stop
            held.settimeout(5)
            held.connect(str(tmp_path / "ack.sock"))
            held.sendall(b"partial, no newline")
            assert d.stop() == 0
            assert recvAll(held) == b"I got your message"
        waitFor(lambda: seen.extend(notifications(notify)) or "STOPPING=1" in seen, "STOPPING=1")
    assert not (tmp_path / "ack.sock").exists()
    assert "Traceback" not in d.log() + d.stderr()


@pytest.mark.parametrize("runner", RUNNERS)
def test_workers(daemon, runner: str) -> None:
    d = daemon("--workers", "2", "--ack", "tcp:0:interface=127.0.0.1", runner=runner)
    waitFor(lambda: len(children(d.pid)) == 2, "two workers")
    address = d.address("ack", "tcp")

    def served() -> bool:
        with connect(address) as s:
            s.sendall(b"hello\n")
            return recvExactly(s, 18) == b"I got your message"

    waitFor(lambda: all(served() for _ in range(5)), "the workers serve")
    assert d.stop() == 0
