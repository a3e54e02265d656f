"""The configuration file read by a running C{twistd sockd}: a bad file at start-up, and SIGHUP reload.

Parsing and precedence are unit-tested in tests/unit/test_config.py; these start the installed daemon.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tests.daemon import connect, recvAll, recvExactly, udpExchange


def test_bad_file_is_one_line_and_nonzero(daemon, tmp_path: Path):
    import subprocess

    from tests.daemon import REACTOR, TWISTD

    path = tmp_path / "bad.toml"
    path.write_text("[limits]\nmax_connections = 'many'\n")
    result = subprocess.run([TWISTD, *REACTOR, "-n", "--pidfile=", "sockd", "--config", str(path)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 78  # EX_CONFIG
    assert result.stderr.strip().splitlines() == [
        f"sockd: error: {path}:2: max_connections must be a whole number of at least 0 (0: unlimited), not 'many'"
    ]


def _wait(predicate, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_sighup_reload_keeps_connections_and_applies_changes(daemon, tmp_path: Path):
    quotes = tmp_path / "quotes.txt"
    quotes.write_text("first quote\n")
    path = tmp_path / "sockd.toml"
    path.write_text(
        f'quotes = "{quotes}"\n[listen]\nack = ["tcp:0:interface=127.0.0.1"]\nqotd = ["udp:0:interface=127.0.0.1"]\n'
        'discard = ["udp:0:interface=127.0.0.1"]\n'
    )
    d = daemon("--config", str(path), "--exempt", "none", expect=3)
    ack = d.address("ack", "tcp")
    qotd = d.address("qotd", "udp")
    assert udpExchange(qotd, b"?") == b"first quote\r\n"
    held = connect(ack)
    held.sendall(b"before\n")
    assert recvExactly(held, 18) == b"I got your message"

    # New quotes, a deny list that refuses us, the discard listener dropped and an echo listener added.
    quotes.write_text("second quote\n")
    path.write_text(
        f'quotes = "{quotes}"\ndeny = ["127.0.0.1/32"]\n[listen]\nack = ["tcp:0:interface=127.0.0.1"]\n'
        'qotd = ["udp:0:interface=127.0.0.1"]\necho = ["tcp:0:interface=127.0.0.1"]\n'
    )
    os.kill(d.pid, signal.SIGHUP)
    _wait(lambda: "reloaded" in d.log(), "no reload line:\n" + d.log())
    assert "reload: closed discard udp:0:interface=127.0.0.1" in d.log()
    assert "echo listening on tcp 127.0.0.1:" in d.log()

    held.sendall(b"after\n")  # the established connection survives the reload
    assert recvExactly(held, 18) == b"I got your message"
    held.close()
    with connect(ack) as refused:  # the new deny list applies to new connections at once
        assert recvAll(refused) == b""

    # A broken file keeps the running configuration and says why.
    path.write_text("[limits\n")
    os.kill(d.pid, signal.SIGHUP)
    _wait(lambda: "reload failed, keeping the running configuration" in d.log(), "no failure line:\n" + d.log())
    with connect(ack) as still:
        assert recvAll(still) == b""
    path.write_text(f'quotes = "{quotes}"\n[listen]\nqotd = ["udp:0:interface=127.0.0.1"]\n')
    os.kill(d.pid, signal.SIGHUP)
    _wait(lambda: d.log().count("reloaded") == 2, "no second reload:\n" + d.log())
    assert udpExchange(qotd, b"?") == b"second quote\r\n"


def test_a_service_table_limits_that_service_only_over_real_sockets(daemon, tmp_path: Path):
    path = tmp_path / "sockd.toml"
    path.write_text('exempt = ["none"]\nmax_per_source = 5\n[echo]\nmax_per_source = 1\n'
                    '[listen]\nack = ["tcp:0:interface=127.0.0.1"]\necho = ["tcp:0:interface=127.0.0.1"]\n')
    d = daemon("--config", str(path), expect=2)
    with connect(d.address("echo", "tcp")) as first:
        first.sendall(b"one\n")
        assert recvExactly(first, 4) == b"one\n"
        with connect(d.address("echo", "tcp")) as second:  # [echo]'s own per-source limit of 1
            assert recvAll(second) == b""
        held = [connect(d.address("ack", "tcp")) for _ in range(3)]  # ack inherits the top level's 5
        try:
            for s in held:
                s.sendall(b"hi\n")
                assert recvExactly(s, 18) == b"I got your message"
        finally:
            for s in held:
                s.close()
    assert "echo/tcp: refused 127.0.0.1 (per-source)" in d.log()


