"""A real HAProxy 2.6 with send-proxy-v2 in front of real sockd daemons, on loopback.

The point of sockd's own PROXY protocol reader is what only a real balancer
shows: the client's own address (not HAProxy's) reaches the logs and access
control, speak-first services answer after the header, and round robin over
two instances works.  The client's source port appears in sockd's text log in
the idle-timeout line (C{closing HOST:PORT: idle}), so clients idle out on
purpose after their answer.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import REACTOR, TWISTD, Daemon, recvAll, recvExactly, waitFor

HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
pytestmark = pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed")

SERVICES = ["--ack", "haproxy:tcp:0:interface=127.0.0.1", "--daytime", "haproxy:tcp:0:interface=127.0.0.1"]
IDLE = ["--idle-timeout", "0.5"]
DAYTIME = re.compile(rb"^[A-Z][a-z]+day, [A-Z][a-z]+ \d\d, \d{4} \d\d:\d\d:\d\d-UTC\r\n$")


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listenPort(d: Daemon, service: str) -> int:
    """The port of a haproxy: listener."""
    return d.address(service, "haproxy")[1]


class HAProxy:
    """haproxy -db on a generated configuration: one frontend per service, balancing over the backends."""

    def __init__(self, workdir: Path, backends: dict[str, list[int]], server: str = "send-proxy-v2",
                 source: str | None = None) -> None:
        self.frontends = {service: freePort() for service in backends}
        ready = freePort()
        lines = ["defaults", "    mode tcp", "    retries 0", "    timeout connect 2s", "    timeout client 10s",
                 "    timeout server 10s",
                 # Binds with the others; a connection to it proves they are all bound, and reaches no backend.
                 "frontend ready", f"    bind 127.0.0.1:{ready}", "    tcp-request connection reject"]
        for service, ports in backends.items():
            lines += [f"frontend {service}", f"    bind 127.0.0.1:{self.frontends[service]}",
                      f"    default_backend {service}", f"backend {service}", "    balance roundrobin"]
            via = f" source {source}" if source else ""
            lines += [f"    server s{i} 127.0.0.1:{port} {server}{via}" for i, port in enumerate(ports, 1)]
        self.config = workdir / "haproxy.cfg"
        self.config.write_text("\n".join(lines) + "\n")
        self.output = workdir / "haproxy.out"
        with open(self.output, "wb") as out:
            self.process = subprocess.Popen([str(HAPROXY), "-f", str(self.config), "-db"], stdout=out, stderr=out)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", ready), timeout=1).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError(f"haproxy did not start:\n{self.output.read_text()}") from None
                time.sleep(0.05)

    def address(self, service: str) -> tuple[str, int]:
        return "127.0.0.1", self.frontends[service]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def client(address: tuple[str, int], source: str = "127.0.0.1") -> socket.socket:
    """A client socket bound to C{source}, so its address and port are known."""
    s = socket.socket()
    s.settimeout(5)
    s.bind((source, 0))
    s.connect(address)
    return s


def idleClosed(log: str) -> list[int]:
    """Client ports of the connections sockd closed for idleness, from its text log."""
    return [int(p) for p in re.findall(r"ack/tcp: closing 127\.0\.0\.1:(\d+): idle", log)]


@pytest.fixture(scope="module")
def balanced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[Daemon], HAProxy]]:
    """Two sockd instances behind one HAProxy."""
    daemons: list[Daemon] = []
    proxy = None
    try:
        for name in ("one", "two"):
            daemons.append(Daemon([*SERVICES, *IDLE], tmp_path_factory.mktemp(name)))
        backends = {s: [listenPort(d, s) for d in daemons] for s in ("ack", "daytime")}
        proxy = HAProxy(tmp_path_factory.mktemp("haproxy"), backends)
        yield daemons, proxy
    finally:
        if proxy is not None:
            proxy.stop()
        for d in daemons:
            d.stop()


def test_ack_balanced_with_client_ports_in_logs(balanced: tuple[list[Daemon], HAProxy]) -> None:
    daemons, proxy = balanced
    sockets = [client(proxy.address("ack")) for _ in range(8)]
    ports = [s.getsockname()[1] for s in sockets]
    for s, port in zip(sockets, ports, strict=True):
        s.sendall(f"client {port}\n".encode())
    for s in sockets:
        assert recvExactly(s, 18) == b"I got your message"
    for s in sockets:  # sockd closes each idle connection; HAProxy passes the close on
        assert recvAll(s) == b""
        s.close()
    logs = [d.log() for d in daemons]
    closed = [idleClosed(log) for log in logs]
    assert sorted(closed[0] + closed[1]) == sorted(ports)  # the clients' ports, never HAProxy's own
    assert closed[0] and closed[1]  # both instances got traffic
    for log, mine in zip(logs, closed, strict=True):
        assert sorted(int(p) for p in re.findall(r"Here is the message: client (\d+)", log)) == sorted(mine)


def test_daytime_balanced(balanced: tuple[list[Daemon], HAProxy]) -> None:
    _, proxy = balanced
    for _ in range(4):
        with client(proxy.address("daytime")) as s:
            assert DAYTIME.match(recvAll(s))


def test_listening_line_names_haproxy(balanced: tuple[list[Daemon], HAProxy]) -> None:
    daemons, _ = balanced
    assert "ack listening on haproxy 127.0.0.1:" in daemons[0].log()
    daemons[0].address("ack", "haproxy")


def test_access_control_sees_the_client(tmp_path: Path) -> None:
    d = Daemon([*SERVICES, "--deny", "127.0.0.2/32"], tmp_path)
    proxy = None
    try:
        proxy = HAProxy(tmp_path, {s: [listenPort(d, s)] for s in ("ack", "daytime")})
        with client(proxy.address("daytime"), source="127.0.0.2") as s:
            assert recvAll(s) == b""  # HAProxy itself connects from 127.0.0.1; the client is refused
        with client(proxy.address("ack"), source="127.0.0.2") as s:
            s.sendall(b"hello\n")
            assert recvAll(s) == b""
        with client(proxy.address("daytime")) as s:
            assert DAYTIME.match(recvAll(s))
        log = d.log()
        assert "daytime/tcp: refused 127.0.0.2 (access)" in log
        # (admission logs one refusal per address and interval, whatever the service)
        assert "refused 127.0.0.1" not in log and "Here is the message" not in log
    finally:
        if proxy is not None:
            proxy.stop()
        d.stop()


def test_client_without_header_is_aborted(balanced: tuple[list[Daemon], HAProxy]) -> None:
    """Straight to sockd, bypassing HAProxy: not a PROXY header, aborted at once, logged with the real peer."""
    daemons, _ = balanced
    with client(("127.0.0.1", listenPort(daemons[0], "daytime"))) as s:
        port = s.getsockname()[1]
        s.sendall(b"hello\r\n")
        try:
            data = recvAll(s)
        except ConnectionResetError:
            data = b""
    assert data == b""
    deadline = time.monotonic() + 5
    while f"daytime/tcp: aborted 127.0.0.1:{port}: not a PROXY header" not in daemons[0].log():
        assert time.monotonic() < deadline, daemons[0].log()
        time.sleep(0.05)


def test_haproxy_over_tls_is_refused_clearly(tmp_path: Path) -> None:
    """HAProxy sends the PROXY header in clear before any TLS handshake, so haproxy:ssl: cannot work: say so."""
    result = subprocess.run([TWISTD, *REACTOR, "-n", "--pidfile=", "sockd", "--ack",
                             "haproxy:ssl:0:privateKey=k:certKey=c"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "PROXY protocol over TLS is not supported" in lines[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def answerOrNothing(s: socket.socket) -> bytes:
    """All a connection answers before it ends; a reset (closed unread) answers nothing."""
    try:
        return recvAll(s)
    except ConnectionResetError:
        return b""


SPOOF = b"PROXY TCP4 10.1.2.3 127.0.0.1 1 46201\r\nhi\n"


def test_header_from_an_untrusted_peer_is_not_believed(tmp_path: Path) -> None:
    """The access list is for the client: a peer outside --trusted-proxy cannot claim an allowed address."""
    d = Daemon(["--ack", "haproxy:tcp:0:interface=127.0.0.1", "--allow", "10.0.0.0/8",
                "--trusted-proxy", "127.0.0.2/32"], tmp_path)
    try:
        port = listenPort(d, "ack")
        for _ in range(3):
            with client(("127.0.0.1", port)) as s:
                s.sendall(SPOOF)
                assert answerOrNothing(s) == b""
        with client(("127.0.0.1", port), source="127.0.0.2") as s:  # the trusted balancer's own address
            s.sendall(SPOOF)
            assert recvExactly(s, 18) == b"I got your message"
        waitFor(lambda: "Here is the message: hi" in d.log(), "the trusted header's message", logPath=d.logPath)
        log = d.log()
        assert log.count("ack/tcp: refused 127.0.0.1 (untrusted-proxy)") == 1, log  # once per interval
    finally:
        d.stop()


@pytest.mark.parametrize("server", ["send-proxy", "send-proxy-v2"])
def test_haproxy_as_a_trusted_proxy(tmp_path: Path, server: str) -> None:
    """HAProxy from a --trusted-proxy address is served; the same HAProxy from elsewhere is refused."""
    d = Daemon([*SERVICES, "--trusted-proxy", "127.0.0.2"], tmp_path)
    proxies = []
    try:
        backends = {s: [listenPort(d, s)] for s in ("ack", "daytime")}
        (tmp_path / "trusted").mkdir()
        (tmp_path / "untrusted").mkdir()
        trusted = HAProxy(tmp_path / "trusted", backends, server=server, source="127.0.0.2")
        proxies.append(trusted)
        untrusted = HAProxy(tmp_path / "untrusted", backends, server=server)
        proxies.append(untrusted)
        with client(trusted.address("daytime")) as s:
            assert DAYTIME.match(recvAll(s))
        with client(untrusted.address("daytime")) as s:
            assert answerOrNothing(s) == b""
        waitFor(lambda: "daytime/tcp: refused 127.0.0.1 (untrusted-proxy)" in d.log(), "the refusal",
                logPath=d.logPath)
    finally:
        for proxy in proxies:
            proxy.stop()
        d.stop()


def test_connections_waiting_for_a_header_count_against_max_connections(tmp_path: Path) -> None:
    """Silent connections hold places: past --max-connections the next is closed at once, not held open."""
    d = Daemon(["--ack", "haproxy:tcp:0:interface=127.0.0.1", "--max-connections", "5"], tmp_path)
    silent = []
    try:
        port = listenPort(d, "ack")
        silent = [client(("127.0.0.1", port)) for _ in range(5)]
        for _ in range(3):
            with client(("127.0.0.1", port)) as s:
                assert answerOrNothing(s) == b""  # closed by sockd, not by the 5-second header deadline
        waitFor(lambda: "ack/tcp: refused 127.0.0.1 (max-connections)" in d.log(), "the refusal", logPath=d.logPath)
        silent[0].sendall(b"PROXY TCP4 192.0.2.7 127.0.0.1 1 2\r\nhi\n")
        assert recvExactly(silent[0], 18) == b"I got your message"
    finally:
        for s in silent:
            s.close()
        d.stop()
