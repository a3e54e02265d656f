"""sockd as a user first meets it: the installed C{twistd sockd} with no options.

The defaults are the tutorial's ack server on TCP, UDP and Unix port 51717 /
C{sockd.sock}, and the small services on the unprivileged ports 50000 + the
RFC port (chargen on TCP only: UDP chargen amplifies).  Every default listener
is exercised with the tools a user has: C{sockd-client}, C{rdate}, C{socat},
C{nc}.  This is the one module allowed fixed ports; it skips, naming the port,
if one is taken.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.daemon import BIN, REACTOR, TWISTD, Daemon, DaemonFailed

REPO = Path(__file__).resolve().parents[2]
CLIENT = str(BIN / "sockd-client")

TCP_PORTS = {"ack": 51717, "echo": 50007, "discard": 50009, "daytime": 50013, "qotd": 50017, "chargen": 50019,
             "time": 50037}
UDP_PORTS = {"ack": 51717, "echo": 50007, "discard": 50009, "daytime": 50013, "qotd": 50017, "time": 50037}
UDP_CHARGEN = 50019
DEFAULT_LISTENERS = len(TCP_PORTS) + len(UDP_PORTS) + 1  # + unix:sockd.sock

RFC864_HEAD = (b" !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefg\r\n"
               b"!\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefgh\r\n")
DAYTIME = re.compile(r"^[A-Z][a-z]+day, [A-Z][a-z]+ \d\d, \d{4} \d\d:\d\d:\d\d-UTC\r?\n$")


def busyPort() -> str | None:
    """The first default port something else holds, or None when all are free."""
    for kind, ports in ((socket.SOCK_STREAM, TCP_PORTS), (socket.SOCK_DGRAM, {**UDP_PORTS, "chargen": UDP_CHARGEN})):
        for name, port in ports.items():
            with socket.socket(socket.AF_INET, kind) as s:
                if kind == socket.SOCK_STREAM:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("0.0.0.0", port))
                except OSError:
                    return f"{'tcp' if kind == socket.SOCK_STREAM else 'udp'} port {port} ({name}) is in use"
    return None


def requireTools(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")


class TacDaemon(Daemon):
    """C{twistd -ny sockd.tac}: the same L{Daemon} helpers, started from the .tac file instead of the plugin."""

    def __init__(self, tac: Path, cwd: Path, expect: int, timeout: float = 15.0) -> None:
        self.cwd = Path(cwd)
        self.logPath = self.cwd / "sockd.log"
        self.command = [TWISTD, *REACTOR, "-n", "--pidfile=", "--logfile", str(self.logPath), "-y", str(tac)]
        self.expect = expect
        self.stderrPath = self.cwd / "sockd.stderr"
        self._stderr = open(self.stderrPath, "wb")
        self.process = subprocess.Popen(self.command, cwd=self.cwd, stdout=subprocess.DEVNULL, stderr=self._stderr)
        self.listeners = {}
        self._wait(timeout)


def startOrSkip(start: Callable[[], Daemon]) -> Daemon:
    reason = busyPort()
    if reason:
        pytest.skip(f"cannot run the default configuration here: {reason}")
    try:
        return start()
    except DaemonFailed as e:
        if "Address already in use" in str(e):  # lost a race with another process for a default port
            pytest.skip(f"a default port was taken while sockd started: {e}")
        raise


@pytest.fixture(scope="module")
def sockd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """The installed twistd plugin with no sockd options at all, in a fresh directory."""
    cwd = tmp_path_factory.mktemp("defaults")
    d = startOrSkip(lambda: Daemon([], cwd, expect=DEFAULT_LISTENERS))
    yield d
    d.stop()


def client(*args: str, cwd: Path | None = None, stdin: bytes | None = None,
           timeout: float = 10.0) -> subprocess.CompletedProcess[bytes]:
    """Run the installed sockd-client, as a user would type it."""
    return subprocess.run([CLIENT, *args], cwd=cwd, input=stdin, capture_output=True, timeout=timeout)


def ok(result: subprocess.CompletedProcess[bytes]) -> bytes:
    assert result.returncode == 0, (result.returncode, result.stderr)
    assert result.stderr == b""
    return result.stdout


def tool(args: list[str], stdin: bytes = b"", timeout: float = 10.0) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(args, input=stdin, capture_output=True, timeout=timeout, env={**os.environ, "TZ": "UTC"})


def checkRdate(output: bytes) -> None:
    """rdate -p prints the server's time as ctime; it must be within a few seconds of ours."""
    match = re.search(rb"(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d) UTC (\d{4})", output)
    assert match, output
    text = f"{match.group(1).decode()} {match.group(2).decode()}"
    stamp = datetime.strptime(text, "%a %b %d %H:%M:%S %Y").replace(tzinfo=UTC)
    assert abs(stamp.timestamp() - time.time()) < 5, output


