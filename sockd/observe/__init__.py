"""How sockd is watched: metrics (a C{--workers} parent's summed too), readable addresses, log-safe text, and
the log room (L{log}).

Imports only L{sockd.config} and Twisted (its logger, and twisted.web for the workers' sum); protocols,
defences and the runtime report into it, never the other way round.  The log room sits on the rest of this
package (addresses, log-safe text); metrics read its counts without importing it.
"""

__all__ = ["addresses", "log", "logsafe", "metrics", "throttle", "workermetrics"]
