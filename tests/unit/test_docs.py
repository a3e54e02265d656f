"""The documentation holds together: the README stays a front door, links resolve, no machine paths, no diary.

The README is what a newcomer reads first, so it is kept short and every
detail lives in a docs/ page; a moved or renamed page must not leave a dead
link behind, and paths of the machine the project was built on mean nothing
to anyone else.
"""

from __future__ import annotations

import re
import subprocess
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]
MAX_README_LINES = 250

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
ABSOLUTE = re.compile(rb"(?<![\w.~-])/(?:work|root)/")
DIARY = re.compile(r"\b(issue [0-9]+|previous session|this session|last session)\b", re.IGNORECASE)


def prose(page: Path) -> list[tuple[int, str]]:
    """The page's lines outside fenced code blocks, with their numbers."""
    lines, inFence = [], False
    for number, line in enumerate(page.read_text().splitlines(), 1):
        if FENCE.match(line.lstrip()):
            inFence = not inFence
            continue
        if not inFence:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading).lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every anchor a link may name in a page (repeated headings get -1, -2... as on GitHub)."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose(page):
        match = HEADING.match(line)
        if match:
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def relativeLinks(page: Path) -> list[tuple[int, str]]:
    """Links to files of this repository (not URLs), with their line numbers."""
    found = []
    for number, line in prose(page):
        line = re.sub(r"`[^`]*`", "", line)
        for match in LINK.finditer(line):
            target = match.group(1) or match.group(2)
            if not re.match(r"[a-z][a-z0-9+.-]*:", target):
                found.append((number, target))
    return found


def test_the_readme_is_a_front_door() -> None:
    lines = README.read_text().count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; move detail to a docs/ page"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for number, target in relativeLinks(page):
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        where = f"{page.relative_to(ROOT)}:{number}: {target}"
        if not resolved.exists():
            broken.append(f"{where} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{where} (no such heading)")
        elif ROOT not in resolved.parents and resolved != ROOT:
            broken.append(f"{where} (outside the repository)")
    assert not broken, "\n".join(broken)


def test_the_link_checker_sees_what_it_should(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# A `code` title: here\n[a](other.md#x) ![i](pic.png) [u](https://x.org/a)\n"
                    "```\n[not](checked.md)\n```\n`[nor](this.md)`\n## A `code` title: here\n")
    assert relativeLinks(page) == [(2, "other.md#x"), (2, "pic.png")]
    assert anchors(page) == {"a-code-title-here", "a-code-title-here-1"}
    assert slug("Several processes: --workers") == "several-processes---workers"
    assert slug("The I/O core") == "the-io-core"


def trackedFiles() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / name for name in out.decode().split("\0") if name]


def test_no_file_names_a_path_of_the_build_machine() -> None:
    found = []
    for path in trackedFiles():
        relative = path.relative_to(ROOT)
        if relative.parts[0] == "tests" or not path.is_file():
            continue
        for number, line in enumerate(path.read_bytes().splitlines(), 1):
            if ABSOLUTE.search(line):
                found.append(f"{relative}:{number}: {line.decode(errors='replace').strip()[:120]}")
    assert not found, "absolute paths under /work/ or /root/:\n" + "\n".join(found)


def test_the_path_pattern_matches_paths_not_words() -> None:
    assert ABSOLUTE.search(b"see /work/main/.venv/bin/pip") and ABSOLUTE.search(b"HOME=/root/x")
    assert not ABSOLUTE.search(b"https://example.org/work/x") and not ABSOLUTE.search(b"net/work/x")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_development_diary(page: Path) -> None:
    found = [f"{page.relative_to(ROOT)}:{n}: {line.strip()}" for n, line in enumerate(page.read_text().splitlines(), 1)
             if DIARY.search(line)]
    assert not found, "\n".join(found)


SOURCE_PATH = re.compile(r"(?<![\w/.-])((?:sockd|tests|bench|twisted/plugins)/[\w/.-]*\.(?:py|c|sh|md|txt))\b")


def test_every_source_file_the_docs_name_exists() -> None:
    """A module moved or renamed must not leave its old path in the README, docs/ or contrib/."""
    pages = [*PAGES, *(p for p in trackedFiles() if p.relative_to(ROOT).parts[0] == "contrib" and p.is_file())]
    missing = []
    for page in pages:
        for number, line in enumerate(page.read_text(errors="replace").splitlines(), 1):
            for match in SOURCE_PATH.finditer(line):
                if not (ROOT / match.group(1)).exists():
                    missing.append(f"{page.relative_to(ROOT)}:{number}: {match.group(1)}")
    assert not missing, "\n".join(missing)
