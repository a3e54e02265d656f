"""Prometheus metrics, per service and transport, in sockd's own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

REGISTRY = CollectorRegistry(auto_describe=True)

_LABELS = ("service", "transport")

connectionsAccepted = Counter(
    "sockd_connections_accepted", "Stream connections accepted", _LABELS, registry=REGISTRY)
connectionsRefused = Counter(
    "sockd_connections_refused", "Stream connections refused, by reason", _LABELS + ("reason",), registry=REGISTRY)
connectionsActive = Gauge(
    "sockd_connections_active", "Stream connections open now", _LABELS, registry=REGISTRY,
    multiprocess_mode="livesum")
connectionsTimedOut = Counter(
    "sockd_connections_timed_out", "Stream connections closed by a timeout, by kind", _LABELS + ("kind",),
    registry=REGISTRY)
bytesReceived = Counter("sockd_bytes_received", "Bytes received", _LABELS, registry=REGISTRY)
bytesSent = Counter("sockd_bytes_sent", "Bytes sent", _LABELS, registry=REGISTRY)
answers = Counter(
    "sockd_answers", "Answers sent: stream writes and datagrams", _LABELS, registry=REGISTRY)
datagramsReceived = Counter("sockd_datagrams_received", "Datagrams received", _LABELS, registry=REGISTRY)
datagramsDropped = Counter(
    "sockd_datagrams_dropped", "Datagrams dropped unanswered, by reason", _LABELS + ("reason",), registry=REGISTRY)
reloads = Counter("sockd_reloads", "Configuration reloads, by result", ("result",), registry=REGISTRY)
