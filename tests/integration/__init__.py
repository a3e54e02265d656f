"""Integration tests: in-process, on real loopback and Unix sockets (pytest-twisted, in-process daemons)."""
