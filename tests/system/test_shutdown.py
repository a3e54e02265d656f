"""Graceful shutdown, attacked: answers owed at SIGTERM are delivered, stragglers cannot hold the exit.

A drain that finished exits 0; one cut short by a second SIGTERM ends by that
signal (tests/system/test_exit_status.py).  Cleanliness is checked from the log as well.
"""

from __future__ import annotations

import signal
import socket
import threading
import time

from tests.daemon import Daemon, connect, recvAll, recvExactly

LOCAL = "tcp:0:interface=127.0.0.1"
ACK_ANSWER = b"I got your message"
CLEAN_EXITS = (0,)


def terminate(d: Daemon, timeout: float = 15.0) -> tuple[int, float]:
    """SIGTERM the daemon; return its exit code and the seconds it took to exit."""
    start = time.monotonic()
    d.process.send_signal(signal.SIGTERM)
    code = d.process.wait(timeout)
    return code, time.monotonic() - start


def assertCleanLog(d: Daemon) -> None:
    log = d.log()
    assert "Server Shut Down" in log
    assert "Traceback" not in log and "Unhandled" not in log, log[-3000:]


def test_every_answer_owed_at_sigterm_is_delivered(daemon) -> None:
    # --quiet-time 30: a partial message can only be answered by the shutdown's own flush.
    d = daemon("--ack", LOCAL, "--echo", LOCAL, "--grace", "5", "--quiet-time", "30")
    ackClients = [connect(d.address("ack"), timeout=10.0) for _ in range(10)]
    echoClients = [connect(d.address("echo"), timeout=10.0) for _ in range(10)]
    # SIGTERM follows at once: some of these connections are still in the accept queue then.
    echoed = [bytes([65 + i]) * 100_000 for i in range(10)]
    for i, sock in enumerate(ackClients):
        sock.sendall(b"".join(b"client %d message %d\n" % (i, j) for j in range(20)) + b"partial %d" % i)
    for sock, payload in zip(echoClients, echoed, strict=True):
        sock.sendall(payload)
    code, took = terminate(d)
    assert code in CLEAN_EXITS
    assert took < 3.0, f"took {took:.2f}s to stop with nothing left to do"
    for sock in ackClients:
        assert recvAll(sock) == ACK_ANSWER * 21, "an answer owed at SIGTERM was lost"
        sock.close()
    for sock, payload in zip(echoClients, echoed, strict=True):
        assert recvAll(sock) == payload, "echo bytes received before SIGTERM were not all returned"
        sock.close()
    log = d.log()
    assert all(f"Here is the message: partial {i}" in log for i in range(10))
    assertCleanLog(d)


def test_partial_ack_message_is_answered_at_sigterm(daemon) -> None:
    d = daemon("--ack", LOCAL, "--quiet-time", "30")
    sock = connect(d.address("ack"), timeout=10.0)
    sock.sendall(b"no newline here")
    time.sleep(0.2)  # read by the daemon, waiting for an end that never comes
    code, took = terminate(d)
    assert recvAll(sock) == ACK_ANSWER
    assert code in CLEAN_EXITS and took < 3.0
    assert "Here is the message: no newline here" in d.log()


def test_connection_that_keeps_sending_is_aborted_at_the_grace(daemon) -> None:
    d = daemon("--discard", LOCAL, "--echo", LOCAL, "--grace", "1")
    talker = connect(d.address("discard"))
    stop = threading.Event()
    failed: list[BaseException] = []

    def keepTalking() -> None:
        try:
            while not stop.is_set():
                talker.sendall(b"x" * 1000)
                time.sleep(0.01)
        except OSError as e:
            failed.append(e)

    thread = threading.Thread(target=keepTalking, daemon=True)
    thread.start()
    # A second straggler: an echo peer that never reads, with the daemon's buffer full.
    hog = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hog.connect(d.address("echo"))
    hog.settimeout(0.5)
    try:
        for _ in range(2000):
            hog.send(b"y" * 65536)
    except TimeoutError:
        pass
    time.sleep(0.2)
    start = time.monotonic()
    d.process.send_signal(signal.SIGTERM)
    # While draining, the listeners are already closed: nothing new gets in.
    time.sleep(0.3)
    refused = False
    try:
        connect(d.address("discard"), timeout=1.0).close()
    except ConnectionRefusedError:
        refused = True
    assert refused, "a new connection was accepted during shutdown"
    code = d.process.wait(15)
    took = time.monotonic() - start
    stop.set()
    thread.join(5)
    assert code in CLEAN_EXITS
    assert 0.9 <= took <= 2.5, f"exited {took:.2f}s after SIGTERM with --grace 1"
    assert failed, "the sender that outlived the grace was not cut off"
    hog.close()
    talker.close()
    assert "shutdown grace period over: aborting" in d.log()
    assertCleanLog(d)


def test_idle_connections_do_not_delay_the_exit(daemon) -> None:
    d = daemon("--ack", LOCAL, "--echo", LOCAL, "--grace", "10")
    idle = [connect(d.address("ack" if i % 2 else "echo")) for i in range(50)]
    for sock in idle[:5]:
        sock.sendall(b"one\n")
        assert recvExactly(sock, 18 if sock.getpeername()[1] == d.address("ack")[1] else 4)
    code, took = terminate(d)
    assert code in CLEAN_EXITS
    assert took < 2.0, f"50 idle connections held the exit for {took:.2f}s"
    for sock in idle:
        assert recvAll(sock) == b"", "an idle connection was sent something at shutdown"
        sock.close()
    assertCleanLog(d)


def test_a_second_sigterm_while_draining_stops_at_once(daemon) -> None:
    """SIGTERM drains (here up to 30 s); SIGTERM again ends the drain now, with no ReactorNotRunning traceback."""
    d = daemon("--discard", LOCAL, "--grace", "30")
    talker = connect(d.address("discard"))
    stop = threading.Event()

    def keepTalking() -> None:  # never quiet: the drain would wait for the whole grace period
        try:
            while not stop.is_set():
                talker.sendall(b"x" * 100)
                time.sleep(0.01)
        except OSError:
            pass  # cut off: the abort (or the exit)

    thread = threading.Thread(target=keepTalking, daemon=True)
    thread.start()
    time.sleep(0.2)
    d.process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert d.process.poll() is None, "draining, not stopped yet"
    start = time.monotonic()
    d.process.send_signal(signal.SIGTERM)
    code = d.process.wait(15)
    took = time.monotonic() - start
    stop.set()
    thread.join(5)
    talker.close()
    assert code == -signal.SIGTERM  # the drain was cut short: not a clean stop
    assert took < 5, f"exited {took:.2f}s after the second SIGTERM, --grace 30"
    log = d.log()
    assert "SIGTERM while stopping: not waiting for open connections" in log
    assert "SIGTERM again: aborting" in log
    assertCleanLog(d)
