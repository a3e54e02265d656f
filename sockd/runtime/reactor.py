"""C{twistd -r sockd-epoll}: Twisted's epoll reactor without the per-event logging context.

For every readable or writable socket, Twisted's reactors call the handler
through C{log.callWithLogger}, which builds a fresh context dictionary so
that legacy C{log.msg} calls made inside carry the protocol's log prefix as
their "system".  Profiled under sockd's persistent ack load, that context
costs about half of the daemon's CPU (C{twisted/python/log.py} and
C{context.py}); sockd's own code is a few per cent.  sockd logs through
C{twisted.logger} with its own namespaces and fields, so it does not need it.

This reactor is C{EPollReactor} with that one call made directly.  Errors are
still caught and the connection closed, by the same C{_doReadOrWrite}; only
the "system" shown for legacy log lines from inside protocols becomes C{-}.
"""

from __future__ import annotations

import errno

from twisted.internet.epollreactor import EPollReactor


class QuietEPollReactor(EPollReactor):
    """EPollReactor whose C{doPoll} dispatches events without C{log.callWithLogger}."""

    def doPoll(self, timeout: float | None) -> None:
        try:
            events = self._poller.poll(-1 if timeout is None else timeout, len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        selectables = self._selectables
        dispatch = self._doReadOrWrite
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is not None:
                dispatch(selectable, fd, event)

    doIteration = doPoll


def install() -> None:
    """Install L{QuietEPollReactor} as the global reactor (what C{twistd -r sockd-epoll} calls)."""
    from twisted.internet.main import installReactor

    installReactor(QuietEPollReactor())
