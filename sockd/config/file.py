"""The configuration file: TOML that can say everything the options can.

    # /etc/sockd/sockd.toml
    [listen]
    ack = ["tcp:51717", "udp:51717", "unix:/run/sockd/ack.sock"]
    echo = ["tcp:50007", "udp:50007"]

    [limits]
    max_connections = 2000
    allow = ["192.0.2.0/24", "2001:db8::/32"]

Every setting of L{sockd.config.settings.Settings} may appear at the top level or in
any table (tables are only for grouping: C{[limits]}, C{[ack]}, C{[logging]}),
with underscores or dashes.  C{[listen]} maps service names to lists of listen
descriptions.  Errors name the file, the line and what is wrong.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

from sockd.config.settings import FIELDS
from sockd.errors import ConfigurationError


class ConfigError(ConfigurationError, ValueError):
    """A configuration file that cannot be used: C{file:line: what}."""


@dataclass
class ConfigFile:
    """A parsed configuration file: setting values by field name, and the [listen] table if it has one."""

    path: str
    values: dict[str, Any] = field(default_factory=dict)
    listeners: list[tuple[str, str]] | None = None


_BY_NAME = {f.name: f for f in FIELDS}


def _lineOf(text: str, key: str) -> int | None:
    pattern = re.compile(r"^[ \t]*[\"']?" + re.escape(key) + r"[\"']?[ \t]*=", re.MULTILINE)
    match = pattern.search(text)
    return text.count("\n", 0, match.start()) + 1 if match else None


def _where(path: str, text: str, key: str) -> str:
    line = _lineOf(text, key)
    return f"{path}:{line}" if line else path


def _coerce(name: str, value: Any, where: str) -> Any:
    f = _BY_NAME[name]
    meta = f.metadata
    if meta["repeat"]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: {name} must be a list of strings")
        return list(value)
    if meta["flag"]:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {name} must be true or false")
        return value
    if isinstance(value, bool):
        raise ConfigError(f"{where}: {name} must not be true/false")
    coerce = meta["coerce"] or str
    # A mode is written as chmod takes it: unix_mode = 660 (or "660") means 0o660.
    try:
        return coerce(str(value))
    except ValueError as e:
        raise ConfigError(f"{where}: {name} = {value!r}: {e}") from None


def parseConfig(text: str, path: str, services: set[str]) -> ConfigFile:
    """Parse TOML text into setting values and listeners, naming the line of any mistake."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from None
    config = ConfigFile(path)

    def take(key: str, value: Any) -> None:
        name = key.replace("-", "_")
        where = _where(path, text, key)
        if name not in _BY_NAME:
            raise ConfigError(f"{where}: unknown setting {key!r}")
        config.values[name] = _coerce(name, value, where)

    for key, value in data.items():
        if key == "listen":
            if not isinstance(value, dict):
                raise ConfigError(f"{_where(path, text, key)}: listen must be a table of service = [descriptions]")
            config.listeners = []
            for service, descriptions in value.items():
                where = _where(path, text, service)
                if service not in services:
                    raise ConfigError(f"{where}: unknown service {service!r} in [listen]")
                if isinstance(descriptions, str):
                    descriptions = [descriptions]
                if not isinstance(descriptions, list) or not all(isinstance(d, str) for d in descriptions):
                    raise ConfigError(f"{where}: {service} must be a list of listen descriptions")
                config.listeners.extend((service, d) for d in descriptions)
        elif isinstance(value, dict):
            for inner, innerValue in value.items():
                take(inner, innerValue)
        else:
            take(key, value)
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
