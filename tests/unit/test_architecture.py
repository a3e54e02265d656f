"""The package's shape: imports point one way, from higher layers to lower ones, and never in a circle.

Every import counts, including those inside functions: a lazy import is still
a dependency.  The layers, lowest first, are the floor plan of docs/architecture.md.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "sockd"

#: Lowest first.  A module may import its own layer or lower ones; a test below keeps the list complete.
LAYERS: list[tuple[str, ...]] = [
    ("sockd", "sockd.errors", "sockd.interfaces"),
    ("sockd.core",),
    ("sockd.config",),
    ("sockd.observe",),
    ("sockd.observe.log",),  # the log room: sink, message log, setup, level, observers (on addresses, logsafe)
    ("sockd.protocols",),
    ("sockd.defences", "sockd.faults"),
    ("sockd.runtime",),
    ("sockd.services",),
    ("sockd.app",),
    ("sockd.tap", "sockd.logging", "sockd.command", "sockd.manual"),
    # The client wing, a group of its own above the daemon's top: nothing of the daemon imports it, and it
    # imports from the daemon only CLIENT_NEEDS (tests below). Within it, lowest first as well.
    ("sockd.client.errors",),
    ("sockd.client.histogram", "sockd.client.payloads", "sockd.client.target"),
    ("sockd.client.oneshot", "sockd.client.ping", "sockd.client.load", "sockd.client.clock"),
    ("sockd.client.report",),
    ("sockd.client", "sockd.client.cli"),
]

#: The client wing's package, and all it may import from the daemon's side: sockd (for __version__, in
#: --version) and sockd.errors (the exit statuses EX_USAGE and EX_RUNTIME, so both commands exit alike).
CLIENT = "sockd.client"
CLIENT_NEEDS = {"sockd", "sockd.errors"}


def moduleName(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {moduleName(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layerOf(name: str) -> int:
    """The layer of a module: that of the longest layer prefix naming it."""
    best, rank = -1, -1
    for i, names in enumerate(LAYERS):
        for prefix in names:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    if rank < 0:
        raise KeyError(name)
    return rank


def importsOf(name: str, path: Path, known: set[str]) -> set[str]:
    """The sockd modules this module imports (resolving `from sockd.x import y` to sockd.x.y if y is a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "sockd")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "sockd":
                continue
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
    found.discard(name)
    return {m for m in found if m in known}


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    # Importing sockd.x.y runs sockd/x/__init__.py first, but that is not a dependency of the importer's design.
    return {name: importsOf(name, path, known) - {"sockd"} for name, path in mods.items()}


def test_every_module_has_a_layer() -> None:
    missing = []
    for name in modules():
        try:
            layerOf(name)
        except KeyError:
            missing.append(name)
    assert not missing, f"add these to LAYERS (and the floor plan in docs/architecture.md): {missing}"


def test_no_import_from_a_lower_layer_to_a_higher_one() -> None:
    upward = [
        f"{importer} (layer {layerOf(importer)}) imports {imported} (layer {layerOf(imported)})"
        for importer, targets in graph().items()
        for imported in sorted(targets)
        if layerOf(imported) > layerOf(importer)
    ]
    assert not upward, "\n".join(upward)


def test_the_io_core_is_the_ground_floor() -> None:
    """sockd.core imports nothing of sockd but errors and interfaces: every layer may use it, it uses none."""
    allowed = {"sockd.errors", "sockd.interfaces"}
    above = sorted(
        f"{importer} imports {imported}"
        for importer, targets in graph().items()
        if importer == "sockd.core" or importer.startswith("sockd.core.")
        for imported in targets
        if imported not in allowed and not (imported == "sockd.core" or imported.startswith("sockd.core."))
    )
    assert not above, "\n".join(above)
    assert any(name.startswith("sockd.core.") for name in modules())  # not vacuous: the core is there


def findCycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the list of modules around it, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_no_import_cycles() -> None:
    cycle = findCycle(graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The check above would pass vacuously if the finder were broken."""
    assert findCycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert findCycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_import_reader_sees_imports_inside_functions(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from sockd.app import Assembly\n    import sockd.tap\n")
    assert importsOf("sockd.x", source, {"sockd.app", "sockd.tap"}) == {"sockd.app", "sockd.tap"}


@pytest.mark.parametrize("package", sorted(p.parent for p in PACKAGE.rglob("__init__.py")), ids=str)
def test_every_package_says_what_it_is_and_exports_names(package: Path) -> None:
    tree = ast.parse((package / "__init__.py").read_text())
    assert ast.get_docstring(tree), f"{package}: no docstring"
    if package != PACKAGE:
        exported = [n for n in tree.body if isinstance(n, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in n.targets)]
        assert exported, f"{package}: no __all__"


def test_every_module_and_public_definition_has_a_docstring() -> None:
    missing = []
    for name, path in modules().items():
        tree = ast.parse(path.read_text())
        if not ast.get_docstring(tree):
            missing.append(name)
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                if not ast.get_docstring(node):
                    missing.append(f"{name}.{node.name}")
    assert not missing, missing


def inClient(name: str) -> bool:
    return name == CLIENT or name.startswith(CLIENT + ".")


def test_the_daemon_never_imports_the_client_wing() -> None:
    mods = modules()
    known = set(mods)
    offending = [f"{name} imports {imported}" for name, path in mods.items() if not inClient(name)
                 for imported in sorted(importsOf(name, path, known)) if inClient(imported)]
    assert not offending, "\n".join(offending)


def test_the_client_wing_imports_from_the_daemon_only_what_it_needs() -> None:
    mods = modules()
    known = set(mods)
    used: dict[str, set[str]] = {}
    for name, path in mods.items():
        if inClient(name):
            for imported in importsOf(name, path, known):
                if not inClient(imported):
                    used.setdefault(imported, set()).add(name)
    assert set(used) == CLIENT_NEEDS, used  # equal, not a subset: CLIENT_NEEDS says what it really uses


def test_the_import_reader_sees_the_client_wing_from_the_daemon(tmp_path: Path) -> None:
    """The two tests above would pass vacuously if `from sockd import client` or a version import went unseen."""
    source = tmp_path / "m.py"
    source.write_text("from sockd import client, __version__\nfrom sockd.client.target import Target\n")
    found = importsOf("sockd.x", source, {"sockd", "sockd.client", "sockd.client.target"})
    assert found == {"sockd", "sockd.client", "sockd.client.target"}
