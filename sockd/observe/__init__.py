"""How sockd is watched: metrics (a C{--workers} parent's summed too), the message log, log safety and observers.

Imports only L{sockd.config} and Twisted (its logger, and twisted.web for the workers' sum); protocols, defences and
the runtime report into it, never the other way round.
"""

__all__ = [
    "addresses", "logsafe", "logsetup", "logsink", "logstate", "messagelog", "messagetext", "metrics", "observers",
    "workermetrics",
]
