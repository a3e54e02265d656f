"""C{twistd sockd}: the command-line options, and L{makeService}, where the daemon is wired.

L{Options} resolves defaults, the configuration file and the command line
into settings and listen descriptions (and rejects what cannot work before
anything is bound); L{makeService} hands them to L{sockd.app.Assembly}.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import Field, replace
from typing import cast

from twisted.python import usage

from sockd import __version__
from sockd.app import Assembly
from sockd.config.descriptions import DescriptionError, ListenSpec
from sockd.config.file import loadConfig
from sockd.config.settings import FIELDS, MODE, BadValue, Kind, Settings, Value, optionName
from sockd.config.strict import RunAs, checkFile, checkListenFiles, readingAs
from sockd.defences.access import AccessError, AccessList, parseNetworks
from sockd.errors import EX_USAGE, ConfigurationError, StartupError, exitWithError, installExceptHook
from sockd.interfaces import IReactor
from sockd.observe.log.level import LEVEL_NAMES, configure, parseLevel
from sockd.protocols.qotd import QuoteError, loadQuotes
from sockd.runtime.daemon import SockdService
from sockd.services import BY_NAME, SERVICES

STREAM_HELP = (
    "tcp:PORT[:interface=ADDR], tcp6:, unix:PATH[:mode=660][:group=NAME], ssl:, tls:, systemd:, haproxy:, "
    "or udp:PORT[:interface=ADDR] / udp:index=N"
)


def _serviceOption(name: str) -> Callable[[Options, str], None]:
    def opt(self: Options, description: str) -> None:
        self.listeners.append((name, description))

    opt.__doc__ = f"Listen for {name} at this address (repeatable): {STREAM_HELP}."
    return opt


def _listOption(fieldName: str) -> Callable[[Options, str], None]:
    kind: Kind = next(f.metadata["kind"] for f in FIELDS if f.name == fieldName)

    def opt(self: Options, value: str) -> None:
        try:
            listed = self.given.setdefault(fieldName, [])
            cast(list[str], listed).append(cast(str, kind.fromText(value)))  # a repeatable setting's: a list of words
        except BadValue as e:
            raise usage.UsageError(f"--{optionName(fieldName)} {value}: must be {e}") from None

    opt.__doc__ = next(f.metadata["help"] for f in FIELDS if f.name == fieldName)
    return opt


def _shownDefault(f: Field[Value]) -> str:
    """The help's C{[default: ...]}, or nothing for a setting that is off (or built in) unless given."""
    if f.default is None:
        return ""
    return f" [default: {f.default:o}]" if f.metadata["kind"] is MODE else f" [default: {f.default}]"


#: Options that sockd gives itself (a --workers parent starting its workers), never a person: not in the help.
HIDDEN = ("worker",)


