"""The process's log level, and the sink message lines go to: state shared by sockd's observers.

Kept apart from L{sockd.observe.logsetup} so that the observers and the
message log can read it without importing the machinery that sets it up.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.logger import LogLevel


class MessageSink(Protocol):
    """What the message log writes into (L{sockd.observe.logsink.LineSink})."""

    def message(self, tail: bytes, message: bytes) -> None:
        """Append one message line: the timestamp, then C{tail}, then the message escaped."""

LEVEL_NAMES = ("debug", "info", "warn", "error", "critical")


class LogState:
    """The process's logging choices: one per process, as the global log publisher is.

    @ivar level: the least level logged (C{--log-level}).
    @ivar sink: the sink of the installed L{SinkObserver}, once twistd has
        installed it; L{sockd.observe.messagelog.MessageLog} writes straight
        into it.  L{None}: messages are C{twisted.logger} events.
    """

    def __init__(self) -> None:
        self.level: Any = LogLevel.info
        self.sink: MessageSink | None = None

    @property
    def messagesWanted(self) -> bool:
        """Whether info lines (the message log's) are logged at all."""
        return self.level <= LogLevel.info


STATE = LogState()


def parseLevel(name: str) -> Any:
    """C{--log-level}'s value as a C{LogLevel} (C{warning} is accepted for C{warn})."""
    name = name.strip().lower()
    if name == "warning":
        name = "warn"
    if name not in LEVEL_NAMES:
        raise ValueError(f"{name!r} is not a log level ({', '.join(LEVEL_NAMES)})")
    return LogLevel.levelWithName(name)


def configure(level: Any, state: LogState = STATE) -> None:
    """Set the process's log level (before the services and observers are built).

    A C{--workers} worker gets the parent's command line, so the same level:
    below it, nothing crosses the pipe to the parent.
    """
    state.level = level


__all__ = ["LEVEL_NAMES", "STATE", "LogState", "MessageSink", "configure", "parseLevel"]
