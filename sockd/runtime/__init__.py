"""Running the daemon: listeners, the top service, socket adoption, workers, the I/O core (reactor), sd_notify.

Binds what L{sockd.config} describes to the factories that the service table
and L{sockd.defences} build; the layer just below the assembly (L{sockd.app}).
"""

__all__ = ["adopt", "core", "daemon", "health", "listeners", "sdnotify", "workers"]
