"""Listen descriptions (sockd/config/descriptions.py): splitting and the udp: forms."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.endpoints import _parse as twistedParse

from sockd.config.descriptions import (
    SD_LISTEN_FDS_START,
    DatagramAddress,
    DescriptionError,
    isDatagram,
    parseDatagram,
    split,
    transportName,
)


@pytest.mark.parametrize(
    ("description", "expected"),
    [
        ("tcp:80", ("tcp", ["80"], {})),
        ("tcp:80:interface=127.0.0.1", ("tcp", ["80"], {"interface": "127.0.0.1"})),
        ("TCP6:0:interface=\\:\\:1", ("tcp6", ["0"], {"interface": "::1"})),
        ("unix:/run/a\\:b.sock:mode=660", ("unix", ["/run/a:b.sock"], {"mode": "660"})),
        ("unix:address=/tmp/x:lockfile=1", ("unix", [], {"address": "/tmp/x", "lockfile": "1"})),
        ("ssl:443:privateKey=k=v.pem", ("ssl", ["443"], {"privateKey": "k=v.pem"})),
        ("udp:0:", ("udp", ["0", ""], {})),
        ("udp", ("udp", [], {})),
        ("a\\\\b:c", ("a\\b", ["c"], {})),
        ("udp:0\\", ("udp", ["0\\"], {})),  # a trailing backslash is kept
    ],
)
def test_split(description: str, expected: tuple) -> None:
    assert split(description) == expected


# Descriptions without escaped '=' and without a trailing lone backslash: there sockd must split as Twisted does.
_piece = st.text(alphabet=st.sampled_from(list("ab0:=\\ /.")), max_size=12)


@settings(max_examples=200, deadline=None, database=None)
@given(st.sampled_from(["tcp", "UDP", "unix"]), _piece)
def test_split_agrees_with_twisted(kind: str, rest: str) -> None:
    description = f"{kind}:{rest}"
    if "\\=" in description.replace("\\\\", "") or description.replace("\\\\", "").endswith("\\"):
        return
    args, kwargs = twistedParse(description)
    kind, ourArgs, ourKwargs = split(description)
    assert [kind] + ourArgs == [args[0].lower()] + args[1:]
    assert ourKwargs == kwargs


def test_escaped_equals_is_literal_as_in_twisted() -> None:
    description = "unix:/run/a\\=b.sock"
    assert twistedParse(description) == (["unix", "/run/a=b.sock"], {})
    assert split(description) == ("unix", ["/run/a=b.sock"], {})


def test_kinds() -> None:
    assert isDatagram("udp:0") and isDatagram("UDP:0")
    assert not isDatagram("tcp:0") and not isDatagram("unix:/tmp/udp:0")
    assert transportName("tcp6:0:interface=\\:\\:1") == "tcp6"
    assert transportName("unix:x.sock") == "unix"


@pytest.mark.parametrize(
    ("description", "expected"),
    [
        ("udp:0", DatagramAddress(port=0, interface="", fd=None, family=socket.AF_INET)),
        ("udp:53", DatagramAddress(port=53, family=socket.AF_INET)),
        ("udp:65535:interface=127.0.0.1", DatagramAddress(port=65535, interface="127.0.0.1")),
        ("udp:53:interface=\\:\\:1", DatagramAddress(port=53, interface="::1", family=socket.AF_INET6)),
        ("udp:0:interface=\\:\\:", DatagramAddress(port=0, interface="::", family=socket.AF_INET6)),
        ("udp:0:interface=fe80\\:\\:1%lo", DatagramAddress(port=0, interface="fe80::1%lo", family=socket.AF_INET6)),
        ("udp:fd=9999:family=inet6", DatagramAddress(fd=9999, family=socket.AF_INET6)),
        ("udp:fd=9999:family=IPv4", DatagramAddress(fd=9999, family=socket.AF_INET)),
        ("udp:index=2:family=inet", DatagramAddress(fd=SD_LISTEN_FDS_START + 2, family=socket.AF_INET)),
    ],
)
def test_parse_datagram(description: str, expected: DatagramAddress) -> None:
    assert parseDatagram(description) == expected


def test_unescaped_ipv6_interface() -> None:
    """udp: takes one port and no other positional part, so the colons of interface=::1 are unambiguous."""
    assert parseDatagram("udp:53:interface=::1") == DatagramAddress(port=53, interface="::1", family=socket.AF_INET6)


@pytest.mark.parametrize(
    ("description", "message"),
    [
        ("udp:abc", "'udp:abc': port 'abc' is not a number"),
        ("udp:70000", "'udp:70000': port 70000 is out of range 0-65535"),
        ("udp:-1", "'udp:-1': port -1 is out of range 0-65535"),
        ("udp:", "'udp:': port '' is not a number"),
        ("udp", "'udp': expected udp:PORT[:interface=ADDRESS]"),
        ("udp:1:2", "'udp:1:2': expected udp:PORT[:interface=ADDRESS]"),
        ("udp:0:interface=localhost", "'udp:0:interface=localhost': interface 'localhost' is not an IP address"),
        ("udp:0:interface=300.1.1.1", "interface '300.1.1.1' is not an IP address"),
        ("udp:0:bogus=1", "'udp:0:bogus=1': unknown parameter 'bogus'"),
        ("udp:0:backlog=5:zz=1", "unknown parameter 'backlog'"),
        ("tcp:80", "'tcp:80' is not a udp: description"),
        ("udp:0:family=ipx", "'udp:0:family=ipx': family must be inet or inet6"),
        ("udp:fd=x", "'udp:fd=x': 'x' is not a file descriptor number"),
        ("udp:fd=-1", "'udp:fd=-1': file descriptor -1 is negative"),
        ("udp:index=-1:family=inet", "file descriptor -1 is negative"),
        ("udp:53:fd=3", "'udp:53:fd=3': an inherited socket takes no port or interface"),
        ("udp:fd=3:interface=127.0.0.1", "an inherited socket takes no port or interface"),
    ],
)
def test_parse_datagram_errors(description: str, message: str) -> None:
    with pytest.raises(DescriptionError) as e:
        parseDatagram(description)
    assert message in str(e.value)
    assert isinstance(e.value, ValueError)


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    made: list[socket.socket] = []
    yield made
    for s in made:
        s.close()


@pytest.mark.parametrize(("family", "host"), [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_inherited_udp_socket_family_is_detected(sockets: list[socket.socket], family: int, host: str) -> None:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sockets.append(sock)
    sock.bind((host, 0))
    fd = sock.fileno()
    assert parseDatagram(f"udp:fd={fd}") == DatagramAddress(fd=fd, family=family)
    # Probing the descriptor must leave it open and usable.
    os.fstat(fd)
    assert sock.getsockname()[1] > 0
    sock.sendto(b"still open", sock.getsockname()[:2])
    assert sock.recv(100) == b"still open"


def test_inherited_stream_socket_is_refused(sockets: list[socket.socket]) -> None:
    a, b = socket.socketpair()
    sockets += [a, b]
    with pytest.raises(DescriptionError, match=f"descriptor {a.fileno()} is not a datagram socket"):
        parseDatagram(f"udp:fd={a.fileno()}")
    a.sendall(b"x")
    assert b.recv(1) == b"x"  # left open


def test_inherited_descriptor_not_a_socket() -> None:
    r, w = os.pipe()
    try:
        with pytest.raises(DescriptionError, match=f"descriptor {r} is not an open socket"):
            parseDatagram(f"udp:fd={r}")
        os.write(w, b"x")
        assert os.read(r, 1) == b"x"
    finally:
        os.close(r)
        os.close(w)


def test_inherited_descriptor_closed() -> None:
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(DescriptionError, match=f"descriptor {r} is not an open socket"):
        parseDatagram(f"udp:fd={r}")


def test_the_transport_of_a_description_is_tcp_udp_or_unix():
    from sockd.config.descriptions import socketTransport

    cases = {
        "tcp:0": "tcp", "tcp6:0:interface=\\:\\:1": "tcp", "ssl:0:privateKey=k:certKey=c": "tcp",
        "tls:/pems:port=0": "tcp", "haproxy:tcp:0": "tcp", "haproxy:unix:x.sock": "unix",
        "systemd:domain=INET6:index=0": "tcp", "systemd:domain=UNIX:index=0": "unix",
        "unix:x.sock": "unix", "udp:0": "udp", "udp:index=1": "udp",
    }
    assert {d: socketTransport(d) for d in cases} == cases
