"""C{twistd sockd}: the command-line options and the one place the daemon is wired.

L{makeService} builds the whole service tree from L{Options}: the service
table gives each service's factory and datagram protocol, the policies wrap
them, and listeners bind them where the options say.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.python import usage

from sockd import __version__
from sockd.describe import DescriptionError, isDatagram, parseDatagram, transportName
from sockd.errors import StartupError, installExceptHook
from sockd.services import BY_NAME, SERVICES
from sockd.settings import FIELDS, Settings, optionName

STREAM_HELP = (
    "tcp:PORT[:interface=ADDR], tcp6:, unix:PATH[:mode=660], ssl:, tls:, systemd:, or udp:PORT[:interface=ADDR]"
)


def _serviceOption(name: str) -> Any:
    def opt(self: Options, description: str) -> None:
        self.listeners.append((name, description))

    opt.__doc__ = f"Listen for {name} at this address (repeatable): {STREAM_HELP}."
    return opt


def _listOption(fieldName: str) -> Any:
    def opt(self: Options, value: str) -> None:
        self._lists.setdefault(fieldName, []).append(value)

    opt.__doc__ = next(f.metadata["help"] for f in FIELDS if f.name == fieldName)
    return opt


def _shownDefault(f: Any) -> str:
    return f"{f.default:o}" if f.name.endswith("mode") else str(f.default)


class Options(usage.Options):
    synopsis = "[--ack DESC ...] [--echo DESC ...] [options]"
    longdesc = (
        "Serve the sockets tutorial's ack server and the inetd small services (echo, discard, "
        "chargen, daytime, time, qotd) over TCP, UDP and Unix sockets. With no service option "
        "the defaults run: " + "; ".join(f"{s.name} on {', '.join(s.defaults)}" for s in SERVICES) + "."
    )
    optFlags = [
        ["ack-once", None, "ack: close each stream connection after its first answer (as the tutorial's server)"],
        ["no-log-messages", None, "do not log each message received (for load tests)"],
        ["version", "V", "print sockd's version and exit"],
    ]
    optParameters = [
        [optionName(f.name), None, None, f"{f.metadata['help']} [default: {_shownDefault(f)}]"]
        for f in FIELDS
        if not f.metadata["flag"] and not f.metadata["repeat"]
    ]

    def __init__(self) -> None:
        super().__init__()
        self.listeners: list[tuple[str, str]] = []
        self._lists: dict[str, list[str]] = {}
        self.settings = Settings()

    def opt_version(self) -> None:
        print(f"sockd {__version__}")
        sys.exit(0)

    def parseOptions(self, options: Any = None) -> None:
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            raise SystemExit(f"sockd: error: {e} (see twistd sockd --help)") from None

    def postOptions(self) -> None:
        settings = self.settings
        for f in FIELDS:
            meta = f.metadata
            if meta["flag"]:
                continue
            if meta["repeat"]:
                if f.name in self._lists:
                    setattr(settings, f.name, list(self._lists[f.name]))
                continue
            raw = self[optionName(f.name)]
            if raw is None:
                continue
            coerce = meta["coerce"] or str
            try:
                setattr(settings, f.name, coerce(raw))
            except ValueError as e:
                raise usage.UsageError(f"--{optionName(f.name)} {raw}: {e}") from None
        settings.ack_once = bool(self["ack-once"])
        settings.log_messages = not self["no-log-messages"]
        for name, description in self.listeners:
            checkDescription(name, description)
        try:
            checkSettings(settings)
        except StartupError as e:
            raise usage.UsageError(str(e)) from None

    def activeListeners(self) -> list[tuple[str, str]]:
        """The listeners asked for, or every service's defaults when none was."""
        if self.listeners:
            return list(self.listeners)
        return [(s.name, d) for s in SERVICES for d in s.defaults]


def checkDescription(name: str, description: str) -> None:
    """Reject a description that cannot work before anything is bound."""
    if ":" not in description:
        example = BY_NAME[name].defaults[0]
        raise usage.UsageError(f"--{name} {description!r}: expected a listen description such as {example}")
    if isDatagram(description):
        if BY_NAME[name].datagram is None:
            raise usage.UsageError(f"--{name} {description}: {name} has no datagram flavour")
        try:
            parseDatagram(description)
        except DescriptionError as e:
            raise usage.UsageError(f"--{name}: {e}") from None


def checkSettings(settings: Settings) -> None:
    """Validate the settings that are more than a number: address lists, the quotes file."""
    from sockd.access import AccessError, AccessList, parseNetworks
    from sockd.qotd import QuoteError, loadQuotes

    try:
        AccessList(settings.allow, settings.deny)
        parseNetworks(settings.exempt, "--exempt")
    except AccessError as e:
        raise StartupError(str(e)) from None
    if settings.quotes:
        try:
            loadQuotes(settings.quotes)
        except QuoteError as e:
            raise StartupError(str(e)) from None


def makeService(options: Options) -> Any:
    """Wire sockd: service table, policies and listeners, under one L{SockdService}."""
    installExceptHook()
    from twisted.internet import reactor

    from sockd.admission import Admission
    from sockd.daemon import SockdService
    from sockd.listeners import DatagramListener, StreamListener, withUnixDefaults
    from sockd.policies import ConnectionRegistry, PolicyFactory
    from sockd.qotd import QuotePicker, builtinQuotes, loadQuotes
    from sockd.services import SMALL_SERVICE_PORTS, Context
    from sockd.udpguard import DatagramPolicy, GuardedDatagramProtocol

    settings = options.settings
    quotes = QuotePicker(loadQuotes(settings.quotes) if settings.quotes else builtinQuotes())
    context = Context(settings, reactor, quotes)
    admission = Admission(settings, reactor.seconds)
    registry = ConnectionRegistry()
    datagramPolicy = DatagramPolicy(settings, reactor.seconds, SMALL_SERVICE_PORTS)
    top = SockdService(reactor, registry, datagramPolicy, settings.grace)
    for name, description in options.activeListeners():
        service = BY_NAME[name]
        if isDatagram(description):
            assert service.datagram is not None
            protocol = GuardedDatagramProtocol(service.datagram(context), datagramPolicy, name)
            DatagramListener(reactor, name, description, protocol).setServiceParent(top)
            continue
        transport = transportName(description)
        factory = PolicyFactory(
            service.stream(context),
            service=name,
            transport=transport,
            admission=admission,
            registry=registry,
            clock=reactor,
            idleTimeout=settings.idle_timeout,
            handshakeTimeout=settings.tls_handshake_timeout if transport in ("ssl", "tls") else 0,
        )
        StreamListener(reactor, name, withUnixDefaults(description, settings.unix_mode), factory).setServiceParent(top)
    return top


for _service in SERVICES:
    setattr(Options, f"opt_{_service.name}", _serviceOption(_service.name))
for _field in FIELDS:
    if _field.metadata["repeat"]:
        setattr(Options, f"opt_{_field.name}", _listOption(_field.name))
