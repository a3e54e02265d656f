"""Podman for the container and Kubernetes tests: a base image from the Debian archive, the sockd image.

Docker Hub is not reachable here, so the Containerfile's default base
(debian:bookworm-slim) cannot be pulled: the base is built with
C{mmdebstrap --variant=minbase bookworm} (what -slim is made of) and imported
once, then kept, with the tarball, under L{CACHE} so later runs take seconds.
The sockd image is built from this tree's wheel and its dependencies' wheels
(C{--no-index}: no network, no proxy certificate inside the build), tagged
uniquely per test run and removed by tag afterwards; podman's layer cache keeps
the apt layers, so a warm build only reinstalls the wheels.

Podman runs with runc and explicit ulimits (L{containersConf}): crun fails on
this machine's hybrid cgroups, and podman's default RLIMIT_NOFILE/NPROC exceed
what an unprivileged-resources host lets runc set.
"""

from __future__ import annotations

import fcntl
import os
import resource
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

PODMAN = shutil.which("podman")
MMDEBSTRAP = shutil.which("mmdebstrap")
CACHE = Path(os.environ.get("SOCKD_TEST_CACHE", "/var/cache/sockd-test"))
BASE_TAG = "localhost/sockd-test-base:bookworm"
BASE_TAR = CACHE / "bookworm-minbase.tar"
MIRROR = os.environ.get("SOCKD_TEST_MIRROR", "http://deb.debian.org/debian")
REPO = Path(__file__).resolve().parent.parent
CONTAINERFILE = REPO / "contrib" / "container" / "Containerfile"

#: Seconds: building the base from the archive and the image from scratch are the slow steps.
BASE_TIMEOUT = 900
BUILD_TIMEOUT = 900
TIMEOUT = 60


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


def containersConf() -> Path:
    """A containers.conf (CONTAINERS_CONF) with limits runc may set here, and runc if it is installed."""
    nofile = min(8192, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    nproc = min(4096, resource.getrlimit(resource.RLIMIT_NPROC)[1])
    text = f'[containers]\ndefault_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
    if shutil.which("runc"):
        text += '[engine]\nruntime = "runc"\n'
    path = CACHE / "containers.conf"
    if not path.exists() or path.read_text() != text:
        tmp = path.with_suffix(f".{os.getpid()}")
        tmp.write_text(text)
        tmp.replace(path)
    return path


def podman(*args: str, timeout: float = TIMEOUT, check: bool = True) -> subprocess.CompletedProcess:
    """Run podman with the test's containers.conf; fail with its stderr unless C{check} is false."""
    assert PODMAN is not None
    env = {**os.environ, "CONTAINERS_CONF": str(CACHE / "containers.conf")}
    result = subprocess.run([PODMAN, *args], capture_output=True, text=True, timeout=timeout, env=env,
                            stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: exit {result.returncode}\n{result.stderr[-3000:]}")
    return result


def _skip(reason: str) -> None:
    pytest.skip(reason)


def baseImage() -> str:
    """The bookworm minbase image, built from the Debian archive the first time and cached after."""
    if PODMAN is None:
        _skip("podman is not installed (scripts/test installs it)")
    if os.geteuid() != 0:
        _skip("the podman tests run as root (rootless podman needs subuids and a user session)")
    with cacheLock():
        containersConf()
        if podman("image", "exists", BASE_TAG, check=False).returncode != 0:
            if not BASE_TAR.exists():
                if MMDEBSTRAP is None:
                    _skip("mmdebstrap is not installed and no base image is cached")
                partial = BASE_TAR.with_suffix(".partial.tar")
                # apt's sandbox user (_apt) may not be able to open /dev/null on a locked-down host (then
                # apt-key "cannot create /dev/null" and every Release file looks unsigned): run apt as root.
                result = subprocess.run([MMDEBSTRAP, "--variant=minbase", "--mode=root",
                                         '--aptopt=APT::Sandbox::User "root"', "bookworm", str(partial), MIRROR],
                                        capture_output=True, text=True, timeout=BASE_TIMEOUT,
                                        stdin=subprocess.DEVNULL)
                if result.returncode != 0:
                    partial.unlink(missing_ok=True)
                    _skip(f"mmdebstrap could not build a base from {MIRROR}: {result.stderr.strip()[-300:]}")
                partial.replace(BASE_TAR)
            podman("import", "--quiet", str(BASE_TAR), BASE_TAG, timeout=300)
    probe = podman("run", "--rm", "--network=none", BASE_TAG, "true", check=False)
    if probe.returncode != 0:
        _skip(f"podman cannot run a container here: {probe.stderr.strip().splitlines()[-1:]}")
    return BASE_TAG


def wheelhouse(directory: Path) -> Path:
    """This tree's sockd wheel and every dependency's wheel, in C{directory}: the image's build context."""
    from tests.test_packaging import IGNORE

    source = directory.parent / "source"
    shutil.copytree(REPO, source, ignore=IGNORE)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
                             "--wheel-dir", str(directory), str(source)],
                            capture_output=True, text=True, timeout=600)
    offline = "NewConnectionError" in result.stderr or "No matching distribution" in result.stderr
    if result.returncode != 0 and offline:
        _skip(f"the package index is not reachable: {result.stderr.strip().splitlines()[-1]}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(directory.glob("sockd-*.whl")), list(directory.iterdir())
    return directory


#: The Containerfile's stages that depend only on the base and apt: tagged, so they stay cached between runs.
CACHED_STAGES = ("runtime", "venv")


def buildImage(context: Path, base: str) -> tuple[str, float]:
    """Build the sockd image from C{context}; its unique tag, and the seconds it took.

    The apt stages are built and tagged first under stable names (the cache a
    rerun reuses); the build stage is tagged with the run's tag too, so that
    L{removeImage} removes it with the image instead of leaving it dangling.
    """
    tag = f"localhost/sockd-test:{uuid.uuid4().hex[:12]}"
    common = ["build", "--format", "docker", "--build-arg", f"BASE={base}", "--build-arg", "PIP_OPTIONS=--no-index",
              "-f", str(CONTAINERFILE)]
    started = time.monotonic()
    try:
        with cacheLock():
            for stage in CACHED_STAGES:
                podman(*common, "--target", stage, "-t", f"localhost/sockd-test-cache:{stage}", str(context),
                       timeout=BUILD_TIMEOUT)
        podman(*common, "--target", "build", "-t", f"{tag}-build", str(context), timeout=BUILD_TIMEOUT)
        podman(*common, "-t", tag, str(context), timeout=BUILD_TIMEOUT)
    except BaseException:
        removeImage(tag)  # a build that failed half-way leaves no tagged image behind either
        raise
    return tag, time.monotonic() - started


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
