"""C{twistd sockd}: the command-line options and the one place the daemon is wired.

L{makeService} builds the whole service tree from L{Options}: the service
table gives each service's factory and datagram protocol, the policies wrap
them, and listeners bind them where the options (or the configuration file)
say.  L{Assembly} keeps what it built, so a reload (SIGHUP) can apply new
limits, access lists and quotes, and open or close listeners, without
dropping established connections.
"""

from __future__ import annotations

import json
import signal
import sys
from typing import Any

from twisted.python import usage

from sockd import __version__
from sockd.config import ConfigError, loadConfig
from sockd.describe import DescriptionError, isDatagram, parseDatagram, split, transportName
from sockd.errors import StartupError, installExceptHook
from sockd.services import BY_NAME, SERVICES
from sockd.settings import FIELDS, Settings, optionName

STREAM_HELP = (
    "tcp:PORT[:interface=ADDR], tcp6:, unix:PATH[:mode=660], ssl:, tls:, systemd:, haproxy:, "
    "or udp:PORT[:interface=ADDR] / udp:index=N"
)


def _serviceOption(name: str) -> Any:
    def opt(self: Options, description: str) -> None:
        self.listeners.append((name, description))

    opt.__doc__ = f"Listen for {name} at this address (repeatable): {STREAM_HELP}."
    return opt


def _listOption(fieldName: str) -> Any:
    def opt(self: Options, value: str) -> None:
        self.given.setdefault(fieldName, []).append(value)

    opt.__doc__ = next(f.metadata["help"] for f in FIELDS if f.name == fieldName)
    return opt


def _shownDefault(f: Any) -> str:
    return f"{f.default:o}" if f.name.endswith("mode") else str(f.default)


class Options(usage.Options):
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
        ["version", "V", "print sockd's version and exit"],
    ]
    optParameters = [
        ["config", "c", None, "read settings and listeners from this TOML file (re-read on SIGHUP)"],
        ["worker", None, None, "(internal) run as a worker of a --workers parent: a JSON description"],
    ] + [
        [optionName(f.name), None, None, f"{f.metadata['help']} [default: {_shownDefault(f)}]"]
        for f in FIELDS
        if not f.metadata["flag"] and not f.metadata["repeat"]
    ]

    def __init__(self) -> None:
        super().__init__()
        self.listeners: list[tuple[str, str]] = []
        #: Settings given on the command line, by field name; they win over the file.
        self.given: dict[str, Any] = {}
        self.settings = Settings()

    def opt_version(self) -> None:
        print(f"sockd {__version__}")
        sys.exit(0)

    def parseOptions(self, options: Any = None) -> None:
        #: The arguments as given, for workers started with the same command line.
        self.rawArgs = list(sys.argv[1:] if options is None else options)
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            raise SystemExit(f"sockd: error: {e} (see twistd sockd --help)") from None

    def postOptions(self) -> None:
        for f in FIELDS:
            meta = f.metadata
            if meta["flag"] or meta["repeat"]:
                continue
            raw = self[optionName(f.name)]
            if raw is None:
                continue
            coerce = meta["coerce"] or str
            try:
                self.given[f.name] = coerce(raw)
            except ValueError as e:
                raise usage.UsageError(f"--{optionName(f.name)} {raw}: {e}") from None
        if self["ack-once"]:
            self.given["ack_once"] = True
        if self["no-log-messages"]:
            self.given["log_messages"] = False
        try:
            self.settings, self.active = self.resolve()
        except (StartupError, ConfigError) as e:
            raise usage.UsageError(str(e)) from None

    def resolve(self) -> tuple[Settings, list[tuple[str, str]]]:
        """Settings and listeners: defaults, then the file, then the command line.

        Called at start and again on every reload, so a changed file takes effect
        while command-line choices keep winning.
        """
        settings = Settings()
        fileListeners = None
        if self["config"]:
            config = loadConfig(self["config"], set(BY_NAME))
            for name, value in config.values.items():
                setattr(settings, name, value)
            fileListeners = config.listeners
        for name, value in self.given.items():
            setattr(settings, name, list(value) if isinstance(value, list) else value)
        listeners = self.listeners or fileListeners or [(s.name, d) for s in SERVICES for d in s.defaults]
        for name, description in listeners:
            checkDescription(name, description)
        checkSettings(settings)
        return settings, list(dict.fromkeys(listeners))


