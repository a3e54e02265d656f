"""Podman for the container and Kubernetes tests, driven by docs/containers.md's own shell blocks.

The tests run the page's blocks (L{docBlocks}) as written, so that what an
operator types is what was tested.  What several test runs on one machine must
not share is changed, and only that (L{containerName}, L{publish}): the
directory of the containers.conf block (written to a private directory and
given as CONTAINERS_CONF, not to /etc), the image tag, container, pod and volume
names, published host ports (free loopback ports) and /etc/sockd.

The base block (mmdebstrap from the Debian archive: no registry is reachable
here) runs only when its image is missing: the image stays, so later runs take
seconds.  The image is built once per test session by the build block, in a copy
of this tree whose .venv is the test's own; the Containerfile's apt stages are
built and tagged first under stable names (L{CACHED_STAGES}) so that removing a
run's image keeps them for the next run.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

PODMAN = shutil.which("podman")
MMDEBSTRAP = shutil.which("mmdebstrap")
CACHE = Path(os.environ.get("SOCKD_TEST_CACHE", "/var/cache/sockd-test"))
REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "containers.md"
CONF_DIR = "/etc/containers/containers.conf.d"

#: Seconds: building the base from the archive and the image from scratch are the slow steps.
BASE_TIMEOUT = 900
BUILD_TIMEOUT = 900
TIMEOUT = 60

_BLOCK = re.compile(r"<!-- block: ([\w-]+) -->\n```sh\n(.*?)^```", re.S | re.M)


def docBlocks() -> dict[str, str]:
    """docs/containers.md's shell blocks by the name in the comment before each."""
    return {name: body for name, body in _BLOCK.findall(DOC.read_text())}


def commands(block: str) -> list[str]:
    """The block's commands, one per logical line (backslash continuations joined)."""
    return [c.strip() for c in re.split(r"(?<!\\)\n", block.strip()) if c.strip()]


def docImage() -> str:
    """The tag the build block gives the image (what deployment.yaml runs)."""
    return re.search(r"-t (\S+) ", docBlocks()["build"])[1]


def docBase() -> str:
    """The base image the base block imports."""
    return re.search(r"^podman import \S+ (\S+)$", docBlocks()["base"], re.M)[1]


def containerName(text: str, name: str) -> str:
    """The block's container (or volume) name, the word C{sockd} on its own, replaced by C{name}."""
    return re.sub(r"(?<= )sockd(?=[\s;&]|$)", name, text)


def publish(text: str, ports: dict[int, int]) -> str:
    """C{-p HOST:CONTAINER} on a free loopback port per host port, and the clients' C{127.0.0.1 HOST} too."""
    text = re.sub(r"-p (\d+):", lambda m: f"-p 127.0.0.1:{ports[int(m[1])]}:", text)
    return re.sub(r"127\.0\.0\.1 (\d+)$", lambda m: f"127.0.0.1 {ports[int(m[1])]}", text, flags=re.M)


@contextmanager
def cacheLock() -> Iterator[None]:
    """One builder at a time: other test runs on this machine share the cache."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


_conf: Path | None = None


def containersConf() -> Path:
    """The containers.conf the doc's block writes, in a directory of this process's own (CONTAINERS_CONF)."""
    global _conf
    if _conf is None:
        directory = Path(tempfile.mkdtemp(prefix="sockd-containers-conf-"))
        result = shell(docBlocks()["podman-conf"].replace(CONF_DIR, str(directory)), directory, conf=False)
        assert result.returncode == 0, result.stderr
        (conf,) = directory.glob("*.conf")
        _conf = conf
    return _conf


def environment(conf: bool = True) -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(containersConf())} if conf else dict(os.environ)


def shell(script: str, cwd: Path, timeout: float = TIMEOUT, conf: bool = True) -> subprocess.CompletedProcess:
    """Run a doc block (or one of its commands) with bash, as an operator's shell would, stopping at an error."""
    return subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=environment(conf), stdin=subprocess.DEVNULL)


