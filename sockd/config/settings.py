"""Every tunable of sockd, described once.

The command line (L{sockd.tap.Options}), the configuration file and the
option reference in docs/operating.md are all derived from L{FIELDS}, so a setting is
added in one place.  Each setting names the threat or need it answers.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

LOOPBACK = ("127.0.0.0/8", "::1/128")


def _setting(default: Any, help: str, coerce: Callable[[str], Any] | None = None, flag: bool = False,
             repeat: bool = False, daemon: bool = False, option: str | None = None) -> Any:
    """One setting; C{daemon}: it is the whole daemon's, never one service's (not allowed in [ack], [echo]...).

    C{option}: the command-line spelling when it is not the field's (a repeatable option named in the singular).
    """
    meta = {"help": help, "coerce": coerce, "flag": flag, "repeat": repeat, "daemon": daemon, "option": option}
    if repeat:
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def positiveInt(text: str) -> int:
    """Coerce an option to a whole number of at least 1."""
    value = int(text)
    if value < 1:
        raise ValueError(f"{text} is not a positive whole number")
    return value


def nonNegativeInt(text: str) -> int:
    """Coerce an option to a whole number of at least 0 (0 usually means unlimited)."""
    value = int(text)
    if value < 0:
        raise ValueError(f"{text} is negative")
    return value


def nonNegativeFloat(text: str) -> float:
    """Coerce an option to a number of at least 0 (NaN refused)."""
    value = float(text)
    if not value >= 0:
        raise ValueError(f"{text} is not a non-negative number")
    return value


_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def byteSize(text: str) -> int:
    """Coerce a size in bytes, with an optional K, M or G suffix (powers of 1024): C{10M}, C{65536}."""
    cleaned = text.strip().lower().removesuffix("b").removesuffix("i")
    unit = cleaned[-1:] if cleaned[-1:] in ("k", "m", "g") else ""
    number = cleaned[:-1] if unit else cleaned
    if not number.isdigit():
        raise ValueError(f"{text!r} is not a size such as 65536, 512K or 10M")
    return int(number) * _UNITS[unit]


def octalMode(text: str) -> int:
    """Coerce an option written in octal, as chmod takes it, to a file mode."""
    value = int(text, 8)
    if not 0 <= value <= 0o777:
        raise ValueError(f"{text} is not a file mode such as 660")
    return value


def workerCount(text: str) -> int:
    """C{auto} is the number of cores this process may run on."""
    if text.strip().lower() == "auto":
        return len(os.sched_getaffinity(0)) or 1
    value = int(text)
    if value < 1:
        raise ValueError(f"{text} is not a positive number of workers (or auto)")
    return value


@dataclass
class Settings:
    """sockd's behaviour, apart from where it listens."""

    # The ack service (the tutorial's server).
    max_message: int = _setting(255, "ack: longest message in bytes; longer input is split (the tutorial's 255-byte buffer)", positiveInt)
    quiet_time: float = _setting(0.1, "ack: seconds a partial message may sit quiet before it is answered anyway", nonNegativeFloat)
    ack_once: bool = _setting(False, "ack: close each stream connection after its first answer, as the tutorial's server does", flag=True)
    log_messages: bool = _setting(True, "log every message received (turn off with --no-log-messages for load tests)", flag=True)
    quotes: str | None = _setting(None, "qotd: file of quotes separated by '%' lines or blank lines (default: built-in)")

    # Stream hardening.
    idle_timeout: float = _setting(120.0, "close a stream connection idle this many seconds (slow-loris); 0 disables", nonNegativeFloat)
    tls_handshake_timeout: float = _setting(10.0, "close a TLS connection whose handshake has not finished within this many seconds", nonNegativeFloat)
    max_connections: int = _setting(2000, "most stream connections open at once, over all listeners (xinetd instances); 0 is unlimited", nonNegativeInt)
    max_per_source: int = _setting(64, "most stream connections open at once from one address (xinetd per_source); 0 is unlimited", nonNegativeInt)
    connection_rate: float = _setting(20.0, "new connections per second allowed from one address (xinetd cps); 0 is unlimited", nonNegativeFloat)
    connection_burst: int = _setting(40, "connections one address may open in a burst above --connection-rate", positiveInt)
    refusal_log_interval: float = _setting(10.0, "log a refused address at most once per this many seconds", nonNegativeFloat, daemon=True)

    # Files.
    insecure_files: bool = _setting(False, "accept a --config, quotes or TLS key file that is writable by group or others, or owned by neither root nor the daemon's user (refused by default, exit 78)", flag=True, daemon=True)

    # Access control.
    allow: list[str] = _setting((), "only these CIDR blocks may use sockd (repeatable; default: everyone)", repeat=True)
    deny: list[str] = _setting((), "these CIDR blocks are refused, even if allowed (repeatable)", repeat=True)
    exempt: list[str] = _setting(LOOPBACK, "CIDR blocks free of the per-address limits and the UDP budget (repeatable; default loopback; 'none' clears)", repeat=True)
    trusted_proxies: list[str] = _setting(LOOPBACK, "haproxy: listeners take a PROXY header only from these CIDR blocks; others are closed unanswered (repeatable; default loopback)", repeat=True, option="trusted-proxy")

    # Datagram (reflection) hardening.
    udp_rate: float = _setting(20.0, "datagram answers per second to one address (token bucket); 0 is unlimited", nonNegativeFloat)
    udp_burst: int = _setting(40, "datagram answers one address may get in a burst above --udp-rate", positiveInt)
    udp_budget: float = _setting(5000.0, "datagram answers per second over all addresses; 0 is unlimited", nonNegativeFloat, daemon=True)

    # The log's ceiling (a flooding client must not fill the disk or the log).
    log_rate: float = _setting(100.0, "message lines logged per second from one address (token bucket); the rest are counted and summarised; 0 is unlimited", nonNegativeFloat, daemon=True)
    log_burst: int = _setting(1000, "message lines one address may log in a burst above --log-rate", positiveInt, daemon=True)
    log_max_size: int = _setting(10 << 20, "rotate the log file (twistd --logfile) when it would grow past this size (K, M, G suffixes); 0 is unlimited", byteSize, daemon=True)
    log_max_files: int = _setting(10, "log files kept, the current one included: the oldest rotated file is deleted; 0 keeps every file", nonNegativeInt, daemon=True)

    # Observability.
    metrics: str | None = _setting(None, "serve Prometheus metrics at /metrics on this endpoint, e.g. tcp:9101:interface=127.0.0.1", daemon=True)
    metrics_allow: list[str] = _setting((), "only these CIDR blocks may reach --metrics (repeatable; default: whom --allow lets in); --deny applies too", repeat=True, daemon=True)
    metrics_max_connections: int = _setting(16, "most connections open at once to --metrics (scrapes and probes), so it cannot take the services' descriptors; 0 is unlimited", nonNegativeInt, daemon=True)
    metrics_idle_timeout: float = _setting(10.0, "close a --metrics connection idle this many seconds; 0 disables", nonNegativeFloat, daemon=True)

    # Processes.
    workers: int = _setting(1, "worker processes sharing every listening socket ('auto': one per core)", workerCount, daemon=True)

    # Unix sockets and shutdown.
    unix_mode: int = _setting(0o660, "mode of Unix socket files unless the listen description sets mode=", octalMode, daemon=True)
    grace: float = _setting(5.0, "seconds to finish answering and close connections at shutdown", nonNegativeFloat, daemon=True)


FIELDS: tuple[dataclasses.Field, ...] = dataclasses.fields(Settings)
_OPTIONS = {f.name: f.metadata["option"] for f in FIELDS if f.metadata["option"]}


def optionName(fieldName: str) -> str:
    """The command-line spelling of a setting: C{max_per_source} is C{--max-per-source}, C{trusted_proxies} C{--trusted-proxy}."""
    return _OPTIONS.get(fieldName) or fieldName.replace("_", "-")
