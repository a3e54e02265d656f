"""Prometheus metrics over HTTP from a running C{twistd sockd}, parsed with prometheus_client's own parser.

The registry and the metrics site's limits are unit-tested in tests/unit/test_metrics.py.
"""

from __future__ import annotations

import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.daemon import connect, descriptorLimit, recvAll, recvExactly, udpExchange


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


def _ended(s, timeout: float) -> bool:
    """Whether sockd ends the connection within C{timeout} seconds, closed or reset, without a byte."""
    s.settimeout(timeout)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


def test_idle_metrics_connections_cannot_starve_the_services(tmp_path):
    """More idle connections to /metrics than sockd has descriptors: the excess is refused, ack still serves."""
    import socket

    import pytest

    from tests.daemon import Daemon, waitFor

    d = Daemon(["--ack", "tcp:0:interface=127.0.0.1", "--metrics", "tcp:0:interface=127.0.0.1",
                "--metrics-max-connections", "8", "--metrics-idle-timeout", "5"], tmp_path, expect=2,
               preexec=descriptorLimit(128))
    idle: list[socket.socket] = []
    try:
        address = d.address("metrics", "tcp")
        for _ in range(200):
            idle.append(connect(address))
        with connect(d.address("ack", "tcp")) as ack:  # the service accepts while they are held
            ack.sendall(b"still here\n")
            assert recvExactly(ack, 18) == b"I got your message"
        # The eight first are held; every other was closed by sockd at once, not left to use a descriptor ...
        assert sum(_ended(s, 5) for s in idle[8:]) == 192
        for s in idle[:8]:  # ... not by the idle timeout: the eight older ones are still open
            s.setblocking(False)
            with pytest.raises(BlockingIOError):
                s.recv(1)
        assert all(_ended(s, 15) for s in idle[:8])  # then closed (aborted) once idle for the timeout
        waitFor(lambda: "metrics/tcp: refused 127.0.0.1 (max-connections)" in d.log(), "the refusal",
                logPath=d.logPath)
        assert scrape(address)  # and it serves again
    finally:
        for s in idle:
            s.close()
        d.stop()


