"""Every tunable of sockd, described once.

The command line (L{sockd.tap.Options}), the configuration file and the
README's option reference are all derived from L{FIELDS}, so a setting is
added in one place.  Each setting names the threat or need it answers.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal, TypeVar, cast, overload

LOOPBACK = ("127.0.0.0/8", "::1/128")

#: What a setting holds: the types of L{Settings}' fields.
Value = str | int | float | bool | list[str] | None

_T = TypeVar("_T", bound=Value)


class BadValue(ValueError):
    """A value a setting does not take; its text is what the setting accepts (the caller names the setting)."""


@dataclass(frozen=True)
class Kind:
    """What one kind of setting takes, from the command line (a word) and from the file (a TOML value).

    Both ways go through L{parse}, so C{--unix-mode 660}, C{unix_mode = 660},
    C{unix_mode = "660"} and C{unix_mode = 0o660} all mean one mode, and a bad
    value of any setting is refused with the same words, L{accepts}.
    """

    #: What a good value looks like, as the error says it ("a whole number of at least 1").
    accepts: str
    #: Word (from the command line or a TOML string) to value; raises ValueError (or TypeError) if refused.
    parse: Callable[[str], Value]
    #: The TOML types a value may have in the file (a C{bool} is never an C{int} here).
    toml: tuple[type, ...] = (str,)
    #: How a TOML integer becomes a word for L{parse}, given the literal as written (None: not known).
    integerWord: Callable[[int, str | None], str] = lambda value, literal: str(value)

    def fromText(self, text: str) -> Value:
        """The value of a command-line word; L{BadValue} if it is not one."""
        try:
            return self.parse(text)
        except (ValueError, TypeError, OverflowError):
            raise BadValue(self.accepts) from None

    def fromToml(self, value: object, literal: str | None = None) -> Value:
        """The value of a TOML value (C{literal}: its text in the file, if known); L{BadValue} if not one."""
        if isinstance(value, bool) != (bool in self.toml) or not isinstance(value, self.toml):
            raise BadValue(self.accepts)
        if isinstance(value, bool):
            return value
        if isinstance(value, int):
            return self.fromText(self.integerWord(value, literal))
        if isinstance(value, float):
            return self.fromText(repr(value))
        return self.fromText(cast(str, value))  # what is left of the TOML types L{toml} may name


class ListKind(Kind):
    """A repeatable setting: each word is checked by L{parse}; in the file, a list of strings (or one string)."""

    def fromToml(self, value: object, literal: str | None = None) -> list[str]:
        words = [value] if isinstance(value, str) else value
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise BadValue(self.accepts)
        return [cast(str, self.fromText(w)) for w in words]  # a list's L{parse} keeps words words


def _wholeNumber(least: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < least:
            raise ValueError(text)
        return value
    return parse


def _finiteNumber(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):  # NaN and infinity refused
        raise ValueError(text)
    return value


def _octalMode(text: str) -> int:
    """A mode as chmod takes it: C{660}, C{0660} or C{0o660}."""
    word = text.strip().lower()
    value = int(word[2:] if word.startswith("0o") else word, 8)
    if not 0 <= value <= 0o777:
        raise ValueError(text)
    return value


def _modeWord(value: int, literal: str | None) -> str:
    """A TOML integer as a mode: C{0o660} (or 0x, 0b) is that number; C{660}, written in decimal, is read as chmod."""
    if literal is not None and re.match(r"[+-]?0[oxb]", literal.strip()):
        return f"{value:o}" if value >= 0 else "-1"
    return str(value)


_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def _byteSize(text: str) -> int:
    """A size in bytes, with an optional K, M or G suffix (powers of 1024): C{10M}, C{65536}."""
    cleaned = text.strip().lower().removesuffix("b").removesuffix("i")
    unit = cleaned[-1:] if cleaned[-1:] in ("k", "m", "g") else ""
    number = cleaned[:-1] if unit else cleaned
    if not number.isdigit():
        raise ValueError(text)
    return int(number) * _UNITS[unit]


def _workerCount(text: str) -> int:
    """C{auto} is the number of cores this process may run on."""
    if text.strip().lower() == "auto":
        return len(os.sched_getaffinity(0)) or 1
    return _wholeNumber(1)(text)


def _nonEmpty(text: str) -> str:
    if not text.strip():
        raise ValueError(text)
    return text


def _endpoint(text: str) -> str:
    """An endpoint description's shape (its kind and arguments are checked where endpoints are known)."""
    kind, colon, rest = text.partition(":")
    if not (kind.strip() and colon and rest.strip()):
        raise ValueError(text)
    return text


