"""Mistakes a user makes at start-up: one line that names the culprit, a failing exit, no traceback.

Each case runs C{twistd -n --pidfile= sockd ...} exactly as a user types it (no
C{--logfile}), in a scratch directory.  Two things are checked separately, so
that what works stays covered while what does not is visible:

  - the outcome: non-zero exit, no "Traceback" anywhere, and exactly one
    C{sockd: error:} line (on stderr or in the log on stdout) naming the thing;
  - the channel: that line, and nothing else, is on stderr.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.daemon import RUNNERS, Daemon, runnerCommand


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    pid: int

    @property
    def errorLines(self) -> list[str]:
        return [line for line in (self.stdout + "\n" + self.stderr).splitlines() if "sockd: error:" in line]


def runSockd(args: list[str], cwd: Path, timeout: float = 20.0, runner: str = "twistd") -> Run:
    """Start sockd as a user would and wait for it to give up (every case here must fail)."""
    process = subprocess.Popen([*runnerCommand(runner), "sockd", *args], cwd=cwd,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=10)
        raise AssertionError(f"sockd {args} did not fail; it kept running:\n{out.decode()}\n{err.decode()}") from None
    return Run(process.returncode, out.decode(errors="replace"), err.decode(errors="replace"), process.pid)


@pytest.fixture
def busyPort() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that another socket holds (bound and listening)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@dataclass
class Case:
    args: Callable[[Path, int], list[str]]
    names: Callable[[Path, int], list[str]]


CASES: dict[str, Case] = {
    "unknown-option": Case(lambda d, p: ["--bogus"], lambda d, p: ["--bogus"]),
    "description-without-kind": Case(lambda d, p: ["--ack", "nonsense"], lambda d, p: ["nonsense"]),
    "udp-port-not-a-number": Case(lambda d, p: ["--ack", "udp:notaport"], lambda d, p: ["notaport"]),
    "unknown-endpoint-type": Case(lambda d, p: ["--ack", "foo:1"], lambda d, p: ["foo:1", "foo"]),
    "bad-endpoint-argument": Case(lambda d, p: ["--ack", "tcp:0:bogus=1"], lambda d, p: ["tcp:0:bogus=1"]),
    "metrics-unknown-endpoint-type": Case(lambda d, p: ["--metrics", "foo:9101"], lambda d, p: ["--metrics", "foo"]),
    "tcp-port-out-of-range": Case(lambda d, p: ["--ack", "tcp:99999"], lambda d, p: ["99999"]),
    "port-in-use": Case(lambda d, p: ["--ack", f"tcp:{p}:interface=127.0.0.1"], lambda d, p: ["ack", str(p)]),
    "unix-directory-missing": Case(lambda d, p: ["--ack", f"unix:{d}/no/such/dir/ack.sock"],
                                   lambda d, p: [f"{d}/no/such/dir/ack.sock"]),
    "quotes-file-missing": Case(lambda d, p: ["--qotd", "tcp:0:interface=127.0.0.1", "--quotes", f"{d}/none.txt"],
                                lambda d, p: [f"{d}/none.txt"]),
    "bad-allow-cidr": Case(lambda d, p: ["--allow", "10.0.0.0/33"], lambda d, p: ["10.0.0.0/33"]),
    "bad-number": Case(lambda d, p: ["--max-message", "abc"],
                       lambda d, p: ["--max-message abc", "a whole number of at least 1"]),
    "bad-unix-mode": Case(lambda d, p: ["--unix-mode", "999"], lambda d, p: ["--unix-mode 999", "octal"]),
    "unix-unknown-group": Case(lambda d, p: ["--ack", f"unix:{d}/ack.sock:group=no-such-group-here"],
                               lambda d, p: ["--ack", f"{d}/ack.sock", "group 'no-such-group-here'"]),
    "ssl-certificate-missing": Case(
        lambda d, p: ["--ack", f"ssl:0:interface=127.0.0.1:privateKey={d}/key.pem:certKey={d}/cert.pem"],
        lambda d, p: [f"{d}/"]),
}

@pytest.mark.parametrize("name", list(CASES))
def test_error_fails_with_one_line_naming_the_culprit_and_no_traceback(name: str, tmp_path: Path,
                                                                       busyPort: int) -> None:
    case = CASES[name]
    run = runSockd(case.args(tmp_path, busyPort), tmp_path)
    assert run.code != 0
    assert "Traceback" not in run.stdout and "Traceback" not in run.stderr, run.stdout + run.stderr
    assert len(run.errorLines) == 1, run.stdout + run.stderr
    for word in case.names(tmp_path, busyPort):
        assert word in run.errorLines[0], (word, run.errorLines[0])
    assert "listening on" not in run.stdout


@pytest.mark.parametrize("name", list(CASES))
def test_error_is_exactly_one_line_on_stderr(name: str, tmp_path: Path, busyPort: int) -> None:
    case = CASES[name]
    run = runSockd(case.args(tmp_path, busyPort), tmp_path)
    assert run.code != 0
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    for word in case.names(tmp_path, busyPort):
        assert word in lines[0], (word, lines[0])
    assert "Traceback" not in run.stdout + run.stderr


def test_unix_directory_missing_does_not_show_the_pid_as_a_file_name(tmp_path: Path) -> None:
    run = runSockd(["--ack", f"unix:{tmp_path}/no/such/dir/ack.sock"], tmp_path)
    assert len(run.errorLines) == 1
    assert str(run.pid) not in run.errorLines[0], run.errorLines[0]


def test_unix_socket_of_a_live_process_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "live.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other.bind(str(path))
        other.listen()
        before = os.lstat(path)
        run = runSockd(["--ack", f"unix:{path}"], tmp_path)
        assert run.code != 0
        assert len(run.errorLines) == 1 and str(path) in run.errorLines[0], run.stdout + run.stderr
        assert "in use" in run.errorLines[0]
        assert "Traceback" not in run.stdout + run.stderr
        after = os.lstat(path)
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), "the socket file was replaced"
        # The other process still owns it and still accepts connections on it.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(2)
            probe.connect(str(path))
            conn, _ = other.accept()
            conn.close()


def test_a_file_that_is_not_a_socket_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "precious.txt"
    path.write_text("keep me\n")
    run = runSockd(["--ack", f"unix:{path}"], tmp_path)
    assert run.code != 0
    assert len(run.errorLines) == 1 and str(path) in run.errorLines[0]
    assert path.read_text() == "keep me\n"


def test_stale_socket_file_is_replaced_and_works(tmp_path: Path, daemon: Callable[..., Daemon]) -> None:
    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))  # the file stays behind when this socket closes: nobody listens on it
    assert path.exists()
    d = daemon("--ack", f"unix:{path}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(path))
        s.sendall(b"after the stale file\n")
        assert s.recv(64) == b"I got your message"
    assert f"removed stale socket file {path}" in d.log()


def test_failed_start_removes_the_unix_socket_of_the_listener_already_bound(tmp_path: Path, busyPort: int) -> None:
    path = tmp_path / "first.sock"
    run = runSockd(["--ack", f"unix:{path}", "--echo", f"tcp:{busyPort}:interface=127.0.0.1"], tmp_path)
    assert run.code != 0
    assert len(run.errorLines) == 1 and "echo" in run.errorLines[0] and str(busyPort) in run.errorLines[0]
    assert "Traceback" not in run.stdout + run.stderr
    assert not path.exists(), "the first listener's socket file was left behind"
    assert not Path(f"{path}.lock").exists()


def test_failed_start_releases_the_tcp_port_already_bound(tmp_path: Path, busyPort: int) -> None:
    """Start-up is all or nothing; after the failure the first listener's port is free again."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    run = runSockd(["--ack", f"tcp:{free}:interface=127.0.0.1", "--echo", f"tcp:{busyPort}:interface=127.0.0.1"],
                   tmp_path)
    assert run.code != 0 and len(run.errorLines) == 1
    deadline = time.monotonic() + 5
    with socket.socket() as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        while True:
            try:
                again.bind(("127.0.0.1", free))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


