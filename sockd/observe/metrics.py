"""Prometheus metrics, per service and transport, counted as plain integers.

Counting happens on every read and write, so the hot path only adds to an
attribute of a L{ListenerStats}; L{SockdCollector} turns those into
Prometheus families when C{/metrics} is scraped.  (A C{prometheus_client}
Counter takes a lock on every C{inc()}: several of those per message cost
more than the rest of sockd's own work.)  With C{--workers}, the parent adds
up its workers' scrapes (L{sockd.observe.workermetrics}).

There is no global state: each daemon (each L{sockd.app.Assembly}) makes one
L{Metrics} and hands it to what counts, as the protocols are handed their
clock, so tests build their own.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from sockd import __version__

#: Why a stream connection may be refused, by what its listener can see of the peer.
ADDRESS_REFUSALS = ("access", "per-source", "rate", "max-connections")
#: A Unix-socket peer has no address: only the total limit applies.
UNIX_REFUSALS = ("max-connections",)
#: A PROXY protocol listener also refuses connections for their header (sockd.defences.proxyprotocol).
PROXY_REFUSALS = ("proxy-malformed", "proxy-timeout", "untrusted-proxy")
#: Why a datagram may be dropped unanswered (sockd.defences.datagram).
DROP_REASONS = ("access", "source-port", "rate", "budget")
RELOAD_RESULTS = ("ok", "failed")
#: What a listener with fault options may do on purpose (sockd.faults): shown only for such listeners.
STREAM_FAULTS = ("delay", "corrupt", "rate", "slice", "reset", "stall", "overflow")
DATAGRAM_FAULTS = ("delay", "loss", "duplicate", "reorder", "corrupt", "stall", "overflow", "budget")


class ListenerStats:
    """The counts of one service on one transport; shared by all its listeners.

    Every label value that can occur is there from the start, at 0, so a rate()
    over it works from the first scrape; none that cannot occur is ever shown.
    """

    __slots__ = ("service", "transport", "datagram", "accepted", "active", "bytesIn", "bytesOut", "answers",
                 "datagrams", "refused", "dropped", "timedOut", "faults")

    def __init__(self, service: str, transport: str) -> None:
        self.service = service
        self.transport = transport
        #: Datagram listeners have datagram families; stream listeners have connection families.
        self.datagram = transport == "udp"
        self.accepted = 0
        self.active = 0
        self.bytesIn = 0
        self.bytesOut = 0
        self.answers = 0
        self.datagrams = 0
        self.refused: defaultdict[str, int] = defaultdict(int)
        self.dropped: defaultdict[str, int] = defaultdict(int)
        self.timedOut: defaultdict[str, int] = defaultdict(int)
        #: Filled (at 0) only once a listener of this service has fault options: see L{expect}.
        self.faults: dict[str, int] = {}
        if self.datagram:
            for reason in DROP_REASONS:
                self.dropped[reason] = 0
            return
        for reason in UNIX_REFUSALS if transport == "unix" else ADDRESS_REFUSALS:
            self.refused[reason] = 0
        self.timedOut["idle"] = 0

    def expect(self, tls: bool = False, proxy: bool = False, faults: bool = False) -> None:
        """A listener of this service is TLS, reads PROXY headers, or has faults: its label values can occur now."""
        if faults:
            for fault in DATAGRAM_FAULTS if self.datagram else STREAM_FAULTS:
                self.faults.setdefault(fault, 0)
        if tls:
            self.timedOut.setdefault("tls-handshake", 0)
        if proxy:
            for reason in PROXY_REFUSALS:
                self.refused.setdefault(reason, 0)


_LABELS = ["service", "transport"]

#: name, help, kind, attribute, extra label (for the per-reason dictionaries), for stream / datagram listeners
_FAMILIES = (
    ("sockd_connections_accepted", "Stream connections accepted", "counter", "accepted", None, (True, False)),
    ("sockd_connections_refused", "Stream connections refused, by reason", "counter", "refused", "reason",
     (True, False)),
    ("sockd_connections_active", "Stream connections open now", "gauge", "active", None, (True, False)),
    ("sockd_connections_timed_out", "Stream connections closed by a timeout, by kind", "counter", "timedOut",
     "kind", (True, False)),
    ("sockd_received_bytes", "Bytes received", "counter", "bytesIn", None, (True, True)),
    ("sockd_sent_bytes", "Bytes sent", "counter", "bytesOut", None, (True, True)),
    ("sockd_answers", "Answers sent: stream writes and datagrams", "counter", "answers", None, (True, True)),
    ("sockd_datagrams_received", "Datagrams received", "counter", "datagrams", None, (False, True)),
    ("sockd_datagrams_dropped", "Datagrams dropped unanswered, by reason", "counter", "dropped", "reason",
     (False, True)),
    ("sockd_faults", "Faults applied on purpose (listen options such as delay= or loss=), by fault", "counter",
     "faults", "fault", (True, True)),
)


class Metrics:
    """One daemon's counts, and the Prometheus registry that reads them at scrape time."""

    def __init__(self, process: bool = True) -> None:
        self.stats: dict[tuple[str, str], ListenerStats] = {}
        self.reloads: defaultdict[str, int] = defaultdict(int, {result: 0 for result in RELOAD_RESULTS})
        #: Whether the daemon serves (what /readyz says), set by the wiring: C{sockd_ready}.
        self.ready: Callable[[], bool] | None = None
        #: Worker processes that ended unexpectedly and were started again, set by a --workers parent.
        self.workerRestarts: Callable[[], int] | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = SockdCollector(self)
        self.registry.register(self.collector)
        #: The message logging whose log counts are shown (L{sockd.observe.log.messages.MessageLogging}: its
        #: C{suppressed} and C{dropped}), or None; set by the assembly.
        self.logging: Any = None
        if process:
            # The client library's own: process_cpu_seconds_total, process_resident_memory_bytes, python_info...
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)

    def statsFor(self, service: str, transport: str) -> ListenerStats:
        """The counters of one service on one transport, created (at 0) at first use."""
        stats = self.stats.get((service, transport))
        if stats is None:
            stats = self.stats[(service, transport)] = ListenerStats(service, transport)
        return stats


