"""Prometheus metrics: the registry's series, and the metrics site's own limits, parsed with prometheus_client.

Scrapes of a running daemon over HTTP are in tests/system/test_metrics_daemon.py.
"""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sockd import __version__
from sockd.observe.metrics import Metrics


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


def test_daemon_figures_an_operator_pages_on():
    """sockd_ready and sockd_worker_restarts_total (contrib/prometheus alerts on them; the log's counts: below)."""
    metrics = Metrics(process=False)
    ready = [True]
    restarts = [0]
    assert metrics.registry.get_sample_value("sockd_ready") is None  # no wiring, no figure
    metrics.ready = lambda: ready[0]
    metrics.workerRestarts = lambda: restarts[0]
    assert metrics.registry.get_sample_value("sockd_ready") == 1
    assert metrics.registry.get_sample_value("sockd_worker_restarts_total") == 0
    ready[0], restarts[0] = False, 3
    assert metrics.registry.get_sample_value("sockd_ready") == 0
    assert metrics.registry.get_sample_value("sockd_worker_restarts_total") == 3


# ---------------------------------------------------------------------------------------------------------------
# The metrics site's own limits: a cap, an access list and an idle timeout.


def _metricsStack(**values):
    from twisted.internet.task import Clock
    from twisted.web.resource import Resource

    from sockd.app import metricsRules, metricsSite
    from sockd.config.settings import Settings
    from sockd.defences.admission import Admission
    from sockd.runtime.health import Health

    settings = Settings()
    for name, setting in values.items():
        setattr(settings, name, setting)
    clock = Clock()
    root = Resource()
    root.putChild(b"healthz", Health())
    admission = Admission(metricsRules(settings), clock.seconds)
    return clock, admission, metricsSite(root, "tcp", admission, clock, settings.metrics_idle_timeout)


def _open(site, host="127.0.0.1"):
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    peer = IPv4Address("TCP", host, 40000)
    protocol = site.buildProtocol(peer)
    if protocol is None:
        return None, None
    transport = StringTransport(peerAddress=peer, hostAddress=IPv4Address("TCP", "127.0.0.1", 9101))
    protocol.makeConnection(transport)
    return protocol, transport


def test_metrics_site_caps_connections_and_times_out_idle_ones():
    from twisted.python.failure import Failure

    clock, admission, site = _metricsStack(metrics_max_connections=3, metrics_idle_timeout=10.0)
    opened = [_open(site) for _ in range(3)]
    assert _open(site) == (None, None)  # past the cap: closed unanswered
    protocol, transport = opened[0]
    protocol.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200") and transport.value().endswith(b"ok\n")
    clock.advance(9.5)
    assert not any(t.disconnecting or t.disconnected for _, t in opened)
    clock.advance(0.5)  # ten seconds without a byte: every one is closed
    assert all(t.disconnected for _, t in opened)
    for p, _ in opened:
        p.connectionLost(Failure(ConnectionError()))
    assert admission.total == 0 and _open(site)[0] is not None


def test_metrics_site_honours_the_access_lists():
    _, _, site = _metricsStack(allow=["10.0.0.0/8"], deny=["10.9.0.0/16"])
    assert _open(site, "10.1.2.3")[0] is not None
    assert _open(site, "10.9.2.3")[0] is None and _open(site, "192.0.2.1")[0] is None
    _, _, site = _metricsStack(allow=["10.0.0.0/8"], metrics_allow=["192.0.2.0/24"], deny=["192.0.2.9"])
    assert _open(site, "192.0.2.1")[0] is not None  # its own list replaces --allow for it ...
    assert _open(site, "10.1.2.3")[0] is None
    assert _open(site, "192.0.2.9")[0] is None  # ... and --deny still applies


def test_log_ceiling_counts_are_exported():
    from twisted.internet import task

    from sockd.observe.log.limit import MessageLimiter
    from sockd.observe.log.messages import MessageLogging

    class Sink:
        journal = False
        dropped = 7

    limiter = MessageLimiter(rate=1, burst=1, clock=task.Clock())
    for _ in range(5):
        limiter.allow("192.0.2.1")
    metrics = Metrics(process=False)
    assert b"sockd_log_" not in generate_latest(metrics.registry)  # no message logging: no such series
    metrics.logging = MessageLogging(Sink(), limiter=limiter)  # type: ignore[arg-type]
    samples = {s.name: s.value for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())
               for s in f.samples}
    assert samples["sockd_log_suppressed_total"] == 4 and samples["sockd_log_dropped_total"] == 7
