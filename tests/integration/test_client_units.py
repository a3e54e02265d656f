"""The client wing's parts on their own: histogram, payloads, clock arithmetic, targets, and what it may import."""

from __future__ import annotations

import calendar
import random
import statistics
import subprocess
import sys
import time

import pytest

from sockd.client.clock import parseDaytime, rfc868ToUnix
from sockd.client.histogram import LINEAR, SUB_BITS, Histogram, bucketBounds, bucketOf
from sockd.client.payloads import CHARGEN_CYCLE, MIN_PROBE, loadRequest, makeProbe, parseProbe


def test_every_value_falls_inside_its_bucket_and_buckets_are_narrow() -> None:
    values = [0, 1, 255, 256, 257, 511, 512, 1000, 40_000, 10**6, 10**9, 123_456_789_012]
    values += [random.randrange(1, 10**11) for _ in range(2000)]
    for value in values:
        start, width = bucketBounds(bucketOf(value))
        assert start <= value < start + width, value
        assert width == 1 or width / start <= 1 / 128  # at most 0.8% wide
    assert (LINEAR, 1 << SUB_BITS) == (256, 128)  # the figures above, and the docs' "128 steps per power of two"
    assert [bucketOf(v) for v in (-5, 0, LINEAR - 1, LINEAR)] == [0, 0, LINEAR - 1, LINEAR]


def test_percentiles_are_within_the_bucket_error_and_the_rest_is_exact() -> None:
    rng = random.Random(11)
    samples = [int(rng.lognormvariate(11, 1)) for _ in range(20_000)]  # around 60 us, long tail
    h = Histogram()
    for s in samples:
        h.record(s)
    ordered = sorted(samples)
    for q in (0.5, 0.9, 0.99, 0.999):
        exact = ordered[max(0, int(q * len(ordered) + 0.999999) - 1)]
        assert h.percentile(q) == pytest.approx(exact, rel=0.005), q
    assert (h.low, h.high, h.count) == (ordered[0], ordered[-1], len(samples))
    assert h.mean() == pytest.approx(statistics.fmean(samples))
    assert h.mdev() == pytest.approx(statistics.pstdev(samples), rel=1e-6)  # ping's mdev is the population sd


def test_absorbed_counts_from_a_hot_loop_give_the_same_percentiles() -> None:
    samples = [1000 + 37 * i for i in range(5000)]
    recorded, counts = Histogram(), [0] * len(Histogram().counts)
    for s in samples:
        recorded.record(s)
        counts[bucketOf(s)] += 1
    absorbed = Histogram()
    absorbed.absorb(counts, sum(samples))
    for q in (0.5, 0.99):
        assert absorbed.percentile(q) == recorded.percentile(q)
    assert absorbed.mean() == recorded.mean() and absorbed.count == 5000


def test_an_empty_histogram_says_nothing() -> None:
    assert Histogram().summary() == {"min": None, "avg": None, "max": None, "mdev": None, "p50": None, "p90": None,
                                     "p99": None}


def test_probes_carry_sequence_and_time_and_end_in_their_only_newline() -> None:
    for size in (MIN_PROBE, 64, 255, 65507, 200_000):
        probe = makeProbe(1234, 987654321, size)
        assert len(probe) == size
        assert probe.count(b"\n") == 1 and probe.endswith(b"\n")  # one ack answer per probe
        assert all(32 <= b < 127 for b in probe[:-1])
        assert parseProbe(probe) == (1234, 987654321)
    assert parseProbe(b"Got your message\n") is None
    assert parseProbe(b"") is None


def test_load_requests_are_one_message_each() -> None:
    for size in (1, 6, 64, 255, 16384, 200_000):
        request = loadRequest(size)
        assert len(request) == size and request.count(b"\n") == 1 and request.endswith(b"\n")


def test_chargen_cycle_is_rfc_864() -> None:
    lines = CHARGEN_CYCLE.split(b"\r\n")[:-1]
    assert len(lines) == 95 and all(len(line) == 72 for line in lines)
    assert lines[0] == bytes(range(32, 104)) and lines[1] == bytes(range(33, 105))
    assert lines[94][:1] == b"~" and lines[94][1:] == bytes(range(32, 103))


def test_rfc868_counts_are_read_in_the_era_nearest_now() -> None:
    for when in ("1999-12-31", "2026-12-01", "2036-02-07", "2036-02-08", "2040-01-01"):
        unix = calendar.timegm(time.strptime(when, "%Y-%m-%d")) + 12345
        value = (unix + 2208988800) % 2**32
        assert rfc868ToUnix(value, near=unix + 100) == unix, when


