"""C{/healthz} and C{/readyz} beside C{/metrics}, for orchestrators' probes, and a site that does not log scrapes.

C{/healthz} answers 200 whenever the reactor does (a liveness probe: a hung
daemon does not answer).  C{/readyz} answers 200 only while sockd serves:
every listener bound (and with C{--workers}, every worker started), and 503
from the moment it stops to drain, so a balancer sends no new clients to it.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

__all__ = ["Health", "QuietSite", "Readiness"]

log = Logger(namespace="sockd.metrics")


class Health(Resource):
    """200 while the reactor runs."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return b"ok\n"


class Readiness(Resource):
    """200 while C{isReady()} says sockd serves, 503 otherwise."""

    isLeaf = True

    def __init__(self, isReady: Callable[[], bool]) -> None:
        super().__init__()
        self.isReady = isReady

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        if self.isReady():
            return b"ready\n"
        request.setResponseCode(503)
        return b"not ready\n"


class QuietSite(Site):
    """A Site whose access log is at debug: Prometheus scrapes every few seconds, and probes more often."""

    noisy = False

    def log(self, request: http.Request) -> None:
        log.debug("{method} {uri} {code}", method=request.method.decode("ascii", "replace"),
                  uri=request.uri.decode("ascii", "replace"), code=request.code)