def podman(*args: str, timeout: float = TIMEOUT, check: bool = True) -> subprocess.CompletedProcess:
    """Run podman with the doc's containers.conf; fail with its stderr unless C{check} is false."""
    assert PODMAN is not None
    result = subprocess.run([PODMAN, *args], capture_output=True, text=True, timeout=timeout, env=environment(),
                            stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: exit {result.returncode}\n{result.stderr[-3000:]}")
    return result


def _skip(reason: str) -> None:
    pytest.skip(reason)


#: What mmdebstrap or pip say when the archive or the index cannot be reached (then the tests skip).
OFFLINE = ("Temporary failure resolving", "Could not resolve", "Failed to fetch", "NewConnectionError",
           "Network is unreachable")


def baseImage() -> str:
    """The doc's base image: made by the doc's base block the first time, then kept."""
    if PODMAN is None:
        _skip("podman is not installed (scripts/test installs it)")
    if os.geteuid() != 0:
        _skip("the podman tests run as root (rootless podman needs subuids and a user session)")
    base = docBase()
    with cacheLock():
        if podman("image", "exists", base, check=False).returncode != 0:
            if MMDEBSTRAP is None:
                _skip("mmdebstrap is not installed and the base image is not there")
            try:
                result = shell(docBlocks()["base"], CACHE, timeout=BASE_TIMEOUT)
            finally:
                (CACHE / "base.tar").unlink(missing_ok=True)
            if result.returncode != 0 and any(s in result.stderr for s in OFFLINE):
                _skip(f"mmdebstrap could not reach the Debian archive: {result.stderr.strip()[-300:]}")
            assert result.returncode == 0, result.stderr[-3000:]
    probe = podman("run", "--rm", "--network=none", base, "true", check=False)
    if probe.returncode != 0:
        _skip(f"podman cannot run a container here: {probe.stderr.strip().splitlines()[-1:]}")
    return base


#: The Containerfile's stages that depend only on the base and apt: tagged, so they stay cached between runs.
CACHED_STAGES = ("runtime", "venv")


def buildImage(directory: Path) -> tuple[str, float]:
    """Build the image with the doc's build block in a copy of this tree; its unique tag, and the seconds it took.

    The copy's .venv is the test's own venv (what scripts/run makes).  The
    apt stages are built first under stable tags (the cache a rerun reuses)
    and the build stage under the run's tag, so that L{removeImage} removes it
    with the image instead of leaving it dangling: the same podman build
    command as the doc's, with C{--target} and another C{-t}.
    """
    from tests.system.test_packaging import IGNORE

    source = directory / "source"
    shutil.copytree(REPO, source, ignore=IGNORE)
    (source / ".venv").symlink_to(sys.prefix)
    tag = f"localhost/sockd-test:{uuid.uuid4().hex[:12]}"
    build = docBlocks()["build"].replace(f"-t {docImage()} ", f"-t {tag} ")
    first = [c for c in commands(build) if not c.startswith("podman build")]
    (podmanBuild,) = [c for c in commands(build) if c.startswith("podman build")]
    started = time.monotonic()
    try:
        for command in first:
            run(command, source, BUILD_TIMEOUT)
        with cacheLock():
            for stage in CACHED_STAGES:
                run(podmanBuild.replace(f"-t {tag} ", f"--target {stage} -t localhost/sockd-test-cache:{stage} "),
                    source, BUILD_TIMEOUT)
        run(podmanBuild.replace(f"-t {tag} ", f"--target build -t {tag}-build "), source, BUILD_TIMEOUT)
        run(build, source, BUILD_TIMEOUT)  # the whole block, as written: the stages above are its cache
    except BaseException:
        removeImage(tag)  # a build that failed half-way leaves no tagged image behind either
        raise
    return tag, time.monotonic() - started


def run(command: str, cwd: Path, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """Run a doc command; skip if PyPI or the archive is out of reach, fail with its output otherwise."""
    result = shell(command, cwd, timeout)
    if result.returncode != 0 and any(s in result.stdout + result.stderr for s in OFFLINE):
        _skip(f"the network is not reachable: {(result.stdout + result.stderr).strip()[-300:]}")
    assert result.returncode == 0, f"{command}: exit {result.returncode}\n{(result.stdout + result.stderr)[-3000:]}"
    return result


def removeImage(tag: str) -> None:
    """Remove the run's image and its build stage (the cached stages stay)."""
    podman("rmi", "--force", tag, f"{tag}-build", check=False, timeout=120)


def uniqueName(prefix: str = "sockd-test") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def waitFor(predicate, what: str, timeout: float = 30.0):
    """Poll until C{predicate} returns something true (returned), or fail naming C{what}."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except OSError as e:
            last = e
        else:
            if last:
                return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")
