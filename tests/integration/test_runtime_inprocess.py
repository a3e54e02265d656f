"""The runtime's upper layers in-process: the worker supervisor and the top service, on a fake reactor.

No subprocess, no sleeping: C{MemoryReactorClock} keeps time, a recording
C{spawnProcess} stands in for the workers, and the notify socket is driven by
calling its receiving protocol as the reactor would.  The end-to-end tests
(tests/system/test_workers.py, tests/system/test_shutdown.py) remain the second depth.
"""

from __future__ import annotations

import os
import signal
import socket
from typing import Any

import pytest
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from zope.interface import implementer

from sockd.config.settings import Settings
from sockd.defences.datagram import DatagramPolicy
from sockd.defences.stream import ConnectionRegistry
from sockd.errors import StartupError
from sockd.interfaces import IDatagramListener, IListener, IStopsFirst
from sockd.runtime.daemon import SockdService
from sockd.runtime.workers.channel import receiveUpdates
from sockd.runtime.workers.notify import NotifyReceiver
from sockd.runtime.workers.spec import WorkerSpec
from sockd.runtime.workers.supervisor import Supervisor


class FakeProcess:
    """What spawnProcess returns: records signals."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[Any] = []
        self.stdinClosed = False

    def signalProcess(self, signum: Any) -> None:
        self.signals.append(signum)

    def closeStdin(self) -> None:
        self.stdinClosed = True


class FakePort:
    def __init__(self, path: str, protocol: Any) -> None:
        self.path = path
        self.protocol = protocol
        self.listening = True

    def stopListening(self) -> None:
        self.listening = False


class WorkerReactor(MemoryReactorClock):
    """A memory reactor that can spawn (pretend) processes and listen on Unix datagram sockets."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[dict[str, Any]] = []
        self.datagramPorts: list[FakePort] = []

    def spawnProcess(self, processProtocol: Any, executable: str, args: Any = (), env: Any = None,
                     path: Any = None, uid: Any = None, gid: Any = None, usePTY: bool = False,
                     childFDs: Any = None) -> FakeProcess:
        process = FakeProcess(1000 + len(self.spawned))
        spec = WorkerSpec.fromJSON(args[args.index("--worker") + 1])
        # The worker's copy of its control channel, as a fork would leave it (the parent closes its copy).
        control = os.dup(childFDs[spec.control])
        self.spawned.append({"protocol": processProtocol, "args": list(args), "env": env, "childFDs": childFDs,
                             "process": process, "spec": spec, "control": control})
        return process

    def listenUNIXDatagram(self, address: str, protocol: Any, maxPacketSize: int = 8192, mode: int = 0o666,
                           wantPID: int = 0) -> FakePort:
        port = FakePort(address, protocol)
        self.datagramPorts.append(port)
        return port


class FakeListener:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.port = object()
        self.paused = 0

    def fileno(self) -> int:
        return self.fd

    def pauseAccepting(self) -> None:
        self.paused += 1


@pytest.fixture
def supervisor(tmp_path):
    reactor = WorkerReactor()
    listeners = [("ack", "tcp:0", FakeListener(7))]
    sup = Supervisor(reactor, 2, lambda: listeners, ["--ack", "tcp:0"])
    sup.startService()
    yield sup, reactor
    sup.stopping = True
    for spawned in reactor.spawned:
        os.close(spawned["control"])
    for worker in sup.workers.values():
        if worker.control is not None:
            worker.control.close()


def died(code: int = 1) -> Failure:
    from twisted.internet.error import ProcessTerminated

    return Failure(ProcessTerminated(exitCode=code))


def test_workers_get_their_own_notify_socket_and_the_listening_descriptors(supervisor):
    sup, reactor = supervisor
    assert len(reactor.spawned) == 2
    paths = [s["env"]["NOTIFY_SOCKET"] for s in reactor.spawned]
    assert len(set(paths)) == 2 and all(p.startswith(sup.metricsDir) for p in paths)
    assert [p.path for p in reactor.datagramPorts] == paths
    assert all(s["childFDs"][7] == 7 for s in reactor.spawned)
    assert all(s["process"].stdinClosed for s in reactor.spawned)


def test_the_parent_does_not_pass_systemds_notify_socket_on(supervisor, monkeypatch):
    sup, reactor = supervisor
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    sup.spawn(0)
    assert reactor.spawned[-1]["env"]["NOTIFY_SOCKET"] != "/run/systemd/notify"


