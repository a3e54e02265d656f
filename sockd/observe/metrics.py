"""Prometheus metrics, per service and transport, counted as plain integers.

Counting happens on every read and write, so the hot path only adds to an
attribute of a L{ListenerStats}; L{SockdCollector} turns those into
Prometheus families when C{/metrics} is scraped.  (A C{prometheus_client}
Counter takes a lock on every C{inc()}: several of those per message cost
more than the rest of sockd's own work.)  With C{--workers}, the parent adds
up its workers' scrapes (L{sockd.runtime.workers}).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric


class ListenerStats:
    """The counts of one service on one transport; shared by all its listeners."""

    __slots__ = ("service", "transport", "accepted", "active", "bytesIn", "bytesOut", "answers", "datagrams",
                 "refused", "dropped", "timedOut")

    def __init__(self, service: str, transport: str) -> None:
        self.service = service
        self.transport = transport
        self.accepted = 0
        self.active = 0
        self.bytesIn = 0
        self.bytesOut = 0
        self.answers = 0
        self.datagrams = 0
        self.refused: defaultdict[str, int] = defaultdict(int)
        self.dropped: defaultdict[str, int] = defaultdict(int)
        self.timedOut: defaultdict[str, int] = defaultdict(int)


STATS: dict[tuple[str, str], ListenerStats] = {}
RELOADS: defaultdict[str, int] = defaultdict(int)


def statsFor(service: str, transport: str) -> ListenerStats:
    """The counters of one service on one transport, created at first use."""
    stats = STATS.get((service, transport))
    if stats is None:
        stats = STATS[(service, transport)] = ListenerStats(service, transport)
    return stats


_LABELS = ["service", "transport"]

#: name, help, kind, attribute, extra label (for the per-reason dictionaries)
_FAMILIES = (
    ("sockd_connections_accepted", "Stream connections accepted", "counter", "accepted", None),
    ("sockd_connections_refused", "Stream connections refused, by reason", "counter", "refused", "reason"),
    ("sockd_connections_active", "Stream connections open now", "gauge", "active", None),
    ("sockd_connections_timed_out", "Stream connections closed by a timeout, by kind", "counter", "timedOut", "kind"),
    ("sockd_bytes_received", "Bytes received", "counter", "bytesIn", None),
    ("sockd_bytes_sent", "Bytes sent", "counter", "bytesOut", None),
    ("sockd_answers", "Answers sent: stream writes and datagrams", "counter", "answers", None),
    ("sockd_datagrams_received", "Datagrams received", "counter", "datagrams", None),
    ("sockd_datagrams_dropped", "Datagrams dropped unanswered, by reason", "counter", "dropped", "reason"),
)


class SockdCollector:
    """Reads L{STATS} at scrape time."""

    def collect(self) -> Iterator[Metric]:
        for name, documentation, kind, attribute, extra in _FAMILIES:
            labels = _LABELS + ([extra] if extra else [])
            family: Metric
            if kind == "counter":
                family = CounterMetricFamily(name, documentation, labels=labels)
            else:
                family = GaugeMetricFamily(name, documentation, labels=labels)
            for stats in list(STATS.values()):
                value = getattr(stats, attribute)
                if extra:
                    for reason, count in sorted(value.items()):
                        family.add_metric([stats.service, stats.transport, reason], count)
                else:
                    family.add_metric([stats.service, stats.transport], value)
            yield family
        reloads = CounterMetricFamily("sockd_reloads", "Configuration reloads, by result", labels=["result"])
        for result, count in sorted(RELOADS.items()):
            reloads.add_metric([result], count)
        yield reloads


REGISTRY = CollectorRegistry(auto_describe=False)
REGISTRY.register(SockdCollector())
