"""C{--workers N}: several processes serving the same listening sockets.

The parent binds every listener exactly as a single process would (so every
description works, privileged ports included, before twistd drops
privileges), stops accepting on them itself, and starts N worker processes
that inherit the sockets and serve them.  Each job has a module:
L{supervisor} starts, restarts, signals and stops the workers and hands them
the listeners a reload opened (L{channel}); L{spec} is the typed description a
worker is started with and the listener updates it is sent; L{child} is what
runs in a worker (its share of the limits, the updates it takes); L{logrelay}
copies the workers' logs into the parent's; L{notify} hears their sd_notify.
The parent's C{/metrics} sums the workers' (L{sockd.observe.workermetrics}).
"""

__all__ = ["channel", "child", "logrelay", "notify", "spec", "supervisor"]
