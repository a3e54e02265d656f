"""Listen descriptions (sockd/config/descriptions.py): splitting, the udp: forms, and the parsed ListenSpec."""

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
    ListenSpec,
    parseDatagram,
    split,
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
    def spec(description: str) -> ListenSpec:
        return ListenSpec.parse("echo", description)

    assert spec("udp:0").datagram is not None and spec("UDP:0").datagram is not None
    assert spec("tcp:0").datagram is None and spec("unix:/tmp/udp:0").datagram is None
    assert spec("tcp6:0:interface=\\:\\:1").kind == "tcp6"
    assert spec("unix:x.sock").kind == "unix"
    assert (spec("haproxy:tcp:0").kind, spec("haproxy:tcp:0").label) == ("tcp", "haproxy")
    assert (spec("ssl:0:privateKey=k").tls, spec("tls:/pems:port=0").tls, spec("tcp:0").tls) == (True, True, False)


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
    cases = {
        "tcp:0": "tcp", "tcp6:0:interface=\\:\\:1": "tcp", "ssl:0:privateKey=k:certKey=c": "tcp",
        "tls:/pems:port=0": "tcp", "haproxy:tcp:0": "tcp", "haproxy:unix:x.sock": "unix",
        "systemd:domain=INET6:index=0": "tcp", "systemd:domain=UNIX:index=0": "unix",
        "unix:x.sock": "unix", "udp:0": "udp", "udp:index=1:family=inet": "udp",
    }
    assert {d: ListenSpec.parse("ack", d).transport for d in cases} == cases


@pytest.mark.parametrize(
    ("description", "fields"),
    [
        ("tcp:7001", dict(kind="tcp", host="", port=7001, proxy=False, endpoint="tcp:7001")),
        ("tcp6:0:interface=::1", dict(kind="tcp6", host="::1", port=0, endpoint="tcp6:0:interface=\\:\\:1")),
        ("ssl:port=443:privateKey=k.pem", dict(kind="ssl", port=443,
                                                options=(("port", "443"), ("privateKey", "k.pem")))),
        ("unix:/run/a\\:b.sock:mode=600", dict(kind="unix", path="/run/a:b.sock", port=None,
                                               endpoint="unix:/run/a\\:b.sock:mode=600",
                                               options=(("mode", "600"),))),
        ("unix:address=/run/s", dict(kind="unix", path="/run/s")),
        ("haproxy:tcp:80:interface=127.0.0.1", dict(kind="tcp", proxy=True, port=80, host="127.0.0.1",
                                                     endpoint="tcp:80:interface=127.0.0.1")),
        ("HAPROXY:unix:x.sock", dict(kind="unix", proxy=True, path="x.sock", endpoint="unix:x.sock")),
        ("systemd:domain=UNIX:index=0", dict(kind="systemd", port=None, path=None)),
        ("udp:53:interface=::1", dict(kind="udp", host="::1", port=53,
                                      datagram=DatagramAddress(port=53, interface="::1", family=socket.AF_INET6))),
        ("unix:x.sock:group=0:owner=0:mode=660", dict(owner=0, group=0, endpoint="unix:x.sock:mode=660")),
        ("unix:x.sock:group=root", dict(owner=None, group=0, endpoint="unix:x.sock")),
    ],
)
def test_a_description_is_parsed_once_into_its_fields(description: str, fields: dict) -> None:
    spec = ListenSpec.parse("echo", description)
    assert {name: getattr(spec, name) for name in fields} == fields
    assert spec.service == "echo"
    assert str(spec) == description
    assert ListenSpec.parse("echo", str(spec)) == spec  # round trip
    assert hash(spec) == hash(ListenSpec.parse("echo", description))  # a key: Assembly keeps one record per spec


def test_the_endpoint_is_what_twisted_parses_with_sockds_own_options_removed() -> None:
    spec = ListenSpec.parse("ack", "haproxy:unix:/run/a\\:b.sock:owner=0:mode=660:group=0")
    assert spec.endpoint == "unix:/run/a\\:b.sock:mode=660"
    assert twistedParse(spec.endpoint) == (["unix", "/run/a:b.sock"], {"mode": "660"})


@pytest.mark.parametrize(
    ("description", "message"),
    [
        ("tcp:99999", "tcp:99999: port '99999' is not a number from 0 to 65535"),
        ("tcp:", "tcp:: port '' is not a number from 0 to 65535"),
        ("haproxy:ssl:0", "PROXY protocol over TLS is not supported"),
        ("haproxy:udp:0", "the PROXY protocol (haproxy:) is for stream listeners"),
        ("tcp:0:group=0", "tcp:0:group=0: group= is for unix: sockets only"),
        ("unix:x.sock:group=no-such-group-here", "unix:x.sock:group=no-such-group-here: group 'no-such-group-here': "
                                                 "no such group"),
        ("unix:x.sock:owner=no-such-user-here", "owner 'no-such-user-here': no such user"),
        ("udp:abc", "'udp:abc': port 'abc' is not a number"),
    ],
)
def test_a_description_that_cannot_work_is_one_clear_error(description: str, message: str) -> None:
    with pytest.raises(DescriptionError) as e:
        ListenSpec.parse("ack", description)
    assert message in str(e.value)
    assert "\n" not in str(e.value)
