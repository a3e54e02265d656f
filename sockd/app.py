"""The assembly: sockd's service tree built from resolved options, and its reload.

L{Assembly} turns what L{sockd.tap.Options} resolved (settings and listen
descriptions) into one L{SockdService}: the service table gives each
service's factory and datagram protocol, L{sockd.defences} wraps them and
L{sockd.runtime} binds them.  It keeps what it built, so a reload (SIGHUP) can
apply new limits, access lists and quotes, and open or close listeners,
without dropping established connections.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import generate_latest
from twisted.logger import Logger
from twisted.web.resource import Resource

from sockd.config.descriptions import isDatagram, socketTransport, transportName
from sockd.config.file import ConfigError
from sockd.config.settings import Settings
from sockd.defences.admission import Admission
from sockd.defences.datagram import DatagramPolicy, GuardedDatagramProtocol
from sockd.defences.proxyprotocol import ProxyProtocolFactory
from sockd.defences.stream import ConnectionRegistry, PolicyFactory
from sockd.errors import StartupError
from sockd.interfaces import IDatagramListener
from sockd.observe.logsetup import workerMessageSink
from sockd.observe.metrics import TLS_TRANSPORTS, Metrics
from sockd.observe.workermetrics import AggregatedMetrics
from sockd.protocols.qotd import QuotePicker, builtinQuotes, loadQuotes
from sockd.protocols.speakfirst import SpeakFirstFactory
from sockd.runtime.daemon import SockdService
from sockd.runtime.health import Health, QuietSite, Readiness
from sockd.runtime.listeners import DatagramListener, StreamListener
from sockd.runtime.workers.child import WorkerChannel, shareLimits
from sockd.runtime.workers.spec import WorkerSpec
from sockd.runtime.workers.supervisor import Supervisor
from sockd.services import BY_NAME, SMALL_SERVICE_PORTS, Context

__all__ = ["Assembly"]

log = Logger(namespace="sockd.reload")


class Assembly:
    """What makeService built, kept so that a reload can change it in place."""

    def __init__(self, options: Any, reactor: Any) -> None:
        self.options = options
        self.reactor = reactor
        #: Set in a worker process: which sockets it inherited, and its share of the limits.
        self.worker: WorkerSpec | None = WorkerSpec.fromJSON(options["worker"]) if options["worker"] else None
        #: A worker's control channel: the listeners its parent opens and closes on a reload.
        self.channel: WorkerChannel | None = None
        settings = self._share(options.settings)
        self.settings = settings
        #: This daemon's counts and their registry, handed to everything that counts.
        self.metrics = Metrics()
        self.context = Context(settings, reactor, QuotePicker(_quotes(settings)))
        #: The daemon's admission and datagram rules: those of every service without a table of its own.
        self.admission = Admission(settings, reactor.seconds)
        self.registry = ConnectionRegistry(reactor)
        self.datagramPolicy = DatagramPolicy(settings, reactor.seconds, SMALL_SERVICE_PORTS)
        #: Services with a table of their own in the file ([echo]): their settings, contexts and rules.
        self.serviceSettings: dict[str, Settings] = {}
        self.contexts: dict[str, Context] = {}
        self.admissions: dict[str, Admission] = {}
        self.datagramPolicies: dict[str, DatagramPolicy] = {}
        self._configureServices(getattr(options, "serviceSettings", {}))
        self.context.quotes.quotes = _quotes(self.settingsFor("qotd"))  # [qotd] quotes = ... is qotd's
        self.top = SockdService(reactor, self.registry, self.datagramPolicy, settings.grace)
        self.top.reload = self.reload
        self.listeners: dict[tuple[str, str], Any] = {}
        self.supervisor: Any = None
        if self.worker is not None:
            if self.worker.messages is not None:  # the parent logs through its own sink: hand it finished lines
                workerMessageSink(self.worker.messages.fd, self.worker.messages.journal, reactor)
            for inherited in self.worker.listeners:
                self._add(inherited.name, inherited.description, inheritedFd=inherited.fd)
            self._addWorkerMetrics(self.worker.metrics)
            self.channel = WorkerChannel(self.worker)
            self.top.reload = self._reloadWorker
            return
        for name, description in options.active:
            self._add(name, description)
        if settings.workers > 1:
            self.supervisor = Supervisor(reactor, settings.workers, self._workerSockets, options.rawArgs)
            self.supervisor.grace = settings.grace
            self.supervisor.setServiceParent(self.top)
        if settings.metrics:
            self._addMetrics(settings.metrics)

    def _configureServices(self, serviceSettings: dict[str, Settings]) -> None:
        """Give each service with a table of its own its settings, context and rules (kept across reloads)."""
        self.serviceSettings = {name: self._share(own) for name, own in serviceSettings.items()}
        for name, own in self.serviceSettings.items():
            self.contexts[name] = Context(own, self.reactor, self.context.quotes)
            if name in self.admissions:
                self.admissions[name].reconfigure(own)
                self.datagramPolicies[name].reconfigure(own)
            else:
                self.admissions[name] = Admission(own, self.reactor.seconds, daemon=self.admission)
                self.datagramPolicies[name] = DatagramPolicy(own, self.reactor.seconds, (),
                                                             daemon=self.datagramPolicy)
        for name in [n for n in self.contexts if n not in self.serviceSettings]:
            # Its table is gone: back to the daemon's rules (open connections release where they were counted).
            del self.contexts[name], self.admissions[name], self.datagramPolicies[name]

    def settingsFor(self, name: str) -> Settings:
        """The settings one service runs with: its own table's, or the defaults."""
        return self.serviceSettings.get(name, self.settings)

    def _share(self, settings: Settings) -> Settings:
        if self.worker is None:
            return settings
        return shareLimits(settings, self.worker.count)

    def _workerSockets(self) -> list[tuple[str, str, Any]]:
        """What workers inherit: every service listener, in a stable order."""
        return [(name, description, listener) for (name, description), listener in self.listeners.items()]

    def _add(self, name: str, description: str, inheritedFd: int | None = None) -> Any:
        service = BY_NAME[name]
        settings = self.settingsFor(name)
        context = self.contexts.get(name, self.context)
        if isDatagram(description):
            assert service.datagram is not None
            protocol = GuardedDatagramProtocol(service.datagram(context), self.datagramPolicies.get(
                name, self.datagramPolicy), name, metrics=self.metrics)
            listener = DatagramListener(self.reactor, name, description, protocol, inheritedFd=inheritedFd)
        else:
            kind = transportName(description)
            tls = kind in TLS_TRANSPORTS
            factory: Any = PolicyFactory(
                service.stream(context),
                serviceName=name,
                transportName=socketTransport(description),  # tcp or unix, in metrics and logs alike
                admission=self.admissions.get(name, self.admission),
                registry=self.registry,
                clock=self.reactor,
                idleTimeout=settings.idle_timeout,
                handshakeTimeout=settings.tls_handshake_timeout if tls else 0,
                metrics=self.metrics,
                tls=tls,
            )
            transport = kind
            bindTo = description
            if transport == "haproxy":
                # Twisted's own haproxy: wrapper drops split headers (twisted#8287) and starts the service
                # before the real peer is known (twisted#12501); sockd's wrapper does neither.
                factory = ProxyProtocolFactory(factory, clock=self.reactor)
                bindTo = description.split(":", 1)[1]
            listener = StreamListener(self.reactor, name, bindTo, factory, transportName=transport,
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
        # prometheus_client.twisted imports the reactor: not at module level, or `twistd -r` breaks.
        from prometheus_client.twisted import MetricsResource

        root = Resource()
        if self.supervisor is not None:
            root.putChild(b"metrics", AggregatedMetrics(self.reactor, self.supervisor, self.metrics))
        else:
            root.putChild(b"metrics", MetricsResource(registry=self.metrics.registry))
        root.putChild(b"healthz", Health())
        root.putChild(b"readyz", Readiness(self.ready))
        listener = StreamListener(self.reactor, "metrics", description, QuietSite(root))
        listener.setServiceParent(self.top)
        self.top.stopLast.append(listener)  # answers /readyz with 503 while the connections drain

    def ready(self) -> bool:
        """Whether sockd serves: every listener bound, every worker started, and not stopping."""
        top = self.top
        return bool(top.running and top.bound and (self.supervisor is None or self.supervisor.allReady()))

    def _addWorkerMetrics(self, path: str) -> None:
        """A worker answers its parent's scrapes on a private Unix socket: the exposition, then close."""
        factory = SpeakFirstFactory(lambda: generate_latest(self.metrics.registry), self.reactor)
        StreamListener(self.reactor, "worker-metrics", f"unix:{path}:mode=600", factory,
                       announce=False).setServiceParent(self.top)

    def reload(self) -> None:
        """Re-read the configuration: new rules at once, listeners opened or closed, connections kept."""
        try:
            settings, active, serviceSettings = self.options.resolve()
            quotes = _quotes(serviceSettings.get("qotd", settings))
        except (StartupError, ConfigError) as e:
            self.metrics.reloads["failed"] += 1
            log.error("reload failed, keeping the running configuration: {why}", why=str(e))
            return
        settings = self._share(settings)
        self.settings = settings
        self.context.settings = settings
        self.context.quotes.quotes = quotes
        self.admission.reconfigure(settings)
        self.datagramPolicy.reconfigure(settings)
        self._configureServices(serviceSettings)
        self.top.grace = settings.grace
        wanted = list(dict.fromkeys(active))
        adopted: dict[tuple[str, str], int] = {}
        if self.channel is not None:  # a worker serves what its parent has open, which says what changed
            wanted, adopted = self.channel.listeners(list(self.listeners))
        for key in [k for k in self.listeners if k not in wanted or k in adopted]:
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
                listener = self._add(*key, inheritedFd=adopted.get(key))  # bound (or adopted) and started at once
            except StartupError as e:
                stray = self.listeners.pop(key, None) or self._named(key)
                if stray is not None and stray.parent is not None:
                    stray.disownServiceParent()
                log.error("reload: cannot open {what}: {why}", what=" ".join(key), why=str(e))
                continue
            if IDatagramListener.providedBy(listener):
                self.datagramPolicy.addOwnPort(listener.boundPort)
            opened += 1
        if self.supervisor is not None:
            self.supervisor.reload()
        self.metrics.reloads["ok"] += 1
        log.info("reloaded {path}: {count} listeners ({opened} opened)", path=self.options["config"] or "options",
                 count=len(self.listeners), opened=opened)

    def _reloadWorker(self) -> None:
        """A worker's reload: as any, then tell the parent it is done, even when the file did not parse."""
        assert self.channel is not None
        try:
            self.reload()
        finally:
            self.channel.reloaded()

    def _refresh(self, key: tuple[str, str], listener: Any) -> None:
        """Give a kept listener a service built from the new settings; open connections keep theirs."""
        name, description = key
        service = BY_NAME[name]
        settings = self.settingsFor(name)
        context = self.contexts.get(name, self.context)
        if isDatagram(description):
            assert service.datagram is not None
            listener.protocol.policy = self.datagramPolicies.get(name, self.datagramPolicy)
            listener.protocol.replaceInner(service.datagram(context))
            return
        policy = listener.factory
        while not isinstance(policy, PolicyFactory):
            policy = policy.wrappedFactory
        policy.wrappedFactory = service.stream(context)
        policy.admission = self.admissions.get(name, self.admission)  # open connections release where counted
        if policy.idleTimeout != settings.idle_timeout:
            policy.idleTimeout = settings.idle_timeout
            self.registry.rescheduleIdle()
        if policy.tls:  # by the listener's kind, not by the old value: 0 must be able to turn on again
            policy.handshakeTimeout = settings.tls_handshake_timeout


def _quotes(settings: Settings) -> tuple[bytes, ...]:
    return loadQuotes(settings.quotes) if settings.quotes else builtinQuotes()
