"""Running the daemon: listeners, the top service, socket adoption, workers, sd_notify.

Binds what L{sockd.config} describes to the factories that the service table
and L{sockd.defences} build; the layer just below the assembly (L{sockd.app}).
The reactor it runs on by default is L{sockd.core}, the ground floor.
"""

__all__ = ["adopt", "daemon", "health", "listeners", "sdnotify", "workers"]