def test_all_default_listeners_are_up(sockd: Daemon) -> None:
    expected = {(name, "tcp"): [f"0.0.0.0:{port}"] for name, port in TCP_PORTS.items()}
    for name, port in UDP_PORTS.items():
        expected[(name, "udp")] = [f"0.0.0.0:{port}"]
    expected[("ack", "unix")] = ["sockd.sock"]
    assert sockd.listeners == expected
    assert (sockd.cwd / "sockd.sock").exists()
    assert sockd.stderr() == ""


def test_ack_with_sockd_client_over_tcp_udp_and_unix(sockd: Daemon) -> None:
    assert ok(client("127.0.0.1", "51717", "-m", "hello over tcp")) == b"I got your message\n"
    assert ok(client("127.0.0.1", "51717", stdin=b"a line from stdin\n")) == b"I got your message\n"
    assert ok(client("--udp", "127.0.0.1", "51717", "-m", "hello over udp")) == b"Got your message\n"
    assert ok(client("--unix", "sockd.sock", "-m", "hello over unix", cwd=sockd.cwd)) == b"I got your message\n"
    log = sockd.log()
    for text in ("Here is the message: hello over tcp", "Here is the message: a line from stdin",
                 "Received a datagram: hello over udp", "Here is the message: hello over unix"):
        assert text in log


def test_echo_with_sockd_client(sockd: Daemon) -> None:
    assert ok(client("127.0.0.1", "50007", "-m", "echo this")) == b"echo this\n"
    assert ok(client("--udp", "127.0.0.1", "50007", "-m", "echo that")) == b"echo that\n"


def test_daytime_and_qotd_over_udp_with_sockd_client(sockd: Daemon) -> None:
    assert DAYTIME.match(ok(client("--udp", "127.0.0.1", "50013", "-m", "x")).decode())
    quote = ok(client("--udp", "127.0.0.1", "50017", "-m", "x"))
    assert 0 < len(quote) < 512 and quote.endswith(b"\r\n")


def test_daytime_and_qotd_over_tcp_with_socat(sockd: Daemon) -> None:
    """sockd-client fails on these at random (see test_client_oneshot.py's speak-first test), so socat reads them."""
    requireTools("socat")
    daytime = tool(["socat", "-u", "TCP:127.0.0.1:50013", "-"])
    assert daytime.returncode == 0, daytime.stderr
    assert DAYTIME.match(daytime.stdout.decode())  # one CR LF line, then the server closed (socat -u returned)
    quote = tool(["socat", "-u", "TCP:127.0.0.1:50017", "-"])
    assert quote.returncode == 0, quote.stderr
    assert 0 < len(quote.stdout) < 512 and quote.stdout.endswith(b"\r\n")


def test_time_with_rdate_over_tcp_and_udp(sockd: Daemon) -> None:
    requireTools("rdate")
    overTcp = tool(["rdate", "-p", "-o", "50037", "127.0.0.1"])
    assert overTcp.returncode == 0, overTcp.stderr
    checkRdate(overTcp.stdout)
    overUdp = tool(["rdate", "-p", "-u", "-o", "50037", "127.0.0.1"])
    assert overUdp.returncode == 0, overUdp.stderr
    checkRdate(overUdp.stdout)