def _addressBlock(text: str) -> str:
    """An address or CIDR block (C{none} clears the list); kept as written, parsed where it is used."""
    if text.strip().lower() != "none":
        ipaddress.ip_network(text.strip(), strict=False)
    return text


POSITIVE = Kind("a whole number of at least 1", _wholeNumber(1), (int,))
NON_NEGATIVE = Kind("a whole number of at least 0 (0: unlimited)", _wholeNumber(0), (int,))
SECONDS = Kind("a number of at least 0", _finiteNumber, (int, float))
FLAG = Kind("true or false", bool, (bool,))
FILE = Kind("a file name", _nonEmpty)
ENDPOINT = Kind("an endpoint description such as tcp:9101:interface=127.0.0.1", _endpoint)
MODE = Kind("a file mode in octal from 0 to 777, such as 660 or 0o660", _octalMode, (int, str), _modeWord)
SIZE = Kind("a size in bytes such as 65536, 512K or 10M (0: unlimited)", _byteSize, (int, str))
WORKERS = Kind('a whole number of at least 1, or "auto"', _workerCount, (int, str))
ADDRESSES = ListKind("a list of addresses or CIDR blocks such as 192.0.2.0/24", _addressBlock)
EXEMPT = ListKind('a list of addresses or CIDR blocks such as 192.0.2.0/24, or "none"', _addressBlock)


@overload
def _setting(default: Iterable[str], help: str, kind: Kind, flag: bool = False, *,
             repeat: Literal[True], daemon: bool = False, option: str | None = None) -> list[str]: ...


@overload
def _setting(default: _T, help: str, kind: Kind, flag: bool = False,
             repeat: Literal[False] = False, daemon: bool = False, option: str | None = None) -> _T: ...


def _setting(default: Value | Iterable[str], help: str, kind: Kind, flag: bool = False, repeat: bool = False,
             daemon: bool = False, option: str | None = None) -> Value:
    """One setting; C{daemon}: it is the whole daemon's, never one service's (not allowed in [ack], [echo]...).

    C{option}: the command-line spelling when it is not the field's (a repeatable option named in the singular).
    """
    meta = {"help": help, "kind": kind, "flag": flag, "repeat": repeat, "daemon": daemon, "option": option}
    if repeat:
        return field(default_factory=lambda: list(cast(Iterable[str], default)), metadata=meta)
    return field(default=cast(Value, default), metadata=meta)


def workerCount(text: str) -> int:
    """C{--workers}: a positive number, or C{auto}, the number of cores this process may run on."""
    return cast(int, WORKERS.fromText(text))


