"""The configuration file: TOML that can say everything the options can, and refuses mistakes.

    # /etc/sockd/sockd.toml
    max_connections = 2000            # top level: the daemon's settings, the defaults of every service
    [limits]                          # [limits], [access], [udp], [logging], [daemon]: the same, grouped
    max_per_source = 64
    [echo]                            # a service's table: settings for that service only
    max_per_source = 4
    allow = ["192.0.2.0/24"]
    [listen]
    ack = ["tcp:51717", "udp:51717", "unix:/run/sockd/ack.sock"]

Settings at the top level or in a grouping table are the defaults every
service inherits; settings in a service's table ([ack], [echo]...) apply to
that service only, as xinetd allows per service (daemon-wide settings such
as C{workers} or C{grace} cannot go there).  C{[listen]} maps service names to
lists of listen descriptions.  An unknown table or key (with a "did you
mean"), a duplicate key or a value the setting does not take is an error
naming the file, the line and what the setting takes: at start, and at reload (which then keeps the running
configuration).
"""

from __future__ import annotations

import difflib
import re
import tomllib
from dataclasses import dataclass, field

from sockd.config.settings import FIELDS, BadValue, Kind, Value
from sockd.errors import ConfigurationError

#: Tables that only group daemon-wide settings and defaults: their settings apply to every service.
#: ([service] is [daemon]'s older name, still in configurations written before the tables meant anything.)
DEFAULT_TABLES = ("limits", "access", "udp", "logging", "daemon", "service")


class ConfigError(ConfigurationError, ValueError):
    """A configuration file that cannot be used: C{file:line: what}."""


@dataclass
class ConfigFile:
    """A parsed configuration file: default settings, each service's own, and the [listen] table if any."""

    path: str
    values: dict[str, Value] = field(default_factory=dict)
    services: dict[str, dict[str, Value]] = field(default_factory=dict)
    listeners: list[tuple[str, str]] | None = None


_BY_NAME = {f.name: f for f in FIELDS}
_HEADER = re.compile(r"""^\s*\[\s*["']?([^\]"']+?)["']?\s*\]\s*(?:#.*)?$""")
_KEY = re.compile(r"""^\s*(["']?)([A-Za-z0-9_-]+)\1\s*=""")
_TOML_WHERE = re.compile(r"\s*\(at line (\d+), column \d+\)$")


class _Lines:
    """Where each table and key is written: tomllib gives values, not lines (a small scan of the text)."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.tables: dict[str, int] = {}
        self.keys: dict[tuple[str, str], int] = {}
        #: The text after each key's C{=}: how a number was written (0o660 and 432 are one TOML integer).
        self.literals: dict[tuple[str, str], str] = {}
        table = ""
        for number, line in enumerate(text.splitlines(), 1):
            header = _HEADER.match(line)
            if header:
                table = header.group(1).strip()
                self.tables.setdefault(table, number)
                continue
            key = _KEY.match(line)
            if key:
                self.keys.setdefault((table, key.group(2)), number)
                self.literals.setdefault((table, key.group(2)), line[key.end():])

    def key(self, table: str, key: str) -> str:
        line = self.keys.get((table, key))
        return f"{self.path}:{line}" if line else self.path

    def table(self, table: str) -> str:
        line = self.tables.get(table)
        return f"{self.path}:{line}" if line else self.path


def _didYouMean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _coerce(name: str, value: object, where: str, literal: str | None) -> Value:
    """A file's value through its setting's L{Kind}: the same rules, and the same words, as the command line."""
    kind: Kind = _BY_NAME[name].metadata["kind"]
    try:
        return kind.fromToml(value, literal)
    except BadValue as e:
        raise ConfigError(f"{where}: {name} must be {e}, not {value!r}") from None


def parseConfig(text: str, path: str, services: set[str]) -> ConfigFile:
    """Parse TOML text into settings and listeners, naming the file and line of any mistake."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        # tomllib already refuses duplicate keys and tables; its message ends with the line.
        message = str(e)
        located = _TOML_WHERE.search(message)
        if located is None:
            raise ConfigError(f"{path}: {message}") from None
        problem = message[:located.start()]
        if "overwrite" in problem or "twice" in problem:
            problem += " (a duplicate key or table)"
        raise ConfigError(f"{path}:{located.group(1)}: {problem}") from None
    lines = _Lines(path, text)
    config = ConfigFile(path)
    settingNames = sorted(_BY_NAME)

    def take(table: str, key: str, value: object, into: dict[str, Value], service: str | None = None) -> None:
        name = key.replace("-", "_")
        where = lines.key(table, key)
        if name not in _BY_NAME:
            raise ConfigError(f"{where}: unknown setting {key!r}{_didYouMean(name, settingNames)}")
        if service is not None and _BY_NAME[name].metadata["daemon"]:
            raise ConfigError(f"{where}: {name} is the whole daemon's, not one service's: put it at the top level"
                              f" or in [{DEFAULT_TABLES[0]}], not in [{service}]")
        into[name] = _coerce(name, value, where, lines.literals.get((table, key)))

    tables = ["listen", *DEFAULT_TABLES, *sorted(services)]
    for key, value in data.items():
        if key == "listen":
            if not isinstance(value, dict):
                raise ConfigError(f"{lines.key('', key)}: listen must be a table of service = [descriptions]")
            config.listeners = []
            for service, descriptions in value.items():
                where = lines.key("listen", service)
                if service not in services:
                    raise ConfigError(f"{where}: unknown service {service!r} in [listen]"
                                      f"{_didYouMean(service, sorted(services))}")
                if isinstance(descriptions, str):
                    descriptions = [descriptions]
                if not isinstance(descriptions, list) or not all(isinstance(d, str) for d in descriptions):
                    raise ConfigError(f"{where}: {service} must be a list of listen descriptions")
                config.listeners.extend((service, d) for d in descriptions)
        elif isinstance(value, dict):
            if key in DEFAULT_TABLES:
                for inner, innerValue in value.items():
                    take(key, inner, innerValue, config.values)
            elif key in services:
                own: dict[str, Value] = {}
                for inner, innerValue in value.items():
                    take(key, inner, innerValue, own, service=key)
                if own:  # an empty table changes nothing
                    config.services[key] = own
            else:
                raise ConfigError(f"{lines.table(key)}: unknown table [{key}]{_didYouMean(key, tables)}"
                                  f" (tables: {', '.join(tables)})")
        else:
            take("", key, value, config.values)
    return config


def loadConfig(path: str, services: set[str]) -> ConfigFile:
    """Read and check a configuration file; any mistake is a L{ConfigError} naming file:line."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return parseConfig(text, path, services)
