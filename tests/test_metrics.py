"""Prometheus metrics over HTTP, parsed with prometheus_client's own parser."""

from __future__ import annotations

import urllib.error
import urllib.request

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sockd import __version__
from sockd.observe.metrics import Metrics
from tests.daemon import connect, recvAll, recvExactly, udpExchange


def scrape(address: tuple[str, int]) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://{address[0]}:{address[1]}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_connections_refusals_bytes_and_datagrams(daemon):
    d = daemon(
        "--ack", "tcp:0:interface=127.0.0.1", "--echo", "udp:0:interface=127.0.0.1",
        "--metrics", "tcp:0:interface=127.0.0.1", "--exempt", "none", "--max-per-source", "1",
        "--udp-rate", "1", "--udp-burst", "1", expect=3,
    )
    metricsAddress = d.address("metrics", "tcp")
    ack = d.address("ack", "tcp")
    with connect(ack) as first:
        first.sendall(b"one\ntwo\n")
        assert recvExactly(first, 36) == b"I got your message" * 2
        with connect(ack) as second:  # over the per-source limit: closed at once
            assert recvAll(second) == b""
        samples = scrape(metricsAddress)
        assert value(samples, "sockd_connections_active", service="ack", transport="tcp") == 1
    tcp = {"service": "ack", "transport": "tcp"}
    assert value(samples, "sockd_connections_accepted_total", **tcp) == 1
    assert value(samples, "sockd_connections_refused_total", reason="per-source", **tcp) == 1
    assert value(samples, "sockd_received_bytes_total", **tcp) == 8
    assert value(samples, "sockd_sent_bytes_total", **tcp) == 36
    assert value(samples, "sockd_answers_total", **tcp) == 2  # one per ack message

    echo = d.address("echo", "udp")
    assert udpExchange(echo, b"ping") == b"ping"
    for _ in range(3):  # over the per-source answer rate: dropped
        try:
            udpExchange(echo, b"ping", timeout=0.2)
        except TimeoutError:
            pass
    samples = scrape(metricsAddress)
    udp = {"service": "echo", "transport": "udp"}
    assert value(samples, "sockd_datagrams_received_total", **udp) == 4
    assert value(samples, "sockd_answers_total", **udp) == 1
    assert value(samples, "sockd_datagrams_dropped_total", reason="rate", **udp) == 3


def families(metrics: Metrics) -> dict[str, list]:
    text = generate_latest(metrics.registry).decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def test_each_daemon_counts_in_its_own_registry():
    one, two = Metrics(process=False), Metrics(process=False)
    one.statsFor("ack", "tcp").accepted += 1
    labels = {"service": "ack", "transport": "tcp"}
    assert one.registry.get_sample_value("sockd_connections_accepted_total", labels) == 1
    assert two.registry.get_sample_value("sockd_connections_accepted_total", labels) is None


def test_names_units_build_info_and_process_collectors():
    metrics = Metrics()
    metrics.statsFor("echo", "tcp")
    found = families(metrics)
    assert found["sockd_build_info"][0].labels == {"version": __version__}
    assert "sockd_received_bytes" in found and "sockd_sent_bytes" in found
    assert not any(name.startswith("sockd_bytes_") for name in found)
    assert "process_cpu_seconds" in found and "process_resident_memory_bytes" in found and "python_info" in found