@dataclass
class Settings:
    """sockd's behaviour, apart from where it listens."""

    # The ack service (the tutorial's server).
    max_message: int = _setting(255, "ack: longest message in bytes; longer input is split (the tutorial's 255-byte buffer)", POSITIVE)
    quiet_time: float = _setting(0.1, "ack: seconds a partial message may sit quiet before it is answered anyway", SECONDS)
    ack_once: bool = _setting(False, "ack: close each stream connection after its first answer, as the tutorial's server does", FLAG, flag=True)
    log_messages: bool = _setting(True, "log every message received (turn off with --no-log-messages for load tests)", FLAG, flag=True)
    quotes: str | None = _setting(None, "qotd: file of quotes separated by '%' lines or blank lines (default: built-in)", FILE)

    # Stream hardening.
    idle_timeout: float = _setting(120.0, "close a stream connection idle this many seconds (slow-loris); 0 disables", SECONDS)
    tls_handshake_timeout: float = _setting(10.0, "close a TLS connection whose handshake has not finished within this many seconds", SECONDS)
    max_connections: int = _setting(2000, "most stream connections open at once, over all listeners (xinetd instances); 0 is unlimited", NON_NEGATIVE)
    max_per_source: int = _setting(64, "most stream connections open at once from one address (xinetd per_source); 0 is unlimited", NON_NEGATIVE)
    connection_rate: float = _setting(20.0, "new connections per second allowed from one address (xinetd cps); 0 is unlimited", SECONDS)
    connection_burst: int = _setting(40, "connections one address may open in a burst above --connection-rate", POSITIVE)
    refusal_log_interval: float = _setting(10.0, "log a refused address at most once per this many seconds", SECONDS, daemon=True)

    # Files.
    insecure_files: bool = _setting(False, "accept a --config, quotes or TLS key file that is writable by group or others, or owned by neither root nor the daemon's user (refused by default, exit 78)", FLAG, flag=True, daemon=True)

    # Access control.
    allow: list[str] = _setting((), "only these CIDR blocks may use sockd (repeatable; default: everyone)", ADDRESSES, repeat=True)
    deny: list[str] = _setting((), "these CIDR blocks are refused, even if allowed (repeatable)", ADDRESSES, repeat=True)
    exempt: list[str] = _setting(LOOPBACK, "CIDR blocks free of the per-address limits and the UDP budget (repeatable; default loopback; 'none' clears)", EXEMPT, repeat=True)
    trusted_proxies: list[str] = _setting(LOOPBACK, "haproxy: listeners take a PROXY header only from these CIDR blocks; others are closed unanswered (repeatable; default loopback; 'none' clears)", EXEMPT, repeat=True, option="trusted-proxy")

    # Datagram (reflection) hardening.
    udp_rate: float = _setting(20.0, "datagram answers per second to one address (token bucket); 0 is unlimited", SECONDS)
    udp_burst: int = _setting(40, "datagram answers one address may get in a burst above --udp-rate", POSITIVE)
    udp_budget: float = _setting(5000.0, "datagram answers per second over all addresses; 0 is unlimited", SECONDS, daemon=True)

    # The log's ceiling (a flooding client must not fill the disk or the log).
    log_rate: float = _setting(100.0, "message lines logged per second from one address (token bucket); the rest are counted and summarised; 0 is unlimited", SECONDS, daemon=True)
    log_burst: int = _setting(1000, "message lines one address may log in a burst above --log-rate", POSITIVE, daemon=True)
    log_max_size: int = _setting(10 << 20, "rotate the log file (twistd --logfile) when it would grow past this size (K, M, G suffixes); 0 is unlimited", SIZE, daemon=True)
    log_max_files: int = _setting(10, "log files kept, the current one included: the oldest rotated file is deleted; 0 keeps every file", NON_NEGATIVE, daemon=True)

    # Observability.
    metrics: str | None = _setting(None, "serve Prometheus metrics at /metrics on this endpoint, e.g. tcp:9101:interface=127.0.0.1", ENDPOINT, daemon=True)
    metrics_allow: list[str] = _setting((), "only these CIDR blocks may reach --metrics (repeatable; default: whom --allow lets in); --deny applies too", ADDRESSES, repeat=True, daemon=True)
    metrics_max_connections: int = _setting(16, "most connections open at once to --metrics (scrapes and probes), so it cannot take the services' descriptors; 0 is unlimited", NON_NEGATIVE, daemon=True)
    metrics_idle_timeout: float = _setting(10.0, "close a --metrics connection idle this many seconds; 0 disables", SECONDS, daemon=True)

    # Processes.
    workers: int = _setting(1, "worker processes sharing every listening socket ('auto': one per core)", WORKERS, daemon=True)

    # Unix sockets and shutdown.
    unix_mode: int = _setting(0o660, "mode of Unix socket files unless the listen description sets mode=", MODE, daemon=True)
    grace: float = _setting(5.0, "seconds to finish answering and close connections at shutdown", SECONDS, daemon=True)


FIELDS: tuple[dataclasses.Field[Value], ...] = dataclasses.fields(Settings)
_OPTIONS = {f.name: f.metadata["option"] for f in FIELDS if f.metadata["option"]}


def optionName(fieldName: str) -> str:
    """The command-line spelling of a setting: C{max_per_source} is C{--max-per-source}, C{trusted_proxies} C{--trusted-proxy}."""
    return _OPTIONS.get(fieldName) or fieldName.replace("_", "-")
