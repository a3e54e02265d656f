"""sockd-client: the tutorial's clients in one command, and the measuring half of the kit.

A wing of its own: standard library only, with no import of Twisted or of the
daemon (only L{sockd.errors}' exit statuses and the version), so the client
starts fast and shares no reactor, and no bug, with the server it measures.
The daemon never imports it (tests/unit/test_architecture.py holds both ways).

One module per concern, lowest first: L{errors}; L{histogram}, L{payloads},
L{target} (addresses, connecting); the modes L{oneshot}, L{ping}, L{load},
L{clock}; L{report} (text and --json); L{cli} (the command line, L{main}).
"""

from sockd.client.cli import main

__all__ = ["main"]
