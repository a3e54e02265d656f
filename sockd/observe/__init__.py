"""How sockd is watched: metrics, the message log, log safety and log observers.

Imports only L{sockd.config} and Twisted's logger; protocols, defences and
the runtime report into it, never the other way round.
"""

__all__ = [
    "addresses", "logsafe", "logsetup", "logsink", "logstate", "messagelog", "messagetext", "metrics", "observers",
]
