"""Quote of the Day (RFC 865): one short quote per connection or datagram.

The RFC limits a quote to 512 characters; sockd keeps each under 512 bytes and
refuses a quotes file that breaks the rule, naming the quote.  A quotes file
holds quotes separated by lines containing only C{%} (the fortune format) or,
failing that, by blank lines.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

MAX_QUOTE = 511

BUILTIN_QUOTES: tuple[str, ...] = (
    "The best way to predict the future is to invent it. -- Alan Kay",
    "Simplicity is prerequisite for reliability. -- Edsger W. Dijkstra",
    "Be conservative in what you do, be liberal in what you accept from others. -- Jon Postel, RFC 793",
    "We reject kings, presidents and voting. We believe in rough consensus and running code. -- David D. Clark",
    "Premature optimization is the root of all evil. -- Donald Knuth",
    "There are two ways of constructing a software design: make it so simple that there are obviously"
    " no deficiencies, or so complicated that there are no obvious deficiencies. -- C. A. R. Hoare",
    "Programs must be written for people to read, and only incidentally for machines to execute."
    " -- Harold Abelson",
    "The network is reliable. -- the first fallacy of distributed computing",
)


class QuoteError(ValueError):
    """A quotes file that cannot be used; the message names the file and the quote."""


def _encode(quote: str) -> bytes:
    return quote.strip().replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8") + b"\r\n"


def parseQuotes(text: str, source: str = "quotes") -> tuple[bytes, ...]:
    """Split a quotes file into encoded quotes, each ending in CR LF and under 512 bytes."""
    if re.search(r"^%\s*$", text, re.MULTILINE):
        parts = re.split(r"^%\s*$", text, flags=re.MULTILINE)
    else:
        parts = re.split(r"\n\s*\n", text)
    quotes = []
    for number, part in enumerate((p for p in parts if p.strip()), start=1):
        encoded = _encode(part)
        if len(encoded) > MAX_QUOTE:
            raise QuoteError(
                f"{source}: quote {number} is {len(encoded)} bytes; RFC 865 allows under 512"
            )
        quotes.append(encoded)
    if not quotes:
        raise QuoteError(f"{source}: no quotes found")
    return tuple(quotes)


def loadQuotes(path: str) -> tuple[bytes, ...]:
    """Read a quotes file, with one clear error for anything wrong with it."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as e:
        raise QuoteError(f"quotes file {path}: {getattr(e, 'strerror', None) or e}") from None
    return parseQuotes(text, f"quotes file {path}")


class QuotePicker:
    """Chooses a quote at random for each answer; the list can be swapped on reload."""

    def __init__(self, quotes: Sequence[bytes], rng: random.Random | None = None) -> None:
        self.quotes = tuple(quotes)
        self._rng = rng or random.Random()

    def __call__(self) -> bytes:
        return self._rng.choice(self.quotes)


def builtinQuotes() -> tuple[bytes, ...]:
    """The quotes sockd ships, encoded as they go on the wire."""
    return tuple(_encode(q) for q in BUILTIN_QUOTES)