class Options(usage.Options):
    """C{twistd sockd}'s options; L{resolve} merges them with the configuration file."""

    synopsis = "[--config FILE] [--ack DESC ...] [--echo DESC ...] [options]"
    longdesc = (
        "Serve the sockets tutorial's ack server and the inetd small services (echo, discard, "
        "chargen, daytime, time, qotd) over TCP, UDP and Unix sockets. With no service option "
        "(and no [listen] table in --config) the defaults run: "
        + "; ".join(f"{s.name} on {', '.join(s.defaults)}" for s in SERVICES)
        + ". Options given on the command line win over the configuration file; SIGHUP re-reads it."
    )
    optFlags = [
        ["ack-once", None, "ack: close each stream connection after its first answer (as the tutorial's server)"],
        ["no-log-messages", None, "do not log each message received (for load tests)"],
        ["insecure-files", None, next(f.metadata["help"] for f in FIELDS if f.name == "insecure_files")],
        ["version", "V", "print sockd's version and exit"],
    ]
    optParameters = [
        ["config", "c", None, "read settings and listeners from this TOML file (re-read on SIGHUP)"],
        ["worker", None, None, "(internal) run as a worker of a --workers parent: a JSON description"],
        # No parser default: usage.Options would add its own "[default: info]" after this one.
        ["log-level", None, None, f"log only events at this level or above: {', '.join(LEVEL_NAMES)} [default: info]"],
    ] + [
        [optionName(f.name), None, None, f"{f.metadata['help']}{_shownDefault(f)}"]
        for f in FIELDS
        if not f.metadata["flag"] and not f.metadata["repeat"]
    ]

    def __init__(self) -> None:
        super().__init__()
        self.listeners: list[tuple[str, str]] = []
        #: Settings given on the command line, by field name; they win over the file.
        self.given: dict[str, Value] = {}
        self.settings = Settings()

    #: How the help and errors name this command (the C{sockd} command says C{sockd}).
    command = "twistd sockd"
    #: Options left out of the help.
    hidden: tuple[str, ...] = HIDDEN

    def opt_version(self) -> None:
        print(f"sockd {__version__}")
        sys.exit(0)

    opt_h = usage.Options.opt_help

    def getUsage(self, width: int | None = None) -> str:
        """The help, less the L{hidden} options."""
        every = self.longOpt
        self.longOpt = [o for o in every if o.rstrip("=") not in self.hidden]
        try:
            return super().getUsage(width)
        finally:
            self.longOpt = every

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        #: The arguments as given, for workers started with the same command line.
        self.rawArgs = list(sys.argv[1:] if options is None else options)
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            exitWithError(f"{e} (see {self.command} --help)", EX_USAGE)
        except StartupError as e:  # a bad description, setting or configuration file: EX_CONFIG
            exitWithError(str(e), e.exitStatus)

    def postOptions(self) -> None:
        for f in FIELDS:
            meta = f.metadata
            if meta["flag"] or meta["repeat"]:
                continue
            raw = self[optionName(f.name)]
            if raw is None:
                continue
            try:
                self.given[f.name] = meta["kind"].fromText(raw)
            except BadValue as e:
                raise usage.UsageError(f"--{optionName(f.name)} {raw}: must be {e}") from None
        try:
            self.logLevel = parseLevel(self["log-level"] or "info")
        except ValueError as e:
            raise usage.UsageError(f"--log-level: {e}") from None
        if self["ack-once"]:
            self.given["ack_once"] = True
        if self["no-log-messages"]:
            self.given["log_messages"] = False
        if self["insecure-files"]:
            self.given["insecure_files"] = True
        parent = getattr(self, "parent", None)  # twistd's options, when run as `twistd sockd`: its --uid/--gid
        #: The user sockd serves as, who (with root) may own the files it trusts, and reads the quotes file as.
        self.runAs = RunAs(parent.get("uid"), parent.get("gid")) if parent is not None else RunAs()
        self.settings, self.active, self.serviceSettings = self.resolve()
        # Here, not in makeService: `twist` installs its default reactor right after parsing the plugin's options.
        # A reactor the user named (twistd -r, twist --reactor) is installed already and is kept.
        installDefaultReactor()

    def resolve(self) -> tuple[Settings, list[ListenSpec], dict[str, Settings]]:
        """Settings, listeners and each service's own settings: defaults, then the file, then the command line.

        The file's top-level settings are the defaults of every service; a service's table ([echo]) changes
        them for that service only.  Called at start and again on every reload, so a changed file takes
        effect while command-line choices keep winning (over the service tables too).
        """
        settings = Settings()
        fileListeners = None
        fileServices: dict[str, dict[str, Value]] = {}
        if self["config"]:
            if not self.given.get("insecure_files"):  # only the command line: the file cannot vouch for itself
                checkFile(self["config"], "--config", self.runAs)
            config = loadConfig(self["config"], set(BY_NAME))
            for name, value in config.values.items():
                setattr(settings, name, value)
            fileListeners = config.listeners
            fileServices = config.services
        for name, value in self.given.items():
            setattr(settings, name, list(value) if isinstance(value, list) else value)
        listeners = self.listeners or fileListeners or [(s.name, d) for s in SERVICES for d in s.defaults]
        specs = [checkDescription(name, description) for name, description in listeners]
        if not settings.insecure_files:
            checkListenFiles(listeners, self.runAs)
        checkSettings(settings, self.runAs)
        serviceSettings = {}
        for service, own in fileServices.items():
            # Each value was coerced to its own field's type (sockd.config.file), which one dict type cannot say.
            own = {k: v for k, v in own.items() if k not in self.given}
            serviceSettings[service] = replace(settings, **own)  # type: ignore[arg-type]
            checkSettings(serviceSettings[service], self.runAs)
        return settings, list(dict.fromkeys(specs)), serviceSettings


