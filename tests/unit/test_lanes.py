"""The test lanes hold: every test module is in unit/, integration/ or system/, and the fast lane starts no daemon.

C{scripts/test --fast} runs tests/unit and tests/integration only, so a module left at the top of tests/
would drop out of it unseen, and a unit or integration module that starts the installed daemon would make
the quick check slow and dependent on the install.  C{pytest --ignore} of a path that no longer exists
ignores nothing, silently: the paths scripts/test names must exist.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
LANES = ("unit", "integration", "system")
FAST = ("unit", "integration")
#: What only the system lane may use: the helpers that start installed programs, and their fixtures.
DAEMON_MODULES = {"tests.daemon", "tests.podman"}
DAEMON_FIXTURES = {"daemon", "sockdImage"}


def testModules() -> list[Path]:
    return sorted(TESTS.rglob("test_*.py"))


def test_every_test_module_is_in_a_lane() -> None:
    stray = [str(p.relative_to(ROOT)) for p in testModules() if p.parent.parent != TESTS or p.parent.name not in LANES]
    assert not stray, f"move these into tests/{{{','.join(LANES)}}}/ (see docs/architecture.md#testing): {stray}"
    for lane in LANES:
        assert (TESTS / lane / "__init__.py").is_file(), lane
        assert list((TESTS / lane).glob("test_*.py")), f"tests/{lane}/ is empty"


@pytest.mark.parametrize("path", [p for p in testModules() if p.parent.name in FAST],
                         ids=lambda p: str(p.relative_to(TESTS)))
def test_the_fast_lane_starts_no_daemon(path: Path) -> None:
    tree = ast.parse(path.read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not imported & DAEMON_MODULES, f"{path.name} imports {imported & DAEMON_MODULES}: it belongs in system/"
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            used = {a.arg for a in node.args.args} & DAEMON_FIXTURES
            assert not used, f"{path.name}::{node.name} uses the {used} fixture: it belongs in system/"


def test_the_paths_scripts_test_names_exist() -> None:
    script = (ROOT / "scripts" / "test").read_text()
    named = set(re.findall(r"\btests/[\w/.-]*\w", script))
    assert {"tests/unit", "tests/integration"} <= named, "the fast lane's folders"
    assert any(n.startswith("--ignore=") for n in script.split()), "the epoll run's ignore list"
    missing = sorted(n for n in named if not (ROOT / n).exists())
    assert not missing, missing
