"""Reload in-process: an Assembly built from real options on a fake reactor, its configuration file rewritten.

No daemon and no socket: nothing is bound (the listeners bind only when
started), so what a reload changes is read straight off the policies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.testing import MemoryReactorClock

from sockd.app import Assembly
from sockd.config.descriptions import ListenSpec
from sockd.defences.stream import PolicyFactory
from sockd.tap import Options

TLS = "ssl:0:interface=127.0.0.1:privateKey=key.pem:certKey=cert.pem"


def build(tmp_path: Path, text: str, *args: str) -> tuple[Assembly, Path]:
    config = tmp_path / "sockd.toml"
    config.write_text(text)
    options = Options()
    options.parseOptions(["--config", str(config), *args])
    return Assembly(options, MemoryReactorClock()), config


def policy(assembly: Assembly, service: str, description: str) -> PolicyFactory:
    """The policy the assembly's record of this listener holds (a reload changes it in place)."""
    found: Any = assembly.running[ListenSpec.parse(service, description)].policy
    assert isinstance(found, PolicyFactory)
    return found


def test_a_reload_can_turn_the_tls_handshake_deadline_off_and_on_again(tmp_path: Path) -> None:
    listen = f'[listen]\nack = ["{TLS}"]\n'
    assembly, config = build(tmp_path, "tls_handshake_timeout = 3\n" + listen)
    assert policy(assembly, "ack", TLS).handshakeTimeout == 3
    config.write_text("tls_handshake_timeout = 0\n" + listen)
    assembly.reload()
    assert policy(assembly, "ack", TLS).handshakeTimeout == 0
    config.write_text("tls_handshake_timeout = 7\n" + listen)
    assembly.reload()
    assert policy(assembly, "ack", TLS).handshakeTimeout == 7


def test_a_plain_tcp_listener_never_gets_a_handshake_deadline(tmp_path: Path) -> None:
    listen = '[listen]\nack = ["tcp:0"]\n'
    assembly, config = build(tmp_path, "tls_handshake_timeout = 3\n" + listen)
    config.write_text("tls_handshake_timeout = 9\n" + listen)
    assembly.reload()
    assert policy(assembly, "ack", "tcp:0").handshakeTimeout == 0


def test_a_reload_that_turns_the_idle_timeout_on_closes_connections_already_idle(tmp_path: Path) -> None:
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransportWithDisconnection

    listen = '[listen]\necho = ["tcp:0"]\n'
    assembly, config = build(tmp_path, "idle_timeout = 0\n" + listen)
    factory = policy(assembly, "echo", "tcp:0")
    address = IPv4Address("TCP", "192.0.2.1", 40000)
    protocol = factory.buildProtocol(address)
    transport = StringTransportWithDisconnection(peerAddress=address)
    transport.protocol = protocol
    protocol.makeConnection(transport)
    clock = assembly.reactor
    clock.advance(100)
    config.write_text("idle_timeout = 5\n" + listen)
    assembly.reload()
    clock.advance(5)
    assert not transport.connected


def test_a_service_table_sets_that_services_limits_only_and_a_reload_changes_them(tmp_path: Path) -> None:
    listen = '[listen]\nack = ["tcp:0"]\necho = ["tcp:0"]\n'
    text = 'exempt = ["none"]\nmax_per_source = 3\n[echo]\nmax_per_source = 1\nidle_timeout = 4\n' + listen
    assembly, config = build(tmp_path, text)
    ack, echo = policy(assembly, "ack", "tcp:0"), policy(assembly, "echo", "tcp:0")
    assert (ack.idleTimeout, echo.idleTimeout) == (120, 4)
    assert [echo.admission.admit("192.0.2.1") for _ in range(2)] == [None, "per-source"]
    assert [ack.admission.admit("192.0.2.1") for _ in range(4)] == [None, None, None, "per-source"]
    assert assembly.admission.total == 4  # the daemon's total counts every service's connections

    config.write_text('exempt = ["none"]\nmax_per_source = 3\n[echo]\nmax_per_source = 2\n' + listen)
    assembly.reload()
    echo = policy(assembly, "echo", "tcp:0")
    assert echo.admission.admit("192.0.2.1") is None  # 2 now, with the one still open
    assert echo.admission.admit("192.0.2.1") == "per-source"
    assert echo.idleTimeout == 120  # no longer in [echo]: the default again

    config.write_text('exempt = ["none"]\nmax_per_source = 3\n' + listen)
    assembly.reload()
    echo = policy(assembly, "echo", "tcp:0")
    assert echo.admission is assembly.admission  # no table: the daemon's rules


def test_the_daemon_total_bounds_services_with_their_own_limits(tmp_path: Path) -> None:
    listen = '[listen]\nack = ["tcp:0"]\necho = ["tcp:0"]\n'
    assembly, _ = build(tmp_path, 'exempt = ["none"]\nmax_connections = 2\n[echo]\nmax_connections = 5\n' + listen)
    ack, echo = policy(assembly, "ack", "tcp:0"), policy(assembly, "echo", "tcp:0")
    assert ack.admission.admit("192.0.2.1") is None
    assert echo.admission.admit("192.0.2.2") is None
    assert echo.admission.admit("192.0.2.3") == "max-connections"


def test_a_bad_service_table_at_reload_keeps_the_running_configuration(tmp_path: Path) -> None:
    listen = '[listen]\necho = ["tcp:0"]\n'
    assembly, config = build(tmp_path, '[echo]\nmax_per_source = 1\n' + listen)
    config.write_text('[echo]\nmax_per_sourc = 5\n' + listen)
    assembly.reload()
    assert assembly.metrics.reloads["failed"] == 1
    assert policy(assembly, "echo", "tcp:0").admission.limits.maxPerSource == 1
