"""Answers leave at once when nothing is queued, instead of on the reactor's next turn."""

from __future__ import annotations

import socket

import pytest_twisted
from twisted.internet import defer, reactor, task
from twisted.internet.protocol import Factory, Protocol

from sockd.runtime.sendnow import SendAtOnce, installSendAtOnce, sendAtOnceClass


class Recorder(Protocol):
    """Writes an answer per read and records whether the transport still held it afterwards."""

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(b"answer:" + data)
        self.factory.queuedAfterWrite.append(self.transport._tempDataLen + len(self.transport.dataBuffer))
        self.factory.done.callback(None)


def _exchange(sendAtOnce: bool) -> defer.Deferred[list[int]]:
    factory = Factory.forProtocol(Recorder)
    factory.queuedAfterWrite = []
    factory.done = defer.Deferred()
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    if sendAtOnce:
        assert installSendAtOnce(port)
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    client.sendall(b"hi")

    def finish(_: object) -> list[int]:
        client.settimeout(5)
        assert client.recv(100) == b"answer:hi"
        client.close()
        return factory.queuedAfterWrite

    factory.done.addCallback(lambda _: task.deferLater(reactor, 0.05, finish, None))
    factory.done.addBoth(lambda result: port.stopListening().addCallback(lambda _: result))
    return factory.done


@pytest_twisted.inlineCallbacks
def test_plain_twisted_queues_the_answer_until_the_next_turn():
    queued = yield _exchange(sendAtOnce=False)
    assert queued == [len(b"answer:hi")]


@pytest_twisted.inlineCallbacks
def test_send_at_once_hands_the_answer_to_the_kernel_in_write():
    queued = yield _exchange(sendAtOnce=True)
    assert queued == [0]


def test_subclass_keeps_the_transport_class_and_is_cached():
    from twisted.internet import tcp, unix

    for cls in (tcp.Server, unix.Server):
        fast = sendAtOnceClass(cls)
        assert fast is not None and issubclass(fast, cls) and issubclass(fast, SendAtOnce)
        assert sendAtOnceClass(cls) is fast


def test_transport_without_the_needed_attributes_is_left_alone():
    class Strange:
        pass

    assert sendAtOnceClass(Strange) is None
    assert not installSendAtOnce(object())
