"""The twistd plugin for sockd; imports nothing heavy (and never the reactor)."""

from twisted.application.service import ServiceMaker

sockd = ServiceMaker(
    "sockd",
    "sockd.tap",
    "the sockets tutorial's ack server and the inetd small services, over TCP, UDP and Unix sockets",
    "sockd",
)
