"""Run the installed C{twistd sockd} as a subprocess and find its listeners.

Every test that needs a whole daemon uses L{Daemon}: it starts
C{twistd -n --pidfile= sockd ...} from the same environment as the tests, waits
for the one log line per listener that sockd writes at start-up, and tells the
test where each listener actually bound (port 0 gives an ephemeral port).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
TWISTD = str(BIN / "twistd")
#: SOCKD_TEST_REACTOR=epoll runs every daemon of the suite on Twisted's own epoll reactor instead of sockd's
#: default I/O core (scripts/test runs the suite both ways).  REACTOR goes right after TWISTD.
STOCK_REACTOR = os.environ.get("SOCKD_TEST_REACTOR", "") == "epoll"
REACTOR: list[str] = ["-r", "epoll"] if STOCK_REACTOR else []
#: The same for the C{sockd} command (twist's runner option).
COMMAND_REACTOR: list[str] = ["--reactor", "epoll"] if STOCK_REACTOR else []

#: Twisted's foreground runner; sockd must work the same under it as under twistd.
TWIST = str(BIN / "twist")
RUNNERS = ("twistd", "twist")


def runnerCommand(runner: str, logPath: Path | None = None, reactor: bool = True) -> list[str]:
    """The start of a command line that runs the sockd plugin under C{runner}, logging to C{logPath}.

    With C{reactor}, it names the stock reactor in the suite's stock run (SOCKD_TEST_REACTOR=epoll).
    """
    if runner == "twist":
        chosen = ["--reactor=epoll"] if STOCK_REACTOR and reactor else []
        return [TWIST, *chosen, "--log-format=text", *([f"--log-file={logPath}"] if logPath else [])]
    chosen = REACTOR if reactor else []
    return [TWISTD, *chosen, "-n", "--pidfile=", *(["--logfile", str(logPath)] if logPath else [])]

LISTENING = re.compile(r"\[sockd\.listeners#info\] (\w+) listening on (\w+) (\S+)")


class DaemonFailed(AssertionError):
    pass


class Daemon:
    """One running sockd; C{listeners[(service, transport)]} is a list of bound addresses."""

    def __init__(self, args: list[str], cwd: Path, expect: int | None = None, timeout: float = 15.0,
                 twistdArgs: list[str] | None = None, env: dict[str, str] | None = None,
                 runner: str = "twistd", preexec: Callable[[], Any] | None = None) -> None:
        self.cwd = Path(cwd)
        self.logPath = self.cwd / "sockd.log"
        named = "-r" in (twistdArgs or []) or any(a.startswith("--reactor") for a in (twistdArgs or []))
        self.command = [*runnerCommand(runner, self.logPath, reactor=not named), *(twistdArgs or []), "sockd", *args]
        if expect is None:
            expect = sum(1 for a in args if a.split("=")[0].lstrip("-") in SERVICE_NAMES)
        self.expect = expect
        self.stderrPath = self.cwd / "sockd.stderr"
        self._stderr = open(self.stderrPath, "wb")
        self.process = subprocess.Popen(self.command, cwd=self.cwd, stdout=subprocess.DEVNULL,
                                        stderr=self._stderr, env={**os.environ, **(env or {})},
                                        preexec_fn=preexec)
        self.listeners: dict[tuple[str, str], list[str]] = {}
        self._wait(timeout)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        try:
            return self.logPath.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stderr(self) -> str:
        return self.stderrPath.read_text(errors="replace")

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = LISTENING.findall(self.log())
            if len(found) >= self.expect:
                for service, transport, address in found:
                    self.listeners.setdefault((service, transport), []).append(address)
                return
            if self.process.poll() is not None:
                raise DaemonFailed(f"sockd exited with {self.process.returncode}:\n{self.stderr()}\n{self.log()}")
            time.sleep(0.05)
        self.stop()
        raise DaemonFailed(f"sockd did not report {self.expect} listeners in {timeout}s:\n{self.log()}")

    def address(self, service: str, transport: str = "tcp", index: int = 0) -> tuple[str, int]:
        text = self.listeners[(service, transport)][index]
        host, _, port = text.rpartition(":")
        host = host.strip("[]")
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        return host, int(port)

    def path(self, service: str, index: int = 0) -> str:
        path = self.listeners[(service, "unix")][index]
        return str(self.cwd / path) if not os.path.isabs(path) else path

    def stop(self, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._stderr.close()
        return self.process.returncode

    def rss(self) -> int:
        """Resident set size in bytes, from /proc."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))


SERVICE_NAMES = {"ack", "echo", "discard", "chargen", "daytime", "time", "qotd"}


def connect(address: tuple[str, int], timeout: float = 5.0) -> socket.socket:
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(address)
    return sock


def recvExactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            break
        data += chunk
    return data


def recvAll(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    """Read until end of stream (or C{limit} bytes)."""
    data = b""
    while len(data) < limit:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def udpExchange(address: tuple[str, int], payload: bytes, timeout: float = 3.0,
                bind: tuple[str, int] | None = None) -> bytes:
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        if bind:
            sock.bind(bind)
        sock.sendto(payload, address)
        return sock.recvfrom(65535)[0]


def _ipv6Loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


#: Whether this machine has an IPv6 loopback (::1) to test on.
HAVE_IPV6 = _ipv6Loopback()


def descriptorLimit(count: int) -> Callable[[], None]:
    """A C{preexec} that gives the child at most C{count} open descriptors (to make EMFILE happen on purpose)."""

    def limit() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))

    return limit


def withStderrOnATerminal(command: list[str], timeout: float = 30.0) -> tuple[int, str, bytes]:
    """Run C{command} with its standard error on a pseudo-terminal (as at a shell); its status, standard output
    (as text) and all it wrote to the terminal."""
    import pty
    import select

    master, slave = pty.openpty()
    try:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL, text=True)
        os.close(slave)
        slave = -1
        out, _ = process.communicate(timeout=timeout)
        terminal = b""
        while select.select([master], [], [], 0.2)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            terminal += chunk
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    return process.returncode, out, terminal


def children(pid: int) -> set[int]:
    """The pids whose parent is C{pid} (a --workers parent's workers), from /proc."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry))
    return found


def waitFor(predicate: Callable[[], Any], what: str, timeout: float = 15.0, proc: subprocess.Popen | None = None,
            logPath: Path | None = None, interval: float = 0.02) -> Any:
    """Poll C{predicate} until it returns something true (returned), or fail naming C{what}.

    Stops early if C{proc} exits; the failure shows C{logPath}'s text when given.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(interval)
    value = predicate()
    if value:
        return value
    log = logPath.read_text(errors="replace") if logPath is not None and logPath.exists() else ""
    code = proc.poll() if proc is not None else None
    raise AssertionError(f"timed out{f' or exited ({code})' if code is not None else ''} waiting for {what}\n{log}")
