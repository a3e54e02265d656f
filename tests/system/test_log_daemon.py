"""The message log of a real C{twistd sockd}: every line kept at SIGTERM, on rotation and on a crash,
a broken log does not stop sockd, C{--log-level}, journald priorities, C{--workers}, other destinations.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.daemon import TWISTD, connect, recvExactly, waitFor

ANSWER = b"I got your message"
MESSAGE_LINE = re.compile(r"^\S+ \[sockd\.messages#info\] Here is the message: (m\d+)$", re.M)


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def exchange(port: int, count: int, prefix: bytes = b"m") -> None:
    """Send C{count} messages on one connection, all at once, and read every answer."""
    with connect(("127.0.0.1", port)) as sock:
        sock.sendall(b"".join(b"%s%d\n" % (prefix, i) for i in range(count)))
        assert recvExactly(sock, len(ANSWER) * count) == ANSWER * count


def listeningPort(text: str, transport: str = "tcp") -> int | None:
    found = re.search(rf"ack listening on {transport} 127\.0\.0\.1:(\d+)", text)
    return int(found.group(1)) if found else None


def refuse(port: int) -> None:
    """Connect from 127.0.0.2 (denied): sockd logs a warning and closes."""
    try:
        with socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.2", 0)) as refused:
            refused.settimeout(5)
            refused.recv(1)
    except OSError:
        pass


def stopAndWait(proc: subprocess.Popen, timeout: float = 20.0) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout)


def test_sigterm_right_after_thousands_of_messages_loses_no_line(daemon):
    # 5000 messages at once is a flood by --log-burst's measure: lift the limit, this is about the flush.
    d = daemon("--ack", "tcp:0:interface=127.0.0.1", "--log-rate", "0")
    count = 5000
    exchange(d.address("ack")[1], count)
    assert d.stop() == 0
    assert MESSAGE_LINE.findall(d.log()) == [f"m{i}" for i in range(count)]
    assert d.log().rstrip("\n").endswith("Server Shut Down.")


def test_sigusr1_rotates_twistds_log_file_without_losing_or_splitting_lines(daemon):
    d = daemon("--ack", "tcp:0:interface=127.0.0.1")
    port = d.address("ack")[1]
    exchange(port, 300)
    os.kill(d.pid, signal.SIGUSR1)
    rotated = d.logPath.with_name(d.logPath.name + ".1")
    waitFor(lambda: rotated.exists(), "no rotated log file after SIGUSR1")
    exchange(port, 300, prefix=b"n")
    d.stop()
    before = rotated.read_text()
    assert MESSAGE_LINE.findall(before) == [f"m{i}" for i in range(300)] and before.endswith("\n")
    assert re.findall(r"Here is the message: (n\d+)$", d.log(), re.M) == [f"n{i}" for i in range(300)]


CRASH = """
import sys
from twisted.internet import reactor
from twisted.logger import globalLogBeginner
from sockd.observe.log.messages import MessageLog, MessageLogging
from sockd.observe.log.setup import makeSinkObserver

observer = makeSinkObserver(("file", sys.argv[1]), reactor)
globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)

def burst():
    log = MessageLog("ack", logging=MessageLogging(observer.sink))
    for i in range(int(sys.argv[2])):
        log.stream(b"m%d\\n" % i, None)
    reactor.crash()  # the loop ends at once: no shutdown triggers, the turn's flush never runs

