"""Which reactor runs: sockd's own I/O core by default (twistd and twist), any other when the user names it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from sockd.runtime.workers.supervisor import reactorArguments
from tests.daemon import BIN, REACTOR, STOCK_REACTOR, children, connect, recvExactly, udpExchange, waitFor

SOCKD = "sockd.core.reactor.SockdReactor"
STOCK = "twisted.internet.epollreactor.EPollReactor"
#: What runs when the test names no reactor: sockd's, or Twisted's epoll in the suite's stock run.
DEFAULT = STOCK if STOCK_REACTOR else SOCKD


def _serveAndCheck(d) -> None:
    with connect(d.address("ack", "tcp")) as s:
        s.sendall(b"quiet\n")
        assert recvExactly(s, 18) == b"I got your message"
    assert udpExchange(d.address("ack", "udp"), b"quiet") == b"Got your message\n"


def test_twistd_runs_sockds_core_unless_told_otherwise(daemon):
    d = daemon("--ack", "tcp:0:interface=127.0.0.1", "--ack", "udp:0:interface=127.0.0.1")
    assert f"reactor class: {DEFAULT}." in d.log()
    assert f"I/O core: {DEFAULT}" in d.log()
    _serveAndCheck(d)


@pytest.mark.parametrize(("name", "expected"), [("epoll", STOCK), ("sockd", SOCKD), ("sockd-epoll", SOCKD)])
def test_a_named_reactor_is_kept_and_workers_inherit_it(daemon, name, expected):
    d = daemon("--ack", "tcp:0:interface=127.0.0.1", "--ack", "udp:0:interface=127.0.0.1", "--workers", "2",
               twistdArgs=["-r", name])
    assert f"reactor class: {expected}." in d.log()
    workers = waitFor(lambda: c if len(c := children(d.pid)) == 2 else None, "two workers")
    wanted = [b"-r", b"sockd" if expected == SOCKD else name.encode()]
    for pid in workers:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        assert any(argv[i:i + 2] == wanted for i in range(len(argv))), argv
    _serveAndCheck(d)


def test_reactor_arguments_name_the_running_reactor():
    from twisted.internet.epollreactor import EPollReactor
    from twisted.internet.pollreactor import PollReactor

    from sockd.core.reactor import SockdReactor

    made = [SockdReactor(), EPollReactor(), PollReactor()]
    try:
        assert [reactorArguments(r) for r in made] == [["-r", "sockd"], ["-r", "epoll"], ["-r", "poll"]]
        assert reactorArguments(object()) == []
    finally:
        for r in made:
            r.waker.connectionLost(None)


@pytest.mark.parametrize("runner", ["twist", "sockd"])
@pytest.mark.parametrize("named", [False, True])
def test_twist_and_the_sockd_command_run_sockds_core_unless_told_otherwise(tmp_path: Path, named: bool,
                                                                           runner: str):
    """`twist` installs its default reactor right after parsing the plugin's options: sockd installs its own first.

    The C{sockd} command is twist with sockd as its only plugin: the same holds.
    """
    chosen = ["--reactor=epoll"] if named or STOCK_REACTOR else []
    log = tmp_path / "twist.log"
    plugin = ["sockd"] if runner == "twist" else []
    proc = subprocess.Popen([str(BIN / runner), "--log-format=text", f"--log-file={log}", *chosen, *plugin,
                             "--ack", "tcp:0:interface=127.0.0.1"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        text = waitFor(lambda: t if log.exists() and "I/O core:" in (t := log.read_text()) else None,
                       "the I/O core line")
        assert f"I/O core: {STOCK if chosen else SOCKD}" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)


def test_the_stock_run_really_runs_the_stock_reactor():
    """SOCKD_TEST_REACTOR=epoll (scripts/test's second run) reaches every daemon and the in-process reactor."""
    from twisted.internet import reactor

    assert (REACTOR == ["-r", "epoll"]) == STOCK_REACTOR == (os.environ.get("SOCKD_TEST_REACTOR") == "epoll")
    assert f"{type(reactor).__module__}.{type(reactor).__qualname__}" == DEFAULT


def test_start_up_is_not_slower_for_the_default(tmp_path: Path):
    """Installing sockd's reactor is a cheap import: `twistd sockd --version` still answers quickly."""
    start = time.monotonic()
    result = subprocess.run([str(BIN / "twistd"), *REACTOR, "sockd", "--version"], capture_output=True, text=True,
                            cwd=tmp_path, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("sockd ")
    assert time.monotonic() - start < 30
