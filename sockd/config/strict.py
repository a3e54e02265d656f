"""Files sockd trusts, checked as sshd's StrictModes checks its own, and read with the daemon's own rights.

The configuration file decides who may connect, the quotes file what is
served, a TLS key who sockd is: if someone other than root or the daemon's own
user could have written one, sockd refuses to start (exit 78, one line naming
the file, its mode and owner) unless C{--insecure-files} says that is meant.

The quotes file is served by the daemon after it drops root (twistd
C{--uid}), and re-read by that user on SIGHUP: L{readingAs} reads it with
those rights at start too, so a file the daemon could not read fails at once,
not at the first reload.  (Temporarily setting the effective ids is the
simplest correct way: the kernel applies the target user's own permissions,
groups and ACLs, where checking the mode bits by hand would miss some.)
"""

from __future__ import annotations

import os
import pwd
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sockd.config.descriptions import split
from sockd.errors import ConfigurationError

__all__ = ["RunAs", "checkFile", "checkListenFiles", "keyFiles", "readingAs"]


class RunAs:
    """The user the daemon serves as: twistd's C{--uid}/C{--gid}, else the user running it."""

    def __init__(self, uid: int | None = None, gid: int | None = None) -> None:
        self.uid = os.geteuid() if uid is None else uid
        if gid is None:
            try:
                gid = pwd.getpwuid(self.uid).pw_gid
            except KeyError:
                gid = os.getegid()
        self.gid = gid

    @property
    def owners(self) -> set[int]:
        """Who may own a file sockd trusts: root, and the daemon's own user."""
        return {0, self.uid}


def _ownerName(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def checkFile(path: str, what: str, runAs: RunAs) -> None:
    """Refuse a file writable by group or others, or owned by anyone but root or the daemon's user.

    A missing or unreadable file is left to its reader, which says so in its own words.
    """
    try:
        info = os.stat(path)
    except OSError:
        return
    mode = stat.S_IMODE(info.st_mode)
    why = []
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        why.append("writable by " + " and ".join(
            who for bit, who in ((stat.S_IWGRP, "group"), (stat.S_IWOTH, "others")) if mode & bit))
    if info.st_uid not in runAs.owners:
        why.append(f"owned by neither root nor the daemon's user ({_ownerName(runAs.uid)})")
    if why:
        raise ConfigurationError(
            f"{what} {path}: mode {mode:04o}, owner {_ownerName(info.st_uid)}: {'; '.join(why)}"
            " (chmod go-w / chown it, or give --insecure-files)")


def keyFiles(description: str) -> list[str]:
    """The TLS key (and certificate) files a stream listen description reads."""
    kind, args, kwargs = split(description)
    if kind == "ssl":
        certificate = kwargs.get("certKey", "server.pem")
        return list(dict.fromkeys([kwargs.get("privateKey", certificate), certificate]))
    if kind == "tls" and args:
        path = Path(args[0])
        if path.is_dir():
            return sorted(str(p) for p in path.iterdir() if p.is_file())
        return [str(path)]
    return []


def checkListenFiles(descriptions: Iterable[tuple[str, str]], runAs: RunAs) -> None:
    """Check the TLS files of every listener (C{(service, description)} pairs)."""
    for name, description in descriptions:
        for path in keyFiles(description):
            checkFile(path, f"--{name} {description}: TLS file", runAs)


@contextmanager
def readingAs(runAs: RunAs | None) -> Iterator[None]:
    """Open files, within the block, with the rights of the user the daemon will serve as.

    Only root can and needs to: then the effective ids and groups are the
    target user's until the block ends (sockd is single-threaded while it reads
    its configuration).  Otherwise the process already is that user.
    """
    if runAs is None or os.geteuid() != 0 or runAs.uid == 0:
        yield
        return
    groups, egid = os.getgroups(), os.getegid()
    try:
        name = pwd.getpwuid(runAs.uid).pw_name
        os.setgroups(os.getgrouplist(name, runAs.gid))
    except KeyError:
        os.setgroups([runAs.gid])
    os.setegid(runAs.gid)
    os.seteuid(runAs.uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(egid)
        os.setgroups(groups)
