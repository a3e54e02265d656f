"""Log observers for C{twistd --logger}: structured JSON for log shippers.

C{twistd} has no JSON option (twisted#7178), but C{--logger} takes a
zero-argument factory.  Each event becomes one flat JSON object per line:
C{time} (ISO 8601, UTC), C{level}, C{namespace}, the formatted C{text}, and
every structured field sockd attached (service, transport, peer, bytes,
reason ...), so C{jq}, journald or a log shipper get them intact.

    twistd -n --pidfile= --logger sockd.logging.jsonLogger sockd
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import FileLogObserver, ILogObserver, formatEvent

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


def jsonLogger(stream: IO[str] | None = None) -> ILogObserver:
    """JSON lines on standard output (or C{stream}): one event per line."""
    return FileLogObserver(stream or sys.stdout, lambda event: json.dumps(eventAsRecord(event)) + "\n")
