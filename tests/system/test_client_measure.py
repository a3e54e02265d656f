"""sockd-client's measuring modes (ping, load, clock), run as the installed command against real servers.

Against sockd over TCP, UDP, Unix and TLS, against socat (a server nobody here
wrote), and against small servers in this file that misbehave on purpose: a UDP
relay that drops every k-th datagram (the loss reported must be exactly what it
dropped), a UDP echo that duplicates, reorders and corrupts, a TCP echo that
answers one byte at a time.  Load runs only on loopback and last about a second.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.daemon import BIN, Daemon, withStderrOnATerminal

CLIENT = str(BIN / "sockd-client")
HAVE_OPENSSL = shutil.which("openssl") is not None
HAVE_SOCAT = shutil.which("socat") is not None

PING_KEYS = {"mode", "target", "transport", "expect", "size", "count", "interval_s", "timeout_s", "sent", "received",
             "lost", "loss_percent", "corrupt", "duplicates", "reordered", "late", "errors", "time_s", "interrupted",
             "connect_ms", "rtt_ms"}
RTT_KEYS = {"min", "avg", "max", "mdev", "p50", "p90", "p99"}
LOAD_KEYS = {"mode", "target", "transport", "pattern", "size", "concurrency", "duration_s", "warmup_s", "window_s",
             "interrupted", "requests", "operations", "rate", "bytes_sent", "bytes_received", "bytes_per_s", "errors",
             "timeouts", "closed", "connect_errors", "corrupt", "latency_ms", "client_cpu_s", "client_cpu_user_s",
             "client_cpu_system_s", "client_cpu_percent", "client_cpu_us_per_op"}
LATENCY_KEYS = {"min", "avg", "max", "mdev", "p50", "p90", "p99", "p999"}
CLOCK_KEYS = {"mode", "target", "transport", "answer", "server_time", "server_unix", "local_unix", "offset_s",
              "offset_uncertainty_s", "rtt_ms"}


def client(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLIENT, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def sigintDefault() -> None:
    """preexec_fn: the client reacts to SIGINT even when this test run ignores it (nohup, C{cmd &} in a script)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def asJson(result: subprocess.CompletedProcess[str]) -> dict:
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout  # --json: one object and nothing else on stdout
    return json.loads(lines[0])


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not HAVE_OPENSSL:
        pytest.skip("openssl is not installed")
    where = tmp_path_factory.mktemp("measure-certs")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "key.pem", "-out",
                    "cert.pem", "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                   cwd=where, check=True, capture_output=True, timeout=60)
    return where


@pytest.fixture(scope="module")
def sockd(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Daemon]:
    """Every service the client measures, on loopback; TLS listeners too when openssl can make a certificate."""
    cwd = tmp_path_factory.mktemp("measure")
    local = "0:interface=127.0.0.1"
    tls: list[str] = []
    if HAVE_OPENSSL:
        certs = request.getfixturevalue("certs")
        ssl = f"ssl:{local}:privateKey={certs / 'key.pem'}:certKey={certs / 'cert.pem'}"
        tls = ["--ack", ssl, "--echo", ssl, "--chargen", ssl]
    d = Daemon(["--no-log-messages",
                "--ack", f"tcp:{local}", "--ack", f"udp:{local}", "--ack", f"unix:{cwd / 'ack.sock'}",
                "--echo", f"tcp:{local}", "--echo", f"udp:{local}", "--echo", f"unix:{cwd / 'echo.sock'}",
                "--discard", f"tcp:{local}", "--chargen", f"tcp:{local}", *tls,
                "--time", f"tcp:{local}", "--time", f"udp:{local}", "--daytime", f"tcp:{local}",
                "--daytime", f"udp:{local}"], cwd)
    yield d
    d.stop()


def where(d: Daemon, service: str, transport: str) -> list[str]:
    """The client arguments that reach C{service} over C{transport} (tcp, udp, unix or tls)."""
    if transport == "unix":
        return ["--unix", d.path(service)]
    if transport == "tls":
        if (service, "ssl") not in d.listeners:
            pytest.skip("openssl is not installed: no certificate for the TLS listeners")
        host, port = d.address(service, "ssl")
        return [host, str(port), "--insecure"]
    host, port = d.address(service, transport)
    return (["--udp"] if transport == "udp" else []) + [host, str(port)]


# --------------------------------------------------------------------------- ping


