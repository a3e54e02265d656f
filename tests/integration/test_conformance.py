"""Twisted's own reactor conformance suites, run against sockd's reactor and against Twisted's EPollReactor.

Every test that passes on EPollReactor must pass on sockd's reactor, unless it
is listed in tests/conformance/expected.txt (and docs/architecture.md) with the reason;
a listed test that starts passing must be taken off the list.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parents[1] / "conformance"
RUNNER = HERE / "run_reactor_suite.py"
MODULES = [f"twisted.internet.test.test_{name}" for name in ("tcp", "unix", "udp", "core", "time", "tls", "fdset")]
ID = re.compile(r"^twisted\.internet\.test\.(test_\w+)\.(\w+?)_(\w+Tests)\.(test_\w+)$")
KIND = re.compile(r"^\[(FAIL|ERROR|SKIPPED|EXPECTED FAILURE|UNEXPECTED SUCCESS)\]$")
SUMMARY = re.compile(r"^(PASSED|FAILED) \((.*)\)$")


def runSuite(reactorClass: str, tmp: Path) -> tuple[dict[str, set[str]], dict[str, int], str]:
    """Run the seven suites against one reactor class: test ids by outcome kind, the summary counts, the output."""
    result = subprocess.run([sys.executable, str(RUNNER), reactorClass, "--temp-directory", str(tmp / "_trial"),
                             *MODULES], capture_output=True, text=True, cwd=tmp, timeout=600)
    outcomes: dict[str, set[str]] = {}
    kind = None
    counts: dict[str, int] = {}
    for line in result.stdout.splitlines():
        if match := KIND.match(line):
            kind = match.group(1)
        elif (match := ID.match(line)) and kind is not None:
            module, builder, _, test = match.groups()
            outcomes.setdefault(kind, set()).add(f"{module}.{builder}.{test}")
        elif match := SUMMARY.match(line):
            counts = {k: int(v) for k, v in (part.split("=") for part in match.group(2).split(", "))}
    return outcomes, counts, result.stdout[-3000:]


def expectedFailures() -> dict[str, str]:
    listed = {}
    for line in (HERE / "expected.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            test, _, why = line.partition(" -- ")
            listed[test.strip()] = why.strip()
    return listed


@pytest.fixture(scope="module")
def stock(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, set[str]], dict[str, int], str]:
    return runSuite("twisted.internet.epollreactor.EPollReactor", tmp_path_factory.mktemp("stock"))


@pytest.fixture(scope="module")
def sockd(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, set[str]], dict[str, int], str]:
    return runSuite("sockd.core.reactor.SockdReactor", tmp_path_factory.mktemp("sockd"))


def test_every_test_passing_on_epoll_passes_on_sockds_reactor_or_is_listed(stock, sockd):
    stockOutcomes, stockCounts, stockTail = stock
    outcomes, counts, tail = sockd
    assert stockCounts.get("successes", 0) >= 250, stockTail
    notPassing = ("FAIL", "ERROR", "SKIPPED", "EXPECTED FAILURE", "UNEXPECTED SUCCESS")
    stockNot = set().union(*(stockOutcomes.get(k, set()) for k in notPassing))
    sockdNot = set().union(*(outcomes.get(k, set()) for k in notPassing))
    # A test skipped on sockd's reactor but passing on EPollReactor counts as a difference too.
    assert sockdNot - stockNot == set(expectedFailures()), tail
    assert sum(counts.values()) == sum(stockCounts.values()), (counts, stockCounts)
    # The pass count: EPollReactor's, less the listed differences, plus what passes only on sockd's reactor.
    passes = stockCounts.get("successes", 0) - len(expectedFailures()) + len(stockNot - sockdNot)
    assert counts.get("successes", 0) == passes, (counts, stockCounts)


def test_every_listed_difference_is_in_the_architecture_page():
    page = (Path(__file__).resolve().parents[2] / "docs" / "architecture.md").read_text()
    for test, why in expectedFailures().items():
        assert why, test
        assert test in page, f"{test} is not explained in docs/architecture.md"
