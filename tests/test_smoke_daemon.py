from tests.daemon import connect, recvExactly, udpExchange


def test_ack_over_tcp_udp_unix(daemon):
    d = daemon("--ack", "tcp:0:interface=127.0.0.1", "--ack", "udp:0:interface=127.0.0.1", "--ack", "unix:ack.sock")
    with connect(d.address("ack", "tcp")) as s:
        s.sendall(b"hello\n")
        assert recvExactly(s, 18) == b"I got your message"
    assert udpExchange(d.address("ack", "udp"), b"hello") == b"Got your message\n"
    assert "Here is the message: hello" in d.log()