def test_ping_output_and_summary_format(sockd: Daemon) -> None:
    """The line per reply and ping's summary shape, pinned."""
    host, port = sockd.address("echo", "tcp")
    result = client(host, str(port), "--count", "3", "--interval", "0.05")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    label = f"{host}:{port}"
    assert lines[0] == f"PING {label} (tcp): 64 bytes per probe"
    for seq, line in enumerate(lines[1:4], 1):
        assert re.fullmatch(rf"64 bytes from {re.escape(label)}: seq={seq} time=\d+\.\d{{3}} ms", line), line
    assert lines[4] == ""
    assert lines[5] == f"--- {label} ping statistics ---"
    assert re.fullmatch(r"3 sent, 3 received, 0% loss, time \d+ms", lines[6]), lines[6]
    found = re.fullmatch(r"rtt min/avg/max/mdev = (\d+\.\d{3})/(\d+\.\d{3})/(\d+\.\d{3})/(\d+\.\d{3}) ms", lines[7])
    assert found, lines[7]
    low, avg, high, _ = map(float, found.groups())
    assert 0 < low <= avg <= high
    assert re.fullmatch(r"rtt p50/p90/p99 = \d+\.\d{3}/\d+\.\d{3}/\d+\.\d{3} ms", lines[8]), lines[8]
    assert len(lines) == 9


@pytest.mark.parametrize("transport", ["tcp", "udp", "unix", "tls"])
@pytest.mark.parametrize("service", ["ack", "echo"])
def test_ping_every_transport_detects_ack_or_echo(sockd: Daemon, service: str, transport: str) -> None:
    result = client(*where(sockd, service, transport), "-c", "4", "-i", "0.02", "--json")
    assert result.returncode == 0, result.stderr
    report = asJson(result)
    assert set(report) == PING_KEYS
    assert (report["mode"], report["expect"], report["sent"], report["received"], report["lost"]) == \
           ("ping", service, 4, 4, 0)
    assert report["transport"] == {"tls": "tcp+tls"}.get(transport, transport)
    assert report["loss_percent"] == 0 and report["corrupt"] == report["duplicates"] == report["errors"] == 0
    assert set(report["rtt_ms"]) == RTT_KEYS
    rtt = report["rtt_ms"]
    assert 0 < rtt["min"] <= rtt["p50"] <= rtt["p99"] <= rtt["max"] < 5000
    assert rtt["min"] <= rtt["avg"] <= rtt["max"] and rtt["mdev"] >= 0


def test_ping_reply_sizes_say_which_service_answered(sockd: Daemon) -> None:
    """Ack answers 18 bytes on a stream and 17 on UDP whatever the probe's size; echo returns the probe."""
    cases = (("ack", "tcp", 18), ("ack", "udp", 17), ("echo", "tcp", 100), ("echo", "udp", 100))
    for service, transport, size in cases:
        result = client(*where(sockd, service, transport), "-c", "2", "-i", "0.02", "-s", "100")
        assert result.returncode == 0, result.stderr
        assert len(re.findall(rf"^{size} bytes from .*: seq=\d time=", result.stdout, re.M)) == 2, result.stdout


def test_ping_large_echo_probes(sockd: Daemon) -> None:
    """Bigger than the socket buffers: sent and read at once (sending first would deadlock with flow control)."""
    for transport, size in (("tcp", 1_000_000), ("unix", 1_000_000), ("tls", 1_000_000), ("udp", 65_507)):
        report = asJson(client(*where(sockd, "echo", transport), "-c", "2", "-i", "0.02", "-s", str(size), "--json"))
        assert (report["received"], report["corrupt"], report["size"]) == (2, 0, size)
        text = client(*where(sockd, "echo", transport), "-c", "1", "-s", str(size))
        assert f"{size} bytes from " in text.stdout, text.stdout


def test_ping_expect_given_and_wrong_is_reported_as_corrupt(sockd: Daemon) -> None:
    result = client(*where(sockd, "ack", "udp"), "-c", "2", "-i", "0.02", "--expect", "echo", "-t", "1")
    assert result.returncode == 1
    assert result.stdout.count("CORRUPT") >= 1, result.stdout
    assert "0 received" in result.stdout


def test_ping_against_ack_refuses_probes_the_ack_service_would_split(sockd: Daemon) -> None:
    """ack answers every 255 bytes of a message separately: a bigger probe is a usage error, found by auto too."""
    for extra in ([], ["--expect", "ack"]):
        result = client(*where(sockd, "ack", "tcp"), "-c", "2", "-i", "0.02", "-s", "256", *extra)
        assert result.returncode == 2, (extra, result.stdout, result.stderr)
        assert "255" in result.stderr.splitlines()[-1] and "Traceback" not in result.stderr
    assert client(*where(sockd, "ack", "tcp"), "-c", "1", "-s", "255").returncode == 0


