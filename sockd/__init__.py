"""sockd: the sockets tutorial's servers and the inetd small services, as one Twisted daemon."""

__version__ = "0.1.0"