class SockdCollector:
    """Reads a L{Metrics}' counts at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        #: Whether to show the per-listener families (a --workers parent shows its workers' sums instead).
        self.listeners = True

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("sockd_build_info", "sockd's version (always 1)", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        everything = list(self.metrics.stats.values()) if self.listeners else []
        for name, documentation, kind, attribute, extra, (stream, datagram) in _FAMILIES:
            if not self.listeners:
                break
            labels = _LABELS + ([extra] if extra else [])
            family: Metric
            if kind == "counter":
                family = CounterMetricFamily(name, documentation, labels=labels)
            else:
                family = GaugeMetricFamily(name, documentation, labels=labels)
            for stats in everything:
                if not (datagram if stats.datagram else stream):
                    continue
                value = getattr(stats, attribute)
                if extra:
                    for reason, count in sorted(value.items()):
                        family.add_metric([stats.service, stats.transport, reason], count)
                else:
                    family.add_metric([stats.service, stats.transport], value)
            yield family
        logging = self.metrics.logging
        if logging is not None and self.listeners:  # a --workers parent shows its workers' sums instead
            yield CounterMetricFamily("sockd_log_suppressed", "Message lines not logged: over --log-rate/--log-burst "
                                      "for their source (summarised in the log)", value=logging.suppressed)
            yield CounterMetricFamily("sockd_log_dropped", "Log lines lost: the log could not be written "
                                      "(disk full, closed pipe)", value=logging.dropped)
        reloads = CounterMetricFamily("sockd_reloads", "Configuration reloads, by result", labels=["result"])
        for result, count in sorted(self.metrics.reloads.items()):
            reloads.add_metric([result], count)
        yield reloads
        # What an operator pages on beyond the listeners' counts (contrib/prometheus): is it serving, do its
        # workers keep dying, (the log's own counts are above).
        if self.metrics.ready is not None:
            yield GaugeMetricFamily("sockd_ready", "1 while sockd serves (as /readyz says 200), 0 otherwise",
                                    value=1 if self.metrics.ready() else 0)
        if self.metrics.workerRestarts is not None:
            yield CounterMetricFamily("sockd_worker_restarts", "Worker processes that ended unexpectedly and "
                                      "were started again", value=self.metrics.workerRestarts())
