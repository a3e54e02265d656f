"""The assembly: sockd's service tree built from resolved options, and its reload.

L{Assembly} turns what L{sockd.tap.Options} resolved (settings and listen
descriptions) into one L{SockdService}: the service table gives each
service's factory and datagram protocol, L{sockd.defences} wraps them and
L{sockd.runtime} binds them.  It keeps one L{Running} record per listener
(its parsed description, the listener, and the policy it guards with), so a
reload (SIGHUP) can apply new limits, access lists and quotes, and open or
close listeners, without dropping established connections.
"""

from __future__ import annotations

import pwd
from dataclasses import dataclass, replace
from typing import Any, Protocol

from prometheus_client import generate_latest
from twisted.application.service import IService
from twisted.internet.interfaces import IProtocolFactory
from twisted.logger import Logger, LogLevel
from twisted.web.resource import Resource

from sockd.config.descriptions import ListenSpec
from sockd.config.file import ConfigError
from sockd.config.settings import Settings
from sockd.config.strict import RunAs, readingAs
from sockd.defences.admission import Admission
from sockd.defences.datagram import DatagramPolicy, GuardedDatagramProtocol
from sockd.defences.proxyprotocol import ProxyProtocolFactory
from sockd.defences.stream import ConnectionRegistry, PolicyFactory
from sockd.errors import StartupError
from sockd.faults.datagram import FaultDatagramProtocol
from sockd.faults.events import FaultEvents
from sockd.faults.stream import FaultFactory
from sockd.interfaces import IReactor
from sockd.observe.log.setup import plan
from sockd.observe.metrics import Metrics
from sockd.observe.throttle import ACCEPT_WARNINGS
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

__all__ = ["Assembly", "Running", "metricsRules", "metricsSite"]

log = Logger(namespace="sockd.reload")


@dataclass
class Running:
    """One running listener: what was asked for, what binds it, and the policy its service sits behind.

    A reload gives C{policy} the new service and rules; it never looks inside
    the factories the listener was handed (a PROXY protocol reader, TLS).
    """

    spec: ListenSpec
    listener: StreamListener | DatagramListener
    #: The stream policy (L{PolicyFactory}) or the datagram guard (L{GuardedDatagramProtocol}).
    policy: PolicyFactory | GuardedDatagramProtocol


class AssemblyOptions(Protocol):
    """What the assembly reads of L{sockd.tap.Options} (a layer above: described here, not imported)."""

    settings: Settings
    active: list[ListenSpec]
    runAs: RunAs
    rawArgs: list[str]

    def __getitem__(self, key: str) -> Any:
        """An option as parsed: usage.Options is a dict of them, whatever their types."""

    def resolve(self) -> tuple[Settings, list[ListenSpec], dict[str, Settings]]:
        """Settings, listeners and each service's own settings, read again (a reload)."""


def daemonIds(options: object) -> tuple[int | None, int | None]:
    """The user and group the daemon runs as once started: twistd's C{--uid/--gid}, worked out as twistd does.

    None where the daemon keeps its own (no C{--uid/--gid}, or a runner without them, such as C{twist}).
    """
    parent = getattr(options, "parent", None)
    if parent is None or not hasattr(parent, "get"):
        return None, None
    uid, gid = parent.get("uid"), parent.get("gid")
    if uid is not None and gid is None:
        gid = pwd.getpwuid(uid).pw_gid
    return uid, gid


class Assembly:
    """What makeService built, kept so that a reload can change it in place."""

    def __init__(self, options: AssemblyOptions, reactor: IReactor) -> None:
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
        #: How messages are logged (the sink of the fast path, or events), handed to every message log.
        pipe = self.worker.messages if self.worker is not None else None
        self.logging = plan(options, reactor, (pipe.fd, pipe.journal) if pipe is not None else None, settings=settings)
        self.metrics.logging = self.logging
        self.context = Context(settings, reactor, QuotePicker(_quotes(settings, options.runAs)), logging=self.logging)
        #: The daemon's admission and datagram rules: those of every service without a table of its own.
        self.admission = Admission(settings, reactor.seconds)
        ACCEPT_WARNINGS.summary.interval = settings.refusal_log_interval  # EMFILE and its kin, like refusals
        self.registry = ConnectionRegistry(reactor)
        #: Who may reach --metrics, and how many at once: few, so scrapers cannot take the services' descriptors.
        self.metricsAdmission = Admission(metricsRules(settings), reactor.seconds)
        self.datagramPolicy = DatagramPolicy(settings, reactor.seconds, SMALL_SERVICE_PORTS)
        #: Services with a table of their own in the file ([echo]): their settings, contexts and rules.
        self.serviceSettings: dict[str, Settings] = {}
        self.contexts: dict[str, Context] = {}
        self.admissions: dict[str, Admission] = {}
        self.datagramPolicies: dict[str, DatagramPolicy] = {}
        self._configureServices(getattr(options, "serviceSettings", {}))
        self.context.quotes.quotes = _quotes(self.settingsFor("qotd"), options.runAs)  # [qotd] quotes = ... is qotd's
        self.top = SockdService(reactor, self.registry, self.datagramPolicy, settings.grace)
        self.top.reload = self.reload
        self.top.logObserver = self.logging.observer
        #: One record per running listener, by its parsed description.
        self.running: dict[ListenSpec, Running] = {}
        #: Who owns the Unix socket files made here unless their description says (twistd's --uid/--gid).
        self.socketOwner = daemonIds(options)
        self.supervisor: Supervisor | None = None
        if self.worker is not None:
            for inherited in self.worker.listeners:
                self._add(ListenSpec.parse(inherited.name, inherited.description), inheritedFd=inherited.fd)
            self._addWorkerMetrics(self.worker.metrics)
            self.channel = WorkerChannel(self.worker)
            self.top.reload = self._reloadWorker
            return
        for spec in options.active:
            self._add(spec)
        self.metrics.ready = self.ready
        if settings.workers > 1:
            self.supervisor = Supervisor(reactor, settings.workers, self._workerSockets, options.rawArgs,
                                         messageSink=self.logging.sink)
            self.supervisor.grace = settings.grace
            self.supervisor.setServiceParent(self.top)
            supervisor = self.supervisor
            self.metrics.workerRestarts = lambda: supervisor.restarts
        if settings.metrics:
            self._addMetrics(settings.metrics)

    def _configureServices(self, serviceSettings: dict[str, Settings]) -> None:
        """Give each service with a table of its own its settings, context and rules (kept across reloads)."""
        self.serviceSettings = {name: self._share(own) for name, own in serviceSettings.items()}
        for name, own in self.serviceSettings.items():
            self.contexts[name] = Context(own, self.reactor, self.context.quotes, logging=self.logging)
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

    def _workerSockets(self) -> list[tuple[str, str, StreamListener | DatagramListener]]:
        """What workers inherit: every service listener, in a stable order."""
        return [(spec.service, str(spec), record.listener) for spec, record in self.running.items()]

    def _add(self, spec: ListenSpec, inheritedFd: int | None = None) -> Running:
        service = BY_NAME[spec.service]
        settings = self.settingsFor(spec.service)
        context = self.contexts.get(spec.service, self.context)
        listener: StreamListener | DatagramListener
        if spec.datagram is not None:
            assert service.datagram is not None
            guard = GuardedDatagramProtocol(service.datagram(context), self.datagramPolicies.get(
                spec.service, self.datagramPolicy), spec.service, metrics=self.metrics)
            guard.inner = self._impaired(spec, guard.inner, guard)
            listener = DatagramListener(self.reactor, spec, guard, inheritedFd=inheritedFd)
            record = Running(spec, listener, guard)
        else:
            policy = PolicyFactory(
                self._impaired(spec, service.stream(context)),
                serviceName=spec.service,
                transportName=spec.transport,  # tcp or unix, in metrics and logs alike
                admission=self.admissions.get(spec.service, self.admission),
                registry=self.registry,
                clock=self.reactor,
                idleTimeout=settings.idle_timeout,
                handshakeTimeout=settings.tls_handshake_timeout if spec.tls else 0,
                metrics=self.metrics,
                tls=spec.tls,
                claimedPeers=spec.proxy,
            )
            factory: IProtocolFactory = policy
            if spec.proxy:
                # Twisted's own haproxy: wrapper drops split headers (twisted#8287) and starts the service
                # before the real peer is known (twisted#12501); sockd's wrapper does neither.
                factory = ProxyProtocolFactory(policy, clock=self.reactor, trusted=settings.trusted_proxies,
                                               logInterval=settings.refusal_log_interval)
            listener = StreamListener(self.reactor, spec, factory, inheritedFd=inheritedFd,
                                      unixMode=settings.unix_mode, socketOwner=self.socketOwner)
            record = Running(spec, listener, policy)
        self.running[spec] = record
        listener.setServiceParent(self.top)
        return record

    def _impaired(self, spec: ListenSpec, service: Any, guard: GuardedDatagramProtocol | None = None) -> Any:
        """The service as the listener's fault options spoil it (L{sockd.faults}); without any, itself, unwrapped."""
        faults = spec.faults
        if faults is None:
            return service
        events = FaultEvents(faults, self.metrics.statsFor(spec.service, spec.transport), self.reactor.seconds,
                             str(spec))
        if guard is None:
            return FaultFactory(service, events, self.reactor)
        return FaultDatagramProtocol(service, events, self.reactor,
                                     lambda host, port: guard.policy.verdict(host, port))

    def _rekeyFaults(self, wanted: list[ListenSpec]) -> None:
        """A listener whose description changed only in its fault options is the same listener: keep its socket.

        Its record is filed under the new description; the refresh that follows gives it the new faults.
        """
        byIdentity = {spec.identity: spec for spec in wanted if spec not in self.running}
        if not byIdentity:
            return
        for old in list(self.running):
            new = byIdentity.get(old.identity)
            if new is None or new == old:
                continue
            record = self.running.pop(old)
            record.spec = new
            self.running[new] = record
            log.info("reload: {service} {description}: faults {faults}, for new connections and answers",
                     service=new.service, description=str(new.identity),
                     faults=f"now {new.faults.text}" if new.faults is not None else "off")

    def _named(self, spec: ListenSpec) -> IService | None:
        try:
            service: IService = self.top.getServiceNamed(f"{spec.service} {spec}")
            return service
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
        spec = ListenSpec.parse("metrics", description)
        site = metricsSite(root, spec.transport, self.metricsAdmission, self.reactor,
                           self.settings.metrics_idle_timeout)
        listener = StreamListener(self.reactor, spec, site)
        listener.setServiceParent(self.top)
        self.top.stopLast.append(listener)  # answers /readyz with 503 while the connections drain

    def ready(self) -> bool:
        """Whether sockd serves: every listener bound, every worker started, and not stopping."""
        top = self.top
        return bool(top.running and top.bound and (self.supervisor is None or self.supervisor.allReady()))

    def _addWorkerMetrics(self, path: str) -> None:
        """A worker answers its parent's scrapes on a private Unix socket: the exposition, then close."""
        factory = SpeakFirstFactory(lambda: generate_latest(self.metrics.registry), self.reactor)
        spec = ListenSpec.parse("worker-metrics", f"unix:{path}:mode=600")
        StreamListener(self.reactor, spec, factory, announce=False).setServiceParent(self.top)

    def reload(self) -> None:
        """Re-read the configuration: new rules at once, listeners opened or closed, connections kept."""
        try:
            settings, active, serviceSettings = self.options.resolve()
            quotes = _quotes(serviceSettings.get("qotd", settings), self.options.runAs)
        except (StartupError, ConfigError) as e:
            self.metrics.reloads["failed"] += 1
            log.error("reload failed, keeping the running configuration: {why}", why=str(e))
            return
        settings = self._share(settings)
        self.settings = settings
        self.context.settings = settings
        self.context.quotes.quotes = quotes
        self.admission.reconfigure(settings)
        ACCEPT_WARNINGS.summary.interval = settings.refusal_log_interval
        self.metricsAdmission.reconfigure(metricsRules(settings))
        self.datagramPolicy.reconfigure(settings)
        if self.logging.limiter is not None:
            self.logging.limiter.reconfigure(settings.log_rate, settings.log_burst)
        self._configureServices(serviceSettings)
        self.top.grace = settings.grace
        wanted = list(dict.fromkeys(active))
        adopted: dict[ListenSpec, int] = {}
        if self.channel is not None:  # a worker serves what its parent has open, which says what changed
            keys, adoptedKeys = self.channel.listeners([(spec.service, str(spec)) for spec in self.running])
            wanted = [ListenSpec.parse(*key) for key in keys]
            adopted = {ListenSpec.parse(*key): fd for key, fd in adoptedKeys.items()}
        else:
            self._rekeyFaults(wanted)  # (a worker is sent the listener again, and adopts it with its new faults)
        for spec in [k for k in self.running if k not in wanted or k in adopted]:
            self.running.pop(spec).listener.disownServiceParent()
            log.info("reload: closed {service} {description}", service=spec.service, description=str(spec))
        opened = 0
        for record in self.running.values():
            self._refresh(record)
        for spec in wanted:
            if spec in self.running:
                continue
            try:
                record = self._add(spec, inheritedFd=adopted.get(spec))  # bound (or adopted) and started at once
            except StartupError as e:
                stray = self.running.pop(spec, None)
                listener = stray.listener if stray is not None else self._named(spec)
                if listener is not None and listener.parent is not None:
                    listener.disownServiceParent()
                log.error("reload: cannot open {what}: {why}", what=f"{spec.service} {spec}", why=str(e))
                continue
            if isinstance(record.listener, DatagramListener):
                self.datagramPolicy.addOwnPort(record.listener.boundPort)
            opened += 1
        if self.supervisor is not None:
            self.supervisor.reload()
        self.metrics.reloads["ok"] += 1
        log.info("reloaded {path}: {count} listeners ({opened} opened)", path=self.options["config"] or "options",
                 count=len(self.running), opened=opened)

    def _reloadWorker(self) -> None:
        """A worker's reload: as any, then tell the parent it is done, even when the file did not parse."""
        assert self.channel is not None
        try:
            self.reload()
        finally:
            self.channel.reloaded()

    def _refresh(self, record: Running) -> None:
        """Give a kept listener a service built from the new settings; open connections keep theirs."""
        name = record.spec.service
        service = BY_NAME[name]
        settings = self.settingsFor(name)
        context = self.contexts.get(name, self.context)
        policy = record.policy
        if isinstance(policy, GuardedDatagramProtocol):
            assert service.datagram is not None
            policy.policy = self.datagramPolicies.get(name, self.datagramPolicy)
            policy.replaceInner(self._impaired(record.spec, service.datagram(context), policy))
            return
        listener = record.listener
        assert isinstance(listener, StreamListener)  # a stream policy's
        proxy = listener.factory
        if isinstance(proxy, ProxyProtocolFactory):
            proxy.trust(settings.trusted_proxies)
        policy.wrappedFactory = self._impaired(record.spec, service.stream(context))
        policy.admission = self.admissions.get(name, self.admission)  # open connections release where counted
        if policy.idleTimeout != settings.idle_timeout:
            policy.idleTimeout = settings.idle_timeout
            self.registry.rescheduleIdle()
        if policy.tls:  # by the listener's kind, not by the old value: 0 must be able to turn on again
            policy.handshakeTimeout = settings.tls_handshake_timeout


