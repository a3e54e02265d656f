"""The assembly in-process: what makeService builds, and what a reload changes, on a memory reactor.

The end-to-end reload tests (tests/test_config.py) send SIGHUP to a real
daemon; these check the same decisions without a process: which listeners
open and close, what kept listeners serve afterwards, and that a broken file
changes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock

from sockd.app import Assembly
from sockd.defences.stream import PolicyFactory
from sockd.protocols.ack import AckFactory
from sockd.protocols.echo import EchoFactory
from sockd.tap import Options


class FakeUDPPort:
    def __init__(self, port: int, protocol: Any, interface: str) -> None:
        self.port = port or 40000
        self.protocol = protocol
        self.interface = interface
        self.listening = True

    def getHost(self) -> IPv4Address:
        return IPv4Address("UDP", self.interface or "0.0.0.0", self.port)

    def stopListening(self) -> None:
        self.listening = False


class UDPMemoryReactor(MemoryReactorClock):
    """MemoryReactorClock has no listenUDP: record datagram ports too."""

    def __init__(self) -> None:
        super().__init__()
        self.udpPorts: list[FakeUDPPort] = []

    def listenUDP(self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192) -> FakeUDPPort:
        fake = FakeUDPPort(port, protocol, interface)
        protocol.makeConnection(fake)
        self.udpPorts.append(fake)
        return fake


def build(tmp_path: Path, config: str) -> tuple[Assembly, UDPMemoryReactor, Path]:
    path = tmp_path / "sockd.toml"
    path.write_text(config)
    options = Options()
    options.parseOptions(["--config", str(path)])
    reactor = UDPMemoryReactor()
    assembly = Assembly(options, reactor)
    assembly.top.privilegedStartService()
    assembly.top.startService()
    return assembly, reactor, path


def policyOf(listener: Any) -> PolicyFactory:
    factory = listener.factory
    while not isinstance(factory, PolicyFactory):
        factory = factory.wrappedFactory
    return factory


LISTEN = '[listen]\nack = ["tcp:7001:interface=127.0.0.1", "udp:7001:interface=127.0.0.1"]\n'


def test_the_assembly_binds_what_the_file_lists(tmp_path: Path) -> None:
    assembly, reactor, _ = build(tmp_path, "max_per_source = 3\n" + LISTEN)
    assert list(assembly.listeners) == [("ack", "tcp:7001:interface=127.0.0.1"),
                                        ("ack", "udp:7001:interface=127.0.0.1")]
    assert [(port, interface) for port, _, _, interface in reactor.tcpServers] == [(7001, "127.0.0.1")]
    assert [(p.port, p.interface) for p in reactor.udpPorts] == [(7001, "127.0.0.1")]
    assert 7001 in assembly.datagramPolicy.blockedPorts  # its own UDP port never gets answers
    assert assembly.settings.max_per_source == 3
    assert isinstance(policyOf(assembly.listeners[("ack", "tcp:7001:interface=127.0.0.1")]).wrappedFactory,
                      AckFactory)


def test_reload_opens_new_listeners_closes_dropped_ones_and_rebuilds_kept_ones(tmp_path: Path) -> None:
    assembly, reactor, path = build(tmp_path, LISTEN)
    kept = assembly.listeners[("ack", "tcp:7001:interface=127.0.0.1")]
    oldService = policyOf(kept).wrappedFactory
    udp = reactor.udpPorts[0]
    path.write_text('max_per_source = 5\nidle_timeout = 30\n[listen]\nack = ["tcp:7001:interface=127.0.0.1"]\n'
                    'echo = ["tcp:7007:interface=127.0.0.1"]\n')
    assembly.reload()
    assert list(assembly.listeners) == [("ack", "tcp:7001:interface=127.0.0.1"),
                                        ("echo", "tcp:7007:interface=127.0.0.1")]
    assert assembly.listeners[("ack", "tcp:7001:interface=127.0.0.1")] is kept  # not rebound
    assert not udp.listening  # dropped from the file: closed
    assert [port for port, _, _, _ in reactor.tcpServers] == [7001, 7007]
    assert policyOf(kept).wrappedFactory is not oldService  # new settings for new connections
    assert policyOf(kept).idleTimeout == 30
    assert isinstance(policyOf(assembly.listeners[("echo", "tcp:7007:interface=127.0.0.1")]).wrappedFactory,
                      EchoFactory)
    assert assembly.admission.limits.maxPerSource == 5


def test_a_broken_file_at_reload_keeps_the_running_configuration(tmp_path: Path) -> None:
    assembly, reactor, path = build(tmp_path, "max_per_source = 3\n" + LISTEN)
    before = dict(assembly.listeners)
    path.write_text("max_per_source = 'many'\n")
    assembly.reload()
    assert assembly.listeners == before
    assert assembly.settings.max_per_source == 3
    assert all(p.listening for p in reactor.udpPorts)


def test_a_listener_that_cannot_open_at_reload_is_skipped_and_the_rest_applied(tmp_path: Path) -> None:
    assembly, reactor, path = build(tmp_path, LISTEN)
    path.write_text('[listen]\nack = ["tcp:7001:interface=127.0.0.1", "ssl:7443:privateKey=/nonexistent/key.pem"]\n'
                    'echo = ["tcp:7007:interface=127.0.0.1"]\n')
    assembly.reload()
    assert ("echo", "tcp:7007:interface=127.0.0.1") in assembly.listeners
    assert ("ack", "ssl:7443:privateKey=/nonexistent/key.pem") not in assembly.listeners
    assert [port for port, _, _, _ in reactor.tcpServers] == [7001, 7007]
