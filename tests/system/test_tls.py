"""Every stream service over ssl: and tls: endpoints, checked with real TLS clients."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.daemon import REACTOR, TWISTD, connect

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    """A self-signed certificate for localhost: key.pem and cert.pem, and pems/localhost.pem for tls:."""
    where = tmp_path_factory.mktemp("certs")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "key.pem", "-out", "cert.pem",
         "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
        cwd=where, check=True, capture_output=True, timeout=60,
    )
    (where / "pems").mkdir()
    (where / "pems" / "localhost.pem").write_bytes((where / "key.pem").read_bytes() + (where / "cert.pem").read_bytes())
    return where


def sClient(port: int, send: bytes, want: int, timeout: float = 15.0) -> bytes:
    """Talk through C{openssl s_client}, keeping its stdin open until C{want} bytes (or end of stream) arrive."""
    proc = subprocess.Popen(["openssl", "s_client", "-quiet", "-connect", f"127.0.0.1:{port}", "-servername",
                             "localhost"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(send)
        proc.stdin.flush()
        os.set_blocking(proc.stdout.fileno(), False)
        received = b""
        deadline = time.monotonic() + timeout
        while len(received) < want and time.monotonic() < deadline:
            try:
                chunk = os.read(proc.stdout.fileno(), 65536)
            except BlockingIOError:
                time.sleep(0.02)
                continue
            if not chunk:
                break
            received += chunk
        return received
    finally:
        proc.kill()
        proc.wait(5)


def ssl(certs: Path) -> str:
    return f"ssl:0:interface=127.0.0.1:privateKey={certs / 'key.pem'}:certKey={certs / 'cert.pem'}"


def test_openssl_s_client_gets_the_ack(daemon, certs):
    d = daemon("--ack", ssl(certs))
    port = d.address("ack", "ssl")[1]
    assert sClient(port, b"hello over tls\n", 18) == b"I got your message"
    assert "Here is the message: hello over tls" in d.log()


@pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed")
@pytest.mark.parametrize("kind", ["ssl", "tls"])
def test_socat_openssl_gets_the_echo(daemon, certs, kind):
    description = ssl(certs) if kind == "ssl" else f"tls:{certs / 'pems'}:port=0:interface=127.0.0.1"
    d = daemon("--echo", description)
    port = d.address("echo", kind)[1]
    # stdin stays open a moment after the line: Twisted's TLS drops writes still being aggregated when the
    # peer's close_notify arrives in the same read as its data (an immediate EOF from a pipe).
    result = subprocess.run(
        ["sh", "-c",
         f"(printf 'echo me, securely\\n'; sleep 1) | socat -t 3 - OPENSSL:localhost:{port},verify=0,pf=ip4"],
        capture_output=True, timeout=20,
    )
    assert result.stdout == b"echo me, securely\n", result.stderr


@pytest.mark.parametrize("service", ["daytime", "time", "qotd", "chargen", "discard"])
def test_every_stream_service_serves_tls(daemon, certs, service):
    d = daemon(f"--{service}", ssl(certs))
    port = d.address(service, "ssl")[1]
    out = sClient(port, b"", 1 << 20 if service != "chargen" else 4096, timeout=3 if service == "discard" else 15)
    if service == "daytime":
        assert out.endswith(b"-UTC\r\n")
    elif service == "time":
        assert len(out) == 4
    elif service == "qotd":
        assert 0 < len(out) < 512 and out.endswith(b"\r\n")
    elif service == "chargen":
        assert out.startswith(b' !"#$%&\'()*+,-./0123456789') and len(out) >= 4096
    else:
        assert out == b""
    assert "Traceback" not in d.log()


def test_handshake_deadline_closes_silent_clients(daemon, certs):
    d = daemon("--ack", ssl(certs), "--tls-handshake-timeout", "0.5", "--idle-timeout", "60")
    with connect(d.address("ack", "ssl")) as silent:
        started = time.monotonic()
        try:
            assert silent.recv(100) == b""  # closed by the deadline, long before the idle timeout
        except ConnectionResetError:
            pass  # aborted: also closed
        assert time.monotonic() - started < 5
    assert "TLS handshake not done in 0.5s" in d.log()


@pytest.mark.parametrize(
    "description, named",
    [
        ("ssl:0:privateKey=missing-key.pem:certKey=missing-cert.pem", "missing-key.pem"),
        ("tls:no-such-dir:port=0", "no-such-dir"),
    ],
)
def test_missing_certificate_is_one_clear_line(tmp_path, description, named):
    result = subprocess.run([TWISTD, *REACTOR, "-n", "--pidfile=", "sockd", "--ack", description], cwd=tmp_path,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and named in errors[0] and "ack" in errors[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout
