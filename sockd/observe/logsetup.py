"""Where this process's log goes, at what level, and whether messages take the fast path.

twistd builds the plugin's service before it starts logging, and then logs
with, in order: the C{--logger} factory, an C{ILogObserver} component of the
application, or its own observer for C{--logfile} / C{--syslog} / standard
output (C{twisted.application.app.AppLogger.start}).  When the user chose
none of the destinations twistd handles itself (no C{--logger}, no
C{--syslog}), sockd offers a L{SinkObserver} as that component, writing where
twistd would have written: the same C{LogFile} twistd would have opened
(1 MB rotation, C{SIGUSR1}), or standard output under C{-n}.  Otherwise
(C{--logger}, C{--syslog}, C{twist}, a C{.tac} file) the message log stays a
stream of C{twisted.logger} events; with C{--syslog} sockd offers twistd's own
syslog observer behind the level filter.

C{--log-level} is applied by every observer sockd makes (this one, and
C{sockd.logging.jsonLogger}/C{textLogger}), with C{twisted.logger}'s
C{LogLevelFilterPredicate}; and the message log is not even built below info.
"""

from __future__ import annotations

import atexit
import signal
from collections.abc import Callable
from typing import Any

from twisted.logger import FilteringLogObserver, ILogObserver, LegacyLogObserverWrapper, LogLevelFilterPredicate
from twisted.python.components import Componentized
from twisted.python.logfile import LogFile

from sockd.observe.logsink import FdOutput, LineSink, Output, SinkObserver, isJournal, standardOutput
from sockd.observe.logstate import STATE, LogState
from sockd.observe.throttle import ACCEPT_WARNINGS


def twistdDestination(parent: Any) -> tuple[str, str] | None:
    """What twistd's own observer would write to: C{("stdout", "")} or C{("file", path)}.

    L{None} when twistd or twist handles the log another way (C{--logger},
    C{--syslog}, twist's options, no twistd at all), or refuses to start
    (C{--logfile -} without C{-n}): then sockd leaves logging alone.
    Mirrors C{twisted.scripts._twistd_unix.UnixAppLogger._getLogObserver}.
    """
    if parent is None or not hasattr(parent, "get") or "nodaemon" not in parent or "logfile" not in parent:
        return None
    if parent.get("logger") or parent.get("syslog"):
        return None
    logfile = parent.get("logfile") or ""
    nodaemon = bool(parent.get("nodaemon"))
    if logfile == "-":
        return ("stdout", "") if nodaemon else None
    if nodaemon and not logfile:
        return ("stdout", "")
    return ("file", logfile or "twistd.log")


def _rotateOnSIGUSR1(reactor: Any, sink: LineSink, logFile: LogFile) -> None:
    """As twistd does for its own LogFile: SIGUSR1 rotates, unless someone handles SIGUSR1 already."""
    if signal.getsignal(signal.SIGUSR1):
        return

    def rotate() -> None:
        sink.flush()
        logFile.rotate()

    signal.signal(signal.SIGUSR1, lambda signum, frame: reactor.callFromThread(rotate))


def makeSinkObserver(destination: tuple[str, str], reactor: Any, state: LogState = STATE) -> SinkObserver:
    """The observer (and its sink) for twistd's destination, flushed at shutdown and at exit."""
    kind, path = destination
    output: Output
    if kind == "stdout":
        output = standardOutput()
        journal = isJournal(1)
    else:
        logFile = LogFile.fromFullPath(path)
        output = logFile
        journal = False
    sink = LineSink(output, reactor, journal=journal)
    if kind == "file":
        _rotateOnSIGUSR1(reactor, sink, logFile)
    reactor.addSystemEventTrigger("after", "shutdown", sink.flush)
    atexit.register(sink.close)

    def attach(attached: LineSink) -> None:
        state.sink = attached

    return SinkObserver(sink, state.level, onAttach=attach)


def workerMessageSink(fd: int, journal: bool, reactor: Any, state: LogState = STATE) -> LineSink:
    """A C{--workers} child's message lines, formatted here and written to descriptor C{fd}, which its parent
    copies into its own log as they come (L{LineSink.lines}): no event per message on either side."""
    sink = LineSink(FdOutput(fd), reactor, journal=journal)
    reactor.addSystemEventTrigger("after", "shutdown", sink.flush)
    atexit.register(sink.close)
    state.sink = sink
    return sink


def offerObserver(service: Any, makeObserver: Callable[[], SinkObserver]) -> None:
    """Offer twistd an C{ILogObserver} component when C{service} joins the application.

    The plugin's C{makeService} never sees the application; twistd passes it
    to the returned service's C{setServiceParent} (C{createOrGetApplication}),
    before it starts logging.  A component already set (a C{.tac} file's) wins.
    """
    original = service.setServiceParent

    def setServiceParent(parent: Any) -> Any:
        if isinstance(parent, Componentized) and parent.getComponent(ILogObserver, None) is None:
            parent.setComponent(ILogObserver, makeObserver())
        return original(parent)

    service.setServiceParent = setServiceParent


def makeSyslogObserver(prefix: str, state: LogState = STATE) -> Any:
    """twistd's own C{--syslog} observer (C{UnixAppLogger._getLogObserver}), behind sockd's level filter."""
    from twisted.python import syslog

    return FilteringLogObserver(LegacyLogObserverWrapper(syslog.SyslogObserver(prefix).emit),
                                [LogLevelFilterPredicate(state.level), ACCEPT_WARNINGS])


def setUp(options: Any, service: Any, reactor: Any, state: LogState = STATE) -> None:
    """sockd's logging for one C{twistd sockd}: the level, and the fast observer where twistd allows it.

    With C{--syslog}, the observer offered is twistd's own syslog observer
    behind the level filter (twistd would not apply C{--log-level}); the
    messages stay events.
    """
    parent = getattr(options, "parent", None)
    destination = twistdDestination(parent)
    if destination is not None:
        offerObserver(service, lambda: makeSinkObserver(destination, reactor, state))
    elif parent is not None and "nodaemon" in parent and parent.get("syslog") and not parent.get("logger"):
        offerObserver(service, lambda: makeSyslogObserver(parent.get("prefix") or "twisted", state))


__all__ = ["makeSinkObserver", "makeSyslogObserver", "offerObserver", "setUp", "twistdDestination",
           "workerMessageSink"]
