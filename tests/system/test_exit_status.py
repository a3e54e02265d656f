"""The exit status after SIGTERM, under each way of running sockd: C{sockd}, C{twistd -n sockd}, C{twist sockd}.

A drain that finished exits 0 (as sockd(8) says, and as gunicorn and uvicorn
do; Twisted's runners alone would end by re-raising the signal, 143, which
Kubernetes reports as an Error).  A second SIGTERM that cuts the drain short
ends the process by that signal: connections were dropped, so it is not clean.

Each daemon is started with SIGTERM and SIGINT at their default dispositions
(whatever the test runner has), and signalled only after it said READY=1 on
its notify socket, so the signal meets sockd's handler, not a start-up race.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import BIN, COMMAND_REACTOR, connect, runnerCommand, waitFor

RUNNERS = ("sockd", "twistd", "twist")
LOCAL = "tcp:0:interface=127.0.0.1"


def _defaultStopSignals() -> None:
    """In the child before exec: a parent (pytest, a shell with `trap`) may ignore these; sockd must not inherit it."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Running:
    """One sockd under C{runner}, started and waited for until READY=1."""

    def __init__(self, runner: str, args: list[str], cwd: Path, ownGroup: bool = False) -> None:
        self.logPath = cwd / "sockd.log"
        if runner == "sockd":
            command = [str(BIN / "sockd"), *COMMAND_REACTOR, "--log-format", "text", "--log-file", str(self.logPath)]
        else:
            command = [*runnerCommand(runner, self.logPath), "sockd"]
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(cwd / "notify.sock"))
        self.notify.settimeout(15)
        self.process = subprocess.Popen([*command, *args], cwd=cwd, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        env={**os.environ, "NOTIFY_SOCKET": str(cwd / "notify.sock")},
                                        preexec_fn=_defaultStopSignals,
                                        process_group=0 if ownGroup else None)
        states: list[str] = []
        while "READY=1" not in states:
            try:
                states += self.notify.recv(4096).decode().split("\n")
            except TimeoutError:
                self.process.kill()
                raise AssertionError(f"no READY=1 ({self.process.wait()}):\n{self.log()}") from None

    def log(self) -> str:
        return self.logPath.read_text(errors="replace") if self.logPath.exists() else ""

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        assert self.process.stderr is not None
        self.process.stderr.close()
        self.notify.close()


@pytest.fixture
def running(tmp_path: Path) -> Iterator[list[Running]]:
    started: list[Running] = []
    yield started
    for r in started:
        r.close()


@pytest.fixture
def busyCores() -> Iterator[None]:
    """Both cores busy (a spinning process per core) for the length of the test; bounded by the test."""
    spinners = [subprocess.Popen(["python3", "-c", "import time\nend = time.monotonic() + 120\n"
                                  "while time.monotonic() < end: pass"]) for _ in range(os.cpu_count() or 2)]
    yield
    for p in spinners:
        p.kill()
        p.wait(10)


def _stopOnce(runner: str, tmp_path: Path, running: list[Running]) -> None:
    r = Running(runner, ["--ack", LOCAL], tmp_path)
    running.append(r)
    r.process.send_signal(signal.SIGTERM)
    code = r.process.wait(15)
    assert code == 0, f"{runner}: exit {code}\n{r.log()[-3000:]}"
    log = r.log()
    assert "SIGTERM: stopping" in log
    assert "Traceback" not in log and "Unhandled" not in log, log[-3000:]


@pytest.mark.parametrize("round", range(3))
@pytest.mark.parametrize("runner", RUNNERS)
def test_sigterm_after_ready_exits_0(runner: str, round: int, tmp_path: Path, running: list[Running]) -> None:
    _stopOnce(runner, tmp_path, running)


@pytest.mark.parametrize("runner", RUNNERS)
def test_sigterm_exits_0_with_both_cores_busy(runner: str, tmp_path: Path, running: list[Running],
                                             busyCores: None) -> None:
    _stopOnce(runner, tmp_path, running)


@pytest.mark.parametrize("runner", RUNNERS)
def test_sigint_after_ready_exits_0(runner: str, tmp_path: Path, running: list[Running]) -> None:
    r = Running(runner, ["--ack", LOCAL], tmp_path)
    running.append(r)
    r.process.send_signal(signal.SIGINT)
    assert r.process.wait(15) == 0, r.log()[-3000:]


def test_ctrl_c_at_a_terminal_drains_every_worker_and_exits_0(tmp_path: Path, running: list[Running]) -> None:
    """Ctrl-C signals the terminal's whole foreground process group: under --workers only the parent may get it.

    A worker that got the SIGINT too would take the SIGTERM its parent passes on as a second signal and cut
    its drain short; here a connection that never goes quiet keeps a worker draining until --grace.
    """
    r = Running("twistd", ["--discard", LOCAL, "--workers", "2", "--grace", "2"], tmp_path, ownGroup=True)
    running.append(r)
    waitFor(lambda: "all 2 workers ready" in r.log(), "the workers", logPath=r.logPath)
    address = waitFor(lambda: _address(r.log(), "discard"), "the discard listener")
    talker = connect(address)
    stop = threading.Event()

    def keepTalking() -> None:
        try:
            while not stop.is_set():
                talker.sendall(b"x" * 100)
                stop.wait(0.01)
        except OSError:
            pass

    thread = threading.Thread(target=keepTalking, daemon=True)
    thread.start()
    try:
        os.killpg(r.process.pid, signal.SIGINT)  # what the terminal does to a foreground job
        assert r.process.wait(20) == 0, r.log()[-3000:]
    finally:
        stop.set()
        thread.join(5)
        talker.close()
    log = r.log()
    assert "cut short" not in log and "while stopping" not in log, log[-3000:]
    assert " object at 0x" not in log and "<class " not in log, log  # no reprs in an operator's log


@pytest.mark.parametrize("runner", RUNNERS)
def test_second_sigterm_cutting_the_drain_short_ends_by_sigterm(runner: str, tmp_path: Path,
                                                                 running: list[Running]) -> None:
    r = Running(runner, ["--discard", LOCAL, "--grace", "30"], tmp_path)
    running.append(r)
    address = waitFor(lambda: _address(r.log(), "discard"), "the discard listener")
    talker = connect(address)
    stop = threading.Event()
    sent = threading.Event()

    def keepTalking() -> None:  # never quiet: the drain would wait the whole grace period
        try:
            while not stop.is_set():
                talker.sendall(b"x" * 100)
                sent.set()
                stop.wait(0.01)
        except OSError:
            pass  # cut off by the abort

    thread = threading.Thread(target=keepTalking, daemon=True)
    thread.start()
    try:
        assert sent.wait(5)
        r.process.send_signal(signal.SIGTERM)
        waitFor(lambda: "finishing open connections" in r.log(), "the drain to start", proc=r.process)
        assert r.process.poll() is None, "draining, not stopped yet"
        r.process.send_signal(signal.SIGTERM)
        code = r.process.wait(15)
    finally:
        stop.set()
        thread.join(5)
        talker.close()
    assert code == -signal.SIGTERM, f"{runner}: exit {code}\n{r.log()[-3000:]}"
    log = r.log()
    assert "the drain was cut short by SIGTERM" in log
    assert "Traceback" not in log and "Unhandled" not in log, log[-3000:]


def _address(log: str, service: str) -> tuple[str, int] | None:
    from tests.daemon import LISTENING

    for name, transport, where in LISTENING.findall(log):
        if name == service and transport == "tcp":
            host, _, port = where.rpartition(":")
            return host.strip("[]"), int(port)
    return None