@pytest.mark.parametrize("service", ["ack", "echo"])
def test_ping_with_no_interval_over_udp(sockd: Daemon, service: str) -> None:
    """--interval 0 sends back to back; against ack that is more probes in flight than sockets kept open."""
    overflowsBefore = udpReceiveBufferErrors()
    report = asJson(client(*where(sockd, service, "udp"), "-c", "1500", "-i", "0", "-t", "2", "--json", timeout=60))
    assert (report["expect"], report["sent"], report["errors"], report["corrupt"]) == (service, 1500, 0, 0)
    # A loopback burst may overflow a socket buffer (more often on a busy machine); nothing else is lost:
    # every probe missing is one the kernel counted as dropped for a full receive buffer.
    assert report["received"] > 0
    assert udpReceiveBufferErrors() - overflowsBefore >= 1500 - report["received"]


def udpReceiveBufferErrors() -> int:
    """The kernel's count of UDP datagrams dropped because a receive buffer was full (all sockets)."""
    lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines() if line.startswith("Udp:")]
    names, values = lines[0], lines[1]
    return int(values[names.index("RcvbufErrors")])


def test_ping_json_is_one_object_even_when_everything_is_lost() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        started = time.monotonic()
        result = client("--udp", "127.0.0.1", str(port), "-c", "3", "-i", "0.05", "-t", "0.3", "--json")
        elapsed = time.monotonic() - started
    assert result.returncode == 1
    report = asJson(result)
    assert (report["sent"], report["received"], report["lost"], report["loss_percent"]) == (3, 0, 3, 100.0)
    assert report["rtt_ms"] == dict.fromkeys(RTT_KEYS)
    assert elapsed < 10


def test_ping_refused_tcp_counts_every_probe_lost() -> None:
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))  # bound, never listening: every connect is refused
        port = bound.getsockname()[1]
        result = client("127.0.0.1", str(port), "-c", "3", "-i", "0.02")
    assert result.returncode == 1
    assert result.stdout.count("connection refused") == 3, result.stdout
    assert "3 sent, 0 received, 3 errors, 100% loss" in result.stdout


def test_ping_udp_port_unreachable_is_reported() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed below: nothing listens there any more
    result = client("--udp", "127.0.0.1", str(port), "-c", "2", "-i", "0.05", "-t", "0.3", "--expect", "echo")
    assert result.returncode == 1
    assert "port unreachable" in result.stdout
    assert "2 sent, 0 received" in result.stdout


def test_ping_tls_verifies_the_certificate(sockd: Daemon, certs: Path) -> None:
    host, port = where(sockd, "echo", "tls")[:2]
    refused = client(host, str(port), "-c", "2", "--tls")
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1 and "verify" in refused.stderr and "Traceback" not in refused.stderr
    trusted = client(host, str(port), "-c", "2", "-i", "0.02", "--cafile", str(certs / "cert.pem"),
                     "--servername", "localhost", "--json")
    assert trusted.returncode == 0, trusted.stderr
    assert asJson(trusted)["received"] == 2


