"""The twistd plugins for sockd; they import nothing heavy (and never the reactor)."""

from twisted.application.reactors import Reactor
from twisted.application.service import ServiceMaker

sockd = ServiceMaker(
    "sockd",
    "sockd.tap",
    "the sockets tutorial's ack server and the inetd small services, over TCP, UDP and Unix sockets",
    "sockd",
)

#: twistd -r sockd: sockd's own I/O core (sockd/core/), also what runs when no reactor is named.
sockdReactor = Reactor("sockd", "sockd.core.reactor", "sockd's own epoll I/O core (sockd's default)")

#: twistd -r sockd-epoll: the earlier name of the same reactor, kept working.
sockdEpoll = Reactor("sockd-epoll", "sockd.core.reactor", "alias of -r sockd (sockd's own I/O core)")
