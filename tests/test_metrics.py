"""Prometheus metrics over HTTP, parsed with prometheus_client's own parser."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

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
    assert value(samples, "sockd_bytes_received_total", **tcp) == 8
    assert value(samples, "sockd_bytes_sent_total", **tcp) == 36
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
