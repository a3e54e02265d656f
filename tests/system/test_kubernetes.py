"""contrib/kubernetes/: checked offline against the Kubernetes schema, and run for real with podman kube play.

No cluster here: C{kubectl create --dry-run=client} still downloads the
server's OpenAPI document and fails without one, so the manifests are
validated with kubernetes-validate (PyPI; the Kubernetes JSON schemas ship in
the package, strict mode rejects unknown fields).  docs/containers.md's kube play
block runs the ConfigMap and the Deployment as written, on copies of the two
files whose names are this run's and whose ports are bound to free loopback
ports (podman 4 publishes every containerPort on the host): tests/podman.py.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import socket
import subprocess
import sys
import tomllib
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import sockd
from tests import podman as pm
from tests.daemon import recvExactly, udpExchange
from tests.system.test_systemd import freePort

KUBE = Path(__file__).resolve().parents[2] / "contrib" / "kubernetes"
MANIFESTS = ("configmap.yaml", "deployment.yaml", "service.yaml")
ACK = b"I got your message"


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((KUBE / name).read_text())


def podSpec() -> dict[str, Any]:
    return load("deployment.yaml")["spec"]["template"]["spec"]


def sockdToml() -> dict[str, Any]:
    return tomllib.loads(load("configmap.yaml")["data"]["sockd.toml"])


def listenPorts() -> set[tuple[int, str]]:
    """(port, TCP|UDP) of every tcp:/udp: listener in the ConfigMap's [listen] table."""
    ports = set()
    for descriptions in sockdToml()["listen"].values():
        for description in descriptions:
            kind, _, rest = description.partition(":")
            if kind in ("tcp", "udp"):
                ports.add((int(rest.split(":")[0]), kind.upper()))
    return ports


# ---------------------------------------------------------------------------------------------------------------
# Offline: the schema, and what the deployment relies on.


