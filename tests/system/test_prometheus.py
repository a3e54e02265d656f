"""contrib/prometheus: the rules pass promtool and their own unit tests, use only what sockd exports,
and a real Prometheus scrapes a real sockd with them.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest
from twisted.internet.task import Clock

from sockd.observe.log.limit import MessageLimiter
from sockd.observe.log.messages import MessageLogging
from sockd.observe.metrics import Metrics
from tests.daemon import Daemon

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "contrib" / "prometheus"
RULES = PROMETHEUS_DIR / "sockd.rules.yml"
TESTS = PROMETHEUS_DIR / "tests.yml"
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")

needsPromtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian: prometheus)")


def _promtool(*args: str) -> subprocess.CompletedProcess:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120, cwd=PROMETHEUS_DIR)


@needsPromtool
def test_rules_pass_promtool_check() -> None:
    result = _promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr


@needsPromtool
def test_rules_pass_their_unit_tests() -> None:
    result = _promtool("test", "rules", TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


@needsPromtool
def test_scrape_config_example_is_valid() -> None:
    result = _promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def _alerts() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    tests = yaml.safe_load(TESTS.read_text())["tests"]
    cases = [case for test in tests for case in test.get("alert_rule_test", [])]
    for alert in _alerts():
        mine = [case for case in cases if case["alertname"] == alert["alert"]]
        assert any(case["exp_alerts"] for case in mine), f"{alert['alert']}: no test where it fires"
        assert any(not case["exp_alerts"] for case in mine), f"{alert['alert']}: no test where it stays quiet"
    assert {"SockdDown", "SockdNotReady", "SockdRefusingMostConnections", "SockdUdpDropsSpiking",
            "SockdWorkersRestartLoop", "SockdLogDroppingLines", "SockdReloadFailed"} <= {a["alert"] for a in _alerts()}


class _Sink:
    """Stands for sockd's log sink: what the log's counts read."""

    journal = False
    dropped = 0


def _exported() -> set[str]:
    """Every sample name sockd's /metrics can show: a daemon with a stream and a datagram listener, and workers."""
    metrics = Metrics(process=False)
    metrics.statsFor("ack", "tcp")
    metrics.statsFor("ack", "udp")
    metrics.ready = lambda: True
    metrics.workerRestarts = lambda: 0
    metrics.logging = MessageLogging(_Sink(), limiter=MessageLimiter(rate=1, burst=1, clock=Clock()))
    text = generate_latest(metrics.registry).decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_rules_use_only_metric_names_sockd_exports() -> None:
    exported = _exported() | {"up"}
    groups = yaml.safe_load(RULES.read_text())["groups"]
    recorded = {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}
    for group in groups:
        for rule in group["rules"]:
            for name in re.findall(r"\b(sockd_[a-z_]+|up)\b", rule["expr"]):
                assert name in exported, f"{rule.get('alert') or rule.get('record')}: {name} is not exported"
            for name in re.findall(r"\b(sockd:[a-z_:0-9]+)", rule["expr"]):
                assert name in recorded, name


# -- a real Prometheus scraping a real sockd ----------------------------------------------------------------------


def _freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _query(port: int, expr: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.load(response)
    except OSError:
        return []  # not listening yet
    assert body["status"] == "success", body
    return body["data"]["result"]


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed (Debian: prometheus)")
def test_prometheus_scrapes_sockd_and_evaluates_the_rules(daemon, tmp_path: Path) -> None:
    d: Daemon = daemon("--ack", "tcp:0:interface=127.0.0.1", "--metrics", "tcp:0:interface=127.0.0.1", expect=2)
    host, port = d.address("metrics", "tcp")
    shutil.copy(RULES, tmp_path / RULES.name)
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [RULES.name],
        "scrape_configs": [{"job_name": "sockd", "static_configs": [{"targets": [f"{host}:{port}"]}]}],
    }))
    for _attempt in range(3):  # the port picked may be taken by someone else before Prometheus binds it
        webPort = _freePort()
        with open(tmp_path / "prometheus.log", "wb") as log:
            server = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path}/data",
                                       f"--web.listen-address=127.0.0.1:{webPort}"], cwd=tmp_path,
                                      stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            found: list[dict] = []
            while time.monotonic() < deadline and server.poll() is None:
                found = _query(webPort, 'sockd_build_info{job="sockd"}')
                if found and _query(webPort, 'sockd:connections_accepted:rate5m{service="ack"}'):
                    break
                time.sleep(0.2)  # polling the API: the event is a scrape and a rule evaluation
            if server.poll() is not None and "address already in use" in (tmp_path / "prometheus.log").read_text():
                continue
            log_text = (tmp_path / "prometheus.log").read_text(errors="replace")
            assert found, f"no sockd series in Prometheus:\n{log_text[-3000:]}"
            assert found[0]["metric"]["instance"] == f"{host}:{port}"
            assert _query(webPort, 'up{job="sockd"} == 1'), log_text[-3000:]
            assert _query(webPort, 'sockd_ready{job="sockd"} == 1'), log_text[-3000:]
            assert _query(webPort, 'sockd:connections_accepted:rate5m{service="ack"}'), log_text[-3000:]
            with urllib.request.urlopen(f"http://127.0.0.1:{webPort}/api/v1/rules", timeout=5) as response:
                rules = json.load(response)["data"]["groups"]
            health = {rule["name"]: rule["health"] for group in rules for rule in group["rules"]}
            assert health and set(health.values()) <= {"ok", "unknown"}, health
            return
        finally:
            server.terminate()
            server.wait(30)
    pytest.fail("no free port for Prometheus in 3 attempts")