def metricsSite(root: Resource, transport: str, admission: Admission, clock: IReactor,
                idleTimeout: float) -> PolicyFactory:
    """The --metrics (and probes) site behind its own admission and idle timeout, counted apart from the services."""
    return PolicyFactory(
        QuietSite(root, reactor=clock),
        serviceName="metrics",
        transportName=transport,
        admission=admission,
        registry=ConnectionRegistry(clock),  # its own: shutdown drains the services' connections, not scrapes
        clock=clock,
        idleTimeout=idleTimeout,
        idleLogLevel=LogLevel.debug,  # a scraper keeps its connection between scrapes: every close is routine
    )


def metricsRules(settings: Settings) -> Settings:
    """The admission rules of the --metrics site: its own cap and allow list (else --allow's), --deny as everywhere.

    No per-address limits or rate: the cap is small, and a scraper reconnects at will.
    """
    return replace(settings, allow=list(settings.metrics_allow or settings.allow), deny=list(settings.deny),
                   exempt=[], max_connections=settings.metrics_max_connections, max_per_source=0, connection_rate=0)


def _quotes(settings: Settings, runAs: RunAs | None = None) -> tuple[bytes, ...]:
    """The quotes qotd serves, read with the rights of the user who serves them (see L{readingAs})."""
    if not settings.quotes:
        return builtinQuotes()
    with readingAs(runAs):
        return loadQuotes(settings.quotes)