def test_sighup_is_held_until_the_worker_says_ready_on_its_notify_socket(supervisor):
    sup, reactor = supervisor
    sup.signalAll(signal.SIGHUP)
    first, second = (s["process"] for s in reactor.spawned)
    assert first.signals == [] and second.signals == []  # still starting: SIGHUP would kill them
    NotifyReceiver.datagramReceived(reactor.datagramPorts[0].protocol, b"READY=1\nSTATUS=serving", None)
    assert first.signals == [signal.SIGHUP] and second.signals == []
    sup.signalAll(signal.SIGHUP)  # a ready worker gets it at once; the other is still held, once
    assert first.signals == [signal.SIGHUP, signal.SIGHUP] and second.signals == []
    reactor.datagramPorts[1].protocol.datagramReceived(b"READY=1", None)
    assert second.signals == [signal.SIGHUP]


def test_other_notifications_do_not_count_as_ready(supervisor):
    sup, reactor = supervisor
    sup.signalAll(signal.SIGHUP)
    reactor.datagramPorts[0].protocol.datagramReceived(b"STATUS=READY=1 soon\nSTOPPING=1", None)
    assert reactor.spawned[0]["process"].signals == []


def test_a_dead_worker_is_restarted_and_its_notify_socket_closed(supervisor):
    sup, reactor = supervisor
    worker = reactor.spawned[0]["protocol"]
    reactor.advance(10)  # lived long enough: not a crash loop
    worker.processEnded(died())
    assert not reactor.datagramPorts[0].listening
    assert len(reactor.spawned) == 2
    reactor.advance(0.5)
    assert len(reactor.spawned) == 3 and sup.workers[0] is reactor.spawned[2]["protocol"]


def test_a_crash_loop_backs_off_exponentially_up_to_thirty_seconds(supervisor):
    sup, reactor = supervisor
    delays = []
    for _ in range(8):
        worker = sup.workers[0]
        worker.processEnded(died())
        before = len(reactor.spawned)
        waited = 0.0
        while len(reactor.spawned) == before:
            reactor.advance(0.25)
            waited += 0.25
            assert waited <= 31
        delays.append(waited)
    assert delays[:6] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
    assert delays[6:] == [30.0, 30.0]
    assert sup.restarts == 8  # sockd_worker_restarts_total, what SockdWorkersRestartLoop pages on


def test_stopping_terms_the_workers_then_kills_them_after_the_grace(supervisor):
    sup, reactor = supervisor
    sup.grace = 2.0
    d = sup.stopService()
    processes = [s["process"] for s in reactor.spawned]
    assert all(p.signals == [signal.SIGTERM] for p in processes)
    reactor.advance(7.0)
    assert all(p.signals == [signal.SIGTERM, signal.SIGKILL] for p in processes)
    for spawned in reactor.spawned:
        spawned["protocol"].processEnded(died(-9))
    assert d.called
    assert len(reactor.spawned) == 2  # no restart while stopping
    assert sup.restarts == 0


def test_a_replacement_worker_gets_a_fresh_notify_socket(supervisor):
    sup, reactor = supervisor
    reactor.advance(10)
    reactor.spawned[0]["protocol"].processEnded(died())
    reactor.advance(0.5)
    assert len(reactor.spawned) == 3
    paths = [p.path for p in reactor.datagramPorts]
    assert len(set(paths)) == 3


def listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def test_a_reload_sends_running_workers_the_sockets_opened_and_restarts_none(tmp_path):
    """Changed listeners reach the workers on their control channel, before SIGHUP: no new generation."""
    reactor = WorkerReactor()
    kept, removed, added = listening(), listening(), listening()
    listeners = [("echo", "tcp:kept", FakeListener(kept.fileno())),
                 ("ack", "tcp:removed", FakeListener(removed.fileno()))]
    sup = Supervisor(reactor, 2, lambda: listeners, ["--config", "x"])
    sup.startService()
    try:
        channels = [socket.socket(fileno=s["control"]) for s in reactor.spawned]
        for channel in channels:
            channel.setblocking(False)
        assert all(s["spec"].listeners[0].fd == kept.fileno() for s in reactor.spawned)
        for port in reactor.datagramPorts:
            port.protocol.datagramReceived(b"READY=1", None)
        assert receiveUpdates(channels[0]) == (None, {})  # nothing sent before a reload

        listeners[1:] = [("echo", "tcp:added", FakeListener(added.fileno()))]
        with capturedLogs() as events:
            sup.reload()
            for spawned in reactor.spawned:
                assert spawned["process"].signals == [signal.SIGHUP]
            for channel in channels:
                serve, adopted = receiveUpdates(channel)
                assert serve == (("echo", "tcp:kept"), ("echo", "tcp:added"))
                assert list(adopted) == [("echo", "tcp:added")]
                with socket.socket(fileno=adopted[("echo", "tcp:added")]) as got:
                    assert got.getsockname() == added.getsockname()  # the very socket the parent bound
            assert not any("all 2 workers reloaded" in formatEvent(e) for e in events)
            reactor.datagramPorts[0].protocol.datagramReceived(b"READY=1", None)
            assert not any("all 2 workers reloaded" in formatEvent(e) for e in events)
            reactor.datagramPorts[1].protocol.datagramReceived(b"READY=1", None)
            assert any("all 2 workers reloaded (2 listeners)" in formatEvent(e) for e in events)
        assert len(reactor.spawned) == 2  # no worker restarted

        sup.reload()  # nothing changed: a SIGHUP, no message
        assert receiveUpdates(channels[0]) == (None, {})
        assert reactor.spawned[0]["process"].signals == [signal.SIGHUP, signal.SIGHUP]
    finally:
        sup.stopping = True
        for sock in [kept, removed, added, *channels]:
            sock.close()
        for worker in sup.workers.values():
            worker.control.close()


