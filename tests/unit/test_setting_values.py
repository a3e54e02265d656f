"""Every setting's values, from the command line and from the file, through the one settings table.

A bad value of any setting is one line naming the option (or file:line and key)
and saying what it takes; exit 2 on the command line, 78 (EX_CONFIG) from the
file.  The cases come from L{FIELDS}: a setting added to the table is covered,
and a new kind of value without a bad example here fails the suite.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sockd.config import settings as S
from sockd.config.file import ConfigError, parseConfig
from sockd.config.settings import FIELDS, optionName
from sockd.services import BY_NAME
from sockd.tap import Options

#: A word each kind refuses on the command line (flags take no word).
BAD_WORD = {
    S.POSITIVE: "0", S.NON_NEGATIVE: "-1", S.SECONDS: "soon", S.FILE: " ", S.ENDPOINT: "9101",
    S.MODE: "999", S.WORKERS: "many", S.SIZE: "lots", S.ADDRESSES: "10.0.0.0/33", S.EXEMPT: "not-an-address",
}
#: A TOML value (as written in the file) each kind refuses.
BAD_TOML = {
    S.POSITIVE: "0", S.NON_NEGATIVE: "-1", S.SECONDS: "'soon'", S.FLAG: "'yes'", S.FILE: "7",
    S.ENDPOINT: "9101", S.MODE: "0o1000", S.SIZE: "'lots'", S.WORKERS: "0", S.ADDRESSES: "['10.0.0.0/33']",
    S.EXEMPT: "[1]",
}
VALUED = [f for f in FIELDS if not f.metadata["flag"]]


def test_every_kind_has_bad_examples() -> None:
    kinds = {f.metadata["kind"] for f in FIELDS}
    assert kinds - {S.FLAG} <= set(BAD_WORD), "add a bad command-line word for the new kind"
    assert kinds <= set(BAD_TOML), "add a bad TOML value for the new kind"


def _parse(args: list[str], capfd: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as e:
        Options().parseOptions(args)
    return int(e.value.code), capfd.readouterr().err.splitlines()


@pytest.mark.parametrize("f", VALUED, ids=[f.name for f in VALUED])
def test_bad_command_line_value_is_one_line_naming_option_and_what_it_takes(f, capfd) -> None:
    kind, word = f.metadata["kind"], BAD_WORD[f.metadata["kind"]]
    code, lines = _parse([f"--{optionName(f.name)}", word], capfd)
    assert code == 2
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"sockd: error: --{optionName(f.name)} {word}: must be {kind.accepts}"), lines
    assert "invalid literal" not in lines[0]


@pytest.mark.parametrize("f", FIELDS, ids=[f.name for f in FIELDS])
def test_bad_file_value_is_one_line_with_file_line_key_and_what_it_takes(f, tmp_path: Path, capfd) -> None:
    kind, value = f.metadata["kind"], BAD_TOML[f.metadata["kind"]]
    path = tmp_path / "sockd.toml"
    path.write_text(f"# sockd\n{f.name} = {value}\n")
    code, lines = _parse(["--config", str(path)], capfd)
    assert code == 78
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"sockd: error: {path}:2: {f.name} must be {kind.accepts}, not "), lines


@pytest.mark.parametrize("written", ["0o660", "660", "'660'", "'0660'", "'0o660'", "0x1b0"])
def test_unix_mode_in_the_file_means_the_same_mode_however_written(written: str) -> None:
    config = parseConfig(f"unix_mode = {written}  # the socket files' mode\n", "x.toml", set(BY_NAME))
    assert config.values["unix_mode"] == 0o660


@pytest.mark.parametrize("word", ["660", "0660", "0o660"])
def test_unix_mode_on_the_command_line_is_octal(word: str) -> None:
    assert S.MODE.fromText(word) == 0o660


def test_unix_mode_out_of_range_in_the_file() -> None:
    with pytest.raises(ConfigError, match=r"x.toml:1: unix_mode must be a file mode in octal .*, not 999"):
        parseConfig("unix_mode = 999\n", "x.toml", set(BY_NAME))


@pytest.mark.parametrize("kind, word", [(S.SECONDS, "inf"), (S.SECONDS, "nan"), (S.POSITIVE, "1.5"),
                                        (S.ENDPOINT, "tcp:"), (S.MODE, "0o8")])
def test_edge_words_are_refused(kind: S.Kind, word: str) -> None:
    with pytest.raises(S.BadValue):
        kind.fromText(word)