def test_series_that_can_occur_start_at_zero_and_no_others_exist():
    metrics = Metrics(process=False)
    for service, transport in (("ack", "tcp"), ("ack", "udp"), ("ack", "unix"), ("echo", "tcp"), ("qotd", "tcp")):
        metrics.statsFor(service, transport)
    metrics.statsFor("echo", "tcp").expect(tls=True)  # an ssl: or tls: listener of echo
    metrics.statsFor("qotd", "tcp").expect(proxy=True)  # a haproxy: listener of qotd
    found = families(metrics)

    def labelled(family: str, label: str, **match: str) -> set[str]:
        return {s.labels[label] for s in found[family] if s.labels.items() >= match.items()}

    assert labelled("sockd_connections_refused", "reason", service="ack", transport="tcp") == {
        "access", "per-source", "rate", "max-connections"}
    assert labelled("sockd_connections_refused", "reason", transport="unix") == {"max-connections"}
    assert {"proxy-malformed", "proxy-timeout"} <= labelled("sockd_connections_refused", "reason", service="qotd")
    assert labelled("sockd_connections_timed_out", "kind", service="ack", transport="tcp") == {"idle"}
    assert labelled("sockd_connections_timed_out", "kind", service="echo") == {"idle", "tls-handshake"}
    assert labelled("sockd_received_bytes", "transport") == {"tcp", "udp", "unix"}  # one name per transport
    assert labelled("sockd_datagrams_dropped", "reason") == {"access", "source-port", "rate", "budget"}
    assert labelled("sockd_reloads", "result") == {"ok", "failed"}
    assert all(s.value == 0 for samples in found.values() for s in samples if not s.name.endswith("_info"))
    # No stream series for a datagram listener, no datagram series for a stream one.
    assert "udp" not in labelled("sockd_connections_accepted", "transport")
    assert "udp" not in labelled("sockd_connections_active", "transport")
    assert labelled("sockd_datagrams_received", "transport") == {"udp"}


def test_daemon_figures_an_operator_pages_on(monkeypatch):
    """sockd_ready, sockd_worker_restarts_total, sockd_log_dropped_lines_total (contrib/prometheus alerts on them)."""
    from types import SimpleNamespace

    from sockd.observe.logstate import STATE

    metrics = Metrics(process=False)
    ready = [True]
    restarts = [0]
    assert metrics.registry.get_sample_value("sockd_ready") is None  # no wiring, no figure
    metrics.ready = lambda: ready[0]
    metrics.workerRestarts = lambda: restarts[0]
    monkeypatch.setattr(STATE, "sink", SimpleNamespace(dropped=7))
    assert metrics.registry.get_sample_value("sockd_ready") == 1
    assert metrics.registry.get_sample_value("sockd_worker_restarts_total") == 0
    assert metrics.registry.get_sample_value("sockd_log_dropped_lines_total") == 7
    ready[0], restarts[0] = False, 3
    assert metrics.registry.get_sample_value("sockd_ready") == 0
    assert metrics.registry.get_sample_value("sockd_worker_restarts_total") == 3
    monkeypatch.setattr(STATE, "sink", None)  # events, not a sink: nothing dropped
    assert metrics.registry.get_sample_value("sockd_log_dropped_lines_total") == 0


def get(address: tuple[str, int], path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{address[0]}:{address[1]}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_health_and_readiness_probes_and_quiet_scrapes(daemon):
    import signal
    import time

    d = daemon("--chargen", "tcp:0:interface=127.0.0.1", "--metrics", "tcp:0:interface=127.0.0.1", "--grace", "3",
               expect=2)
    metricsAddress = d.address("metrics", "tcp")
    assert get(metricsAddress, "/healthz") == (200, "ok\n")
    assert get(metricsAddress, "/readyz") == (200, "ready\n")
    assert value(scrape(metricsAddress), "sockd_ready") == 1
    # Probes and scrapes are not logged at info (twisted.web's access log would be, once per scrape).
    assert [line for line in d.log().splitlines()
            if ("/metrics" in line or "/readyz" in line) and "#debug]" not in line] == []

    # A chargen client that never reads: its answer cannot be flushed, so the drain lasts the grace period.
    with connect(d.address("chargen", "tcp")) as stuck:
        time.sleep(0.5)  # the buffers fill
        d.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert d.process.poll() is None, "stopped before the grace period"
        assert get(metricsAddress, "/readyz")[0] == 503
        assert value(scrape(metricsAddress), "sockd_ready") == 0
        assert get(metricsAddress, "/healthz") == (200, "ok\n")
        assert stuck.fileno() >= 0
    # The grace ran out: the drain is done (the stuck connection aborted), a clean stop.  (d.stop() would send a
    # second SIGTERM, which cuts a drain short and ends sockd by that signal.)
    assert d.process.wait(15) == 0