def checkDescription(name: str, description: str) -> None:
    """Reject a description that cannot work before anything is bound."""
    if ":" not in description:
        example = BY_NAME[name].defaults[0]
        raise StartupError(f"--{name} {description!r}: expected a listen description such as {example}")
    kind, args, _ = split(description)
    if kind == "haproxy" and args and args[0].lower() in ("ssl", "tls"):
        raise StartupError(
            f"--{name} {description}: PROXY protocol over TLS is not supported (the balancer sends the header"
            " before the TLS handshake); terminate TLS at the balancer, or use haproxy:tcp:..."
        )
    inner = split(description.split(":", 1)[1]) if kind == "haproxy" else (kind, args, _)
    if inner[0] in ("tcp", "tcp6", "ssl"):
        port = inner[2].get("port", inner[1][0] if inner[1] else None)
        if port is None or not port.isdigit() or int(port) > 65535:
            raise StartupError(f"--{name} {description}: port {port!r} is not a number from 0 to 65535")
    if isDatagram(description):
        if BY_NAME[name].datagram is None:
            raise StartupError(f"--{name} {description}: {name} has no datagram flavour")
        try:
            parseDatagram(description)
        except DescriptionError as e:
            raise StartupError(f"--{name}: {e}") from None


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
    if settings.metrics and ":" not in settings.metrics:
        raise StartupError(f"--metrics {settings.metrics!r}: expected an endpoint such as tcp:9101:interface=127.0.0.1")


