"""Listener defaults: Unix socket mode and a listen backlog deeper than Twisted's 50."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from sockd.config.descriptions import ListenSpec
from sockd.runtime.listeners import BACKLOG, withDefaults


def test_defaults_are_added_unless_the_description_says_otherwise():
    def endpoint(description: str) -> str:
        return withDefaults(ListenSpec.parse("ack", description), 0o660)

    assert endpoint("unix:a.sock") == f"unix:a.sock:mode=660:backlog={BACKLOG}"
    assert endpoint("unix:a.sock:mode=600:backlog=5") == "unix:a.sock:mode=600:backlog=5"
    assert endpoint("tcp:0") == f"tcp:0:backlog={BACKLOG}"
    assert endpoint("systemd:domain=INET:index=0") == "systemd:domain=INET:index=0"
    assert endpoint("haproxy:tcp:0") == f"tcp:0:backlog={BACKLOG}"
    assert endpoint("unix:a.sock:group=0") == f"unix:a.sock:mode=660:backlog={BACKLOG}"


@pytest.mark.skipif(shutil.which("ss") is None, reason="ss (iproute2) is not installed")
def test_listening_socket_has_the_deeper_backlog(daemon):
    d = daemon("--ack", "tcp:0:interface=127.0.0.1")
    port = d.address("ack", "tcp")[1]
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, timeout=10).stdout
    assert out.split()[2] == str(BACKLOG), out  # Send-Q of a listening socket is its backlog


def test_bare_ipv6_interfaces_are_escaped_for_twisted():
    from sockd.config.descriptions import escapeInterface

    assert escapeInterface("tcp6:0:interface=::1") == "tcp6:0:interface=\\:\\:1"
    assert escapeInterface("tcp6:0:interface=\\:\\:1") == "tcp6:0:interface=\\:\\:1"
    assert escapeInterface("tcp6:7:interface=fe80::1%lo:backlog=5") == "tcp6:7:interface=fe80\\:\\:1%lo:backlog=5"
    assert escapeInterface("tcp:0:interface=127.0.0.1") == "tcp:0:interface=127.0.0.1"
    assert escapeInterface("unix:/run/a:b") == "unix:/run/a:b"


def test_daemon_takes_an_unescaped_ipv6_interface_and_names_it_as_given(daemon):
    from tests.daemon import connect, recvExactly

    d = daemon("--ack", "tcp6:0:interface=::1")
    assert "ack listening on tcp6 [::1]:" in d.log()
    with connect(d.address("ack", "tcp6")) as s:
        s.sendall(b"v6\n")
        assert recvExactly(s, 18) == b"I got your message"


def test_each_listener_is_announced_in_one_line_of_the_start_up_log(daemon, tmp_path):
    """sockd says where each listener listens; Twisted's own "X starting on N" for the same port is debug only."""
    import re

    unix = tmp_path / "echo.sock"
    d = daemon("--ack", "tcp:0:interface=127.0.0.1", "--echo", "udp:0:interface=127.0.0.1", "--echo", f"unix:{unix}",
               "--daytime", "haproxy:tcp:0:interface=127.0.0.1", "--metrics", "tcp:0:interface=127.0.0.1", expect=5)
    log = d.log().splitlines()
    found = {
        "ack tcp": str(d.address("ack", "tcp")[1]),
        "echo udp": str(d.address("echo", "udp")[1]),
        "daytime haproxy": str(d.address("daytime", "haproxy")[1]),
        "metrics tcp": str(d.address("metrics", "tcp")[1]),
    }
    counts = {what: [line for line in log if re.search(rf"\b{port}\b", line)] for what, port in found.items()}
    counts["echo unix"] = [line for line in log if str(unix) in line]
    assert {what: len(lines) for what, lines in counts.items()} == dict.fromkeys(counts, 1), counts
    assert all("listening on" in lines[0] for lines in counts.values()), counts
    assert not [line for line in log if "starting on" in line], log