#: What each kind of mistake exits with: 2 for the command line, EX_CONFIG (78) for a bad
#: description or configuration file, 1 for a failure at run time; under both runners.
EXIT_STATUSES = {
    "unknown-option": 2,
    "bad-number": 2,
    "bad-unix-mode": 2,
    "description-without-kind": 78,
    "unknown-endpoint-type": 78,
    "bad-endpoint-argument": 78,
    "metrics-unknown-endpoint-type": 78,
    "udp-port-not-a-number": 78,
    "tcp-port-out-of-range": 78,
    "unix-unknown-group": 78,
    "port-in-use": 1,
    "unix-directory-missing": 1,
}


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("name", list(EXIT_STATUSES))
def test_exit_status(name: str, runner: str, tmp_path: Path, busyPort: int) -> None:
    run = runSockd(CASES[name].args(tmp_path, busyPort), tmp_path, runner=runner)
    assert run.code == EXIT_STATUSES[name], run.stdout + run.stderr
    assert len(run.stderr.splitlines()) == 1 and "sockd: error:" in run.stderr, run.stderr
    if EXIT_STATUSES[name] != 1:  # refused while parsing the options: before any banner or reactor
        assert run.stdout == "", run.stdout


@pytest.mark.parametrize("runner", RUNNERS)
def test_bad_configuration_file_exits_78(runner: str, tmp_path: Path) -> None:
    config = tmp_path / "sockd.toml"
    config.write_text("max_connections = 'many'\n")
    run = runSockd(["--config", str(config)], tmp_path, runner=runner)
    assert run.code == 78, run.stdout + run.stderr
    assert run.stderr.startswith(f"sockd: error: {config}:1:"), run.stderr
