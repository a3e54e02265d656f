"""Peer bytes made safe for log lines (sockd/observe/logsafe.py)."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockd.observe.logsafe import escape

FAST = settings(max_examples=200, deadline=None, database=None)

# Characters that end a line for str.splitlines(), log viewers or terminals.
LINE_BREAKS = set("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"plain text", "plain text"),
        (b"a\nb", "a\\nb"),
        (b"a\r\nb", "a\\r\\nb"),
        (b"tab\there", "tab\\there"),
        (b"\x1b[2J", "\\x1b[2J"),
        (b"\x00\x07\x08", "\\x00\\x07\\x08"),
        (b"\x7f", "\\x7f"),
        (b"\xc2\x85", "\\u0085"),  # U+0085 NEXT LINE, a C1 control
        (b"\xc2\x9b31m", "\\u009b31m"),  # U+009B CSI
        (b"\xe2\x80\xa8", "\\u2028"),  # LINE SEPARATOR
        (b"\xe2\x80\xa9", "\\u2029"),  # PARAGRAPH SEPARATOR
        (b"\xe2\x80\xae", "\\u202e"),  # RIGHT-TO-LEFT OVERRIDE
        (b"\xef\xbb\xbf", "\\ufeff"),
        (b"back\\slash", "back\\\\slash"),
        (b"\\n", "\\\\n"),  # a literal backslash-n is not mistaken for an escape
        (b"\xff", "\\xff"),
        (b"\xc3", "\\xc3"),  # truncated UTF-8
        (b"\xc0\xaf", "\\xc0\\xaf"),  # overlong encoding of '/'
        (b"\xed\xa0\x80", "\\xed\\xa0\\x80"),  # an encoded surrogate is not UTF-8
        ("h\u00e9llo \u2713 \u65e5\u672c \U0001f600".encode(), "h\u00e9llo \u2713 \u65e5\u672c \U0001f600"),
        (b"", ""),
    ],
)
def test_escape_examples(data: bytes, expected: str) -> None:
    assert escape(data) == expected


def test_printable_ascii_is_unchanged() -> None:
    text = bytes(c for c in range(32, 127) if c != ord("\\"))
    assert escape(text) == text.decode("ascii")


def test_every_single_byte() -> None:
    for byte in range(256):
        out = escape(bytes([byte]))
        if 32 <= byte < 127 and byte != ord("\\"):
            assert out == chr(byte)
        else:
            assert out.startswith("\\") and out.isascii() and out.isprintable(), (byte, out)


@FAST
@given(st.binary(max_size=300))
def test_output_never_holds_a_control_character(data: bytes) -> None:
    out = escape(data)
    assert not any(unicodedata.category(c) in ("Cc", "Zl", "Zp", "Cs") for c in out), out
    assert not LINE_BREAKS & set(out)
    assert len(out.splitlines()) <= 1


@FAST
@given(st.text(max_size=100))
def test_valid_utf8_text_without_controls_is_kept(text: str) -> None:
    safe = "".join(
        c for c in text if c != "\\" and unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp", "Cs")
    )
    assert escape(safe.encode("utf-8")) == safe


@FAST
@given(st.lists(st.sampled_from([b"a", b"\\", b"\n", b"x", b"\\x0a", b"\\n", b"\xff", b"\xe2\x80\xa8"]), max_size=20))
def test_distinct_ascii_and_invalid_inputs_never_collide(parts: list[bytes]) -> None:
    """Backslashes are doubled, so a peer cannot type something that reads like one of our escapes."""
    data = b"".join(parts)
    assert unescape(escape(data)) == data


def unescape(text: str) -> bytes:
    """The inverse of escape for the escapes it emits (undecodable bytes as raw bytes)."""
    out = bytearray()
    i = 0
    named = {"n": b"\n", "r": b"\r", "t": b"\t", "\\": b"\\"}
    while i < len(text):
        c = text[i]
        if c != "\\":
            out += c.encode("utf-8")
            i += 1
            continue
        kind = text[i + 1]
        if kind in named:
            out += named[kind]
            i += 2
        elif kind == "x":
            value = int(text[i + 2 : i + 4], 16)
            out += bytes([value]) if value < 0x80 else chr(value).encode("utf-8") if value < 0xA0 else bytes([value])
            i += 4
        elif kind == "u":
            out += chr(int(text[i + 2 : i + 6], 16)).encode("utf-8")
            i += 6
        else:
            raise AssertionError(f"unknown escape in {text!r}")
    return bytes(out)


def test_escape_is_injective_for_c1_controls() -> None:
    """The module promises a reversible mapping; a C1 control and an undecodable byte must not look alike."""
    assert escape(b"\xc2\x85") != escape(b"\x85")


def test_bidi_isolates_are_escaped_like_the_other_bidi_controls() -> None:
    """Trojan Source (CVE-2021-42574) uses embeddings/overrides (escaped) and isolates (not escaped)."""
    for char in "\u2066\u2067\u2068\u2069\u061c":
        assert escape(char.encode("utf-8")) == f"\\u{ord(char):04x}"
