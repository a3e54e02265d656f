"""The twistd plugins for sockd; they import nothing heavy (and never the reactor)."""

from twisted.application.reactors import Reactor
from twisted.application.service import ServiceMaker

sockd = ServiceMaker(
    "sockd",
    "sockd.tap",
    "the sockets tutorial's ack server and the inetd small services, over TCP, UDP and Unix sockets",
    "sockd",
)

#: twistd -r sockd-epoll sockd: epoll without Twisted's per-event logging context (see sockd/runtime/reactor.py).
sockdEpoll = Reactor("sockd-epoll", "sockd.runtime.reactor", "epoll, without the per-event logging context (sockd)")