@pytest.mark.parametrize("text, expected", [
    ("Tuesday, November 24, 2026 22:04:29-UTC\r\n", "2026-11-24 22:04:29"),  # sockd
    ("24 NOV 2026 22:04:29 UTC\r\n", "2026-11-24 22:04:29"),  # xinetd
    ("Tue, 24 Nov 2026 22:04:29 +0000", "2026-11-24 22:04:29"),  # RFC 2822
    ("Tue, 24 Nov 2026 23:04:29 +0100", "2026-11-24 22:04:29"),
])
def test_daytime_shapes_in_utc(text: str, expected: str) -> None:
    assert parseDaytime(text) == calendar.timegm(time.strptime(expected, "%Y-%m-%d %H:%M:%S"))


def test_daytime_in_ctime_shape_is_local_time() -> None:
    now = int(time.time())
    assert parseDaytime(time.ctime(now) + "\r\n") == now


@pytest.mark.parametrize("text", ["", "teatime", "Tuesday, Smarch 24, 2026 22:04:29-UTC", "99 NOV 2026 22:04:29 UTC"])
def test_daytime_that_is_no_time(text: str) -> None:
    assert parseDaytime(text) is None


def test_the_client_imports_neither_twisted_nor_the_daemon() -> None:
    """It must start fast and share nothing with the server it measures."""
    code = ("import sys, sockd.client; print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in"
            " ('twisted', 'zope', 'OpenSSL', 'prometheus_client') or (m.startswith('sockd.') and m != 'sockd.errors'"
            " and not m.startswith('sockd.client')))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


def test_the_client_documents_every_public_definition() -> None:
    """tests/unit/test_architecture.py checks this too; here it is the client wing's own promise, module by module."""
    import ast
    from pathlib import Path

    import sockd.client

    modules = sorted(Path(sockd.client.__file__).parent.glob("*.py"))
    assert len(modules) > 5
    for path in modules:
        tree = ast.parse(path.read_text())
        assert ast.get_docstring(tree), path
        missing = [node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))
                   and not node.name.startswith("_") and not ast.get_docstring(node)]
        assert missing == [], path


def test_a_stream_target_tries_the_next_address_while_refused_and_then_keeps_the_one_that_answered() -> None:
    """localhost may resolve to ::1 first with the server only on 127.0.0.1 (the one-shot client does the same)."""
    import socket

    from sockd.client.errors import ClientError, RefusedError
    from sockd.client.target import Target

    with socket.socket() as refusing, socket.socket() as listening:
        refusing.bind(("127.0.0.1", 0))  # bound, not listening: refused
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        target = Target("tcp", host="127.0.0.1", port=refusing.getsockname()[1])
        target.resolve()
        good = listening.getsockname()
        target.others = [(socket.AF_INET, good)]
        with target.connectStream(2.0) as sock:
            assert sock.getpeername() == good
        assert (target.sockaddr, target.others) == (good, [])
        target.sockaddr = refusing.getsockname()
        with pytest.raises(ClientError, match="connection refused") as refused:
            target.connectStream(2.0)  # nothing else left to try
        assert isinstance(refused.value, RefusedError)  # retrying is decided on the type, not the words


def test_ping_keeps_its_schedule_and_starts_afresh_only_when_behind() -> None:
    from sockd.client.ping import _nextDue

    assert _nextDue(10.0, 10.0003, 1.0) == 11.0  # a sleep's overshoot does not drift the schedule
    assert _nextDue(10.0, 10.9, 1.0) == 11.0  # late, but the next one is still ahead: on schedule
    assert _nextDue(10.0, 15.0, 1.0) == 16.0  # a 5 s reply: one interval from now, not four probes at once
    assert _nextDue(10.0, 10.0, 0.0) == 10.0  # --interval 0: at once


def test_a_failure_other_than_refused_does_not_try_the_next_address(tmp_path) -> None:
    """Only a refused connection moves on to the resolver's next address; the type says so, not the message."""
    import socket

    from sockd.client.errors import ClientError, RefusedError
    from sockd.client.target import Target

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        good = listening.getsockname()
        target = Target("unix", path=str(tmp_path / "nobody.sock"))
        target.resolve()
        target.others = [(socket.AF_INET, good)]
        with pytest.raises(ClientError, match="no such socket") as failed:
            target.connectStream(2.0)
        assert not isinstance(failed.value, RefusedError)
        assert target.others == [(socket.AF_INET, good)]  # not tried


def test_a_datagram_exchange_with_nothing_listening_is_one_line() -> None:
    import socket

    from sockd.client.errors import ClientError
    from sockd.client.target import Target

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed below: port unreachable
    target = Target("udp", host="127.0.0.1", port=port)
    target.resolve()
    with pytest.raises(ClientError, match=f"nothing is listening at 127.0.0.1:{port}"):
        target.datagramExchange(b"anyone?\n", 2.0)


def test_every_client_error_has_the_daemons_exit_status() -> None:
    from sockd.client.errors import ClientError, FatalError, RefusedError, UsageError
    from sockd.errors import EX_RUNTIME, EX_USAGE

    assert (ClientError.exitStatus, UsageError.exitStatus) == (EX_RUNTIME, EX_USAGE)
    assert FatalError.exitStatus == RefusedError.exitStatus == EX_RUNTIME
