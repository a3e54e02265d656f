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
    for code in range(0x20):
        table[code] = named.get(chr(code), f"\\x{code:02x}")
    table[0x7F] = "\\x7f"
    # C1 controls are characters, not bytes: \u0085 stays distinct from an undecodable byte 0x85 (\x85).
    for code in range(0x80, 0xA0):
        table[code] = f"\\u{code:04x}"
    # Line and paragraph separators, BOM, and the bidirectional controls that can disguise text.
    bidi = [0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
    for code in (0x2028, 0x2029, 0xFEFF, *bidi):
        table[code] = f"\\u{code:04x}"
    # Undecodable bytes arrive as lone surrogates U+DC80..U+DCFF (surrogateescape).
    for byte in range(0x80, 0x100):
        table[0xDC00 + byte] = f"\\x{byte:02x}"
    return table


_TABLE = _table()


def escape(data: bytes) -> str:
    """Return C{data} as one printable line of text, control characters escaped."""
    return data.decode("utf-8", "surrogateescape").translate(_TABLE)