class Assembly:
    """What makeService built, kept so that a reload can change it in place."""

    def __init__(self, options: Options, reactor: Any) -> None:
        from sockd.admission import Admission
        from sockd.daemon import SockdService
        from sockd.policies import ConnectionRegistry
        from sockd.qotd import QuotePicker
        from sockd.services import SMALL_SERVICE_PORTS, Context
        from sockd.udpguard import DatagramPolicy

        self.options = options
        self.reactor = reactor
        #: Set in a worker process: which sockets it inherited, and its share of the limits.
        self.worker: dict[str, Any] | None = json.loads(options["worker"]) if options["worker"] else None
        settings = self._share(options.settings)
        self.settings = settings
        self.context = Context(settings, reactor, QuotePicker(_quotes(settings)))
        self.admission = Admission(settings, reactor.seconds)
        self.registry = ConnectionRegistry()
        self.datagramPolicy = DatagramPolicy(settings, reactor.seconds, SMALL_SERVICE_PORTS)
        self.top = SockdService(reactor, self.registry, self.datagramPolicy, settings.grace)
        self.top.reload = self.reload
        self.listeners: dict[tuple[str, str], Any] = {}
        self.supervisor: Any = None
        if self.worker is not None:
            for name, description, fd in self.worker["listeners"]:
                self._add(name, description, inheritedFd=fd)
            self._addWorkerMetrics(self.worker["metrics"])
            return
        for name, description in options.active:
            self._add(name, description)
        if settings.workers > 1:
            from sockd.workers import Supervisor

            self.supervisor = Supervisor(reactor, settings.workers, self._workerSockets, options.rawArgs)
            self.supervisor.grace = settings.grace
            self.supervisor.setServiceParent(self.top)
        if settings.metrics:
            self._addMetrics(settings.metrics)

    def _share(self, settings: Settings) -> Settings:
        if self.worker is None:
            return settings
        from sockd.workers import shareLimits

        return shareLimits(settings, self.worker["count"])

    def _workerSockets(self) -> list[tuple[str, str, Any]]:
        """What workers inherit: every service listener, in a stable order."""
        return [(name, description, listener) for (name, description), listener in self.listeners.items()]

    def _add(self, name: str, description: str, inheritedFd: int | None = None) -> Any:
        from sockd.listeners import DatagramListener, StreamListener
        from sockd.policies import PolicyFactory
        from sockd.udpguard import GuardedDatagramProtocol

        service = BY_NAME[name]
        settings = self.settings
        if isDatagram(description):
            assert service.datagram is not None
            protocol = GuardedDatagramProtocol(service.datagram(self.context), self.datagramPolicy, name)
            listener = DatagramListener(self.reactor, name, description, protocol, inheritedFd=inheritedFd)
        else:
            transport = transportName(description)
            factory: Any = PolicyFactory(
                service.stream(self.context),
                service=name,
                transport=transport,
                admission=self.admission,
                registry=self.registry,
                clock=self.reactor,
                idleTimeout=settings.idle_timeout,
                handshakeTimeout=settings.tls_handshake_timeout if transport in ("ssl", "tls") else 0,
            )
            bindTo = description
            if transport == "haproxy":
                # Twisted's own haproxy: wrapper drops split headers (twisted#8287) and starts the service
                # before the real peer is known (twisted#12501); sockd's wrapper does neither.
                from sockd.proxyprotocol import ProxyProtocolFactory

                factory = ProxyProtocolFactory(factory, clock=self.reactor)
                bindTo = description.split(":", 1)[1]
            listener = StreamListener(self.reactor, name, bindTo, factory, transport=transport,
                                      inheritedFd=inheritedFd, unixMode=settings.unix_mode)
        self.listeners[(name, description)] = listener
        listener.setServiceParent(self.top)
        return listener

    def _named(self, key: tuple[str, str]) -> Any:
        try:
            return self.top.getServiceNamed(" ".join(key))
        except KeyError:
            return None

    def _addMetrics(self, description: str) -> None:
        from prometheus_client.twisted import MetricsResource
        from twisted.web.resource import Resource
        from twisted.web.server import Site

        from sockd.listeners import StreamListener
        from sockd.metrics import REGISTRY

        root = Resource()
        if self.supervisor is not None:
            from sockd.workers import AggregatedMetrics

            root.putChild(b"metrics", AggregatedMetrics(self.reactor, self.supervisor))
        else:
            root.putChild(b"metrics", MetricsResource(registry=REGISTRY))
        site = Site(root)
        site.noisy = False
        StreamListener(self.reactor, "metrics", description, site).setServiceParent(self.top)

    def _addWorkerMetrics(self, path: str) -> None:
        """A worker answers its parent's scrapes on a private Unix socket: the exposition, then close."""
        from prometheus_client import generate_latest

        from sockd.listeners import StreamListener
        from sockd.metrics import REGISTRY
        from sockd.oneshot import SpeakFirstFactory

        factory = SpeakFirstFactory(lambda: generate_latest(REGISTRY), self.reactor)
        StreamListener(self.reactor, "worker-metrics", f"unix:{path}:mode=600", factory,
                       announce=False).setServiceParent(self.top)

    def reload(self) -> None:
        """Re-read the configuration: new rules at once, listeners opened or closed, connections kept."""
        from twisted.logger import Logger

        from sockd import metrics

        log = Logger(namespace="sockd.reload")
        try:
            settings, active = self.options.resolve()
        except (StartupError, ConfigError) as e:
            metrics.RELOADS["failed"] += 1
            log.error("reload failed, keeping the running configuration: {why}", why=str(e))
            return
        settings = self._share(settings)
        self.settings = settings
        self.context.settings = settings
        self.context.quotes.quotes = _quotes(settings)
        self.admission.reconfigure(settings)
        self.datagramPolicy.reconfigure(settings)
        self.top.grace = settings.grace
        wanted = list(dict.fromkeys(active))
        if self.worker is not None:
            wanted = list(self.listeners)  # a worker serves what it inherited; the parent restarts it for more
        before = list(self.listeners)
        for key in [k for k in self.listeners if k not in wanted]:
            listener = self.listeners.pop(key)
            listener.disownServiceParent()
            log.info("reload: closed {service} {description}", service=key[0], description=key[1])
        opened = 0
        for key, listener in list(self.listeners.items()):
            self._refresh(key, listener)
        for key in wanted:
            if key in self.listeners:
                continue
            try:
                listener = self._add(*key)  # the running parent binds and starts it at once
            except StartupError as e:
                stray = self.listeners.pop(key, None) or self._named(key)
                if stray is not None and stray.parent is not None:
                    stray.disownServiceParent()
                log.error("reload: cannot open {what}: {why}", what=" ".join(key), why=str(e))
                continue
            if isinstance(getattr(listener, "boundPort", None), int):
                self.datagramPolicy.addOwnPort(listener.boundPort)
            opened += 1
        if self.supervisor is not None:
            if list(self.listeners) != before:
                log.info("reload: listeners changed: starting new workers on the new set")
                self.supervisor.restartAll()
            else:
                self.supervisor.signalAll(signal.SIGHUP)
        metrics.RELOADS["ok"] += 1
        log.info("reloaded {path}: {count} listeners ({opened} opened)", path=self.options["config"] or "options",
                 count=len(self.listeners), opened=opened)

    def _refresh(self, key: tuple[str, str], listener: Any) -> None:
        """Give a kept listener a service built from the new settings; open connections keep theirs."""
        name, description = key
        service = BY_NAME[name]
        if isDatagram(description):
            assert service.datagram is not None
            listener.protocol.replaceInner(service.datagram(self.context))
            return
        from sockd.policies import PolicyFactory

        policy = listener.factory
        while not isinstance(policy, PolicyFactory):
            policy = policy.wrappedFactory
        policy.wrappedFactory = service.stream(self.context)
        if policy.idleTimeout != self.settings.idle_timeout:
            policy.idleTimeout = self.settings.idle_timeout
            self.registry.rescheduleIdle()
        if policy.handshakeTimeout:
            policy.handshakeTimeout = self.settings.tls_handshake_timeout


def _quotes(settings: Settings) -> tuple[bytes, ...]:
    from sockd.qotd import builtinQuotes, loadQuotes

    return loadQuotes(settings.quotes) if settings.quotes else builtinQuotes()


def makeService(options: Options) -> Any:
    """Wire sockd: service table, policies and listeners, under one L{SockdService}."""
    installExceptHook()
    from twisted.internet import reactor

    return Assembly(options, reactor).top


for _service in SERVICES:
    setattr(Options, f"opt_{_service.name}", _serviceOption(_service.name))
for _field in FIELDS:
    if _field.metadata["repeat"]:
        setattr(Options, f"opt_{_field.name}", _listOption(_field.name))
