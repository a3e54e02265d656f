"""sockd under systemd: the unit files, socket activation, and sd_notify readiness.

systemd is not PID 1 here, so nothing is started through systemctl.  Instead:
the unit files are checked offline (C{systemd-analyze verify}, C{security
--offline}) and parsed for their key settings; socket activation runs under
C{systemd-socket-activate}, nested once per Listen line of sockd.socket so that
sockd receives the same descriptors, in the same order, with the same names, as
from systemd, and runs the very arguments of the units' ExecStart lines; and
readiness is received on a NOTIFY_SOCKET of our own.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from twisted.logger import capturedLogs

from sockd.runtime.sdnotify import Notifier, notify, notifyAddress
from tests.daemon import HAVE_IPV6, LISTENING, REACTOR, TWISTD, recvExactly, waitFor

UNITS = Path(__file__).resolve().parents[2] / "contrib" / "systemd"
ACTIVATE = shutil.which("systemd-socket-activate")
ANALYZE = shutil.which("systemd-analyze")
ACK_ANSWER = b"I got your message"
UDP_ANSWER = b"Got your message\n"
TIMEOUT = 15.0
#: A graceful stop on SIGTERM exits 0 (tests/system/test_exit_status.py).
CLEAN = (0,)

needsActivate = pytest.mark.skipif(ACTIVATE is None, reason="systemd-socket-activate is not installed")

#: Sets O_NONBLOCK on the passed descriptors, then execs: what NonBlocking=yes makes systemd do.
NONBLOCKING_SHIM = (
    "import os, sys\n"
    "for fd in range(3, 3 + int(os.environ.get('LISTEN_FDS', '0'))):\n"
    "    os.set_blocking(fd, False)\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n"
)

#: Refuses writable+executable memory from here on (PR_SET_MDWE, Linux 6.3+), then execs: the
#: kernel's own form of what MemoryDenyWriteExecute=yes does with seccomp.
MDWE_SHIM = (
    "import ctypes, os, sys\n"
    "if ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) != 0:\n"
    "    sys.exit(97)\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n"
)


# ---------------------------------------------------------------------------------------------------------------
# Helpers: unit files, processes, notifications.


def parseUnit(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) for every setting, in order, with continuation lines joined."""
    settings: list[tuple[str, str, str]] = []
    section = ""
    pending = ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.append((section, key.strip(), value.strip()))
    return settings


def values(path: Path, key: str, section: str | None = None) -> list[str]:
    return [v for s, k, v in parseUnit(path) if k == key and (section is None or s == section)]


def only(path: Path, key: str) -> str:
    found = values(path, key)
    assert len(found) == 1, f"{path.name}: {key}= set {len(found)} times: {found}"
    return found[0]


def sockdArgs(path: Path) -> list[str]:
    """The arguments after C{sockd} in a unit's ExecStart."""
    words = shlex.split(only(path, "ExecStart"))
    return words[words.index("sockd") + 1:]


