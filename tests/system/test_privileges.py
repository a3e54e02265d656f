"""What sockd does with the machine's resources it holds: Unix socket files and root.

Unix sockets: the file's mode, stale files left by a crash (replaced), live
ones held by another process (refused in one line, left alone), removal at
SIGTERM, their owner and group.  Privileges: with twistd's --uid/--gid, sockd
binds a port below 1024 before dropping root and then runs as nobody, its Unix
sockets given to nobody and the daemon's group.
"""

from __future__ import annotations

import errno
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


def _connectAs(uid: int, gid: int, cwd: Path, path: str) -> bytes:
    """Connect to the Unix socket C{path} (relative to C{cwd}) as another user and group; its answer or errno."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never back into pytest
        status = 0
        try:
            os.close(r)
            os.chdir(cwd)  # as root: the directories above cwd need not be searchable by uid
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            try:
                answer = ackOverUnix(path)
            except OSError as e:
                answer = f"errno {e.errno}".encode()
            os.write(w, answer)
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    os.close(w)
    with os.fdopen(r, "rb") as pipe:
        answer = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return answer


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_unix_sockets_belong_to_the_daemons_user_and_group_or_the_group_named(daemon, tmp_path: Path) -> None:
    try:
        nobody = pwd.getpwnam("nobody").pw_uid
        nogroup = grp.getgrnam("nogroup").gr_gid
    except KeyError:
        pytest.skip("no nobody/nogroup here")
    other = next((g for g in grp.getgrall() if g.gr_gid not in (0, nogroup) and not g.gr_mem), None)
    if other is None:
        pytest.skip("no group to name")
    tmp_path.chmod(0o777)  # the daemon, once nobody, removes its socket files from here at stop
    d = daemon("--ack", "unix:ack.sock", "--echo", f"unix:named.sock:group={other.gr_name}:mode=600",
               twistdArgs=["--uid", str(nobody), "--gid", str(nogroup)])
    ack, named = os.stat(tmp_path / "ack.sock"), os.stat(tmp_path / "named.sock")
    assert (ack.st_uid, ack.st_gid, stat.S_IMODE(ack.st_mode)) == (nobody, nogroup, 0o660)
    assert (named.st_uid, named.st_gid, stat.S_IMODE(named.st_mode)) == (nobody, other.gr_gid, 0o600)
    stranger = 4242  # neither root nor nobody: the group alone lets it in
    assert _connectAs(stranger, nogroup, tmp_path, "ack.sock") == ACK_ANSWER
    assert _connectAs(stranger, other.gr_gid, tmp_path, "ack.sock") == f"errno {errno.EACCES}".encode()
    assert d.stop() in (0, -15)
    assert not os.path.lexists(tmp_path / "ack.sock"), "the unprivileged daemon could not remove its socket file"
    assert not os.path.lexists(tmp_path / "ack.sock.lock")


def test_without_uid_a_unix_socket_keeps_the_daemons_own_owner(daemon, tmp_path: Path) -> None:
    daemon("--ack", "unix:ack.sock")
    st = os.stat(tmp_path / "ack.sock")
    assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())


# ---------------------------------------------------------------------------------------------------------------
# Files checked as sshd's StrictModes checks its own.

needsRoot = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
STRANGER = 12345  # a uid that is neither root nor the daemon's user


def _trustedFile(tmp_path: Path, kind: str) -> tuple[Path, list[str]]:
    """A file of C{kind} that sockd trusts, and the arguments that make sockd read it."""
    if kind == "quotes":
        path = tmp_path / "quotes.txt"
        path.write_text("A strict quote.\n")
        return path, ["--qotd", "tcp:0:interface=127.0.0.1", "--quotes", str(path)]
    if kind == "config":
        path = tmp_path / "sockd.toml"
        path.write_text('[listen]\nqotd = ["tcp:0:interface=127.0.0.1"]\n')
        return path, ["--config", str(path)]
    path = tmp_path / "key.pem"
    path.write_text("not read: refused first\n")
    return path, ["--ack", f"ssl:0:interface=127.0.0.1:privateKey={path}:certKey={path}"]


@needsRoot
@pytest.mark.parametrize("kind", ["quotes", "config", "tls-key"])
@pytest.mark.parametrize("mode,owner,why", [
    (0o664, 0, "writable by group"),
    (0o646, 0, "writable by others"),
    (0o644, STRANGER, "owned by neither root nor the daemon's user (root)"),
], ids=["group-writable", "world-writable", "stranger"])
def test_a_file_others_could_have_written_is_refused(tmp_path: Path, kind: str, mode: int, owner: int,
                                                     why: str) -> None:
    path, args = _trustedFile(tmp_path, kind)
    path.chmod(mode)
    os.chown(path, owner, 0)
    code, text = runToFailure(tmp_path, *args)
    assert code == 78, text
    [line] = errorLines(text)
    assert str(path) in line and f"mode {mode:04o}" in line and why in line, line
    assert f"owner {'root' if owner == 0 else owner}" in line and "--insecure-files" in line, line
    assert "Traceback" not in text


@needsRoot
@pytest.mark.parametrize("kind", ["quotes", "config"])
def test_insecure_files_accepts_them(daemon, tmp_path: Path, kind: str) -> None:
    path, args = _trustedFile(tmp_path, kind)
    path.chmod(0o666)
    os.chown(path, STRANGER, 0)
    d = daemon(*args, "--insecure-files", expect=1)
    with connect(d.address("qotd", "tcp")) as s:
        quote = recvExactly(s, 15)
        assert quote == b"A strict quote." if kind == "quotes" else quote  # the config's qotd: built-in quotes


def test_a_file_of_root_or_the_daemons_user_with_mode_644_is_accepted(daemon, tmp_path: Path) -> None:
    path, args = _trustedFile(tmp_path, "quotes")
    path.chmod(0o644)
    d = daemon(*args)
    with connect(d.address("qotd", "tcp")) as s:
        assert recvExactly(s, 15) == b"A strict quote."


@needsRoot
def test_quotes_are_read_with_the_rights_they_are_served_with(tmp_path: Path) -> None:
    """Root could read a 0600 quotes file, but the daemon serves (and reloads) it as nobody: refused at start."""
    try:
        nobody = pwd.getpwnam("nobody").pw_uid
        nogroup = grp.getgrnam("nogroup").gr_gid
    except KeyError:
        pytest.skip("no nobody/nogroup here")
    path, args = _trustedFile(tmp_path, "quotes")
    path.chmod(0o600)
    result = subprocess.run([TWISTD, *REACTOR, "-n", "--pidfile=", "--logfile", str(tmp_path / "uid.log"),
                             "--uid", str(nobody), "--gid", str(nogroup), "sockd", *args],
                            cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert result.returncode == 78, result.stderr
    [line] = errorLines(result.stderr)
    assert str(path) in line and "Permission denied" in line, line
    assert os.geteuid() == 0 and path.read_text()  # this test process is unchanged
