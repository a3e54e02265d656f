"""What a C{--workers} parent tells a worker: typed records, sent as JSON.

A worker is started with one L{WorkerSpec} (its C{--worker} argument), and a
reload that changes the listeners sends it a L{ListenerUpdate} on its control
channel (L{sockd.runtime.workers.channel}).  Both sides build and read these
records only, so every field is named and typed in one place, and a
malformed description is refused with one line naming what is wrong.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sockd.errors import StartupError

__all__ = ["InheritedListener", "ListenerKey", "ListenerUpdate", "MessagePipe", "WorkerSpec"]

#: A listener as the assembly names it: (service name, listen description).
ListenerKey = tuple[str, str]


def _get(record: Any, name: str, kind: type | tuple[type, ...], where: str) -> Any:
    """Field C{name} of a decoded JSON object, checked to be of C{kind}."""
    if not isinstance(record, dict):
        raise StartupError(f"{where}: not a JSON object")
    if name not in record:
        raise StartupError(f"{where}: no {name!r}")
    value = record[name]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise StartupError(f"{where}: {name!r} is {type(value).__name__}, not {getattr(kind, '__name__', kind)}")
    return value


def _key(value: Any, where: str) -> ListenerKey:
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)):
        raise StartupError(f"{where}: a listener is not [service, description]: {value!r}")
    return value[0], value[1]


def _decode(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as e:
        raise StartupError(f"{where}: not JSON: {e}") from None


@dataclass(frozen=True)
class InheritedListener:
    """One listening socket a worker inherits: which service and description, on which descriptor."""

    name: str
    description: str
    fd: int

    @property
    def key(self) -> ListenerKey:
        """The assembly's name for this listener."""
        return self.name, self.description


@dataclass(frozen=True)
class MessagePipe:
    """Where a worker writes its finished message lines when the parent's log is a sink of its own."""

    fd: int
    #: Whether the lines carry the journal's priority prefixes (the parent writes to systemd's journal).
    journal: bool


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs from its parent, passed as C{--worker JSON}."""

    #: This worker's number, 0 to count - 1: kept by its replacement after a restart.
    index: int
    #: How many workers share the limits (L{sockd.runtime.workers.child.shareLimits}).
    count: int
    #: The sockets to serve, as the parent has them open.
    listeners: tuple[InheritedListener, ...]
    #: The Unix socket path on which the worker answers its parent's metrics scrapes.
    metrics: str
    #: The worker's end of its control channel: the listener updates of later reloads.
    control: int
    messages: MessagePipe | None = None

    def toJSON(self) -> str:
        """The C{--worker} argument."""
        record: dict[str, Any] = {
            "index": self.index, "count": self.count, "metrics": self.metrics, "control": self.control,
            "listeners": [[listener.name, listener.description, listener.fd] for listener in self.listeners],
        }
        if self.messages is not None:
            record["messages"] = {"fd": self.messages.fd, "journal": self.messages.journal}
        return json.dumps(record)

    @classmethod
    def fromJSON(cls, text: str) -> WorkerSpec:
        """Read a C{--worker} argument; anything malformed raises L{StartupError} naming the field."""
        where = "--worker"
        record = _decode(text, where)
        listeners = []
        for item in _get(record, "listeners", list, where):
            if not (isinstance(item, list) and len(item) == 3 and isinstance(item[2], int)):
                raise StartupError(f"{where}: a listener is not [service, description, fd]: {item!r}")
            name, description = _key(item[:2], where)
            listeners.append(InheritedListener(name, description, item[2]))
        messages = None
        if record.get("messages") is not None:
            pipe = record["messages"]
            messages = MessagePipe(_get(pipe, "fd", int, f"{where} messages"),
                                   _get(pipe, "journal", bool, f"{where} messages"))
        count = _get(record, "count", int, where)
        index = _get(record, "index", int, where)
        if not 0 <= index < count:
            raise StartupError(f"{where}: index {index} is not below count {count}")
        return cls(index=index, count=count, listeners=tuple(listeners), metrics=_get(record, "metrics", str, where),
                   control=_get(record, "control", int, where), messages=messages)


@dataclass(frozen=True)
class ListenerUpdate:
    """A reload changed the listeners: serve exactly C{serve}; C{adopt} are new, their sockets sent along.

    The sockets of C{adopt} travel with the message, one descriptor each, in
    that order (C{SCM_RIGHTS}).  A listener in C{adopt} that the worker
    already serves was closed and opened again by the parent: the worker
    replaces its own with the new socket.
    """

    serve: tuple[ListenerKey, ...]
    adopt: tuple[ListenerKey, ...] = ()

    def toJSON(self) -> str:
        """The message's text."""
        return json.dumps({"serve": [list(k) for k in self.serve], "adopt": [list(k) for k in self.adopt]})

    @classmethod
    def fromJSON(cls, text: str) -> ListenerUpdate:
        """Read a message; anything malformed raises L{StartupError}."""
        where = "listener update"
        record = _decode(text, where)
        return cls(serve=tuple(_key(k, where) for k in _get(record, "serve", list, where)),
                   adopt=tuple(_key(k, where) for k in _get(record, "adopt", list, where)))
