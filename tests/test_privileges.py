"""What sockd does with the machine's resources it holds: Unix socket files and root.

Unix sockets: the file's mode, stale files left by a crash (replaced), live
ones held by another process (refused in one line, left alone), removal at
SIGTERM.  Privileges: with twistd's --uid/--gid, sockd binds a port below
1024 before dropping root and then runs as nobody.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from tests.daemon import REACTOR, TWISTD, connect, recvExactly

ACK_ANSWER = b"I got your message"


def ackOverUnix(path: str) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5.0)
        sock.connect(path)
        sock.sendall(b"over unix\n")
        return recvExactly(sock, len(ACK_ANSWER))


def runToFailure(cwd: Path, *args: str) -> tuple[int | None, str]:
    """Run twistd sockd expecting it not to start; return its exit code (None: it ran) and all it wrote."""
    logPath = cwd / "failed.log"
    proc = subprocess.Popen([TWISTD, *REACTOR, "-n", "--pidfile=", "--logfile", str(logPath), "sockd", *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=10)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=10)
        code = None
    text = out.decode(errors="replace") + err.decode(errors="replace")
    if logPath.exists():
        text += logPath.read_text(errors="replace")
    return code, text


def errorLines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "sockd: error:" in line]


# ---------------------------------------------------------------------------------------------------------------
# Unix sockets.


def test_unix_socket_modes(daemon, tmp_path: Path) -> None:
    default, private = tmp_path / "default.sock", tmp_path / "private.sock"
    d = daemon("--ack", f"unix:{default}", "--echo", f"unix:{private}:mode=600")
    for path, mode in ((default, 0o660), (private, 0o600)):
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == mode, f"{path.name}: mode {stat.S_IMODE(st.st_mode):o}, want {mode:o}"
    assert ackOverUnix(str(default)) == ACK_ANSWER
    assert d.process.poll() is None


def test_unix_mode_option_sets_the_default(daemon, tmp_path: Path) -> None:
    path = tmp_path / "ack.sock"
    daemon("--ack", f"unix:{path}", "--unix-mode", "640")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640


@pytest.mark.parametrize("written", ["0o640", "640", '"640"'])
def test_unix_mode_in_the_file_is_the_mode_however_written(daemon, tmp_path: Path, written: str) -> None:
    """TOML reads 0o640 as the integer 416: it is that mode, not 416 read again as octal (0o640 != 0o416)."""
    path = tmp_path / "ack.sock"
    config = tmp_path / "sockd.toml"
    config.write_text(f"unix_mode = {written}\n")
    daemon("--config", str(config), "--ack", f"unix:{path}")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640


def test_stale_socket_file_is_replaced(daemon, tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(path))
    leftover.close()  # the file stays: what a crashed daemon leaves behind
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    d = daemon("--ack", f"unix:{path}")
    assert ackOverUnix(str(path)) == ACK_ANSWER
    assert "removed stale socket file" in d.log()


def test_live_socket_file_is_refused_in_one_line_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "live.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as owner:
        owner.bind(str(path))
        owner.listen(5)
        before = os.lstat(path)
        code, text = runToFailure(tmp_path, "--ack", f"unix:{path}")
        assert code not in (0, None), f"started anyway:\n{text}"
        lines = errorLines(text)
        assert len(lines) == 1 and "in use" in lines[0], text
        assert "Traceback" not in text, text
        after = os.lstat(path)
        assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode), "the live socket file was touched"
        # The other process's listener still works.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(path))
            accepted, _ = owner.accept()
            accepted.close()


def test_regular_file_in_the_way_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "notasocket"
    path.write_text("precious\n")
    code, text = runToFailure(tmp_path, "--ack", f"unix:{path}")
    assert code not in (0, None), f"started anyway:\n{text}"
    assert len(errorLines(text)) == 1 and "not a socket" in text, text
    assert path.read_text() == "precious\n"


def test_socket_file_is_removed_at_sigterm(daemon, tmp_path: Path) -> None:
    path = tmp_path / "ack.sock"
    d = daemon("--ack", f"unix:{path}")
    assert ackOverUnix(str(path)) == ACK_ANSWER
    d.stop()
    assert not os.path.lexists(path), "the socket file outlived the daemon"


def test_repeated_listen_description_does_not_crash_with_a_traceback(tmp_path: Path) -> None:
    """Twice the same description once crashed start-up ('cannot have two services with same name')."""
    twice = "udp:0:interface=127.0.0.1"
    proc = subprocess.Popen([TWISTD, *REACTOR, "-n", "--pidfile=", "--logfile", str(tmp_path / "twice.log"), "sockd",
                             "--echo", twice, "--echo", twice], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=2)
    except subprocess.TimeoutExpired:  # it started: that is one acceptable outcome
        proc.terminate()
        out, err = proc.communicate(timeout=15)
    text = (out + err).decode(errors="replace") + (tmp_path / "twice.log").read_text(errors="replace")
    assert "Traceback" not in text, text


# ---------------------------------------------------------------------------------------------------------------
# Privilege drop.


def _portFree(port: int) -> bool:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False


def _ids(status: str, field: str) -> list[int]:
    for line in status.splitlines():
        if line.startswith(field + ":"):
            return [int(x) for x in line.split()[1:]]
    raise AssertionError(f"no {field} in /proc status")


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_binds_port_7_as_root_then_runs_as_nobody(daemon, tmp_path: Path) -> None:
    if not _portFree(7):
        pytest.skip("TCP port 7 is in use here")
    try:
        nobody = pwd.getpwnam("nobody").pw_uid
        nogroup = grp.getgrnam("nogroup").gr_gid
    except KeyError:
        pytest.skip("no nobody/nogroup here")
    tmp_path.chmod(0o777)  # the daemon, once nobody, still owns its cwd's log and socket files
    sock = tmp_path / "ack.sock"
    d = daemon("--echo", "tcp:7:interface=127.0.0.1", "--ack", f"unix:{sock}",
               twistdArgs=["--uid", str(nobody), "--gid", str(nogroup)])
    status = Path(f"/proc/{d.pid}/status").read_text()
    uids, gids, groups = _ids(status, "Uid"), _ids(status, "Gid"), _ids(status, "Groups")
    assert uids == [nobody] * 4, f"real/effective/saved/fs uid {uids}, want nobody ({nobody})"
    assert gids == [nogroup] * 4, f"gids {gids}, want nogroup ({nogroup})"
    assert 0 not in groups, f"still in root's group: {groups}"
    with connect(("127.0.0.1", 7)) as s:
        s.sendall(b"privileged port, unprivileged daemon\n")
        assert recvExactly(s, 37) == b"privileged port, unprivileged daemon\n"
    assert ackOverUnix(str(sock)) == ACK_ANSWER
    assert d.stop() in (0, -15)
    assert "Server Shut Down" in d.log()
