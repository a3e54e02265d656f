"""Fault options of a listen description: C{delay=100ms:jitter=20ms}, C{loss=5%}, C{reset-after=10} ...

A listener may impair its own answers on purpose, so that client code can be
tested against a slow, lossy or rude network.  The options ride in the listen
description (and so in TOML C{[listen]} lists); they are parsed here into one
frozen L{Faults}, and taken out of the endpoint string Twisted sees.  A
description without any of them has no L{Faults} at all, and its listener no
wrapper.  The wrappers that apply them are in L{sockd.faults}.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields

__all__ = ["FAULT_KEYS", "Faults", "FaultError", "parseFaults"]


class FaultError(ValueError):
    """A fault option that cannot be used, in words naming it."""


#: Every fault option a listen description may carry, in the order the start-up line shows them.
FAULT_KEYS = ("delay", "jitter", "distribution", "loss", "duplicate", "reorder", "reorder-wait", "corrupt", "rate",
              "slice", "slice-delay", "reset-after", "stall", "hold", "seed")

#: Options for stream listeners only, and for datagram listeners only.
STREAM_ONLY = ("rate", "slice", "slice-delay", "reset-after")
DATAGRAM_ONLY = ("loss", "duplicate", "reorder", "reorder-wait")

_DURATION = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)(us|ms|s|m)$")
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}
_SIZE = re.compile(r"^(\d+)(k|ki|m|mi)?b?(/s)?$", re.IGNORECASE)
_MULTIPLIERS = {None: 1, "k": 1000, "ki": 1024, "m": 1000_000, "mi": 1024 * 1024}

#: Held answers (delayed stream bytes, delayed or duplicated datagrams) beyond this many bytes: see L{Faults.hold}.
DEFAULT_HOLD = 256 * 1024
#: A reordered datagram answer waits at most this long for the next answer to overtake it.
DEFAULT_REORDER_WAIT = 0.1
#: The pause between two slices of an answer, unless C{slice-delay=} says.
DEFAULT_SLICE_DELAY = 0.01


def _duration(key: str, text: str) -> float:
    if text == "0":
        return 0.0
    match = _DURATION.match(text)
    if match is None:
        raise FaultError(f"{key}={text}: a duration is a number with a unit: 250us, 100ms, 1.5s, 2m")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _probability(key: str, text: str) -> float:
    percent = text.endswith("%")
    try:
        value = float(text[:-1] if percent else text)
    except ValueError:
        raise FaultError(f"{key}={text}: a probability is a percentage (5%) or a fraction (0.05)") from None
    if percent:
        value /= 100
    if not 0 <= value <= 1 or math.isnan(value):
        raise FaultError(f"{key}={text}: a probability is between 0% and 100%")
    return value


def _size(key: str, text: str) -> int:
    match = _SIZE.match(text)
    if match is None:
        raise FaultError(f"{key}={text}: a size is a whole number of bytes, with k, Ki, M or Mi if wanted")
    unit = match.group(2).lower() if match.group(2) else None
    return int(match.group(1)) * _MULTIPLIERS[unit]


@dataclass(frozen=True)
class Faults:
    """What one listener does wrong on purpose.  Zero (or None) is off for every field.

    Times are in seconds, probabilities from 0 to 1, sizes in bytes.
    """

    #: Each answer waits C{delay}, plus or minus up to C{jitter} (see C{distribution}).
    delay: float = 0.0
    jitter: float = 0.0
    #: C{uniform}: delay + U(-jitter, +jitter); C{normal}: a Gaussian with mean delay and deviation jitter.
    #: Either is cut off at 0.
    distribution: str = "uniform"
    #: Datagram answers: the chance each one is dropped, sent twice, or held back for the next to overtake.
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    #: How long a held-back datagram answer waits for the next answer to its peer before it goes anyway.
    reorderWait: float = DEFAULT_REORDER_WAIT
    #: The chance an answer has one of its bits flipped.
    corrupt: float = 0.0
    #: Stream answers: at most this many bytes per second on each connection.
    rate: int = 0
    #: Stream answers: written in pieces of this many bytes, C{sliceDelay} apart.
    slice: int = 0
    sliceDelay: float = DEFAULT_SLICE_DELAY
    #: Stream connections: reset (RST) once exactly this many answer bytes have been sent.
    resetAfter: int | None = None
    #: Answers are never sent: None (off), a time after which the connection is closed, or infinity (never).
    stall: float | None = None
    #: The most answer bytes held back at once (per connection, or per datagram listener); see L{sockd.faults}.
    hold: int = DEFAULT_HOLD
    #: Seeds the random choices, for runs that repeat exactly.  None: seeded from the system.
    seed: int | None = None
    #: The options as written, in L{FAULT_KEYS} order: what the start-up line shows.
    text: str = ""

    def sampleDelay(self, rng: object) -> float:
        """One answer's delay in seconds, drawn from C{rng} (a C{random.Random}) by the distribution."""
        if not self.jitter:
            return self.delay
        if self.distribution == "normal":
            value = rng.gauss(self.delay, self.jitter)  # type: ignore[attr-defined]
        else:
            value = self.delay + rng.uniform(-self.jitter, self.jitter)  # type: ignore[attr-defined]
        return value if value > 0 else 0.0

    @property
    def delays(self) -> bool:
        """Whether answers wait at all (a delay or a jitter)."""
        return bool(self.delay or self.jitter)


