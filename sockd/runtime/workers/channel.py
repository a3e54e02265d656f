"""The control channel from a C{--workers} parent to one worker: listener updates, with their sockets.

A reload that opens a listener must hand the new socket to workers that
are already running, and one that closes a listener must make them close
their copy too (a listening socket stays open while any process holds it).
Restarting the workers instead would end every established connection they
serve.  So each worker gets one end of a C{SOCK_SEQPACKET} socket pair: the
parent sends a L{ListenerUpdate} per message, the new sockets attached
(C{SCM_RIGHTS}), and then SIGHUP; the worker reads what is queued when it
reloads.  Messages are whole or absent, and arrive in order.
"""

from __future__ import annotations

import os
import socket

from twisted.logger import Logger

from sockd.errors import StartupError
from sockd.runtime.workers.spec import ListenerKey, ListenerUpdate

__all__ = ["MAX_FDS", "controlPair", "receiveUpdates", "sendUpdate"]

log = Logger(namespace="sockd.workers")

#: Descriptors per message: the kernel takes at most 253 (SCM_MAX_FD); more are sent in several messages.
MAX_FDS = 250

#: The largest message read: the JSON of every listener's name and description.
MAX_MESSAGE = 1 << 20


def controlPair() -> tuple[socket.socket, socket.socket]:
    """(parent's end, worker's end): the parent never waits on a worker that does not read."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    parent.setblocking(False)
    return parent, child


def sendUpdate(sock: socket.socket, update: ListenerUpdate, fds: list[int]) -> None:
    """Send C{update} with the sockets of C{update.adopt} (C{fds}, in that order); raises OSError if it cannot."""
    assert len(fds) == len(update.adopt)
    start = 0
    while True:  # one message at least: a removal sends no socket
        part = ListenerUpdate(update.serve, update.adopt[start:start + MAX_FDS])
        socket.send_fds(sock, [part.toJSON().encode()], fds[start:start + MAX_FDS])
        start += MAX_FDS
        if start >= len(fds):
            return


def receiveUpdates(sock: socket.socket) -> tuple[tuple[ListenerKey, ...] | None, dict[ListenerKey, int]]:
    """Every update queued: the listeners to serve (None: no update came) and the sockets sent, by listener.

    Later messages win: the set to serve is the last one's, and a socket sent
    again for the same listener replaces (and closes) the earlier one.  The
    caller owns the descriptors returned.
    """
    serve: tuple[ListenerKey, ...] | None = None
    adopted: dict[ListenerKey, int] = {}
    while True:
        try:
            data, fds, flags, _ = socket.recv_fds(sock, MAX_MESSAGE, MAX_FDS + 3)
        except BlockingIOError:
            break
        if not data:
            break  # the parent is gone: it will not send more
        try:
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                raise StartupError("listener update: cut short")
            update = ListenerUpdate.fromJSON(data.decode("utf-8", "replace"))
            if len(fds) != len(update.adopt):
                raise StartupError(f"listener update: {len(fds)} sockets for {len(update.adopt)} listeners")
        except StartupError as e:
            log.error("ignoring a malformed message from the parent: {why}", why=str(e))
            for fd in fds:
                os.close(fd)
            continue
        serve = update.serve
        for key, fd in zip(update.adopt, fds, strict=True):
            if key in adopted:
                os.close(adopted[key])
            adopted[key] = fd
    if serve is not None:
        for key in [k for k in adopted if k not in serve]:  # opened, then closed again by a later reload
            os.close(adopted.pop(key))
    return serve, adopted
