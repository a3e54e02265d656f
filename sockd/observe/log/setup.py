"""Where this process's log goes, at what level, and whether messages take the fast path.

twistd builds the plugin's service before it starts logging, and then logs
with, in order: the C{--logger} factory, an C{ILogObserver} component of the
application, or its own observer for C{--logfile} / C{--syslog} / standard
output (C{twisted.application.app.AppLogger.start}).  When the user chose
none of the destinations twistd handles itself (no C{--logger}, no
C{--syslog}), sockd builds a L{SinkObserver} for that component, writing where
twistd would have written: the same file (but rotated by size and on
C{SIGUSR1}, a bounded number kept: L{sockd.observe.log.files}), or standard
output under C{-n}.  Otherwise
(C{--logger}, C{--syslog}, C{twist}, a C{.tac} file) the message log stays a
stream of C{twisted.logger} events; with C{--syslog} sockd offers twistd's own
syslog observer behind the level filter.

L{plan} decides once, before the services are built, and returns the
L{MessageLogging} the assembly hands to every message log: the sink (the
fast path) and the observer the top service offers twistd when it joins the
application (L{sockd.runtime.daemon.SockdService.setServiceParent}).

C{--log-level} is applied by every observer sockd makes (this one, and
C{sockd.logging.jsonLogger}/C{textLogger}), with C{twisted.logger}'s
C{LogLevelFilterPredicate}; and the message log is not even built below info.
"""

from __future__ import annotations

import atexit
import signal
from typing import Any, cast

from twisted.logger import FilteringLogObserver, LegacyLogObserverWrapper, LogLevelFilterPredicate
from twisted.python.log import ILogObserver as LegacyObserver

from sockd.config.settings import Settings
from sockd.observe.log.files import CappedLogFile
from sockd.observe.log.level import STATE, LogState
from sockd.observe.log.limit import MessageLimiter
from sockd.observe.log.messages import MessageLogging
from sockd.observe.log.observers import jsonLines
from sockd.observe.log.sink import FdOutput, LineSink, Output, SinkObserver, isJournal, standardOutput
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


def _rotateOnSIGUSR1(reactor: Any, sink: LineSink, logFile: CappedLogFile) -> None:
    """As twistd does for its own LogFile: SIGUSR1 rotates, unless someone handles SIGUSR1 already."""
    if signal.getsignal(signal.SIGUSR1):
        return

    def rotate() -> None:
        sink.flush()
        try:
            logFile.rotate()
        except OSError as e:  # lines go on into the current file
            sink.write(f"sockd: cannot rotate the log: {e}\n")

    signal.signal(signal.SIGUSR1, lambda signum, frame: reactor.callFromThread(rotate))


def makeSinkObserver(destination: tuple[str, str], reactor: Any, state: LogState = STATE,
                     maxSize: int = 10 << 20, maxFiles: int = 10) -> SinkObserver:
    """The observer (and its sink) for twistd's destination, flushed at shutdown and at exit.

    A file is rotated at C{maxSize} bytes and on C{SIGUSR1}, C{maxFiles} kept (L{CappedLogFile}).
    """
    kind, path = destination
    output: Output
    if kind == "stdout":
        output = standardOutput()
        journal = isJournal(1)
    else:
        logFile = CappedLogFile(path, maxSize, maxFiles)
        output = logFile
        journal = False
    sink = LineSink(output, reactor, journal=journal)
    if kind == "file":
        _rotateOnSIGUSR1(reactor, sink, logFile)
    reactor.addSystemEventTrigger("after", "shutdown", sink.flush)
    atexit.register(sink.close)
    return SinkObserver(sink, state.level)


def workerMessageSink(fd: int, journal: bool, reactor: Any) -> LineSink:
    """A C{--workers} child's message lines, formatted here and written to descriptor C{fd}, which its parent
    copies into its own log as they come (L{LineSink.lines}): no event per message on either side."""
    sink = LineSink(FdOutput(fd), reactor, journal=journal)
    reactor.addSystemEventTrigger("after", "shutdown", sink.flush)
    atexit.register(sink.close)
    return sink


def makeSyslogObserver(prefix: str, state: LogState = STATE) -> Any:
    """twistd's own C{--syslog} observer (C{UnixAppLogger._getLogObserver}), behind sockd's level filter."""
    from twisted.python import syslog

    return FilteringLogObserver(LegacyLogObserverWrapper(cast(LegacyObserver, syslog.SyslogObserver(prefix).emit)),
                                [LogLevelFilterPredicate(state.level), ACCEPT_WARNINGS])


def makeLimiter(settings: Any, reactor: Any) -> MessageLimiter:
    """The per-source ceiling on message lines (C{--log-rate 0}: none, until a reload sets one).

    Its last summary is written at shutdown.
    """
    limiter = MessageLimiter(settings.log_rate, settings.log_burst, reactor)
    if hasattr(reactor, "addSystemEventTrigger"):
        reactor.addSystemEventTrigger("before", "shutdown", limiter.report)
    return limiter


def twistJsonLines(parent: Any) -> bool:
    """Under C{twist} (and the C{sockd} command) with C{--log-format json}: write sockd's JSON lines.

    twist's json format is Twisted's event serialisation (C{\\x1e}-separated,
    C{log_logger}, C{__class_uuid__} ...), not one object per line; twist
    reads its options' C{fileLogObserverFactory} only after the plugin's
    options are parsed, so putting L{jsonLines} there gives every twist
    destination (standard output, C{--log-file}) the records that C{twistd
    --logger sockd.logging.jsonLogger} writes.  Whether it did so.
    """
    if parent is None or not hasattr(parent, "get") or "fileLogObserverFactory" not in parent:
        return False
    if parent.get("logFormat") != "json":
        return False
    parent["fileLogObserverFactory"] = jsonLines
    return True


def plan(options: Any, reactor: Any, workerPipe: tuple[int, bool] | None = None, state: LogState = STATE,
         settings: Settings | None = None) -> MessageLogging:
    """sockd's logging for one C{twistd sockd}: the fast sink and its observer where twistd allows it.

    A C{--workers} child whose parent writes its own log gets a sink writing
    finished lines to the pipe its parent reads (C{workerPipe}: its
    descriptor, and whether the lines carry journal priorities).  With
    C{--syslog}, the observer is twistd's own syslog observer behind the level
    filter (twistd would not apply C{--log-level}); the messages stay events.
    Whatever the destination, message lines pass the per-source limit of
    C{settings} (C{--log-rate}, C{--log-burst}; default: sockd's defaults).
    """
    settings = settings if settings is not None else Settings()
    limiter = makeLimiter(settings, reactor)
    if workerPipe is not None:
        sink = workerMessageSink(*workerPipe, reactor)
        return MessageLogging(sink, state.level, limiter=limiter)
    parent = getattr(options, "parent", None)
    twistJsonLines(parent)
    destination = twistdDestination(parent)
    if destination is not None:
        observer = makeSinkObserver(destination, reactor, state, settings.log_max_size, settings.log_max_files)
        return MessageLogging(observer.sink, state.level, observer, limiter)
    if parent is not None and "nodaemon" in parent and parent.get("syslog") and not parent.get("logger"):
        syslog = makeSyslogObserver(parent.get("prefix") or "twisted", state)
        return MessageLogging(None, state.level, syslog, limiter)
    return MessageLogging(None, state.level, limiter=limiter)


__all__ = ["makeLimiter", "makeSinkObserver", "makeSyslogObserver", "plan", "twistJsonLines", "twistdDestination",
           "workerMessageSink"]