def test_a_worker_that_cannot_take_the_update_is_restarted_on_the_current_listeners():
    reactor = WorkerReactor()
    kept, added = listening(), listening()
    listeners = [("echo", "tcp:kept", FakeListener(kept.fileno()))]
    sup = Supervisor(reactor, 2, lambda: listeners, [])
    sup.startService()
    try:
        sup.workers[0].control.close()  # as if its channel broke
        listeners.append(("echo", "tcp:added", FakeListener(added.fileno())))
        sup.reload()
        assert reactor.spawned[0]["process"].signals == [signal.SIGTERM]
        assert reactor.spawned[1]["process"].signals == []  # not ready yet: its SIGHUP waits
        reactor.advance(10)
        reactor.spawned[0]["protocol"].processEnded(died())
        reactor.advance(0.5)
        assert [(i.name, i.description) for i in reactor.spawned[2]["spec"].listeners] == [
            ("echo", "tcp:kept"), ("echo", "tcp:added")]
    finally:
        sup.stopping = True
        for sock in [kept, added]:
            sock.close()
        for spawned in reactor.spawned:
            os.close(spawned["control"])
        for worker in sup.workers.values():
            worker.control.close()


# The top service -------------------------------------------------------------------------------------------------


@implementer(IListener)
class RecordingListener(Service):
    def __init__(self, name: str, journal: list[str], fail: bool = False) -> None:
        self.name = self.serviceName = self.description = name
        self.journal = journal
        self.fail = fail

    def privilegedStartService(self) -> None:
        if self.fail:
            raise StartupError(f"{self.name}: cannot listen")
        self.journal.append(f"bind {self.name}")

    def startService(self) -> None:
        super().startService()
        self.journal.append(f"start {self.name}")

    def stopService(self) -> Any:
        super().stopService()
        self.journal.append(f"stop {self.name}")

    def abandon(self) -> None:
        self.journal.append(f"abandon {self.name}")


@implementer(IDatagramListener)
class RecordingDatagramListener(RecordingListener):
    boundPort = 5353


@implementer(IStopsFirst)
class RecordingSupervisor(Service):
    def __init__(self, journal: list[str]) -> None:
        self.name = "workers"
        self.journal = journal
        self.ended: defer.Deferred[None] = defer.Deferred()

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        self.journal.append("stop workers")
        return self.ended

    def hurry(self) -> None:
        self.journal.append("hurry workers")


def topService(reactor: Any) -> tuple[SockdService, DatagramPolicy]:
    settings = Settings()
    policy = DatagramPolicy(settings, reactor.seconds, frozenset())
    return SockdService(reactor, ConnectionRegistry(reactor), policy, grace=1.0), policy


def test_start_is_all_or_nothing_and_abandons_what_was_bound():
    reactor = MemoryReactorClock()
    top, _ = topService(reactor)
    journal: list[str] = []
    for name, fail in (("a", False), ("b", False), ("c", True)):
        RecordingListener(name, journal, fail).setServiceParent(top)
    with pytest.raises(StartupError, match="c: cannot listen"):
        top.privilegedStartService()
    assert journal == ["bind a", "bind b", "abandon b", "abandon a"]


def test_bound_datagram_ports_become_ports_sockd_never_answers():
    reactor = MemoryReactorClock()
    top, policy = topService(reactor)
    RecordingDatagramListener("udp", []).setServiceParent(top)
    top.privilegedStartService()
    assert 5353 in policy.blockedPorts


