"""docs/testing-clients.md: every recipe run as written, so the page and sockd cannot drift apart.

Each console block of the page is a recipe: a C{$ sockd ...} line (the daemon,
started here with its port made ephemeral), a C{$ sockd-client ...} line (run
against the port actually bound), and the lines it prints, of which every one
shown must be printed (numbers may differ: round trips and times vary; C{...}
stands for lines left out).
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.daemon import BIN

PAGE = Path(__file__).resolve().parents[2] / "docs" / "testing-clients.md"
BLOCK = re.compile(r"^## (.+?)\n.*?```console\n(.*?)```", re.MULTILINE | re.DOTALL)


def recipes() -> list[tuple[str, str, str, list[str]]]:
    """(title, daemon arguments line, client line, expected lines) for each recipe of the page."""
    found = []
    for title, block in BLOCK.findall(PAGE.read_text()):
        lines = block.strip().splitlines()
        server = [line[len("$ sockd "):] for line in lines if line.startswith("$ sockd ")]
        client = [line[len("$ "):] for line in lines if line.startswith("$ sockd-client ")]
        expected = [line for line in lines if not line.startswith("$ ") and line != "..."]
        assert len(server) == 1 and len(client) == 1, f"{title}: one sockd line and one sockd-client line"
        found.append((title, server[0], client[0], expected))
    return found


def pattern(line: str) -> re.Pattern[str]:
    """An expected line as a pattern: its numbers may be other numbers."""
    parts = re.split(r"\d+(?:\.\d+)?", line)
    return re.compile(r"\d+(?:\.\d+)?".join(re.escape(p) for p in parts))


def test_the_page_has_its_recipes() -> None:
    titles = [title for title, *_ in recipes()]
    assert len(titles) == 5 and any("Timeouts" in t for t in titles) and any("Resets" in t for t in titles)


@pytest.mark.parametrize("recipe", recipes(), ids=[r[0].split(":")[0] for r in recipes()])
def test_each_recipe_does_what_the_page_shows(daemon, recipe: tuple[str, str, str, list[str]]) -> None:
    title, server, clientLine, expected = recipe
    args = shlex.split(server)
    port = re.search(r":(\d{4,5}):", server)
    assert port is not None, f"{title}: the sockd line names a port"
    args = [a.replace(f":{port.group(1)}:", ":0:") for a in args]
    d = daemon(*args, expect=1)
    service = args[0].lstrip("-")
    transport = "udp" if "udp:" in server else "tcp"
    bound = str(d.address(service, transport)[1])
    command = shlex.split(clientLine)
    command = [str(BIN / "sockd-client") if c == "sockd-client" else c.replace(port.group(1), bound)
               for c in command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    printed = (result.stdout + result.stderr).replace(bound, port.group(1)).splitlines()
    for line in expected:
        wanted = pattern(line)
        assert any(wanted.fullmatch(p) for p in printed), f"{title}: {line!r} not printed:\n" + "\n".join(printed)
