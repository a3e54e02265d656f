"""The --workers parent's /metrics in-process: counters that never go backwards, bounded scrapes, gone scrapers.

A C{MemoryReactorClock} keeps time and records the parent's connections to its
workers' metrics sockets; each test plays the workers' side by hand.
"""

from __future__ import annotations

import gc
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.web.server import Site

from sockd.observe.metrics import Metrics
from sockd.observe.workermetrics import SCRAPE_TIMEOUT, AggregatedMetrics, WorkerTotals


def exposition(accepted: int, active: int = 0, cpu: float = 1.0) -> str:
    return (
        "# TYPE sockd_connections_accepted_total counter\n"
        f'sockd_connections_accepted_total{{service="ack",transport="tcp"}} {accepted}\n'
        "# TYPE sockd_connections_active gauge\n"
        f'sockd_connections_active{{service="ack",transport="tcp"}} {active}\n'
        "# TYPE process_cpu_seconds_total counter\n"
        f"process_cpu_seconds_total {cpu}\n"
        "# TYPE process_start_time_seconds gauge\n"
        "process_start_time_seconds 1.7e9\n"
        "# TYPE sockd_reloads_total counter\n"
        'sockd_reloads_total{result="ok"} 1\n'
    )


def samples(metrics: Metrics) -> dict[tuple[str, tuple], float]:
    from prometheus_client import generate_latest

    text = generate_latest(metrics.registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


ACCEPTED = ("sockd_connections_accepted_total", (("service", "ack"), ("transport", "tcp")))
ACTIVE = ("sockd_connections_active", (("service", "ack"), ("transport", "tcp")))


def test_a_dead_workers_counts_are_carried_so_counters_never_go_backwards():
    totals = WorkerTotals()
    one, two, replacement = object(), object(), object()
    totals.update(one, exposition(5, active=2))
    totals.update(two, exposition(3, active=1))
    assert totals.sums()[ACCEPTED] == 8 and totals.sums()[ACTIVE] == 3
    totals.retire({two})  # `one` was killed; `replacement` starts from zero
    totals.update(replacement, exposition(0))
    totals.update(two, exposition(4, active=1))
    sums = totals.sums()
    assert sums[ACCEPTED] == 5 + 0 + 4
    assert sums[ACTIVE] == 1  # a gauge is not carried: the dead worker's connections are gone
    assert sums[("sockd_workers_process_cpu_seconds_total", ())] == 3.0  # counters of the process too
    assert ("sockd_workers_process_start_time_seconds", ()) not in sums  # not a sum of anything
    assert not any(name.startswith("sockd_reloads") for name, _ in sums)  # the parent counts its own


def test_a_worker_that_does_not_answer_counts_with_its_last_values():
    totals = WorkerTotals()
    worker = object()
    totals.update(worker, exposition(7))
    totals.update(worker, None)
    assert totals.sums()[ACCEPTED] == 7


class Parent:
    """An AggregatedMetrics over pretend workers, served by a real Site on a StringTransport."""

    def __init__(self, workers: int = 2) -> None:
        self.reactor = MemoryReactorClock()
        self.supervisor: Any = type("S", (), {})()
        self.supervisor.workers = {i: object() for i in range(workers)}
        self.supervisor.metricsPath = lambda index: f"/nonexistent/worker-{index}.sock"
        self.metrics = Metrics(process=False)
        self.resource = AggregatedMetrics(self.reactor, self.supervisor, self.metrics)
        self.site = Site(self.resource)

    def get(self) -> tuple[Any, StringTransport]:
        channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        return channel, transport

    def answer(self, index: int, text: str) -> None:
        """Worker C{index} answers the parent's connection with its exposition, then closes."""
        factory = [c for c in self.reactor.unixClients if c[0].endswith(f"worker-{index}.sock")][-1][1]
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(text.encode())
        protocol.connectionLost(Failure(ConnectionDone()))


def test_a_scrape_does_not_hang_on_a_worker_that_accepts_but_never_answers():
    parent = Parent()
    _, transport = parent.get()
    parent.answer(0, exposition(2))
    factory = [c for c in parent.reactor.unixClients if c[0].endswith("worker-1.sock")][-1][1]
    silent = factory.buildProtocol(None)
    silent.makeConnection(StringTransport())  # connected, and then nothing
    assert transport.value() == b""
    parent.reactor.advance(SCRAPE_TIMEOUT + 0.1)
    response = transport.value().decode()
    assert response.startswith("HTTP/1.1 200")
    assert 'sockd_connections_accepted_total{service="ack",transport="tcp"} 2.0' in response


def test_a_scrape_does_not_hang_on_a_worker_that_never_accepts():
    parent = Parent()
    _, transport = parent.get()
    parent.reactor.advance(SCRAPE_TIMEOUT + 0.1)
    assert transport.value().startswith(b"HTTP/1.1 200")


def test_a_scraper_that_disconnects_first_is_no_error():
    parent = Parent(workers=1)
    with capturedLogs() as events:
        channel, transport = parent.get()
        channel.connectionLost(Failure(ConnectionDone()))
        parent.answer(0, exposition(2))
        parent.reactor.advance(SCRAPE_TIMEOUT + 0.1)
        gc.collect()  # an error left in a Deferred is logged when the Deferred is collected
    failures = [e for e in events if "log_failure" in e or e.get("log_level").name in ("error", "critical")]
    assert failures == []
