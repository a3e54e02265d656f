"""The C{--workers} parent's C{/metrics}: its own process and reloads, and its workers' counts added up.

Each worker answers its parent's scrapes on a private Unix socket (the
exposition, then close).  L{AggregatedMetrics} scrapes them all, bounded in
time, and L{WorkerTotals} adds their samples up so that a counter never goes
backwards when a worker dies or is replaced.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server

from sockd.interfaces import IStreamTransport

__all__ = ["SCRAPE_TIMEOUT", "AggregatedMetrics", "Scraped", "WorkerTotals", "sumExpositions"]

log = Logger(namespace="sockd.workers")


class Scraped(Protocol):
    """What the aggregation needs of the supervisor (L{sockd.runtime.workers.supervisor.Supervisor})."""

    #: The live workers, by index.
    workers: dict[int, Any]

    def metricsPath(self, index: int) -> str:
        """The Unix socket on which worker C{index} answers scrapes."""


#: Seconds a scrape of one worker may take, connect to close: a stuck worker must not hang /metrics.
SCRAPE_TIMEOUT = 5.0

#: Worker families the parent does not add up: its own reloads, build and readiness, the platform (the same for all),
#: and process figures that are no sum of anything (a start time, a limit).
_NOT_SUMMED = {"sockd_reloads", "sockd_build_info", "sockd_ready", "python_info", "process_start_time_seconds",
               "process_max_fds", "process_virtual_memory_max_bytes"}


class _Slurp(protocol.Protocol):
    """Read a worker's whole exposition; the worker closes when it has written it."""

    transport: IStreamTransport | None

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        # Cancelled at the scrape deadline: abort the connection (its connectionLost then finds done called).
        self.done: defer.Deferred[bytes] = defer.Deferred(lambda _: self._abort())

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if not self.done.called:
            self.done.callback(b"".join(self.chunks))


_SampleKey = tuple[str, tuple[tuple[str, str], ...]]


class WorkerTotals:
    """The workers' counts as the parent shows them: added up, and never going backwards.

    Each worker's latest exposition is kept.  A worker that does not answer a
    scrape counts with its last values; a worker that is gone (killed,
    restarted, replaced by a reload) has its last counter values carried into
    C{retired}, so a counter summed over workers never decreases for the life
    of the parent, as Prometheus requires.  (Gauges are not carried: a dead
    worker's open connections are gone.)  The workers' C{process_*} families
    are shown as C{sockd_workers_process_*}, beside the parent's own.
    """

    def __init__(self) -> None:
        #: family name -> (type, help), in first-seen order
        self.kinds: dict[str, tuple[str, str]] = {}
        self.latest: dict[object, dict[str, dict[_SampleKey, float]]] = {}
        self.retired: dict[str, dict[_SampleKey, float]] = {}

    def update(self, worker: object, text: str | None) -> None:
        """Record a worker's scrape; None (no answer) keeps its last values."""
        if text is None:
            return
        from prometheus_client.parser import text_string_to_metric_families

        found: dict[str, dict[_SampleKey, float]] = {}
        for family in text_string_to_metric_families(text):
            if family.name in _NOT_SUMMED:
                continue
            name = f"sockd_workers_{family.name}" if family.name.startswith("process_") else family.name
            self.kinds.setdefault(name, (family.type, family.documentation))
            samples = found.setdefault(name, {})
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue  # a creation time adds up to nothing
                sampleName = f"sockd_workers_{sample.name}" if name != family.name else sample.name
                samples[(sampleName, tuple(sorted(sample.labels.items())))] = sample.value
        self.latest[worker] = found

    def retire(self, live: set[object]) -> None:
        """Workers not in C{live} are gone: carry their counters into the retired totals."""
        for worker in [w for w in self.latest if w not in live]:
            for name, samples in self.latest.pop(worker).items():
                if self.kinds[name][0] != "counter":
                    continue
                carried = self.retired.setdefault(name, {})
                for key, value in samples.items():
                    carried[key] = carried.get(key, 0.0) + value

    def families(self) -> dict[str, dict[_SampleKey, float]]:
        """Per family, every sample summed over the live workers and the retired totals."""
        sums: dict[str, dict[_SampleKey, float]] = {}
        for source in [self.retired, *self.latest.values()]:
            for name, samples in source.items():
                total = sums.setdefault(name, {})
                for key, value in samples.items():
                    total[key] = total.get(key, 0.0) + value
        return sums

    def sums(self) -> dict[_SampleKey, float]:
        """Every summed sample by (sample name, labels): for tests and quick looks."""
        return {key: value for samples in self.families().values() for key, value in samples.items()}

    def collect(self) -> Any:
        """A prometheus_client collector: the summed families."""
        from prometheus_client.metrics_core import Metric

        for name, samples in self.families().items():
            kind, documentation = self.kinds[name]
            family = Metric(name, documentation, kind)
            for (sampleName, labels), value in sorted(samples.items()):
                family.add_sample(sampleName, dict(labels), value)
            yield family


