"""Unit tests: no sockets, no daemons (StringTransport, Clock, MemoryReactor, pure functions, source and docs)."""