def freePort(host: str) -> int:
    """A port free for both TCP and UDP on C{host} (sockd.socket uses one number for both)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        with socket.socket(family, socket.SOCK_STREAM) as tcp, socket.socket(family, socket.SOCK_DGRAM) as udp:
            tcp.bind((host, 0))
            port = tcp.getsockname()[1]
            try:
                udp.bind((host, port))
            except OSError:
                continue
            return port
    raise AssertionError("no port free for both TCP and UDP")




def listening(logPath: Path) -> list[tuple[str, str, str]]:
    try:
        return LISTENING.findall(logPath.read_text(errors="replace"))
    except FileNotFoundError:
        return []


def twistd(logPath: Path, *args: str) -> list[str]:
    return [TWISTD, *REACTOR, "-n", "--pidfile=", "--logfile", str(logPath), "sockd", *args]


def activate(listen: str, names: str, datagram: bool = False, setenv: dict[str, str] | None = None) -> list[str]:
    """One C{systemd-socket-activate} layer: it passes on the descriptors it got, plus its own.

    It gives its child only the LISTEN_* variables and those named by C{-E}, so
    NOTIFY_SOCKET must be passed explicitly.
    """
    assert ACTIVATE is not None
    extra = [f"--setenv={k}={v}" for k, v in (setenv or {}).items()]
    return [ACTIVATE, *(["--datagram"] if datagram else []), "-l", listen, f"--fdname={names}", *extra, "--"]


def cleanEnv(**extra: str) -> dict[str, str]:
    """The test's environment without any systemd variables of its own, plus C{extra}."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("LISTEN_") and k != "NOTIFY_SOCKET"}
    env.update(extra)
    return env


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen]]:
    """Start a command; every process started is stopped (SIGTERM, then SIGKILL) after the test."""
    started: list[subprocess.Popen] = []

    def start(command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        errors = open(tmp_path / f"stderr-{len(started)}", "wb")
        proc = subprocess.Popen(command, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=errors, env=env if env is not None else cleanEnv())
        errors.close()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def stopped(proc: subprocess.Popen, timeout: float = 10.0) -> int | None:
    """SIGTERM, then the exit code, or None if the process is still running after C{timeout}."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


class NotifySocket:
    """The receiving end of NOTIFY_SOCKET, as systemd holds it: a bound Unix datagram socket.

    Like systemd it asks the kernel for each sender's credentials (SO_PASSCRED),
    so a test can check what NotifyAccess=main checks: the sender is the main PID.
    """

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(address)
        self.name = "@" + address[1:] if address.startswith("\0") else address
        self.sender: int | None = None

    def receive(self, timeout: float = TIMEOUT) -> str | None:
        """The next notification (its sender's PID in C{self.sender}), or None after C{timeout}."""
        self.sock.settimeout(timeout)
        try:
            data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(struct.calcsize("iII")))
        except TimeoutError:
            return None
        self.sender = None
        for level, kind, cdata in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                self.sender = struct.unpack("iII", cdata[:struct.calcsize("iII")])[0]
        return data.decode()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notifySocket(tmp_path: Path) -> Iterator[NotifySocket]:
    n = NotifySocket(str(tmp_path / "notify"))
    yield n
    n.close()


def connectWhenListening(address: tuple[str, int], timeout: float = TIMEOUT) -> socket.socket:
    """Connect once systemd-socket-activate listens; that connection is what starts sockd."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(address)
            return sock
        except ConnectionRefusedError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def ack(sock: socket.socket) -> bytes:
    sock.sendall(b"hello from the test\n")
    return recvExactly(sock, len(ACK_ANSWER))


def ackUnix(path: str | Path, timeout: float = 5.0) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        return ack(sock)


def ackUdp(address: tuple[str, int], timeout: float = TIMEOUT) -> bytes:
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(b"hello", address)
        return sock.recv(65535)


def activateListening(tmp_path: Path) -> Callable[[], bool]:
    """True once systemd-socket-activate has said it listens (its stderr)."""
    return lambda: any("Listening on" in p.read_text(errors="replace") for p in tmp_path.glob("stderr-*"))


# ---------------------------------------------------------------------------------------------------------------
# The unit files.


SERVICES = ("sockd.service", "sockd-activated.service")
ALL_UNITS = (*SERVICES, "sockd.socket")


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
def test_units_verify(tmp_path: Path) -> None:
    """C{systemd-analyze verify} runs without systemd as PID 1; it only needs ExecStart to exist.

    The units name /usr/local/bin/twistd, which is not installed here ("Command
    /usr/local/bin/twistd is not executable"), so copies point at this
    environment's twistd.  Any output counts as failure: an unknown key is only
    a warning ("Unknown key ... ignoring") with exit status 0.
    """
    for name in ALL_UNITS:
        text = (UNITS / name).read_text().replace("/usr/local/bin/twistd", TWISTD)
        (tmp_path / name).write_text(text)
    result = subprocess.run([ANALYZE, "verify", "--man=no", *(f"./{n}" for n in ALL_UNITS)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=30)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("name", SERVICES)
def test_units_security_exposure(tmp_path: Path, name: str) -> None:
    """systemd's own score of the sandbox (0 best, 10 worst); 1.8 and 1.6 when written."""
    shutil.copy(UNITS / name, tmp_path / name)
    result = subprocess.run([ANALYZE, "security", "--offline=yes", f"./{name}"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=30)
    match = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0


def test_units_key_settings() -> None:
    """What the deployment relies on, stated once more where a careless edit would show."""
    sandbox = {
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
        "PrivateDevices": "yes", "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes", "ProtectControlGroups": "yes", "RestrictNamespaces": "yes",
        "LockPersonality": "yes", "MemoryDenyWriteExecute": "yes", "RestrictRealtime": "yes",
        "SystemCallArchitectures": "native", "Restart": "on-failure", "User": "sockd", "Group": "sockd",
        "Type": "notify", "ExecReload": "/bin/kill -HUP $MAINPID",
    }
    for name in SERVICES:
        unit = UNITS / name
        for key, value in sandbox.items():
            assert only(unit, key) == value, f"{name}: {key}"
        assert set(only(unit, "RestrictAddressFamilies").split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
        assert shlex.split(only(unit, "ExecStart"))[:4] == ["/usr/local/bin/twistd", "--nodaemon", "--pidfile=",
                                                            "sockd"]
        assert only(unit, "TimeoutStopSec") and only(unit, "LimitNOFILE")
        assert not values(unit, "DynamicUser")

    service = UNITS / "sockd.service"
    assert only(service, "AmbientCapabilities") == "CAP_NET_BIND_SERVICE"
    assert only(service, "CapabilityBoundingSet") == "CAP_NET_BIND_SERVICE"
    assert only(service, "RuntimeDirectory") == "sockd"

    activated = UNITS / "sockd-activated.service"
    assert only(activated, "Requires") == only(activated, "After") == "sockd.socket"
    assert not values(activated, "NonBlocking"), "sockd makes inherited sockets non-blocking itself"
    assert only(activated, "CapabilityBoundingSet") == ""
    assert not values(activated, "RuntimeDirectory"), "it would delete sockd.socket's socket file at every stop"
    assert not values(activated, "ReadWritePaths"), "sockd neither chmods nor unlinks the adopted socket"

    sock = UNITS / "sockd.socket"
    listens = [(k, v) for _, k, v in parseUnit(sock) if k.startswith("Listen")]
    assert listens == [("ListenStream", "51717"), ("ListenDatagram", "51717"),
                       ("ListenStream", "/run/sockd/ack.sock")]
    assert (only(sock, "SocketMode"), only(sock, "SocketUser"), only(sock, "SocketGroup")) == ("0660", "sockd",
                                                                                               "sockd")
    assert only(sock, "Service") == "sockd-activated.service"
    assert only(sock, "FileDescriptorName")


def test_activated_descriptions_match_the_socket_unit() -> None:
    """Each index in sockd-activated.service names a Listen line of sockd.socket of the right kind."""
    listens = [(k, v) for _, k, v in parseUnit(UNITS / "sockd.socket") if k.startswith("Listen")]
    args = sockdArgs(UNITS / "sockd-activated.service")
    descriptions = [args[i + 1] for i, a in enumerate(args) if a.startswith("--")]
    assert len(descriptions) == len(listens)
    used = set()
    for description in descriptions:
        index = int(re.search(r":index=(\d+)", description).group(1))  # type: ignore[union-attr]
        used.add(index)
        kind, address = listens[index]
        if description.startswith("udp:"):
            assert kind == "ListenDatagram", description
        else:
            assert kind == "ListenStream", description
            # A bare port is the dual-stack IPv6 wildcard: its socket is AF_INET6.
            domain = "UNIX" if address.startswith("/") else ("INET" if re.match(r"[\d.]+:", address) else "INET6")
            assert description.startswith(f"systemd:domain={domain}:"), description
    assert used == set(range(len(listens)))


def test_sysusers_creates_the_user(tmp_path: Path) -> None:
    sysusers = shutil.which("systemd-sysusers")
    if sysusers is None:
        pytest.skip("systemd-sysusers is not installed")
    (tmp_path / "etc").mkdir()
    result = subprocess.run([sysusers, f"--root={tmp_path}", "--dry-run", str(UNITS / "sockd.sysusers.conf")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "Creating group 'sockd'" in result.stderr and "Creating user 'sockd'" in result.stderr


# ---------------------------------------------------------------------------------------------------------------
# notify() itself.


def test_notify_without_notify_socket_sends_nothing() -> None:
    assert notify("READY=1", environ={}) is False
    assert notify("READY=1", environ={"NOTIFY_SOCKET": ""}) is False


def test_notify_sends_one_datagram(tmp_path: Path) -> None:
    target = NotifySocket(str(tmp_path / "n"))
    try:
        assert notify("READY=1", environ={"NOTIFY_SOCKET": target.name}) is True
        assert target.receive(2) == "READY=1"
    finally:
        target.close()


def test_notify_abstract_namespace(tmp_path: Path) -> None:
    assert notifyAddress("@sockd/x") == "\0sockd/x"
    target = NotifySocket(f"\0sockd-test-{os.getpid()}-{tmp_path.name}")
    try:
        assert target.name.startswith("@")
        assert notify("STOPPING=1", environ={"NOTIFY_SOCKET": target.name}) is True
        assert target.receive(2) == "STOPPING=1"
    finally:
        target.close()


@pytest.mark.parametrize("where", ["missing", "file", "unbound", "vsock"])
def test_notify_failure_returns_false_and_logs_once(tmp_path: Path, where: str) -> None:
    """A broken NOTIFY_SOCKET must not stop sockd, nor repeat the same warning at every state change."""
    targets = {
        "missing": str(tmp_path / "nobody-listens"),
        "file": str(tmp_path / "a-file"),
        "unbound": "@sockd-test-nobody-binds-this-name",
        "vsock": "vsock:2:1234",  # systemd 254+ form, not a Unix socket
    }
    (tmp_path / "a-file").write_text("")
    environ = {"NOTIFY_SOCKET": targets[where]}
    notifier = Notifier()
    with capturedLogs() as events:
        assert notifier.notify("READY=1", environ) is False
        assert notifier.notify("STOPPING=1", environ) is False
    warnings = [e for e in events if e.get("log_namespace") == "sockd.sdnotify"]
    assert len(warnings) == 1
    assert warnings[0]["target"] == targets[where]


# ---------------------------------------------------------------------------------------------------------------
# Readiness: READY=1 once every listener is bound, STOPPING=1 at SIGTERM.


def test_ready_only_after_every_listener_then_stopping(spawn, tmp_path: Path, notifySocket: NotifySocket) -> None:
    logPath = tmp_path / "sockd.log"
    unixPath = tmp_path / "ack.sock"
    proc = spawn(twistd(logPath, "--ack", "tcp:0:interface=127.0.0.1", "--ack", "udp:0:interface=127.0.0.1",
                        "--ack", f"unix:{unixPath}"), env=cleanEnv(NOTIFY_SOCKET=notifySocket.name))
    assert notifySocket.receive() == "READY=1"
    assert notifySocket.sender == proc.pid, "NotifyAccess=main: only the main process may notify"
    # The moment READY=1 arrives, every listener has logged its line and answers.
    found = {(transport, address) for _, transport, address in listening(logPath)}
    assert {t for t, _ in found} == {"tcp", "udp", "unix"}, found
    tcpAddress = next(a for t, a in found if t == "tcp").rsplit(":", 1)
    udpAddress = next(a for t, a in found if t == "udp").rsplit(":", 1)
    with socket.create_connection((tcpAddress[0], int(tcpAddress[1])), timeout=5) as s:
        assert ack(s) == ACK_ANSWER
    assert ackUdp((udpAddress[0], int(udpAddress[1]))) == UDP_ANSWER
    assert ackUnix(unixPath) == ACK_ANSWER
    assert notifySocket.receive(0.2) is None, "READY=1 is sent once"
    assert stopped(proc) in CLEAN
    assert notifySocket.receive(5) == "STOPPING=1"
    assert notifySocket.sender == proc.pid


def test_sigterm_right_after_ready_stops_gracefully(spawn, tmp_path: Path, notifySocket: NotifySocket) -> None:
    """READY=1 waits for the reactor to run: twistd calls startService before reactor.run() installs
    its SIGTERM handler, and a stop right after READY=1 then killed sockd outright (8 of 10 runs)."""
    for attempt in range(3):
        logPath = tmp_path / f"sockd-{attempt}.log"
        proc = spawn(twistd(logPath, "--ack", "tcp:0:interface=127.0.0.1"),
                     env=cleanEnv(NOTIFY_SOCKET=notifySocket.name))
        assert notifySocket.receive() == "READY=1"
        assert stopped(proc) in CLEAN
        assert notifySocket.receive(5) == "STOPPING=1"
        assert "Server Shut Down." in logPath.read_text()


def test_ready_and_stopping_abstract_namespace(spawn, tmp_path: Path) -> None:
    notifySocket = NotifySocket(f"\0sockd-test-{os.getpid()}-{tmp_path.name}")
    try:
        proc = spawn(twistd(tmp_path / "sockd.log", "--ack", "tcp:0:interface=127.0.0.1"),
                     env=cleanEnv(NOTIFY_SOCKET=notifySocket.name))
        assert notifySocket.receive() == "READY=1"
        assert stopped(proc) in CLEAN
        assert notifySocket.receive(5) == "STOPPING=1"
    finally:
        notifySocket.close()


def test_no_ready_when_a_listener_cannot_bind(spawn, tmp_path: Path, notifySocket: NotifySocket) -> None:
    """All or nothing: systemd must see a failed start, not a ready daemon missing a listener."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = spawn(twistd(tmp_path / "sockd.log", "--ack", "tcp:0:interface=127.0.0.1",
                            "--ack", f"tcp:{port}:interface=127.0.0.1"),
                     env=cleanEnv(NOTIFY_SOCKET=notifySocket.name))
        assert proc.wait(TIMEOUT) != 0
    assert notifySocket.receive(0.3) is None


def test_service_execstart_runs_and_notifies(spawn, tmp_path: Path, notifySocket: NotifySocket) -> None:
    """sockd.service's own ExecStart arguments, on loopback port 0 and a temporary /run/sockd."""
    run = tmp_path / "run"
    run.mkdir()
    args = [re.sub(r"^(tcp|udp):51717$", r"\1:0:interface=127.0.0.1", a).replace("/run/sockd/", f"{run}/")
            for a in sockdArgs(UNITS / "sockd.service")]
    logPath = tmp_path / "sockd.log"
    proc = spawn(twistd(logPath, *args), env=cleanEnv(NOTIFY_SOCKET=notifySocket.name))
    assert notifySocket.receive() == "READY=1"
    assert sorted(t for _, t, _ in listening(logPath)) == ["tcp", "udp", "unix"]
    assert stat.S_IMODE(os.stat(run / "ack.sock").st_mode) == 0o660
    assert ackUnix(run / "ack.sock") == ACK_ANSWER
    assert stopped(proc) in CLEAN
    assert notifySocket.receive(5) == "STOPPING=1"


def test_workers_leave_notifying_to_the_main_process(spawn, tmp_path: Path, notifySocket: NotifySocket) -> None:
    proc = spawn(twistd(tmp_path / "sockd.log", "--workers", "2", "--ack", "tcp:0:interface=127.0.0.1"),
                 env=cleanEnv(NOTIFY_SOCKET=notifySocket.name))
    received = [(notifySocket.receive(), notifySocket.sender)]
    deadline = time.monotonic() + 3.0  # the workers start within about a second
    while time.monotonic() < deadline and all(pid == proc.pid for _, pid in received):
        message = notifySocket.receive(max(0.05, deadline - time.monotonic()))
        if message is not None:
            received.append((message, notifySocket.sender))
    assert received == [("READY=1", proc.pid)]


# ---------------------------------------------------------------------------------------------------------------
# Socket activation.


@needsActivate
def test_activation_tcp(spawn, tmp_path: Path) -> None:
    port = freePort("127.0.0.1")
    logPath = tmp_path / "sockd.log"
    proc = spawn([*activate(f"127.0.0.1:{port}", "ack"),
                  *twistd(logPath, "--ack", "systemd:domain=INET:index=0")])
    with connectWhenListening(("127.0.0.1", port)) as s:
        assert ack(s) == ACK_ANSWER
    assert listening(logPath) == [("ack", "systemd", f"127.0.0.1:{port}")]
    assert stopped(proc) in CLEAN


@needsActivate
def test_activation_udp_nonblocking(spawn, tmp_path: Path) -> None:
    """udp:index=0 adopts the datagram socket (made non-blocking, as NonBlocking=yes does)."""
    port = freePort("127.0.0.1")
    logPath = tmp_path / "sockd.log"
    proc = spawn([*activate(f"127.0.0.1:{port}", "ackudp", datagram=True),
                  sys.executable, "-c", NONBLOCKING_SHIM,
                  *twistd(logPath, "--ack", "udp:index=0", "--ack", "tcp:0:interface=127.0.0.1")])
    waitFor(activateListening(tmp_path), "systemd-socket-activate to listen", TIMEOUT, proc)
    assert ackUdp(("127.0.0.1", port)) == UDP_ANSWER  # this datagram starts sockd
    waitFor(lambda: len(listening(logPath)) == 2, "two listeners", TIMEOUT, proc, logPath)
    assert ("ack", "udp", f"127.0.0.1:{port}") in listening(logPath)
    assert ackUdp(("127.0.0.1", port)) == UDP_ANSWER
    assert stopped(proc) in CLEAN


@needsActivate
def test_activation_udp_blocking_socket_keeps_serving(spawn, tmp_path: Path) -> None:
    port = freePort("127.0.0.1")
    logPath = tmp_path / "sockd.log"
    proc = spawn([*activate(f"127.0.0.1:{port}", "ackudp", datagram=True),
                  *twistd(logPath, "--ack", "udp:index=0", "--ack", "tcp:0:interface=127.0.0.1")])
    waitFor(activateListening(tmp_path), "systemd-socket-activate to listen", TIMEOUT, proc)
    assert ackUdp(("127.0.0.1", port)) == UDP_ANSWER
    waitFor(lambda: len(listening(logPath)) == 2, "two listeners", TIMEOUT, proc, logPath)
    host, tcpPort = next(a for _, t, a in listening(logPath) if t == "tcp").rsplit(":", 1)
    answer: bytes | OSError
    try:
        with socket.create_connection((host, int(tcpPort)), timeout=2) as s:
            s.settimeout(2)
            answer = ack(s)
    except OSError as e:
        answer = e
    code = stopped(proc, timeout=2)
    if code is None:
        proc.kill()
        proc.wait(5)
    # The TCP listener next to it answers, and sockd stops on SIGTERM.
    assert (answer, code in CLEAN) == (ACK_ANSWER, True)


@needsActivate
def test_activation_unix(spawn, tmp_path: Path) -> None:
    path = tmp_path / "ack.sock"
    logPath = tmp_path / "sockd.log"
    proc = spawn([*activate(str(path), "ackunix"), *twistd(logPath, "--ack", "systemd:domain=UNIX:name=ackunix")])
    waitFor(path.exists, "the socket file", TIMEOUT, proc)
    assert ackUnix(path, timeout=TIMEOUT) == ACK_ANSWER
    assert listening(logPath) == [("ack", "systemd", str(path))]
    assert stopped(proc) in CLEAN


def _adoptUnix(spawn, tmp_path: Path) -> tuple[subprocess.Popen, Path, int]:
    """sockd adopting a Unix socket from systemd-socket-activate; returns the file's mode before."""
    path = tmp_path / "ack.sock"
    logPath = tmp_path / "sockd.log"
    proc = spawn([*activate(str(path), "ack"), *twistd(logPath, "--ack", "systemd:domain=UNIX:index=0")])
    waitFor(path.exists, "the socket file", TIMEOUT, proc)
    before = stat.S_IMODE(os.stat(path).st_mode)
    assert ackUnix(path, timeout=TIMEOUT) == ACK_ANSWER
    waitFor(lambda: listening(logPath), "the listener", TIMEOUT, proc, logPath)
    return proc, path, before


@needsActivate
def test_activation_unix_keeps_the_socket_mode(spawn, tmp_path: Path) -> None:
    proc, path, before = _adoptUnix(spawn, tmp_path)
    assert stat.S_IMODE(os.stat(path).st_mode) == before
    assert stopped(proc) in CLEAN


@needsActivate
def test_activation_unix_leaves_the_socket_file(spawn, tmp_path: Path) -> None:
    proc, path, _ = _adoptUnix(spawn, tmp_path)
    assert stopped(proc) in CLEAN
    assert path.exists()


@needsActivate
@pytest.mark.skipif(not HAVE_IPV6, reason="no IPv6 loopback")
def test_activation_wrong_domain_is_refused_or_harmless(spawn, tmp_path: Path) -> None:
    port = freePort("::1")
    logPath = tmp_path / "sockd.log"
    proc = spawn([*activate(f"[::1]:{port}", "ack"), *twistd(logPath, "--ack", "systemd:domain=INET:index=0")])
    try:
        connectWhenListening(("::1", port)).close()
    except OSError:
        pass
    waitFor(lambda: listening(logPath) or proc.poll() is not None, "sockd to start or fail", TIMEOUT)
    if proc.poll() is None:
        assert listening(logPath) == [("ack", "systemd", f"[::1]:{port}")]
    else:
        errors = "".join(p.read_text(errors="replace") for p in tmp_path.glob("stderr-*"))
        assert "say domain=INET6" in errors, errors


@needsActivate
@pytest.mark.skipif(not HAVE_IPV6, reason="no IPv6 loopback")
def test_socket_unit_and_activated_service(spawn, tmp_path: Path, notifySocket: NotifySocket) -> None:
    """sockd.socket's Listen lines and sockd-activated.service's ExecStart, as systemd would run them.

    Each Listen line becomes one nested systemd-socket-activate (each passes on the
    descriptors it got and adds its own), so sockd gets fds 3, 4, 5 in the unit's
    order with the unit's names; NonBlocking=yes is applied as systemd would;
    port 51717 becomes a free port on ::1 (still AF_INET6, like the wildcard) and
    /run/sockd a temporary directory.
    """
    socketUnit, service = UNITS / "sockd.socket", UNITS / "sockd-activated.service"
    port = freePort("::1")
    run = tmp_path / "run"
    run.mkdir()
    name = only(socketUnit, "FileDescriptorName")
    command: list[str] = []
    listens = [(k, v) for _, k, v in parseUnit(socketUnit) if k.startswith("Listen")]
    for i, (kind, address) in enumerate(listens):
        address = f"[::1]:{port}" if address == "51717" else address.replace("/run/sockd/", f"{run}/")
        innermost = i == len(listens) - 1
        command += activate(address, ":".join([name] * (i + 1)), datagram=kind == "ListenDatagram",
                            setenv={"NOTIFY_SOCKET": notifySocket.name} if innermost else None)
    if values(service, "NonBlocking") == ["yes"]:
        command += [sys.executable, "-c", NONBLOCKING_SHIM]
    logPath = tmp_path / "sockd.log"
    command += twistd(logPath, *sockdArgs(service))
    proc = spawn(command)

    with connectWhenListening(("::1", port)) as first:  # starts every layer, then sockd
        assert notifySocket.receive() == "READY=1"
        assert notifySocket.sender == proc.pid, "each layer execs the next: sockd is the main PID"
        assert sorted(listening(logPath)) == sorted([
            ("ack", "systemd", f"[::1]:{port}"), ("ack", "udp", f"[::1]:{port}"),
            ("ack", "systemd", str(run / "ack.sock"))])
        assert ack(first) == ACK_ANSWER
    assert ackUdp(("::1", port)) == UDP_ANSWER
    assert ackUdp(("::1", port)) == UDP_ANSWER
    # The socket file keeps the mode its creator gave it (systemd-socket-activate has no SocketMode=; it
    # makes 0666 & ~umask), not Twisted's 0666 (twisted#10261): no ExecStartPost= chmod is needed.
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(os.stat(run / "ack.sock").st_mode) == 0o666 & ~mask != 0o666
    assert ackUnix(run / "ack.sock") == ACK_ANSWER
    assert stopped(proc) in CLEAN
    assert notifySocket.receive(5) == "STOPPING=1"


# ---------------------------------------------------------------------------------------------------------------
# MemoryDenyWriteExecute=yes.


def test_memory_deny_write_execute_breaks_tls_only(spawn, tmp_path: Path, notifySocket: NotifySocket) -> None:
    """Under PR_SET_MDWE (the kernel's MemoryDenyWriteExecute) plain listeners work; TLS connections fail.

    That is why the units keep MemoryDenyWriteExecute=yes but tell you to remove
    it for ssl:/tls: listeners: pyOpenSSL's callbacks need writable+executable
    memory from cffi, and the listener starts while every handshake fails.
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost"], check=True, capture_output=True, timeout=30)
    logPath = tmp_path / "sockd.log"
    proc = spawn([sys.executable, "-c", MDWE_SHIM,
                  *twistd(logPath, "--ack", "tcp:0:interface=127.0.0.1", "--ack", "udp:0:interface=127.0.0.1",
                          "--ack", f"unix:{tmp_path / 'ack.sock'}",
                          "--ack", f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}")],
                 env=cleanEnv(NOTIFY_SOCKET=notifySocket.name))
    ready = notifySocket.receive()
    if proc.poll() == 97:
        pytest.skip("prctl(PR_SET_MDWE) is not available (Linux < 6.3)")
    assert ready == "READY=1"
    found = {t: a.rsplit(":", 1) for _, t, a in listening(logPath)}
    with socket.create_connection((found["tcp"][0], int(found["tcp"][1])), timeout=5) as s:
        assert ack(s) == ACK_ANSWER
    assert ackUdp((found["udp"][0], int(found["udp"][1]))) == UDP_ANSWER
    assert ackUnix(tmp_path / "ack.sock") == ACK_ANSWER
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((found["ssl"][0], int(found["ssl"][1])), timeout=5) as raw:
        with pytest.raises((ssl.SSLError, OSError)):
            with context.wrap_socket(raw) as s:
                ack(s)
    assert "Cannot allocate write+execute memory for ffi.callback()" in logPath.read_text(errors="replace")
    assert stopped(proc) in CLEAN