def test_discard_with_nc_and_socat(sockd: Daemon) -> None:
    requireTools("nc", "socat")
    overTcp = tool(["nc", "-q", "1", "127.0.0.1", "50009"], stdin=b"into the void\n" * 50)
    assert overTcp.returncode == 0, overTcp.stderr  # connected (refused would be 1)...
    assert overTcp.stdout == b""  # ...and nothing came back
    overUdp = tool(["socat", "-t", "0.5", "-", "UDP:127.0.0.1:50009"], stdin=b"into the void\n")
    assert overUdp.returncode == 0, overUdp.stderr  # no ICMP port unreachable: something listens
    assert overUdp.stdout == b""


def test_chargen_over_tcp_with_socat_keeps_streaming(sockd: Daemon) -> None:
    requireTools("socat")
    process = subprocess.Popen(["socat", "-u", "TCP:127.0.0.1:50019", "-"], stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        head = process.stdout.read(len(RFC864_HEAD))
        assert head == RFC864_HEAD
        total = 0
        deadline = time.monotonic() + 10
        while total < 1 << 20 and time.monotonic() < deadline:
            chunk = process.stdout.read1(65536)
            if not chunk:
                break
            total += len(chunk)
        assert total >= 1 << 20, f"chargen stopped after {total} bytes"
    finally:
        process.kill()
        process.wait(5)


def test_udp_chargen_is_not_listening_by_default(sockd: Daemon) -> None:
    """UDP chargen must be asked for: by default a datagram to 50019 gets no answer (port unreachable)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1.0)
        s.connect(("127.0.0.1", UDP_CHARGEN))
        s.send(b"chargen?")
        with pytest.raises((ConnectionRefusedError, TimeoutError)):
            s.recv(1024)
    if shutil.which("socat"):
        result = tool(["socat", "-t", "0.5", "-", f"UDP:127.0.0.1:{UDP_CHARGEN}"], stdin=b"chargen?\n")
        assert result.stdout == b""


def test_sigterm_stops_cleanly_and_removes_the_socket_file(sockd: Daemon) -> None:
    with socket.create_connection(("127.0.0.1", 51717), timeout=5):
        pass  # one connection served and gone: nothing to drain
    started = time.monotonic()
    sockd.process.send_signal(signal.SIGTERM)
    code = sockd.process.wait(10)
    elapsed = time.monotonic() - started
    assert code == 0, code
    assert elapsed < 4, elapsed
    log = sockd.log()
    assert "Server Shut Down." in log
    assert "Traceback" not in log
    assert not (sockd.cwd / "sockd.sock").exists()
    assert not (sockd.cwd / "sockd.sock.lock").exists()
    assert sockd.stderr() == ""


def test_sockd_tac_starts_the_same_default_listeners(sockd: Daemon, tmp_path: Path) -> None:
    """twistd -ny sockd.tac (the repository's file, run from another directory) gives the same listeners."""
    sockd.stop()  # the plugin daemon must be gone: the .tac one takes the same fixed ports
    tac = REPO / "sockd.tac"
    assert tac.exists()
    d = startOrSkip(lambda: TacDaemon(tac, tmp_path, expect=DEFAULT_LISTENERS))
    try:
        assert d.listeners == sockd.listeners
        assert (tmp_path / "sockd.sock").exists()
        assert ok(client("127.0.0.1", "51717", "-m", "via tac")) == b"I got your message\n"
        assert ok(client("--unix", "sockd.sock", "-m", "via tac", cwd=tmp_path)) == b"I got your message\n"
        assert ok(client("--udp", "127.0.0.1", "51717", "-m", "via tac")) == b"Got your message\n"
        if shutil.which("rdate"):
            checkRdate(tool(["rdate", "-p", "-o", "50037", "127.0.0.1"]).stdout)
    finally:
        code = d.stop()
    assert code == 0
    assert not (tmp_path / "sockd.sock").exists()
    assert "Traceback" not in d.log()


def test_sigterm_exit_status_is_zero(daemon: Callable[..., Daemon]) -> None:
    d = daemon("--ack", "tcp:0:interface=127.0.0.1")
    assert d.stop() == 0