def sumExpositions(texts: list[str]) -> bytes:
    """Add up several workers' Prometheus text expositions into one."""
    from prometheus_client import CollectorRegistry, generate_latest

    totals = WorkerTotals()
    for index, text in enumerate(texts):
        totals.update(index, text)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(totals)
    return generate_latest(registry)


class AggregatedMetrics(resource.Resource):
    """C{/metrics} of the parent: its own process and reloads, and every worker's counts added up."""

    isLeaf = True

    def __init__(self, reactor: Any, supervisor: Scraped, metrics: Any) -> None:
        super().__init__()
        self.reactor = reactor
        self.supervisor = supervisor
        self.totals = WorkerTotals()
        #: The parent's L{sockd.observe.metrics.Metrics}: it serves no connection itself, so its own
        #: per-listener families give way to the workers' sums.
        self.metrics = metrics
        metrics.collector.listeners = False
        metrics.registry.register(self.totals)

    def _scrape(self, index: int) -> defer.Deferred[str | None]:
        """One worker's exposition, or None if it does not answer within L{SCRAPE_TIMEOUT}, connect to close."""
        from twisted.internet.endpoints import UNIXClientEndpoint

        slurp = _Slurp()
        endpoint = UNIXClientEndpoint(self.reactor, self.supervisor.metricsPath(index), timeout=SCRAPE_TIMEOUT)
        factory = protocol.Factory.forProtocol(lambda: slurp)
        factory.noisy = False  # connectProtocol's factory logs "Starting factory" at info: twice per worker per scrape
        d: defer.Deferred[Any] = endpoint.connect(factory)
        d.addCallback(lambda _: slurp.done)
        d.addTimeout(SCRAPE_TIMEOUT, self.reactor)
        d.addCallback(lambda data: data.decode("utf-8", "replace"))
        d.addErrback(lambda _: None)  # restarting, or stuck: its last values stand in
        return d

    def render_GET(self, request: Any) -> Any:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        workers = dict(self.supervisor.workers)
        lost: list[Failure] = []
        request.notifyFinish().addErrback(lost.append)  # the scraper went away: nothing to answer
        d = defer.gatherResults([self._scrape(index) for index in sorted(workers)])

        def respond(texts: list[str | None]) -> None:
            for index, text in zip(sorted(workers), texts, strict=True):
                self.totals.update(workers[index], text)
            self.totals.retire(set(self.supervisor.workers.values()) | set(workers.values()))
            if lost:
                return
            request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode())
            request.write(generate_latest(self.metrics.registry))
            request.finish()

        def failed(f: Failure) -> None:
            log.failure("cannot aggregate worker metrics", f)
            if not lost:
                request.setResponseCode(500)
                request.finish()

        d.addCallback(respond).addErrback(failed)
        return server.NOT_DONE_YET
