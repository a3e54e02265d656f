"""Log observers for C{twistd --logger}: structured JSON for log shippers, and fast classic text.

C{twistd} has no JSON option (twisted#7178), but C{--logger} takes a
zero-argument factory.  C{twist}'s own C{--log-format json} (its default when
the log is not a terminal, and so the C{sockd} command's) writes Twisted's
event serialisation instead; L{sockd.observe.log.setup.plan} makes it write
these records too (L{jsonLines}).  Each event becomes one flat JSON object per line:
C{time} (ISO 8601, UTC), C{level}, C{namespace}, the formatted C{text}, and
every structured field sockd attached (service, transport, peer, bytes,
reason ...), so C{jq}, journald or a log shipper get them intact.

    twistd -n --pidfile= --logger sockd.logging.jsonLogger sockd

L{textLogger} writes the very lines of twistd's own text observer
(C{2024-05-01T12:00:00+0000 [sockd.messages#info] Here is the message: hi}),
cheaper: twistd's observer formats the timestamp (time zone, C{datetime},
C{strftime}) and the text (C{string.Formatter} with call support) anew for
every event, which with per-message logging is most of the cost of a message.
This one formats the timestamp once per second and simple formats with
C{str.format_map}; any other event goes through Twisted's own formatter.

    twistd -n --pidfile= --logger sockd.logging.textLogger sockd

Both pass on only events at or above sockd's C{--log-level}
(L{sockd.observe.log.level}), with C{twisted.logger}'s own level filter.
sockd's default observer (no C{--logger}) is cheaper still, see
L{sockd.observe.log.sink}.
"""

from __future__ import annotations

import json
import string
import sys
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    LogLevelFilterPredicate,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
    timeFormatRFC3339,
)

from sockd.observe.log.level import STATE
from sockd.observe.throttle import ACCEPT_WARNINGS

_SCALARS = (str, int, float, bool, type(None))
_SKIP = {"format", "message", "isError", "system", "time", "printed"}


def eventAsRecord(event: dict[str, Any]) -> dict[str, Any]:
    """The event as a flat dict of JSON-safe values."""
    level = event.get("log_level")
    stamp = event.get("log_time")
    record: dict[str, Any] = {
        "time": datetime.fromtimestamp(stamp, UTC).isoformat() if stamp is not None else None,
        "level": getattr(level, "name", "info"),
        "namespace": event.get("log_namespace", ""),
        "text": formatEvent(event),
    }
    for key, value in event.items():
        if key.startswith("log_") or key in _SKIP or key in record:
            continue
        record[key] = value if isinstance(value, _SCALARS) else str(value)
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    return record


def leveled(observer: ILogObserver) -> ILogObserver:
    """C{observer} behind C{twisted.logger}'s level filter at sockd's C{--log-level}."""
    return FilteringLogObserver(observer, [LogLevelFilterPredicate(STATE.level), ACCEPT_WARNINGS])


def jsonLines(stream: IO[str]) -> ILogObserver:
    """One flat JSON object per event and line on C{stream} (L{eventAsRecord}), unfiltered."""
    return FileLogObserver(stream, lambda event: json.dumps(eventAsRecord(event)) + "\n")


def jsonLogger(stream: IO[str] | None = None) -> ILogObserver:
    """JSON lines on standard output (or C{stream}): one event per line."""
    return leveled(jsonLines(stream or sys.stdout))


class ClassicText:
    """C{formatEventAsClassicLogText} with C{formatTime(when, timeFormat)}, for plain events made cheaply.

    Plain: a C{str} format whose fields are simple names (no calls, attributes
    or indexes), no failure, no flattened or system fields, a float time.
    """

    def __init__(self, timeFormat: str | None = timeFormatRFC3339) -> None:
        self.timeFormat = timeFormat
        # Without sub-second directives, every event of one second shows the same stamp.
        self._perSecond = timeFormat is not None and "%f" not in timeFormat
        self._second: int | None = None
        self._stamp = ""
        self._simple: dict[str, bool] = {}

    def _isSimple(self, format: str) -> bool:
        simple = self._simple.get(format)
        if simple is None:
            try:
                simple = all(name is None or (name.isidentifier() and not name.endswith("()"))
                             for _, name, _, _ in string.Formatter().parse(format))
            except ValueError:
                simple = False
            if len(self._simple) < 1024:
                self._simple[format] = simple
        return simple

    def _stampOf(self, when: float) -> str:
        if not self._perSecond:
            return formatTime(when, self.timeFormat)
        second = int(when // 1)
        if second != self._second:
            self._stamp = formatTime(second, self.timeFormat)
            self._second = second
        return self._stamp

    def __call__(self, event: dict[str, Any]) -> str | None:
        format = event.get("log_format")
        when = event.get("log_time")
        level = event.get("log_level")
        if (type(format) is str and type(when) is float and level is not None and self._isSimple(format)
                and "log_failure" not in event and "log_flattened" not in event and "log_system" not in event):
            try:
                text = format.format_map(event)
                system = f"{event.get('log_namespace', '-')}#{level.name}"
            except Exception:
                text = None
            if text is not None:
                if not text:
                    return None
                line = f"{self._stampOf(when)} [{system}] {text}"
                if "\n" in line:
                    line = line.replace("\n", "\n\t")
                return line + "\n"
        return formatEventAsClassicLogText(event, formatTime=lambda t: formatTime(t, self.timeFormat))


def textLogger(stream: IO[str] | None = None) -> ILogObserver:
    """twistd's classic text lines on standard output (or C{stream}), formatted with less work."""
    return leveled(FileLogObserver(stream or sys.stdout, ClassicText()))
