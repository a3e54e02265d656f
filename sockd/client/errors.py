"""The client's one error hierarchy: every failure reaches the user as one line and an exit status.

The one-shot exchange, ping, load and the clock checks all raise these, so the
command has one place that turns them into C{sockd-client: ...} on stderr.  The
exit statuses are the daemon's (L{sockd.errors}): 2 for a usage mistake, 1 for a
failure at run time.
"""

from __future__ import annotations

from sockd.errors import EX_RUNTIME, EX_USAGE


class ClientError(Exception):
    """A failure to report as one line on stderr (exit status 1)."""

    exitStatus = EX_RUNTIME


class UsageError(ClientError):
    """A request that cannot work whatever the server does (exit status 2)."""

    exitStatus = EX_USAGE


class FatalError(ClientError):
    """A failure that trying again cannot mend (an unverifiable certificate): ping and load stop at once."""


class RefusedError(ClientError):
    """The server's address refused the connection: the resolver's next address may still accept it."""