def checkDescription(name: str, description: str) -> ListenSpec:
    """Parse a description, rejecting one that cannot work before anything is bound."""
    if ":" not in description:
        example = BY_NAME[name].defaults[0]
        raise ConfigurationError(f"--{name} {description!r}: expected a listen description such as {example}")
    try:
        spec = ListenSpec.parse(name, description)
    except DescriptionError as e:
        raise ConfigurationError(f"--{name} {e}") from None
    if spec.datagram is not None:
        if BY_NAME[name].datagram is None:
            raise ConfigurationError(f"--{name} {description}: {name} has no datagram flavour")
        return spec
    checkStreamDescription(f"--{name} {description}", spec)
    return spec


#: Stream kinds whose parser reads files or the environment (certificates, LISTEN_FDS): checked when bound.
_CHECKED_WHEN_BOUND = ("ssl", "tls", "systemd")


def checkStreamDescription(where: str, spec: ListenSpec) -> None:
    """Parse a stream description as Twisted will, without binding: an unknown kind or argument fails now."""
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.interfaces import IStreamServerEndpointStringParser
    from twisted.internet.testing import MemoryReactor
    from twisted.plugin import getPlugins

    kinds = {"tcp", "unix", "ssl"} | {p.prefix for p in getPlugins(IStreamServerEndpointStringParser)}
    if spec.kind not in kinds:
        raise ConfigurationError(
            f"{where}: unknown endpoint type {spec.kind!r} (known: {', '.join(sorted(kinds))}, udp)")
    if spec.kind in _CHECKED_WHEN_BOUND:
        return
    try:
        serverFromString(MemoryReactor(), spec.endpoint)
    except (ValueError, TypeError, KeyError, IndexError) as e:
        raise ConfigurationError(f"{where}: bad listen description: {e}") from None


def checkSettings(settings: Settings, runAs: RunAs | None = None) -> None:
    """Validate the settings that are more than a number: address lists, the quotes file (read as C{runAs})."""
    try:
        AccessList(settings.allow, settings.deny)
        parseNetworks(settings.exempt, "--exempt")
        parseNetworks(settings.trusted_proxies, "--trusted-proxy")
        parseNetworks(settings.metrics_allow, "--metrics-allow")
    except AccessError as e:
        raise ConfigurationError(str(e)) from None
    if settings.quotes:
        if not settings.insecure_files:
            checkFile(settings.quotes, "--quotes", runAs or RunAs())
        try:
            with readingAs(runAs):
                loadQuotes(settings.quotes)
        except QuoteError as e:
            raise ConfigurationError(str(e)) from None
    if settings.metrics and ":" not in settings.metrics:
        raise ConfigurationError(
            f"--metrics {settings.metrics!r}: expected an endpoint such as tcp:9101:interface=127.0.0.1")
    if settings.metrics:
        where = f"--metrics {settings.metrics}"
        try:
            spec = ListenSpec.parse("metrics", settings.metrics)
        except DescriptionError as e:
            raise ConfigurationError(f"--metrics {e}") from None
        if spec.datagram is not None:
            raise ConfigurationError(f"{where}: the metrics endpoint is a stream listener, not udp")
        checkStreamDescription(where, spec)


def installDefaultReactor() -> bool:
    """Make sockd's own reactor the default: install it unless some reactor is installed already."""
    from sockd.core.reactor import installDefault

    return installDefault()


def makeService(options: Options) -> SockdService:
    """Wire sockd: service table, policies and listeners, under one L{SockdService}."""
    installExceptHook()
    from twisted.internet import reactor
    from twisted.logger import Logger

    configure(options.logLevel)
    # twistd says "reactor class: ..." but `twist` does not: say which I/O core serves, under either.
    kind = type(reactor)
    Logger(namespace="sockd.daemon").info("I/O core: {reactor}", reactor=f"{kind.__module__}.{kind.__qualname__}")
    return Assembly(options, cast(IReactor, reactor)).top  # the installed reactor provides each of its bases


for _service in SERVICES:
    setattr(Options, f"opt_{_service.name}", _serviceOption(_service.name))
for _field in FIELDS:
    if _field.metadata["repeat"]:
        setattr(Options, f"opt_{optionName(_field.name).replace('-', '_')}", _listOption(_field.name))
