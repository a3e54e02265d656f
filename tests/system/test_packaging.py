"""The distribution carries the twistd plugin, and the plugin behaves as a plugin must.

Twisted finds C{twistd sockd} through C{twisted/plugins/sockd_plugin.py}; a
packaging slip (an automatic discovery that drops it, or an C{__init__.py} in
C{twisted/} or C{twisted/plugins/} that shadows Twisted's own) leaves a wheel
that installs cleanly and has no C{sockd} subcommand.  The build runs on a copy
of the source tree, so it never writes C{build/} or C{*.egg-info} into the
checkout other people are working in.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import tests.daemon as helpers
from tests.daemon import BIN, REACTOR, TWISTD, Daemon, connect, recvExactly

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable

_GENERATED = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                    ".ruff_cache", ".hypothesis", "dropin.cache")


def IGNORE(directory: str, names: list[str]) -> set[str]:
    """What a build may not see: everything generated, and sockets or links others leave in the tree."""
    skipped = set(_GENERATED(directory, names))
    for name in names:
        path = Path(directory, name)
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            skipped.add(name)
    return skipped


@dataclass
class Built:
    source: Path
    wheel: Path
    sdist: Path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """python -m build on a copy of the tree: an sdist, then the wheel built from that sdist (as pip would)."""
    root = tmp_path_factory.mktemp("packaging")
    source = root / "src"
    shutil.copytree(REPO, source, ignore=IGNORE)
    out = root / "dist"
    result = subprocess.run([PYTHON, "-m", "build", "--outdir", str(out), str(source)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    wheels = list(out.glob("*.whl"))
    sdists = list(out.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, list(out.iterdir())
    return Built(source, wheels[0], sdists[0])


def test_wheel_contains_the_plugin_and_no_twisted_init(built: Built) -> None:
    names = set(zipfile.ZipFile(built.wheel).namelist())
    assert "twisted/plugins/sockd_plugin.py" in names
    assert "twisted/__init__.py" not in names, "would shadow Twisted itself"
    assert "twisted/plugins/__init__.py" not in names, "would shadow Twisted's own plugins package"
    assert not [n for n in names if n.endswith("dropin.cache")]
    assert {n for n in names if n.startswith("twisted/")} == {"twisted/plugins/sockd_plugin.py"}


def test_wheel_contains_every_sockd_module(built: Built) -> None:
    names = set(zipfile.ZipFile(built.wheel).namelist())
    modules = {p.relative_to(built.source).as_posix() for p in (built.source / "sockd").rglob("*.py")}
    assert modules, "no sockd modules in the source tree?"
    assert modules <= names, sorted(modules - names)


def test_wheel_metadata_declares_the_client_and_the_dependencies(built: Built) -> None:
    wheel = zipfile.ZipFile(built.wheel)
    info = next(n.split("/")[0] for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    entryPoints = wheel.read(f"{info}/entry_points.txt").decode()
    assert "sockd-client = sockd.client:main" in entryPoints
    metadata = wheel.read(f"{info}/METADATA").decode()
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert any(line.split()[1].lower().startswith("twisted") for line in requires), requires


def test_sdist_contains_the_plugin_and_no_twisted_init(built: Built) -> None:
    with tarfile.open(built.sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    assert "twisted/plugins/sockd_plugin.py" in names
    assert "twisted/__init__.py" not in names
    assert "twisted/plugins/__init__.py" not in names


def test_plugin_module_does_not_install_a_reactor() -> None:
    code = ("import sys, twisted.plugins.sockd_plugin as p; "
            "assert 'twisted.internet.reactor' not in sys.modules, 'the plugin imported the reactor'; "
            "print(p.sockd.tapname)")
    result = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "sockd"


def test_twisted_plugin_system_finds_sockd() -> None:
    code = ("from twisted.plugin import getPlugins; from twisted.application.service import IServiceMaker; "
            "import twisted.plugins; print(sorted(p.tapname for p in getPlugins(IServiceMaker, twisted.plugins)))")
    result = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "'sockd'" in result.stdout


def test_twistd_with_another_reactor_shows_sockd_help(tmp_path: Path) -> None:
    result = subprocess.run([TWISTD, "-r", "poll", "sockd", "--help"], capture_output=True, text=True,
                            cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--ack" in result.stdout and "--echo" in result.stdout
    assert "reactor already installed" not in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_twistd_with_the_poll_reactor_serves(daemon) -> None:
    d = daemon("--ack", "tcp:0:interface=127.0.0.1", twistdArgs=["-r", "poll"])
    assert "reactor class: twisted.internet.pollreactor.PollReactor" in d.log()
    with connect(d.address("ack", "tcp")) as s:
        s.sendall(b"poll\n")
        assert recvExactly(s, 18) == b"I got your message"


def test_sockd_version_and_help(tmp_path: Path) -> None:
    version = subprocess.run([TWISTD, *REACTOR, "sockd", "--version"], capture_output=True, text=True, cwd=tmp_path,
                             timeout=60)
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("sockd ")
    listed = subprocess.run([TWISTD, *REACTOR, "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert any(line.split()[:1] == ["sockd"] for line in listed.stdout.splitlines()), listed.stdout


@pytest.fixture(scope="module")
def freshVenv(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A new virtualenv (no system site-packages) with only the built wheel and its dependencies from the index."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([PYTHON, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120)
    result = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                             str(built.wheel)], capture_output=True, text=True, timeout=300)
    offline = ("NewConnectionError" in result.stderr) or ("No matching distribution" in result.stderr)
    if result.returncode != 0 and offline:
        pytest.skip(f"the package index is not reachable: {result.stderr.strip().splitlines()[-1]}")
    assert result.returncode == 0, result.stderr[-3000:]
    yield venv


@pytest.mark.slow
def test_wheel_installed_in_a_fresh_venv_gives_twistd_sockd(freshVenv: Path, tmp_path: Path) -> None:
    """Not the editable checkout: the plugin must be found in the fresh venv's own site-packages."""
    twistd = freshVenv / "bin" / "twistd"
    listed = subprocess.run([str(twistd), "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert any(line.split()[:1] == ["sockd"] for line in listed.stdout.splitlines()), listed.stdout
    code = "import sockd, twisted.plugins.sockd_plugin as p; print(sockd.__file__); print(p.__file__)"
    where = subprocess.run([str(freshVenv / "bin" / "python"), "-c", code], capture_output=True, text=True,
                           cwd=tmp_path, timeout=60)
    assert where.returncode == 0, where.stderr
    for path in where.stdout.split():
        assert path.startswith(str(freshVenv)), f"imported from outside the fresh venv: {path}"
    clientHelp = subprocess.run([str(freshVenv / "bin" / "sockd-client"), "--help"], capture_output=True, text=True,
                                timeout=60)
    assert clientHelp.returncode == 0 and "--udp" in clientHelp.stdout


@pytest.mark.slow
def test_wheel_installed_in_a_fresh_venv_serves(freshVenv: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The installed daemon answers, and the installed client talks to it."""
    monkeypatch.setattr(helpers, "TWISTD", str(freshVenv / "bin" / "twistd"))  # Daemon starts this twistd
    d = Daemon(["--ack", "tcp:0:interface=127.0.0.1", "--ack", f"unix:{tmp_path / 'ack.sock'}"], tmp_path)
    try:
        assert d.command[0] == str(freshVenv / "bin" / "twistd")
        host, port = d.address("ack", "tcp")
        result = subprocess.run([str(freshVenv / "bin" / "sockd-client"), host, str(port), "-m", "fresh"],
                                capture_output=True, timeout=30)
        assert (result.returncode, result.stdout) == (0, b"I got your message\n"), result.stderr
        viaUnix = subprocess.run([str(BIN / "sockd-client"), "--unix", d.path("ack"), "-m", "fresh unix"],
                                 capture_output=True, timeout=30)
        assert viaUnix.stdout == b"I got your message\n"
    finally:
        d.stop()


# ---------------------------------------------------------------------------------------------------------------
# Licence, metadata, the sockd command and its manual.


def _metadata(built: Built) -> str:
    wheel = zipfile.ZipFile(built.wheel)
    info = next(n.split("/")[0] for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    return wheel.read(f"{info}/METADATA").decode()


def test_license_is_mit_in_both_distributions(built: Built) -> None:
    license = (REPO / "LICENSE").read_text()
    assert license.startswith("MIT License")
    names = set(zipfile.ZipFile(built.wheel).namelist())
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), sorted(names)
    with tarfile.open(built.sdist) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/LICENSE") and m.name.count("/") == 1)
        assert tar.extractfile(member).read().decode() == license  # type: ignore[union-attr]
    metadata = _metadata(built)
    assert "License-Expression: MIT" in metadata
    assert "License-File: LICENSE" in metadata


def test_version_is_written_once(built: Built) -> None:
    """pyproject reads sockd.__version__: the wheel, the sdist and `sockd --version` agree with it."""
    import sockd

    assert 'version = "' not in (REPO / "pyproject.toml").read_text().split("[project]", 1)[1].split("[", 1)[0]
    assert f"Version: {sockd.__version__}\n" in _metadata(built)
    assert built.wheel.name.startswith(f"sockd-{sockd.__version__}-")
    assert built.sdist.name == f"sockd-{sockd.__version__}.tar.gz"


def test_metadata_classifiers_and_typed(built: Built) -> None:
    metadata = _metadata(built)
    classifiers = [line.split(": ", 1)[1] for line in metadata.splitlines() if line.startswith("Classifier: ")]
    assert "Framework :: Twisted" in classifiers and "Typing :: Typed" in classifiers
    assert not [c for c in classifiers if c.startswith("License ::")], "SPDX License-Expression replaces these"
    assert "sockd/py.typed" in zipfile.ZipFile(built.wheel).namelist()


def test_wheel_declares_the_sockd_command_and_carries_man_page_and_completions(built: Built) -> None:
    wheel = zipfile.ZipFile(built.wheel)
    info = next(n.split("/")[0] for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    assert "sockd = sockd.command:main" in wheel.read(f"{info}/entry_points.txt").decode()
    data = info.replace(".dist-info", ".data")
    for installed, source in (("share/man/man8/sockd.8", "contrib/man/sockd.8"),
                              ("share/bash-completion/completions/sockd", "contrib/completion/sockd"),
                              ("share/zsh/site-functions/_sockd", "contrib/completion/_sockd")):
        assert wheel.read(f"{data}/data/{installed}") == (REPO / source).read_bytes(), installed


def test_sdist_carries_contrib_and_docs(built: Built) -> None:
    with tarfile.open(built.sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    tracked = subprocess.run(["git", "ls-files", "contrib", "docs"], cwd=REPO, capture_output=True, text=True,
                             timeout=60)
    expected = set(tracked.stdout.split()) if tracked.returncode == 0 and tracked.stdout else {
        str(p.relative_to(REPO)) for d in ("contrib", "docs") for p in (REPO / d).rglob("*") if p.is_file()}
    assert expected, "no contrib files?"
    assert "docs/operating.md" in expected, "the docs the README links to"
    assert expected <= names, sorted(expected - names)
    assert {"LICENSE", "MANIFEST.in", "contrib/container/Containerfile", "contrib/kubernetes/deployment.yaml"} <= names


@pytest.mark.slow
def test_wheel_installed_in_a_fresh_venv_gives_the_sockd_command_and_man_page(freshVenv: Path, tmp_path: Path) -> None:
    import sockd

    result = subprocess.run([str(freshVenv / "bin" / "sockd"), "--version"], capture_output=True, text=True,
                            cwd=tmp_path, timeout=60)
    assert (result.returncode, result.stdout.strip()) == (0, f"sockd {sockd.__version__}"), result.stderr
    assert (freshVenv / "share" / "man" / "man8" / "sockd.8").read_text().startswith(".\\\"")
    assert (freshVenv / "share" / "bash-completion" / "completions" / "sockd").exists()
    assert (freshVenv / "share" / "zsh" / "site-functions" / "_sockd").exists()