def validate(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", str(path)],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_is_valid_against_the_kubernetes_schema(name: str) -> None:
    result = validate(KUBE / name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed" in result.stdout + result.stderr


def test_the_validator_rejects_a_wrong_field(tmp_path: Path) -> None:
    """The check above can fail: a misspelt field in the Deployment is an error in strict mode."""
    broken = load("deployment.yaml")
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/readyz"}}
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(broken))
    result = validate(tmp_path / "broken.yaml")
    assert result.returncode != 0, result.stdout


def test_kustomization_lists_every_manifest() -> None:
    assert load("kustomization.yaml")["resources"] == list(MANIFESTS)
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return
    built = subprocess.run([kubectl, "kustomize", str(KUBE)], capture_output=True, text=True, timeout=60)
    if built.returncode == 0:  # offline; an old kubectl without kustomize is not this test's business
        kinds = sorted(d["kind"] for d in yaml.safe_load_all(built.stdout))
        assert kinds == ["ConfigMap", "Deployment", "Service"]


def test_deployment_security_probes_and_grace() -> None:
    spec = podSpec()
    container = spec["containers"][0]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 10001  # the image's user
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    ports = {p["name"]: p for p in container["ports"]}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert ports[container[probe]["httpGet"]["port"]]["containerPort"] == 9101
    settings = sockdToml()["service"]
    assert settings["metrics"] == "tcp:9101"
    assert spec["terminationGracePeriodSeconds"] > settings["grace"], "the kubelet would SIGKILL mid-drain"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[mounts["/etc/sockd"]]["configMap"]["name"] == load("configmap.yaml")["metadata"]["name"]
    assert "subPath" not in json.dumps(container["volumeMounts"]), "a subPath mount never sees ConfigMap updates"
    assert "emptyDir" in volumes[mounts["/var/lib/sockd"]], "the Unix socket needs a writable working directory"
    assert "emptyDir" in volumes[mounts["/tmp"]], "--workers needs a writable temporary directory"
    assert container["args"] == ["--config", "/etc/sockd/sockd.toml"]


def test_service_and_container_expose_every_tcp_and_udp_listener() -> None:
    service = load("service.yaml")["spec"]
    container = podSpec()["containers"][0]
    byName = {p["name"]: p for p in container["ports"]}
    exposed = {(p["port"], p["protocol"]) for p in service["ports"]}
    assert exposed == listenPorts()
    for port in service["ports"]:
        target = byName[port["targetPort"]]
        assert (target["containerPort"], target["protocol"]) == (port["port"], port["protocol"])
    assert service["selector"] == load("deployment.yaml")["spec"]["selector"]["matchLabels"]


def test_replicas_share_the_service_not_host_ports() -> None:
    """Two replicas, no hostPort (a second pod on a node could not bind it): the Service spreads the traffic."""
    deployment = load("deployment.yaml")
    assert deployment["spec"]["replicas"] == 2
    assert "hostPort" not in json.dumps(deployment) and "hostIP" not in json.dumps(deployment)
    assert load("service.yaml")["spec"]["type"] == "ClusterIP"


def test_the_docs_build_the_image_the_deployment_runs() -> None:
    """One tag everywhere: the build block's, the Deployment's image, sockd's version, every mention in the page."""
    image = pm.docImage()
    assert image == f"localhost/sockd:{sockd.__version__}"
    assert podSpec()["containers"][0]["image"] == image
    assert set(re.findall(r"localhost/sockd:[\w.]+", pm.DOC.read_text())) == {image}
    assert f"BASE={pm.docBase()} " in pm.docBlocks()["build"]


def test_every_shell_block_of_the_docs_is_run_by_a_test() -> None:
    """No shell block of docs/containers.md escapes the tests: each is named, and the names are the ones run."""
    text = pm.DOC.read_text()
    blocks = pm.docBlocks()
    assert text.count("```sh") == len(blocks)
    assert set(blocks) == {"podman-conf", "base", "build", "run", "run-config", "kube-play", "cluster-reload"}
    # The kube play block plays the Deployment with one replica: its sed must match deployment.yaml's line.
    assert "\n  replicas: 2\n" in (KUBE / "deployment.yaml").read_text()


# ---------------------------------------------------------------------------------------------------------------
# podman kube play.


class Played:
    """The doc's kube play block, on copies of the ConfigMap and Deployment: this run's names, free loopback ports."""

    def __init__(self, image: str, directory: Path) -> None:
        suffix = uuid.uuid4().hex[:10]
        configMap = load("configmap.yaml")
        configMap["metadata"]["name"] = f"sockd-test-config-{suffix}"  # kube play keeps it as a named volume
        deployment = copy.deepcopy(load("deployment.yaml"))
        deployment["metadata"]["name"] = f"sockd-test-{suffix}"
        spec = deployment["spec"]["template"]["spec"]
        container = spec["containers"][0]
        assert container["image"] == pm.docImage()
        container["image"] = image
        self.ports: dict[str, int] = {}
        byNumber: dict[int, int] = {}
        for port in container["ports"]:
            number = port["containerPort"]
            byNumber.setdefault(number, freePort("127.0.0.1"))  # one host port for TCP and UDP alike
            port["hostPort"], port["hostIP"] = byNumber[number], "127.0.0.1"
            self.ports[port["name"]] = byNumber[number]
        for volume in spec["volumes"]:  # kube play makes named volumes of these: make them this run's own
            if "emptyDir" in volume:
                old, volume["name"] = volume["name"], f"{volume['name']}-{suffix}"
                for mount in container["volumeMounts"]:
                    if mount["name"] == old:
                        mount["name"] = volume["name"]
            if "configMap" in volume:
                volume["configMap"]["name"] = configMap["metadata"]["name"]
        self.volumes = [v["name"] for v in spec["volumes"] if "emptyDir" in v] + [configMap["metadata"]["name"]]
        self.pod = f"{deployment['metadata']['name']}-pod-0"
        self.container = f"{self.pod}-{container['name']}"
        self.directory = directory
        (directory / "deployment.yaml").write_text(yaml.safe_dump(deployment, sort_keys=False))
        (directory / "configmap.yaml").write_text(yaml.safe_dump(configMap, sort_keys=False))
        block = pm.docBlocks()["kube-play"]
        for name in ("deployment.yaml", "configmap.yaml"):
            block = block.replace(f"contrib/kubernetes/{name}", str(directory / name))
        block = pm.containerName(block.replace("sockd-pod-0-sockd", self.container), configMap["metadata"]["name"])
        self.play, self.waitUntilServing, self.reload, *self.teardown = pm.commands(block)
        pm.run(self.play, directory, timeout=180)

    def address(self, name: str) -> tuple[str, int]:
        return "127.0.0.1", self.ports[name]

    def logs(self) -> str:
        result = pm.podman("logs", self.container, check=False)
        return result.stdout + result.stderr

    def events(self) -> list[dict]:
        return [json.loads(line) for line in self.logs().splitlines() if line.strip().startswith("{")]

    def exec(self, *command: str) -> subprocess.CompletedProcess:
        return pm.podman("exec", self.container, *command, check=False)

    def down(self) -> None:
        """The block's kube down and volume rm; then whatever a failed test may have left."""
        for command in self.teardown:
            pm.shell(command, self.directory, timeout=120)
        pm.podman("pod", "rm", "--force", self.pod, check=False)
        for volume in self.volumes:
            pm.podman("volume", "rm", "--force", volume, check=False)


@pytest.fixture(scope="module")
def played(sockdImage: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Played]:
    p = Played(sockdImage, tmp_path_factory.mktemp("kube"))
    try:
        pm.run(p.waitUntilServing, p.directory, timeout=60)
        yield p
    finally:
        p.down()


def ack(address: tuple[str, int]) -> bytes:
    try:
        with socket.create_connection(address, timeout=5) as s:
            s.sendall(b"hello pod\n")
            return recvExactly(s, len(ACK))
    except OSError:
        return b""


@pytest.mark.slow
def test_pod_serves_ack_echo_and_udp(played: Played) -> None:
    assert ack(played.address("ack")) == ACK
    assert udpExchange(played.address("ack-udp"), b"hello") == b"Got your message\n"
    with socket.create_connection(played.address("echo"), timeout=5) as s:
        s.sendall(b"echo in a pod\n")
        assert recvExactly(s, 14) == b"echo in a pod\n"
    assert udpExchange(played.address("echo-udp"), b"datagram echo") == b"datagram echo"
    with socket.create_connection(played.address("metrics"), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        assert b"sockd_connections_accepted_total" in s.makefile("rb").read()


@pytest.mark.slow
def test_pod_runs_the_configmap_as_non_root_on_a_read_only_root(played: Played) -> None:
    announced = {(e["service"], e["transport"]) for e in played.events() if e.get("namespace") == "sockd.listeners"}
    wanted = {(name, d.partition(":")[0]) for name, ds in sockdToml()["listen"].items() for d in ds}
    assert wanted <= announced, announced
    assert played.exec("id", "-u").stdout.strip() == "10001"
    assert played.exec("touch", "/opt/sockd/x").returncode != 0, "the root filesystem is writable"
    unix = played.exec("sockd-client", "--unix", "/var/lib/sockd/sockd.sock", "-m", "in the emptyDir")
    assert (unix.returncode, unix.stdout) == (0, "I got your message\n"), unix.stderr


def reloads(played: Played) -> int:
    return sum(1 for e in played.events() if e.get("namespace") == "sockd.reload")


@pytest.mark.slow
def test_one_pod_for_the_one_replica(played: Played) -> None:
    """The block's sed plays one replica: a second pod would fail to bind the same host ports."""
    assert pm.podman("pod", "exists", played.pod, check=False).returncode == 0
    assert pm.podman("pod", "exists", played.pod[:-1] + "1", check=False).returncode == 1


@pytest.mark.slow
def test_reload_commands_from_the_docs(played: Played) -> None:
    """The kube play block's reload, and what the cluster block runs in each pod (`kubectl exec POD -- ...`)."""
    before = reloads(played)
    pm.run(played.reload, played.directory)
    pm.waitFor(lambda: reloads(played) > before, "the reload to be logged")
    inPod = re.findall(r"kubectl exec \S+ -- (.+)$", pm.docBlocks()["cluster-reload"], re.M)
    assert inPod == ["cat /etc/sockd/sockd.toml", "sh -c 'kill -HUP 1'"], inPod
    shown = pm.run(f"podman exec {played.container} {inPod[0]}", played.directory)
    assert shown.stdout == load("configmap.yaml")["data"]["sockd.toml"]
    before = reloads(played)
    pm.run(f"podman exec {played.container} {inPod[1]}", played.directory)
    pm.waitFor(lambda: reloads(played) > before, "the second reload to be logged")
    assert ack(played.address("ack")) == ACK


def _probe(address: tuple[str, int], path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://{address[0]}:{address[1]}{path}", timeout=5) as answer:
            return answer.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.mark.slow
def test_probe_endpoints_answer(played: Played) -> None:
    assert _probe(played.address("metrics"), "/healthz") == 200
    assert _probe(played.address("metrics"), "/readyz") == 200
