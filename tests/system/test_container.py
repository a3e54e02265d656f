"""contrib/container/Containerfile, built and run for real with podman.

The image is built by docs/containers.md's build block on the base its base
block makes from the Debian archive (tests/podman.py says what the tests change
in the blocks, and how the base is cached); the run blocks are run as written
too.  Each test runs its own container on loopback-published ports and removes
it, even on failure.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sockd import tap
from tests import podman as pm
from tests.daemon import recvExactly, udpExchange
from tests.system.test_systemd import freePort

pytestmark = [pytest.mark.slow, pytest.mark.skipif(pm.PODMAN is None, reason="podman is not installed")]

ACK = b"I got your message"


class Container:
    """A running container of the image, with its published loopback ports."""

    def __init__(self, image: str, args: list[str], publish: list[str], volumes: list[str] = ()) -> None:
        self.name = pm.uniqueName()
        command = ["run", "--detach", "--name", self.name]
        for port in publish:
            command += ["--publish", f"127.0.0.1::{port}"]
        for volume in volumes:
            command += ["--volume", volume]
        pm.podman(*command, image, *args)

    def port(self, spec: str) -> tuple[str, int]:
        host, _, port = pm.podman("port", self.name, spec).stdout.strip().splitlines()[0].rpartition(":")
        return host, int(port)

    def logs(self) -> str:
        result = pm.podman("logs", self.name, check=False)
        return result.stdout + result.stderr

    def inspect(self) -> dict:
        return json.loads(pm.podman("inspect", self.name).stdout)[0]

    def exec(self, *command: str) -> subprocess.CompletedProcess:
        return pm.podman("exec", self.name, *command, check=False)

    def remove(self) -> None:
        pm.podman("rm", "--force", "--time", "0", self.name, check=False)


@pytest.fixture
def container(sockdImage: str) -> Iterator:
    started: list[Container] = []

    def run(*args: str, publish: list[str] = (), volumes: list[str] = ()) -> Container:
        c = Container(sockdImage, list(args), list(publish), list(volumes))
        started.append(c)
        return c

    yield run
    for c in started:
        c.remove()


def ack(address: tuple[str, int], message: bytes = b"hello container\n") -> bytes:
    with socket.create_connection(address, timeout=5) as s:
        s.sendall(message)
        return recvExactly(s, len(ACK))


def answers(address: tuple[str, int]) -> bool:
    """True once the published port reaches a listening sockd (podman's forwarder accepts before that)."""
    try:
        return ack(address) == ACK
    except OSError:
        return False


def events(logs: str) -> list[dict]:
    """The JSON log records the image writes: one object per line (sockd's format when the log is not a terminal)."""
    return [json.loads(line) for line in logs.splitlines() if line.strip().startswith("{")]


def defaultPorts() -> set[str]:
    """The ports of the default listeners, as EXPOSE writes them ("51717/tcp")."""
    ports = set()
    for service in tap.SERVICES:
        for description in service.defaults:
            kind, _, rest = description.partition(":")
            if kind in ("tcp", "udp"):
                ports.add(f"{rest.split(':')[0]}/{kind}")
    return ports


def test_image_metadata(sockdImage: str) -> None:
    """Non-root numeric user, writable working directory, every default port exposed, a health check, sockd as PID 1."""
    config = json.loads(pm.podman("image", "inspect", sockdImage).stdout)[0]["Config"]
    assert config["User"] == "10001:10001"
    assert config["WorkingDir"] == "/var/lib/sockd"
    assert set(config["ExposedPorts"]) == defaultPorts()
    assert config["Entrypoint"] == ["sockd"]
    assert config["StopSignal"] == "SIGTERM"
    health = json.loads(pm.podman("image", "inspect", sockdImage).stdout)[0]["Healthcheck"]
    assert health["Test"][:2] == ["CMD", "sockd-client"], health


def test_defaults_serve_and_the_health_check_passes(container) -> None:
    c = container(publish=["51717/tcp", "51717/udp", "50007/tcp", "50037/udp"])
    pm.waitFor(lambda: answers(c.port("51717/tcp")), "ack through the published port")
    assert udpExchange(c.port("51717/udp"), b"hello") == b"Got your message\n"
    with socket.create_connection(c.port("50007/tcp"), timeout=5) as s:
        s.sendall(b"echo me\n")
        assert recvExactly(s, 8) == b"echo me\n"
    assert len(udpExchange(c.port("50037/udp"), b"")) == 4  # RFC 868 time
    # The default Unix socket, in the writable working directory, as the unprivileged user.
    unix = c.exec("sockd-client", "--unix", "sockd.sock", "-m", "over unix")
    assert (unix.returncode, unix.stdout) == (0, "I got your message\n"), unix.stderr
    assert c.exec("stat", "-c", "%u %a", "/var/lib/sockd/sockd.sock").stdout.split() == ["10001", "660"]
    assert c.exec("id", "-u").stdout.strip() == "10001"
    assert c.exec("cat", "/proc/1/cmdline").stdout.split("\0")[:2][1] == "/opt/sockd/bin/sockd"
    health = pm.podman("healthcheck", "run", c.name, check=False)
    assert health.returncode == 0, health.stdout + health.stderr
    assert "Here is the message: healthcheck" in [e.get("text") for e in events(c.logs())
                                                  if e.get("namespace") == "sockd.messages"]


def test_plugin_cache_was_built_at_image_time(container) -> None:
    """site-packages is root's: the cache must be there already, and using the plugins must not try to write it."""
    c = container(publish=["51717/tcp"])
    pm.waitFor(lambda: answers(c.port("51717/tcp")), "sockd to answer")
    cache = c.exec("sh", "-c", "ls /opt/sockd/lib/python3*/site-packages/twisted/plugins/dropin.cache")
    assert cache.returncode == 0, cache.stderr
    path = cache.stdout.strip()
    before = c.exec("stat", "-c", "%Y %s", path).stdout
    assert c.exec("test", "-w", path).returncode != 0, "the runtime user can write the plugin cache"
    listed = c.exec("twistd", "--help")
    assert listed.returncode == 0 and "sockd" in listed.stdout, listed.stderr
    assert "plugin cache" not in (listed.stdout + listed.stderr).lower()
    reactors = c.exec("sockd", "--reactor", "sockd-epoll", "--version")
    assert (reactors.returncode, reactors.stdout.strip().split()[0]) == (0, "sockd"), reactors.stderr
    assert c.exec("stat", "-c", "%Y %s", path).stdout == before


def test_sigterm_as_pid_1_drains_then_exits_0(container) -> None:
    """podman stop sends SIGTERM to PID 1: a message already sent is answered, then sockd exits, long before SIGKILL."""
    c = container(publish=["51717/tcp"])
    address = c.port("51717/tcp")
    pm.waitFor(lambda: answers(address), "sockd to answer")
    with socket.create_connection(address, timeout=10) as s:
        s.sendall(b"half a message")  # no newline: pending until the drain answers it
        time.sleep(0.3)
        stopping = threading.Thread(target=pm.podman, args=("stop", "--time", "30", c.name), kwargs={"timeout": 60})
        started = time.monotonic()
        stopping.start()
        assert recvExactly(s, len(ACK)) == ACK
        stopping.join(60)
        took = time.monotonic() - started
    state = c.inspect()["State"]
    assert state["Status"] == "exited"
    assert state["ExitCode"] == 0, c.logs()[-2000:]
    assert took < 15, f"stop took {took:.1f}s: SIGTERM was not handled (podman waited to SIGKILL)"


def operatorTree(tmp_path: Path) -> Path:
    """A directory like the top of the source tree after scripts/run: its .venv is the test's (sockd-client)."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / ".venv").symlink_to(sys.prefix)
    return tree


def docBlock(name: str, image: str, container: str, ports: dict[int, int]) -> str:
    """The doc's block with this run's image tag, container name and host ports."""
    return pm.publish(pm.containerName(pm.docBlocks()[name], container), ports).replace(pm.docImage(), image)


def test_the_run_block_serves_then_stops(sockdImage: str, tmp_path: Path) -> None:
    """docs/containers.md's run block: run, wait for the health check, an ack from the host, stop, remove."""
    name = pm.uniqueName()
    ports = {51717: freePort("127.0.0.1"), 50007: freePort("127.0.0.1")}
    try:
        result = pm.shell(docBlock("run", sockdImage, name, ports), operatorTree(tmp_path), timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        assert ACK.decode() in result.stdout
        assert pm.podman("container", "exists", name, check=False).returncode == 1, "podman rm left it"
    finally:
        pm.podman("rm", "--force", "--time", "0", name, check=False)


def test_config_volume_and_sighup_reload(sockdImage: str, tmp_path: Path) -> None:
    """The run-config block: --config from a volume; its SIGHUP (podman kill) re-reads it, opening the new listener."""
    config = tmp_path / "etc"
    config.mkdir()
    toml = config / "sockd.toml"
    toml.write_text('[listen]\nack = ["tcp:51717"]\n')
    name = pm.uniqueName()
    ports = {51717: freePort("127.0.0.1"), 50007: freePort("127.0.0.1")}
    start, reload = pm.commands(docBlock("run-config", sockdImage, name, ports).replace("/etc/sockd:/", f"{config}:/"))
    tree = operatorTree(tmp_path)
    try:
        pm.run(start, tree)
        pm.waitFor(lambda: answers(("127.0.0.1", ports[51717])), "ack to answer")
        toml.write_text('[listen]\nack = ["tcp:51717"]\necho = ["tcp:50007"]\n')
        pm.run(reload, tree)

        def echoes() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", ports[50007]), timeout=3) as s:
                    s.sendall(b"reloaded\n")
                    return recvExactly(s, 9) == b"reloaded\n"
            except OSError:
                return False

        pm.waitFor(echoes, "echo, added by the reload, to answer")
        assert answers(("127.0.0.1", ports[51717]))
    finally:
        pm.podman("rm", "--force", "--time", "0", name, check=False)
