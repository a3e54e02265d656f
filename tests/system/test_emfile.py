"""Descriptor exhaustion on a real daemon: a burst of EMFILE refusals is logged as a few lines with counts.

The summing itself is unit-tested on a Clock in tests/unit/test_limits.py; this starts the installed
daemon with 64 descriptors and connects 300 times.
"""

from __future__ import annotations


def test_emfile_burst_is_logged_as_a_few_lines_with_counts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """300 connections at a daemon with 64 descriptors: not one line per refused connection, but a count."""
    import re
    import socket

    from tests.daemon import Daemon, connect, descriptorLimit, recvExactly, waitFor

    d = Daemon(["--ack", "tcp:0:interface=127.0.0.1", "--refusal-log-interval", "1"], tmp_path,
               preexec=descriptorLimit(64))
    held: list[socket.socket] = []
    try:
        address = d.address("ack", "tcp")
        for _ in range(300):
            held.append(connect(address))
        summed = re.compile(r"in the last 1s: (\d+) x connection closed unanswered: descriptor table full \(EMFILE\)")
        found = waitFor(lambda: summed.findall(d.log()), "the EMFILE summary", logPath=d.logPath)
        lines = [line for line in d.log().splitlines() if "EMFILE" in line]
        assert 2 <= len(lines) <= 4, lines  # the first at once, then a count per interval while they came
        assert 50 < 1 + sum(int(n) for n in found) <= 300
        for s in held:
            s.close()
        held = []

        def served() -> bool:
            try:
                with connect(address) as s:
                    s.sendall(b"after\n")
                    return recvExactly(s, 18) == b"I got your message"
            except (ConnectionError, EOFError, OSError):
                return False  # it has not seen all the closes yet: still out of descriptors

        waitFor(served, "an answer once descriptors are free again", logPath=d.logPath)
    finally:
        for s in held:
            s.close()
        d.stop()
