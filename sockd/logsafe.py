"""Make peer-supplied bytes safe to put in a log line.

A client must not be able to forge log lines: line breaks, terminal escapes and
other control characters are shown as escapes, and so is the backslash itself,
so every escape in the log was put there by us and the mapping is reversible.
Undecodable bytes appear as ``\\xNN`` too.
"""

from __future__ import annotations


def _table() -> dict[int, str]:
    table: dict[int, str] = {ord("\\"): "\\\\"}
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
    for code in list(range(0x20)) + list(range(0x7F, 0xA0)):
        table[code] = named.get(chr(code), f"\\x{code:02x}")
    for code in (0x2028, 0x2029, 0xFEFF, 0x200E, 0x200F, 0x202A, 0x202B, 0x202C, 0x202D, 0x202E):
        table[code] = f"\\u{code:04x}"
    # Undecodable bytes arrive as lone surrogates U+DC80..U+DCFF (surrogateescape).
    for byte in range(0x80, 0x100):
        table[0xDC00 + byte] = f"\\x{byte:02x}"
    return table


_TABLE = _table()


def escape(data: bytes) -> str:
    """Return C{data} as one printable line of text, control characters escaped."""
    return data.decode("utf-8", "surrogateescape").translate(_TABLE)