def test_ctrl_c_prints_the_summary_so_far(sockd: Daemon) -> None:
    process = subprocess.Popen([CLIENT, *where(sockd, "echo", "tcp"), "-c", "0", "-i", "0.05"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=sigintDefault)
    try:
        assert process.stdout is not None
        replies = 0
        deadline = time.monotonic() + 15
        while replies < 3 and time.monotonic() < deadline:
            line = process.stdout.readline()
            replies += " bytes from " in line
        assert replies == 3
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "Traceback" not in err and err == ""
    found = re.search(r"^(\d+) sent, (\d+) received", out, re.M)
    assert found and "ping statistics" in out, out
    sent, received = map(int, found.groups())
    assert sent >= 3 and sent - received <= 1  # only a probe in flight at the interrupt can be missing
    assert process.returncode == (0 if sent == received else 1)


def test_an_inherited_ignored_sigint_stays_ignored(sockd: Daemon) -> None:
    """Started with SIGINT ignored (a script's background job), the client keeps ignoring it, as the shell
    means it to: the run ends when its count is done, not at the Ctrl-C typed for the foreground."""
    process = subprocess.Popen([CLIENT, *where(sockd, "echo", "tcp"), "-c", "3", "-i", "0.3"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        assert process.stdout is not None
        assert process.stdout.readline().startswith("PING ")
        assert " bytes from " in process.stdout.readline()
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert (process.returncode, err) == (0, "")
    assert "3 sent, 3 received" in out, out


# --------------------------------------------------------------------------- loss, duplicates, reordering


class DroppingRelay:
    """A UDP relay that forwards datagrams to a server and back, dropping every k-th one on the way there.

    Each client address gets its own upstream socket (as a NAT would), so per-probe sockets keep their identity.
    """

    def __init__(self, upstream: tuple[str, int], every: int) -> None:
        self.upstream, self.every = upstream, every
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.bind(("127.0.0.1", 0))
        self.address = self.front.getsockname()
        self.seen = self.dropped = 0
        self.backs: dict[socket.socket, tuple[str, int]] = {}
        self.byClient: dict[tuple[str, int], socket.socket] = {}
        self.stopping = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        deadline = time.monotonic() + 60  # bounded, whatever the test does
        while not self.stopping and time.monotonic() < deadline:
            ready, _, _ = select.select([self.front, *self.backs], [], [], 0.05)
            for sock in ready:
                if sock is self.front:
                    data, peer = self.front.recvfrom(65536)
                    self.seen += 1
                    if self.seen % self.every == 0:
                        self.dropped += 1
                        continue
                    back = self.byClient.get(peer)
                    if back is None:
                        back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                        back.connect(self.upstream)
                        self.byClient[peer], self.backs[back] = back, peer
                    back.send(data)
                else:
                    try:
                        self.front.sendto(sock.recv(65536), self.backs[sock])
                    except OSError:
                        pass

    def close(self) -> None:
        self.stopping = True
        self.thread.join(5)
        for sock in [self.front, *self.backs]:
            sock.close()


@pytest.mark.parametrize("service", ["echo", "ack"])
def test_udp_loss_matches_what_the_relay_dropped(sockd: Daemon, service: str) -> None:
    """Echo probes are matched by the sequence number they carry, ack probes by their own socket."""
    relay = DroppingRelay(sockd.address(service, "udp"), every=4)
    try:
        result = client("--udp", *map(str, relay.address), "-c", "20", "-i", "0.01", "-t", "0.5")
    finally:
        relay.close()
    assert relay.dropped == 5
    assert result.returncode == 1, result.stderr
    lost = sorted(int(s) for s in re.findall(r"^seq=(\d+): no reply", result.stdout, re.M))
    assert lost == [4, 8, 12, 16, 20], result.stdout
    assert "20 sent, 15 received, 25% loss" in result.stdout


def test_udp_load_counts_timeouts_of_dropped_datagrams(sockd: Daemon) -> None:
    relay = DroppingRelay(sockd.address("echo", "udp"), every=50)
    try:
        report = asJson(client("--udp", *map(str, relay.address), "-C", "4", "-d", "1", "--warmup", "0",
                               "-t", "0.2", "--json"))
    finally:
        relay.close()
    assert relay.dropped > 0 and report["requests"] > 0
    # Drops in the last 0.2 s cannot have timed out yet; every other one is a timeout.
    assert 1 <= report["timeouts"] <= relay.dropped
    assert report["errors"] == report["timeouts"]


class MisbehavingEcho:
    """A UDP echo that answers probe 2 twice, probe 3 after probe 4, probe 5 altered, and never probe 6."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.address = self.sock.getsockname()
        self.stopping = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        held = None
        deadline = time.monotonic() + 60
        while not self.stopping and time.monotonic() < deadline:
            try:
                data, peer = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            seq = int(data.split()[1])
            if seq == 2:
                self.sock.sendto(data, peer)
            elif seq == 3:
                held = data
                continue
            elif seq == 5:
                data = data[:-5] + b"XXXX\n"
            elif seq == 6:
                continue
            self.sock.sendto(data, peer)
            if seq == 4 and held is not None:
                self.sock.sendto(held, peer)

    def close(self) -> None:
        self.stopping = True
        self.thread.join(5)
        self.sock.close()


def test_duplicates_reordering_and_corruption_are_counted() -> None:
    server = MisbehavingEcho()
    try:
        result = client("--udp", *map(str, server.address), "-c", "8", "-i", "0.05", "-t", "0.5", "--json")
        text = client("--udp", *map(str, server.address), "-c", "8", "-i", "0.05", "-t", "0.5")
    finally:
        server.close()
    report = asJson(result)
    assert (report["expect"], report["sent"], report["received"], report["duplicates"], report["reordered"],
            report["corrupt"], report["lost"]) == ("echo", 8, 6, 1, 1, 1, 2), report
    assert report["loss_percent"] == 25.0 and result.returncode == 1
    out = text.stdout
    assert re.search(r"seq=2 time=\S+ ms DUP!", out) and re.search(r"seq=3 time=\S+ ms \(out of order\)", out)
    assert re.search(r"seq=5 time=\S+ ms CORRUPT", out) and "seq=6: no reply" in out
    assert "8 sent, 6 received, 1 corrupt, +1 duplicates, 1 reordered, 25% loss" in out


def test_ping_after_a_lost_first_probe_keeps_its_interval() -> None:
    """Under --expect auto the second probe waits for the first's timeout; the rest must not then burst out."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(0.1)
        arrivals: list[float] = []

        def echoAllButTheFirst() -> None:
            deadline = time.monotonic() + 20
            while len(arrivals) < 4 and time.monotonic() < deadline:
                try:
                    data, peer = server.recvfrom(65536)
                except TimeoutError:
                    continue
                arrivals.append(time.monotonic())
                if len(arrivals) > 1:
                    server.sendto(data, peer)

        thread = threading.Thread(target=echoAllButTheFirst, daemon=True)
        thread.start()
        report = asJson(client("--udp", *map(str, server.getsockname()), "-c", "4", "-i", "0.2", "-t", "0.5",
                               "--json"))
        thread.join(5)
    assert (report["expect"], report["sent"], report["received"]) == ("echo", 4, 3)
    gaps = [later - earlier for earlier, later in zip(arrivals[1:], arrivals[2:], strict=False)]
    assert len(gaps) == 2 and all(gap >= 0.15 for gap in gaps), gaps


def byteAtATimeEcho(stop: threading.Event) -> tuple[socket.socket, Callable[[], None]]:
    """A TCP echo server that sends each reply one byte per segment."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.1)

    def run() -> None:
        deadline = time.monotonic() + 60
        conn = None
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                if conn is None:
                    conn, _ = server.accept()
                    conn.settimeout(0.1)
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                data = conn.recv(65536)
                if not data:
                    conn.close()
                    conn = None
                for i in range(len(data)):
                    conn.send(data[i : i + 1])  # type: ignore[union-attr]
                    time.sleep(0.0002)
            except TimeoutError:
                continue
        if conn is not None:
            conn.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return server, lambda: (stop.set(), thread.join(5), server.close())


def test_tcp_echo_replies_split_across_reads_are_put_together() -> None:
    stop = threading.Event()
    server, close = byteAtATimeEcho(stop)
    try:
        report = asJson(client("127.0.0.1", str(server.getsockname()[1]), "-c", "3", "-i", "0.01", "--json"))
    finally:
        close()
    assert (report["expect"], report["received"], report["corrupt"]) == ("echo", 3, 0)


def test_tcp_reply_that_is_neither_echo_nor_ack_is_corrupt() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()

        def answer() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(1000)
                conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")
                time.sleep(0.5)

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        result = client("127.0.0.1", str(server.getsockname()[1]), "-c", "1", "-t", "2")
        thread.join(5)
    assert result.returncode == 1
    assert "CORRUPT (neither the probe's echo nor the ack answer: b'HTTP/1.0 400" in result.stdout
    assert "1 sent, 0 received, 1 corrupt, 100% loss" in result.stdout


# --------------------------------------------------------------------------- load


@pytest.mark.parametrize("transport", ["tcp", "udp", "unix", "tls"])
@pytest.mark.parametrize("service", ["ack", "echo"])
def test_load_every_transport(sockd: Daemon, service: str, transport: str) -> None:
    result = client(*where(sockd, service, transport), "-C", "4", "-d", "1", "--warmup", "0.2", "--json")
    assert result.returncode == 0, result.stderr
    report = asJson(result)
    assert set(report) == LOAD_KEYS
    assert (report["mode"], report["pattern"], report["concurrency"], report["errors"]) == ("load", service, 4, 0)
    assert report["requests"] == report["operations"] > 100
    assert 0.9 <= report["window_s"] <= 1.5
    assert report["rate"] == pytest.approx(report["requests"] / report["window_s"], rel=0.01)
    answer = {"ack": 17 if transport == "udp" else 18, "echo": 64}[service]
    assert (report["bytes_sent"], report["bytes_received"]) == (64 * report["requests"], answer * report["requests"])
    assert set(report["latency_ms"]) == LATENCY_KEYS
    latency = report["latency_ms"]
    assert 0 < latency["min"] <= latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["p999"] <= latency["max"]
    assert 0 < report["client_cpu_s"] < 3 and report["client_cpu_us_per_op"] > 0
    assert report["client_cpu_s"] == pytest.approx(report["client_cpu_user_s"] + report["client_cpu_system_s"],
                                                   abs=2e-6)


@pytest.mark.parametrize("transport", ["tcp", "tls", "unix"])
def test_load_requests_bigger_than_a_socket_buffer(sockd: Daemon, transport: str) -> None:
    """A 1 MB echo request is sent in pieces as the socket takes them, TLS included, and comes back whole."""
    report = asJson(client(*where(sockd, "echo", transport), "-C", "2", "-d", "1", "--warmup", "0.2",
                           "-s", "1000000", "--json", timeout=60))
    assert (report["errors"], report["corrupt"]) == (0, 0) and report["requests"] >= 2
    assert report["bytes_received"] == report["bytes_sent"] == 1_000_000 * report["requests"]


def test_load_notices_an_echo_out_of_step() -> None:
    """Requests alternate, so an echo server that answers one request twice is caught (the bytes alone match)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        stop = threading.Event()

        def echoFirstTwice() -> None:
            server.settimeout(5)
            conns: list[socket.socket] = []
            deadline = time.monotonic() + 10
            try:
                while len(conns) < 2 and time.monotonic() < deadline:  # the detection round trip, then the load
                    conn, _ = server.accept()
                    conns.append(conn)
                    conn.settimeout(0.2)
                    first = True
                    while not stop.is_set() and time.monotonic() < deadline:
                        try:
                            data = conn.recv(65536)
                        except TimeoutError:
                            continue
                        if not data:
                            break
                        conn.sendall(data * 2 if first and len(conns) == 2 else data)
                        first = False
                        if len(conns) == 1:
                            break
            except OSError:
                pass
            for conn in conns:
                conn.close()

        thread = threading.Thread(target=echoFirstTwice, daemon=True)
        thread.start()
        result = client("127.0.0.1", str(server.getsockname()[1]), "-C", "1", "-d", "0.5", "--warmup", "0",
                        "--json")
        stop.set()
        thread.join(5)
    report = asJson(result)
    assert report["corrupt"] >= 1 and result.returncode == 1, report


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_load_chargen_pulls_and_checks_the_pattern(sockd: Daemon, transport: str) -> None:
    report = asJson(client(*where(sockd, "chargen", transport), "--chargen", "-C", "2", "-d", "0.5", "--warmup", "0",
                           "--json"))
    assert (report["pattern"], report["errors"], report["corrupt"], report["latency_ms"]) == ("chargen", 0, 0, None)
    assert report["bytes_received"] > 100_000 and report["bytes_sent"] == 0
    assert report["bytes_per_s"] == pytest.approx(report["bytes_received"] / report["window_s"], rel=0.01)


def test_load_chargen_notices_a_wrong_pattern() -> None:
    """A server that streams something else is counted as corrupt (the check is not vacuous)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        stop = threading.Event()

        def stream() -> None:
            conn, _ = server.accept()
            with conn:
                conn.settimeout(1)
                deadline = time.monotonic() + 10
                while not stop.is_set() and time.monotonic() < deadline:
                    try:
                        conn.sendall(b"not the RFC 864 pattern\r\n" * 100)
                    except OSError:
                        return

        thread = threading.Thread(target=stream, daemon=True)
        thread.start()
        result = client("127.0.0.1", str(server.getsockname()[1]), "--chargen", "-d", "0.3", "--warmup", "0", "--json")
        stop.set()
        thread.join(5)
    report = asJson(result)
    assert report["corrupt"] == 1 and result.returncode == 1


def test_load_discard_pushes_bytes(sockd: Daemon) -> None:
    report = asJson(client(*where(sockd, "discard", "tcp"), "--discard", "-C", "2", "-d", "0.5", "--warmup", "0",
                           "--json"))
    assert (report["pattern"], report["size"], report["errors"], report["latency_ms"]) == ("discard", 16384, 0, None)
    assert report["bytes_sent"] > 1_000_000 and report["bytes_received"] == 0


def test_load_summary_text_and_progress_line_on_a_terminal(sockd: Daemon) -> None:
    """On a terminal, a live line (rate, p99) on stderr; then the summary, with the client's own CPU."""
    code, out, progress = withStderrOnATerminal([CLIENT, *where(sockd, "echo", "tcp"), "-C", "2", "-d", "2.2",
                                                 "--warmup", "0"])
    assert code == 0
    assert re.search(rb"\r\x1b\[K +\d+\.\d s  [\d,]+ req/s  p99 \d+\.\d{3} ms  0 errors", progress), progress
    lines = out.splitlines()
    assert re.fullmatch(r"--- \S+ load statistics \(tcp, echo, 64 bytes, 2 connections\) ---", lines[0]), out
    assert re.fullmatch(r"[\d,]+ requests in \d\.\d{3} s: [\d,]+/s, \S+ \S?B/s, 0 errors", lines[1]), out
    assert lines[2].startswith("latency min/avg/max = ") and lines[3].startswith("latency p50/p90/p99/p99.9 = ")
    assert re.fullmatch(r"client CPU \d+\.\d{3} s \(\d+% of one core, \d+\.\d\d us per request; user \d+\.\d{3} s,"
                        r" system \d+\.\d{3} s\)", lines[4]), out


def test_load_ctrl_c_reports_the_window_so_far(sockd: Daemon) -> None:
    process = subprocess.Popen([CLIENT, *where(sockd, "echo", "tcp"), "-C", "2", "-d", "60", "--warmup", "0",
                                "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=sigintDefault)
    try:
        time.sleep(1.5)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert (process.returncode, err) == (0, "")
    report = json.loads(out)
    assert report["interrupted"] is True and report["requests"] > 0 and report["errors"] == 0
    assert 0.3 < report["window_s"] < 5
    assert report["rate"] == pytest.approx(report["requests"] / report["window_s"], rel=0.01)


def test_load_against_nothing_is_one_line_and_status_1() -> None:
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        result = client("127.0.0.1", str(port), "-C", "2", "-d", "1")
    assert result.returncode == 1
    assert result.stdout == "" and result.stderr.count("\n") == 1 and "refused" in result.stderr


# --------------------------------------------------------------------------- servers nobody here wrote


@pytest.fixture
def socat() -> Iterator[Callable[[str], int]]:
    if not HAVE_SOCAT:
        pytest.skip("socat is not installed")
    started: list[subprocess.Popen] = []

    def start(kind: str) -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        listen = f"UDP-RECVFROM:{port},bind=127.0.0.1,fork" if kind == "udp" else \
            f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork"
        started.append(subprocess.Popen(["socat", listen, "PIPE"], stderr=subprocess.DEVNULL))
        if kind == "tcp":
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        break
                time.sleep(0.05)
        else:
            time.sleep(0.3)
        return port

    yield start
    for process in started:
        process.terminate()
        process.wait(10)


@pytest.mark.parametrize("kind", ["tcp", "udp"])
def test_ping_and_load_against_socat_echo(socat: Callable[[str], int], kind: str) -> None:
    port = str(socat(kind))
    udp = ["--udp"] if kind == "udp" else []
    report = asJson(client(*udp, "127.0.0.1", port, "-c", "3", "-i", "0.05", "--json"))
    assert (report["expect"], report["received"], report["corrupt"]) == ("echo", 3, 0)
    load = asJson(client(*udp, "127.0.0.1", port, "-C", "2", "-d", "0.5", "--warmup", "0.1", "--json"))
    assert load["pattern"] == "echo" and load["requests"] > 10 and load["corrupt"] == 0


XINETD = shutil.which("xinetd") or ("/usr/sbin/xinetd" if Path("/usr/sbin/xinetd").exists() else None)

XINETD_SERVICE = """\
service {name}
{{
    id = {name}-{kind}
    type = INTERNAL UNLISTED
    socket_type = {socket}
    protocol = {kind}
    port = {port}
    bind = 127.0.0.1
    wait = {wait}
    user = root
}}
"""


@pytest.fixture(scope="module")
def xinetd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[tuple[str, str], int]]:
    """xinetd's internal echo (TCP and UDP), daytime and time, as Debian ships them, on free loopback ports."""
    if XINETD is None or os.geteuid() != 0:
        pytest.skip("xinetd is not installed (or not root to run it)")
    tmp = tmp_path_factory.mktemp("xinetd")
    ports: dict[tuple[str, str], int] = {}
    conf = "defaults\n{\n    instances = UNLIMITED\n    per_source = UNLIMITED\n    cps = 100000 1\n}\n"
    for name, kind in (("echo", "tcp"), ("echo", "udp"), ("daytime", "tcp"), ("time", "tcp")):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            ports[(name, kind)] = probe.getsockname()[1]
        conf += XINETD_SERVICE.format(name=name, kind=kind, port=ports[(name, kind)],
                                      socket="dgram" if kind == "udp" else "stream",
                                      wait="yes" if kind == "udp" else "no")
    (tmp / "xinetd.conf").write_text(conf)
    process = subprocess.Popen([XINETD, "-f", str(tmp / "xinetd.conf"), "-dontfork", "-stayalive", "-pidfile",
                                str(tmp / "xinetd.pid")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", ports[("time", "tcp")])) == 0:
                    break
            time.sleep(0.05)
        yield ports
    finally:
        process.terminate()
        process.wait(10)


def test_ping_and_clock_against_xinetd(xinetd: dict[tuple[str, str], int]) -> None:
    for kind in ("tcp", "udp"):
        udp = ["--udp"] if kind == "udp" else []
        report = asJson(client(*udp, "127.0.0.1", str(xinetd[("echo", kind)]), "-c", "3", "-i", "0.05", "--json"))
        assert (report["expect"], report["received"], report["corrupt"]) == ("echo", 3, 0), kind
    load = asJson(client("127.0.0.1", str(xinetd[("echo", "tcp")]), "-C", "2", "-d", "0.5", "--json"))
    assert load["requests"] > 10 and load["errors"] == 0
    for protocol in ("daytime", "time"):
        report = asJson(client(f"--{protocol}", "127.0.0.1", str(xinetd[(protocol, "tcp")]), "--json"))
        assert abs(report["offset_s"]) <= report["offset_uncertainty_s"] + 0.1, report  # xinetd's "01 DEC 2026 ..."


# --------------------------------------------------------------------------- time and daytime


@pytest.mark.parametrize("transport", ["tcp", "udp"])
@pytest.mark.parametrize("protocol", ["time", "daytime"])
def test_clock_offset_of_sockd_is_small(sockd: Daemon, protocol: str, transport: str) -> None:
    report = asJson(client(f"--{protocol}", *where(sockd, protocol, transport), "--json"))
    assert set(report) == CLOCK_KEYS
    assert report["mode"] == protocol and report["transport"] == transport
    assert abs(report["offset_s"]) <= report["offset_uncertainty_s"] + 0.1  # the same clock, read twice
    assert abs(report["server_unix"] - time.time()) < 5
    text = client(f"--{protocol}", *where(sockd, protocol, transport))
    assert text.returncode == 0
    assert re.fullmatch(r"\S+: \w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4} UTC.*, offset [+-]\d+\.\d{3} s"
                        r" \(\u00b1\d\.\d{3} s: whole seconds\), round trip \d+\.\d{3} ms\n", text.stdout), text.stdout


def test_daytime_that_does_not_parse_is_status_1(tmp_path: Path) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()

        def speak() -> None:
            conn, _ = server.accept()
            with conn:
                conn.sendall(b"teatime\r\n")

        thread = threading.Thread(target=speak, daemon=True)
        thread.start()
        result = client("--daytime", "127.0.0.1", str(server.getsockname()[1]))
        thread.join(5)
    assert result.returncode == 1
    assert "'teatime'" in result.stdout and "not a time" in result.stdout


# --------------------------------------------------------------------------- usage


@pytest.mark.parametrize("args", [
    ["127.0.0.1", "7", "--count", "-1"],
    ["127.0.0.1", "7", "--count", "many"],
    ["127.0.0.1", "7", "--interval", "-0.5"],
    ["127.0.0.1", "7", "--count", "3", "--size", "10"],
    ["127.0.0.1", "7", "--count", "3", "--concurrency", "2"],
    ["127.0.0.1", "7", "--count", "3", "-m", "hi"],
    ["127.0.0.1", "7", "--time", "--daytime"],
    ["127.0.0.1", "7", "--discard", "--chargen"],
    ["127.0.0.1", "7", "--discard", "--expect", "ack"],
    ["--udp", "127.0.0.1", "7", "--count", "1", "--tls"],
    ["--udp", "127.0.0.1", "7", "--discard"],
    ["--udp", "127.0.0.1", "7", "-c", "1", "-s", "70000"],
    ["127.0.0.1", "7", "--json"],
    ["127.0.0.1", "7", "--duration", "0"],
    ["127.0.0.1", "7", "--concurrency", "0"],
    ["127.0.0.1", "7", "--timeout", "nan", "-c", "1"],
])
def test_usage_errors_are_one_line_and_status_2(args: list[str]) -> None:
    result = client(*args, timeout=15)
    assert result.returncode == 2, (args, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sockd-client: error: "), result.stderr
