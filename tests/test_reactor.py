"""twistd -r sockd-epoll: the epoll reactor without Twisted's per-event logging context."""

from __future__ import annotations

import socket

from sockd.runtime.reactor import QuietEPollReactor
from tests.daemon import children, connect, recvExactly, udpExchange, waitFor


def test_dispatches_without_the_logging_context_and_keeps_error_handling():
    """Events reach the selectable directly; an exception still closes just that descriptor."""
    from twisted.python import context

    reactor = QuietEPollReactor()
    left, right = socket.socketpair()
    calls: list = []

    class Reader:
        def fileno(self) -> int:
            return left.fileno()

        def doRead(self) -> None:
            calls.append(("read", context.get("system")))  # no per-event context was pushed
            raise RuntimeError("protocol bug")

        def connectionLost(self, reason) -> None:
            calls.append(("lost", reason.type))

        def logPrefix(self) -> str:
            return "Reader"

    try:
        reader = Reader()
        reactor.addReader(reader)
        right.send(b"x")
        reactor.doIteration(1.0)
        assert calls == [("read", None), ("lost", RuntimeError)]  # stock EPollReactor: ("read", "Reader")
        assert reader not in reactor.getReaders()
    finally:
        left.close()
        right.close()
        reactor._poller.close()


def test_twistd_runs_sockd_on_it_and_workers_inherit_it(daemon):
    d = daemon("--ack", "tcp:0:interface=127.0.0.1", "--ack", "udp:0:interface=127.0.0.1", "--workers", "2",
               twistdArgs=["-r", "sockd-epoll"])
    assert "reactor class: sockd.runtime.reactor.QuietEPollReactor" in d.log()
    workers = waitFor(lambda: c if len(c := children(d.pid)) == 2 else None, "two workers")
    for pid in workers:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            assert b"sockd-epoll" in f.read().split(b"\0")
    with connect(d.address("ack", "tcp")) as s:
        s.sendall(b"quiet\n")
        assert recvExactly(s, 18) == b"I got your message"
    assert udpExchange(d.address("ack", "udp"), b"quiet") == b"Got your message\n"
