"""Start-up errors that reach the user as one clear line, never a traceback."""

from __future__ import annotations

import sys
from types import TracebackType


class StartupError(Exception):
    """Something the user can fix: a bad option, a port in use, a missing certificate."""


def _hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    if isinstance(value, StartupError):
        # twistd has replaced sys.stderr with a logging shim by now: write to the real one.
        stream = sys.__stderr__ or sys.stderr
        stream.write(f"sockd: error: {value}\n")
        stream.flush()
        return
    _previous(kind, value, tb)


_previous = sys.excepthook


def installExceptHook() -> None:
    """Make an uncaught L{StartupError} print one line (twistd would print a traceback)."""
    if sys.excepthook is not _hook:
        global _previous
        _previous = sys.excepthook
        sys.excepthook = _hook