reactor.callLater(0.01, burst)
reactor.run()
raise RuntimeError("crashed")  # and the process dies of an uncaught exception
"""


def test_lines_are_not_lost_when_the_reactor_loop_crashes(tmp_path):
    path = tmp_path / "crash.log"
    result = subprocess.run([sys.executable, "-c", CRASH, str(path), "3000"], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 1 and "RuntimeError: crashed" in result.stderr
    assert MESSAGE_LINE.findall(path.read_text()) == [f"m{i}" for i in range(3000)]


def test_stdout_whose_reader_is_gone_does_not_stop_sockd(tmp_path):
    stderr = tmp_path / "stderr"
    with open(stderr, "wb") as err:
        proc = subprocess.Popen([TWISTD, "-n", "--pidfile=", "sockd", "--ack", "tcp:0:interface=127.0.0.1"],
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=err)
    try:
        assert proc.stdout is not None
        seen = b""
        deadline = time.monotonic() + 15
        while listeningPort(seen.decode()) is None:
            assert time.monotonic() < deadline, seen
            seen += proc.stdout.readline()
        port = listeningPort(seen.decode())
        assert port is not None
        proc.stdout.close()  # the reader is gone: every later write to stdout is EPIPE
        for _ in range(20):
            exchange(port, 50)
        assert proc.poll() is None
    finally:
        code = stopAndWait(proc)
    complaints = stderr.read_text()
    assert code == 0, complaints
    assert complaints.count("sockd: cannot write the log") == 1, complaints
    assert "Traceback" not in complaints


def _runToFile(tmp_path: Path, args: list[str], env: dict[str, str], name: str) -> tuple[subprocess.Popen, Path]:
    out = tmp_path / name
    with open(out, "wb") as f:
        stat = os.fstat(f.fileno())
        env = {k: (v.format(dev=stat.st_dev, ino=stat.st_ino)) for k, v in env.items()}
        inherited = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
        proc = subprocess.Popen([TWISTD, "-n", "--pidfile=", "sockd", *args], cwd=tmp_path, stdout=f,
                                stderr=subprocess.DEVNULL, env={**inherited, **env})
    return proc, out


def test_journal_stream_lines_carry_priorities_and_others_do_not(tmp_path):
    runs = {}
    for name, env in (("journal", {"JOURNAL_STREAM": "{dev}:{ino}"}), ("plain", {}),
                      ("elsewhere", {"JOURNAL_STREAM": "1:2"})):
        port = freePort()
        proc, out = _runToFile(tmp_path, ["--ack", f"tcp:{port}:interface=127.0.0.1", "--deny", "127.0.0.2/32"],
                               env, name)
        try:
            waitFor(lambda out=out: "listening on tcp" in out.read_text(), f"{name}: sockd did not start")
            exchange(port, 1, prefix=b"journal")
            refuse(port)
            waitFor(lambda out=out: "refused 127.0.0.2" in out.read_text(), f"{name}: no refusal line")
        finally:
            stopAndWait(proc)
        runs[name] = out.read_text().splitlines()
    journal = runs["journal"]
    assert journal and all(re.match(r"<[2-7]>", line) for line in journal), journal
    assert any(line.startswith("<6>") and line.endswith("Here is the message: journal0") for line in journal)
    assert any(line.startswith("<4>") and "#warn] ack/tcp: refused 127.0.0.2" in line for line in journal), journal
    for name in ("plain", "elsewhere"):
        assert runs[name] and not any(line.startswith("<") for line in runs[name]), runs[name]
        assert any(line.endswith("Here is the message: journal0") for line in runs[name])


def test_log_level_warn_hides_info_lines(tmp_path):
    port = freePort()
    proc, out = _runToFile(tmp_path, ["--log-level", "warn", "--ack", f"tcp:{port}:interface=127.0.0.1",
                                      "--deny", "127.0.0.2/32"], {}, "warn.log")
    try:
        def answered() -> bool:
            try:
                exchange(port, 3)
                return True
            except OSError:
                return False

        waitFor(answered, "sockd --log-level warn does not answer")
        refuse(port)
        waitFor(lambda: "refused 127.0.0.2" in out.read_text(), "no warning line")
    finally:
        stopAndWait(proc)
    lines = out.read_text().splitlines()
    assert lines and all("#warn]" in line for line in lines), lines
    assert "Here is the message" not in out.read_text()


def test_json_logger_still_gets_structured_stream_message_records(tmp_path):
    port = freePort()
    proc = subprocess.Popen([TWISTD, "-n", "--pidfile=", "--logger", "sockd.logging.jsonLogger", "sockd",
                             "--ack", f"tcp:{port}:interface=127.0.0.1"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    try:
        records = []
        deadline = time.monotonic() + 15
        while not any(r.get("namespace") == "sockd.listeners" for r in records):
            assert time.monotonic() < deadline
            records.append(json.loads(proc.stdout.readline()))
        exchange(port, 2, prefix=b"json")
        messages = []
        while len(messages) < 2:
            record = json.loads(proc.stdout.readline())
            if record["namespace"] == "sockd.messages":
                messages.append(record)
    finally:
        stopAndWait(proc)
    assert [m["text"] for m in messages] == ["Here is the message: json0", "Here is the message: json1"]
    for m in messages:
        assert (m["service"], m["transport"], m["bytes"], m["level"]) == ("ack", "tcp", 6, "info")
        assert m["peer"].startswith("127.0.0.1:")


def test_syslog_is_left_to_twistd(tmp_path):
    port = freePort()
    proc = subprocess.Popen([TWISTD, "-n", "--pidfile=", "--syslog", "--prefix", "sockd-test", "sockd",
                             "--ack", f"tcp:{port}:interface=127.0.0.1"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    try:
        def answered() -> bool:
            try:
                exchange(port, 1)
                return True
            except OSError:
                return False

        waitFor(answered, "sockd --syslog does not answer")
    finally:
        stopAndWait(proc)
    assert proc.stdout is not None and proc.stdout.read() == b""  # sockd did not take stdout over from syslog
    assert not (tmp_path / "twistd.log").exists()


def test_workers_messages_reach_the_parents_log(daemon):
    d = daemon("--workers", "2", "--ack", "tcp:0:interface=127.0.0.1")
    port = d.address("ack")[1]
    waitFor(lambda: d.log().count("started worker") == 2, "two workers")

    def served() -> bool:
        try:
            exchange(port, 1, prefix=b"probe")
            return True
        except OSError:
            return False

    waitFor(served, "workers do not answer")
    for i in range(20):
        exchange(port, 1, prefix=b"w%d-" % i)
    waitFor(lambda: all(f"Here is the message: w{i}-0" in d.log() for i in range(20)), "messages in the parent's log")
    assert re.search(r"\[sockd\.messages#info\] Here is the message: w0-0$", d.log(), re.M)


def test_a_flood_keeps_the_log_files_under_their_ceiling_and_counts_what_it_held_back(daemon):
    """One client sending as fast as it can for a few seconds: its lines over --log-rate are summarised and
    counted, the log rotates at --log-max-size, and at most --log-max-files files of at most that size remain."""
    import urllib.request

    maxSize, maxFiles = 64 << 10, 3
    d = daemon("--ack", "tcp:0:interface=127.0.0.1", "--metrics", "tcp:0:interface=127.0.0.1",
               "--log-max-size", "64K", "--log-max-files", str(maxFiles), "--log-rate", "2000", "--log-burst", "2000",
               expect=2)
    port = d.address("ack")[1]
    metrics = d.address("metrics")
    deadline = time.monotonic() + 4.0
    sent = 0
    while time.monotonic() < deadline and sent < 5_000_000:  # bounded in time and in count
        exchange(port, 2000)
        sent += 2000
    with urllib.request.urlopen(f"http://{metrics[0]}:{metrics[1]}/metrics", timeout=5) as response:
        exposition = response.read().decode()
    suppressed = float(re.search(r"^sockd_log_suppressed_total (\S+)$", exposition, re.M).group(1))
    assert d.stop() in (0, -signal.SIGTERM)
    files = sorted(d.logPath.parent.glob(d.logPath.name + "*"))
    sizes = {p.name: p.stat().st_size for p in files}
    assert len(files) <= maxFiles and all(size <= maxSize for size in sizes.values()), sizes
    assert sum(sizes.values()) <= maxFiles * maxSize  # the worst case: log_max_files x log_max_size
    assert len(files) == maxFiles, sizes  # it did rotate, and deleted the oldest
    logged = sum(len(MESSAGE_LINE.findall(p.read_text())) for p in files)
    assert 0 < logged < sent and suppressed > 0
    summaries = re.findall(r"suppressed ([\d,]+) messages from 127\.0\.0\.1 in the last \d+ s$", d.log(), re.M)
    assert summaries, d.log()[-2000:]
    for path in files:  # whole lines only, every one in twistd's format
        text = path.read_text()
        assert text.endswith("\n") and all(re.match(r"\d{4}-\d\d-\d\dT", line) or line.startswith("\t")
                                           for line in text.splitlines()), path