_FIELD = {"reorder-wait": "reorderWait", "slice-delay": "sliceDelay", "reset-after": "resetAfter"}
_KINDS = {"delay": _duration, "jitter": _duration, "reorder-wait": _duration, "slice-delay": _duration,
          "loss": _probability, "duplicate": _probability, "reorder": _probability, "corrupt": _probability,
          "rate": _size, "slice": _size, "reset-after": _size, "hold": _size}


def _stall(text: str) -> float:
    if text in ("forever", "yes", "on"):
        return math.inf
    value = _duration("stall", text)
    if value <= 0:
        raise FaultError(f"stall={text}: say stall=forever, or how long before closing (stall=5s)")
    return value


def parseFaults(options: dict[str, str], transport: str, tls: bool = False) -> Faults | None:
    """The fault options among a description's C{options}, checked for C{transport}; None if there are none.

    Raise L{FaultError} naming the option that cannot be used.
    """
    given = {key: value for key, value in options.items() if key in FAULT_KEYS}
    if not given:
        return None
    datagram = transport == "udp"
    values: dict[str, object] = {}
    for key in FAULT_KEYS:
        if key not in given:
            continue
        text = given[key]
        if datagram and key in STREAM_ONLY:
            raise FaultError(f"{key}= is for stream listeners (tcp, unix, ssl ...), not udp")
        if not datagram and key in DATAGRAM_ONLY:
            raise FaultError(f"{key}= is for udp listeners: a stream keeps its bytes and their order")
        if key == "seed":
            if not text.isdigit():
                raise FaultError(f"seed={text}: a seed is a whole number")
            values["seed"] = int(text)
        elif key == "distribution":
            if text not in ("uniform", "normal"):
                raise FaultError(f"distribution={text}: uniform or normal")
            values["distribution"] = text
        elif key == "stall":
            values["stall"] = _stall(text)
        else:
            values[_FIELD.get(key, key)] = _KINDS[key](key, text)
    if "reset-after" in given and (transport != "tcp" or tls):
        raise FaultError("reset-after= is for plain TCP listeners (a reset is a TCP segment; TLS would hide it)")
    if values.get("hold") == 0:
        raise FaultError("hold=0: answers need somewhere to wait; give a size (hold=256k)")
    if values.get("rate") == 0 and "rate" in given:
        raise FaultError("rate=0: a link that carries nothing is stall=forever")
    text = " ".join(f"{key}={given[key]}" for key in FAULT_KEYS if key in given)
    return Faults(**values, text=text)  # type: ignore[arg-type]


#: Every field name, for tests and docs that list them.
FIELDS = tuple(f.name for f in fields(Faults))
