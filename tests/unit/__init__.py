"""Unit tests: no real sockets, no processes (StringTransport, Clock, MemoryReactor, pure functions, file checks)."""
