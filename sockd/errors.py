"""Start-up errors that reach the user as one clear line, never a traceback."""

from __future__ import annotations

import sys
from types import TracebackType

#: Exit statuses, so a supervisor can tell a mistake to fix from a failure to retry (the systemd units'
#: RestartPreventExitStatus=2 78): 2 for the command line, as the sockd command and most Unix tools say,
#: and sysexits.h's EX_CONFIG (78) for a bad configuration.
EX_RUNTIME = 1
EX_USAGE = 2
EX_CONFIG = 78


class StartupError(Exception):
    """Something the user can fix: a bad option, a port in use, a missing certificate."""

    #: A failure at run time (a port in use, a socket file that cannot be made): 1.
    exitStatus = EX_RUNTIME


class ConfigurationError(StartupError):
    """A listen description, a setting's value or the configuration file is wrong: EX_CONFIG (78)."""

    exitStatus = EX_CONFIG


def exitWithError(message: str, status: int) -> None:
    """Print the one C{sockd: error:} line and exit with C{status}: for mistakes found before anything runs."""
    stream = sys.__stderr__ or sys.stderr
    stream.write(f"sockd: error: {message}\n")
    stream.flush()
    raise SystemExit(status)


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
