"""C{--log-level}: its names, and the process's level that every observer sockd makes filters at.

The level is one per process, as the global log publisher is: C{twistd
--logger sockd.logging.jsonLogger} calls a zero-argument factory, so the
observers read it here.  It is set once, explicitly, by C{makeService}
(L{configure}), before any observer or message log is built.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import LogLevel

LEVEL_NAMES = ("debug", "info", "warn", "error", "critical")


class LogState:
    """The process's least logged level (C{--log-level}).

    @ivar level: the least level logged.
    """

    def __init__(self) -> None:
        self.level: LogLevel = LogLevel.info

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


__all__ = ["LEVEL_NAMES", "STATE", "LogState", "configure", "parseLevel"]