def test_workers_stop_before_the_listeners_whose_sockets_they_serve():
    reactor = MemoryReactorClock()
    top, _ = topService(reactor)
    journal: list[str] = []
    RecordingListener("a", journal).setServiceParent(top)
    workers = RecordingSupervisor(journal)
    workers.setServiceParent(top)
    RecordingListener("b", journal).setServiceParent(top)
    top.privilegedStartService()
    top.startService()
    journal.clear()
    d = top.stopService()
    assert journal == ["stop workers"]  # the listeners wait for the workers
    workers.ended.callback(None)
    assert journal == ["stop workers", "stop b", "stop a"]
    assert d.called  # no connections to drain


def test_ready_is_announced_only_once_the_reactor_runs(monkeypatch):
    sent: list[str] = []
    monkeypatch.setattr("sockd.runtime.daemon.notify", sent.append)
    reactor = MemoryReactorClock()
    top, _ = topService(reactor)
    top.privilegedStartService()
    top.startService()
    assert sent == []
    reactor.run()
    assert sent == ["READY=1"]


def test_started_without_the_privileged_step_binds_first_as_under_twist():
    """C{twist} calls only startService: the listeners must still be bound, before they start."""
    reactor = MemoryReactorClock()
    top, policy = topService(reactor)
    journal: list[str] = []
    RecordingListener("a", journal).setServiceParent(top)
    RecordingDatagramListener("udp", journal).setServiceParent(top)
    top.startService()
    assert journal == ["bind a", "bind udp", "start a", "start udp"]
    assert 5353 in policy.blockedPorts


def test_started_after_the_privileged_step_binds_once_as_under_twistd():
    reactor = MemoryReactorClock()
    top, _ = topService(reactor)
    journal: list[str] = []
    RecordingListener("a", journal).setServiceParent(top)
    top.privilegedStartService()
    top.startService()
    assert journal == ["bind a", "start a"]


def test_services_that_stop_last_outlive_the_drain():
    """The health endpoint keeps answering (503 on /readyz) while connections drain."""
    reactor = MemoryReactorClock()
    top, _ = topService(reactor)
    journal: list[str] = []
    RecordingListener("a", journal).setServiceParent(top)
    health = RecordingListener("health", journal)
    health.setServiceParent(top)
    top.stopLast.append(health)
    top.startService()
    journal.clear()
    draining: defer.Deferred[None] = defer.Deferred()
    top.registry.drain = lambda grace: draining  # type: ignore[method-assign]
    d = top.stopService()
    assert journal == ["stop a"]
    draining.callback(None)
    assert journal == ["stop a", "stop health"]
    assert d.called


def render(resource: Any, path: bytes = b"/") -> tuple[int, bytes]:
    from twisted.web.test.requesthelper import DummyRequest

    request = DummyRequest([path])
    body = resource.render(request)
    return request.responseCode or 200, body


def test_healthz_and_readyz_follow_the_top_service():
    from sockd.runtime.health import Health, Readiness

    reactor = MemoryReactorClock()
    top, _ = topService(reactor)
    RecordingListener("a", []).setServiceParent(top)
    workersReady = [False]
    ready = Readiness(lambda: top.running and top.bound and workersReady[0])
    assert render(Health()) == (200, b"ok\n")
    assert render(ready)[0] == 503  # not bound yet
    top.startService()
    assert render(ready)[0] == 503  # the workers are still starting
    workersReady[0] = True
    assert render(ready) == (200, b"ready\n")
    top.stopService()
    assert render(ready)[0] == 503  # draining
    assert render(Health()) == (200, b"ok\n")  # still alive while it drains


def test_hurry_tells_the_workers_and_aborts_what_is_still_draining():
    reactor = MemoryReactorClock()
    top, _ = topService(reactor)
    journal: list[str] = []
    RecordingSupervisor(journal).setServiceParent(top)

    class Draining:
        peerName = "192.0.2.1:4000"

        class transport:
            aborted = 0

            @classmethod
            def abortConnection(cls) -> None:
                cls.aborted += 1

    connection = Draining()
    top.registry.connections.add(connection)  # type: ignore[arg-type]
    with capturedLogs() as events:
        top.hurry("SIGTERM")
    assert journal == ["hurry workers"] and Draining.transport.aborted == 1
    texts = [formatEvent(e) for e in events]
    assert "SIGTERM while stopping: not waiting for open connections" in texts
    assert "SIGTERM again: aborting 192.0.2.1:4000" in texts
