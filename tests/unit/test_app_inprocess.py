"""The assembly in-process: what makeService builds, and what a reload changes, on a memory reactor.

The end-to-end reload tests (tests/system/test_config_reload.py) send SIGHUP to a real
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
from sockd.config.descriptions import ListenSpec
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


def key(service: str, description: str) -> ListenSpec:
    return ListenSpec.parse(service, description)


def policyOf(assembly: Assembly, service: str, description: str) -> PolicyFactory:
    """The stream policy in the assembly's record of one listener."""
    policy = assembly.running[key(service, description)].policy
    assert isinstance(policy, PolicyFactory)
    return policy


LISTEN = '[listen]\nack = ["tcp:7001:interface=127.0.0.1", "udp:7001:interface=127.0.0.1"]\n'


def listed(assembly: Assembly) -> list[tuple[str, str]]:
    return [(spec.service, str(spec)) for spec in assembly.running]


def test_the_assembly_binds_what_the_file_lists(tmp_path: Path) -> None:
    assembly, reactor, _ = build(tmp_path, "max_per_source = 3\n" + LISTEN)
    assert listed(assembly) == [("ack", "tcp:7001:interface=127.0.0.1"), ("ack", "udp:7001:interface=127.0.0.1")]
    assert [(port, interface) for port, _, _, interface in reactor.tcpServers] == [(7001, "127.0.0.1")]
    assert [(p.port, p.interface) for p in reactor.udpPorts] == [(7001, "127.0.0.1")]
    assert 7001 in assembly.datagramPolicy.blockedPorts  # its own UDP port never gets answers
    assert assembly.settings.max_per_source == 3
    assert isinstance(policyOf(assembly, "ack", "tcp:7001:interface=127.0.0.1").wrappedFactory, AckFactory)
    # The record holds what the listener serves: the policy is the very factory bound to the port.
    record = assembly.running[key("ack", "tcp:7001:interface=127.0.0.1")]
    assert reactor.tcpServers[0][1] is record.policy is record.listener.factory


def test_reload_opens_new_listeners_closes_dropped_ones_and_rebuilds_kept_ones(tmp_path: Path) -> None:
    assembly, reactor, path = build(tmp_path, LISTEN)
    kept = assembly.running[key("ack", "tcp:7001:interface=127.0.0.1")]
    oldService = kept.policy.wrappedFactory
    udp = reactor.udpPorts[0]
    path.write_text('max_per_source = 5\nidle_timeout = 30\n[listen]\nack = ["tcp:7001:interface=127.0.0.1"]\n'
                    'echo = ["tcp:7007:interface=127.0.0.1"]\n')
    assembly.reload()
    assert listed(assembly) == [("ack", "tcp:7001:interface=127.0.0.1"), ("echo", "tcp:7007:interface=127.0.0.1")]
    assert assembly.running[key("ack", "tcp:7001:interface=127.0.0.1")] is kept  # not rebound
    assert not udp.listening  # dropped from the file: closed
    assert [port for port, _, _, _ in reactor.tcpServers] == [7001, 7007]
    assert kept.policy.wrappedFactory is not oldService  # new settings for new connections
    assert kept.policy.idleTimeout == 30
    assert isinstance(policyOf(assembly, "echo", "tcp:7007:interface=127.0.0.1").wrappedFactory, EchoFactory)
    assert assembly.admission.limits.maxPerSource == 5


def test_reload_reaches_the_policy_behind_a_proxy_protocol_reader_through_the_record(tmp_path: Path) -> None:
    """haproxy: puts a PROXY protocol reader in front of the policy; the record names the policy itself."""
    from sockd.defences.proxyprotocol import ProxyProtocolFactory

    listen = '[listen]\necho = ["haproxy:tcp:7007:interface=127.0.0.1", "udp:7007:interface=127.0.0.1"]\n'
    assembly, reactor, path = build(tmp_path, listen)
    record = assembly.running[key("echo", "haproxy:tcp:7007:interface=127.0.0.1")]
    assert record.spec.proxy and record.spec.kind == "tcp" and record.spec.transport == "tcp"
    reader = reactor.tcpServers[0][1]
    assert isinstance(reader, ProxyProtocolFactory) and reader.wrappedFactory is record.policy
    datagram = assembly.running[key("echo", "udp:7007:interface=127.0.0.1")]
    oldInner = datagram.policy.inner
    oldService = record.policy.wrappedFactory
    path.write_text("idle_timeout = 9\n" + listen)
    assembly.reload()
    assert assembly.running[record.spec] is record  # kept, with the reader bound before still in front
    assert record.policy.idleTimeout == 9 and record.policy.wrappedFactory is not oldService
    assert isinstance(record.policy.wrappedFactory, EchoFactory)
    assert datagram.policy.inner is not oldInner  # the datagram guard got a new service too


def test_a_broken_file_at_reload_keeps_the_running_configuration(tmp_path: Path) -> None:
    assembly, reactor, path = build(tmp_path, "max_per_source = 3\n" + LISTEN)
    before = dict(assembly.running)
    path.write_text("max_per_source = 'many'\n")
    assembly.reload()
    assert assembly.running == before
    assert assembly.settings.max_per_source == 3
    assert all(p.listening for p in reactor.udpPorts)


def test_a_listener_that_cannot_open_at_reload_is_skipped_and_the_rest_applied(tmp_path: Path) -> None:
    assembly, reactor, path = build(tmp_path, LISTEN)
    path.write_text('[listen]\nack = ["tcp:7001:interface=127.0.0.1", "ssl:7443:privateKey=/nonexistent/key.pem"]\n'
                    'echo = ["tcp:7007:interface=127.0.0.1"]\n')
    assembly.reload()
    assert ("echo", "tcp:7007:interface=127.0.0.1") in listed(assembly)
    assert ("ack", "ssl:7443:privateKey=/nonexistent/key.pem") not in listed(assembly)
    assert [port for port, _, _, _ in reactor.tcpServers] == [7001, 7007]
