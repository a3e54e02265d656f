"""Twisted's own reactor conformance suites, run against sockd's reactor and against Twisted's EPollReactor.

Every test that passes on EPollReactor must pass on sockd's reactor: there is
no list of exceptions.  docs/architecture.md gives the counts of both runs; the
test fails if they are not the counts measured.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parents[1] / "conformance"
RUNNER = HERE / "run_reactor_suite.py"
# newtls: startTLS with producers registered before and after it, on server connections too.
MODULES = [f"twisted.internet.test.test_{name}" for name in ("tcp", "unix", "udp", "core", "time", "tls", "newtls",
                                                             "fdset")]
ID = re.compile(r"^twisted\.internet\.test\.(test_\w+)\.(\w+?)_(\w+Tests)\.(test_\w+)$")
KIND = re.compile(r"^\[(FAIL|ERROR|SKIPPED|EXPECTED FAILURE|UNEXPECTED SUCCESS)\]$")
SUMMARY = re.compile(r"^(PASSED|FAILED) \((.*)\)$")


def runSuite(reactorClass: str, tmp: Path) -> tuple[dict[str, set[str]], dict[str, int], str]:
    """Run the suites against one reactor class: test ids by outcome kind, the summary counts, the output."""
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


@pytest.fixture(scope="module")
def stock(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, set[str]], dict[str, int], str]:
    return runSuite("twisted.internet.epollreactor.EPollReactor", tmp_path_factory.mktemp("stock"))


@pytest.fixture(scope="module")
def sockd(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, set[str]], dict[str, int], str]:
    return runSuite("sockd.core.reactor.SockdReactor", tmp_path_factory.mktemp("sockd"))


NOT_PASSING = ("FAIL", "ERROR", "SKIPPED", "EXPECTED FAILURE", "UNEXPECTED SUCCESS")


def test_every_test_passing_on_epoll_passes_on_sockds_reactor(stock, sockd):
    stockOutcomes, stockCounts, stockTail = stock
    outcomes, counts, tail = sockd
    assert stockCounts.get("successes", 0) >= 250, stockTail
    stockNot = set().union(*(stockOutcomes.get(k, set()) for k in NOT_PASSING))
    sockdNot = set().union(*(outcomes.get(k, set()) for k in NOT_PASSING))
    # A test skipped on sockd's reactor but passing on EPollReactor counts as a difference too.
    assert sockdNot - stockNot == set(), tail
    assert sum(counts.values()) == sum(stockCounts.values()), (counts, stockCounts)
    # The full pass count: all of EPollReactor's, plus what passes only on sockd's reactor.
    assert counts.get("successes", 0) == stockCounts["successes"] + len(stockNot - sockdNot), (counts, stockCounts)
    assert counts.get("failures", 0) == counts.get("errors", 0) == 0, tail


def _row(counts: dict[str, int]) -> tuple[int, int, int, int]:
    """A run's row of the architecture page's table: tests, passed, skipped, failed or errors."""
    return (sum(counts.values()), counts.get("successes", 0), counts.get("skips", 0),
            counts.get("failures", 0) + counts.get("errors", 0))


def test_the_architecture_page_gives_the_counts_measured(stock, sockd):
    page = (Path(__file__).resolve().parents[2] / "docs" / "architecture.md").read_text()
    for name, (_, counts, _) in (("Twisted's `EPollReactor`", stock), ("sockd's `SockdReactor`", sockd)):
        match = re.search(rf"^\| {re.escape(name)} \| (\d+) \| (\d+) \| (\d+)[^|]*\| (\d+) \|$", page, re.M)
        assert match, f"no row for {name} in docs/architecture.md"
        assert tuple(int(n) for n in match.groups()) == _row(counts), (name, counts)
