"""The user a container runs as: uid, gid, additional gids and home, resolved the way the
kubelet expects from the CRI security context, the image's USER and the container's own
/etc/passwd and /etc/group.

The user: run_as_user (a uid) wins, else run_as_username, else the image's USER
("name", "uid", "name:group", "uid:gid", "name:gid", "uid:group"; empty is root). A uid
needs no passwd entry; a name must be in the container's /etc/passwd. (cri-o and
containerd let run_as_username win over run_as_user; the kubelet never sets both.)

The group: run_as_group wins; else the image USER's ":group" part, when the image USER is
the user chosen (a run_as_user or run_as_username replaces the whole of it); else the
passwd entry's primary gid; else 0. As the CRI asks, run_as_group without run_as_user or
run_as_username is an error.

Additional gids: under the Merge policy, the groups of /etc/group that list the user's
name as a member, then the config's supplemental_groups; under Strict, only the
config's. In first-seen order, without duplicates, never the primary gid.

The files are read from the image's rootfs on the host, so every symlink on the way is
resolved as if the rootfs were "/": an image may make /etc or /etc/passwd a link to
anywhere, "../../../etc/passwd" included, and must never get the host's files read.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from base.errors import InvalidArgument

__all__ = ["ResolvedUser", "UserError", "resolve_user"]

PASSWD = "/etc/passwd"
GROUP = "/etc/group"
# Enough for any real image; a bigger file is read only this far (complete lines).
MAX_FILE_BYTES = 1 << 20
# Linux follows 40 symlinks in one lookup before ELOOP.
_MAX_SYMLINKS = 40
# uid_t and gid_t are 32 bits, and (uid_t)-1 means "unchanged" to setuid and friends.
_MAX_ID = 2**32 - 2


class UserError(InvalidArgument):
    pass


@dataclass(frozen=True)
class ResolvedUser:
    uid: int
    gid: int
    additional_gids: tuple[int, ...]
    home: str  # from passwd, "/" if unknown: HOME when the image and config set none


@dataclass(frozen=True)
class _PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str


@dataclass(frozen=True)
class _GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


class _Database:
    """One of the container's files, read once on first use."""

    def __init__(self, rootfs: Path, path: str) -> None:
        self.rootfs = rootfs
        self.path = path
        self._lines: list[list[str]] | None = None
        self.problem = ""  # why the file could not be read, if it could not
        self.truncated = False

    def lines(self) -> list[list[str]]:
        if self._lines is None:
            self._lines = []
            try:
                data = _read_in_root(self.rootfs, self.path, MAX_FILE_BYTES + 1)
            except OSError as exc:
                self.problem = (
                    "is missing"
                    if exc.errno in (errno.ENOENT, errno.ENOTDIR)
                    else f"cannot be read ({exc.strerror or os.strerror(exc.errno or 0)})"
                )
                return self._lines
            if len(data) > MAX_FILE_BYTES:
                self.truncated = True
                data = data[: data.rfind(b"\n", 0, MAX_FILE_BYTES) + 1]
            for raw in data.decode("utf-8", errors="replace").splitlines():
                if not raw.strip() or raw.lstrip().startswith("#"):
                    continue
                self._lines.append(raw.split(":"))
        return self._lines

    def not_found(self, kind: str, name: str) -> UserError:
        where = f"the container's {self.path}"
        if self.problem:
            return UserError(f"{kind} {name!r} not found: {where} {self.problem}")
        more = f" (only its first {MAX_FILE_BYTES} bytes were read)" if self.truncated else ""
        return UserError(f"{kind} {name!r} not found in {where}{more}")


def _parse_id(text: str) -> int | None:
    """A decimal uid/gid in range, or None. (str.isdigit would take "²" too.)"""
    if not text or not text.isascii() or not text.isdigit():
        return None
    value = int(text)
    return value if value <= _MAX_ID else None


def _passwd_entries(db: _Database) -> list[_PasswdEntry]:
    entries = []
    for fields in db.lines():
        # name:password:uid:gid:gecos:home:shell; NIS "+"/"-" lines are not users.
        if len(fields) < 4 or not fields[0] or fields[0][0] in "+-":
            continue
        uid, gid = _parse_id(fields[2].strip()), _parse_id(fields[3].strip())
        if uid is None or gid is None:
            continue
        home = fields[5].strip() if len(fields) > 5 else ""
        entries.append(_PasswdEntry(fields[0], uid, gid, home or "/"))
    return entries


def _group_entries(db: _Database) -> list[_GroupEntry]:
    entries = []
    for fields in db.lines():
        # name:password:gid:member,member,...
        if len(fields) < 3 or not fields[0] or fields[0][0] in "+-":
            continue
        gid = _parse_id(fields[2].strip())
        if gid is None:
            continue
        members = fields[3].split(",") if len(fields) > 3 else []
        entries.append(_GroupEntry(fields[0], gid, tuple(m.strip() for m in members if m)))
    return entries


def _check_id(value: int, what: str) -> int:
    if not 0 <= value <= _MAX_ID:
        raise UserError(f"{what} {value} is out of range (0 to {_MAX_ID})")
    return value


def resolve_user(
    rootfs: Path,
    *,
    image_user: str,
    run_as_user: int | None,
    run_as_username: str,
    run_as_group: int | None,
    supplemental_groups: Sequence[int],
    strict_supplemental: bool,
) -> ResolvedUser:
    """The container's user; UserError (naming the user and the file) if a name does not
    resolve or an id is out of range."""
    passwd = _Database(rootfs, PASSWD)
    group = _Database(rootfs, GROUP)
    user_part, group_part = _asked_for(image_user, run_as_user, run_as_username, run_as_group)
    uid, entry = _user(passwd, user_part)
    gid = _primary_gid(group, run_as_group, group_part, entry)
    gids = _additional_gids(group, entry, gid, supplemental_groups, strict_supplemental)
    return ResolvedUser(uid=uid, gid=gid, additional_gids=gids, home=entry.home if entry else "/")


def _asked_for(
    image_user: str, run_as_user: int | None, run_as_username: str, run_as_group: int | None
) -> tuple[str, str | None]:
    """The user ("" for none) and group (None for none) asked for, as written."""
    if run_as_group is not None and run_as_user is None and not run_as_username:
        raise UserError(
            f"run_as_group {run_as_group} is set without run_as_user or run_as_username"
        )
    if run_as_user is not None:
        return str(_check_id(run_as_user, "run_as_user")), None
    if run_as_username:
        # The whole string is the user (a ":" is not a group here); digits are a uid.
        return run_as_username, None
    user_part, sep, rest = image_user.strip().partition(":")
    return user_part, rest if sep else None


def _user(passwd: _Database, user_part: str) -> tuple[int, _PasswdEntry | None]:
    """The uid, and the passwd entry if there is one (a uid needs none, a name does)."""
    uid = _parse_id(user_part)
    if uid is not None:
        return uid, next((e for e in _passwd_entries(passwd) if e.uid == uid), None)
    if not user_part:
        # No user at all: root, as the image spec says.
        return 0, next((e for e in _passwd_entries(passwd) if e.uid == 0), None)
    entry = next((e for e in _passwd_entries(passwd) if e.name == user_part), None)
    if entry is None:
        raise passwd.not_found("user", user_part)
    return entry.uid, entry


def _primary_gid(
    group: _Database, run_as_group: int | None, group_part: str | None, entry: _PasswdEntry | None
) -> int:
    if run_as_group is not None:
        return _check_id(run_as_group, "run_as_group")
    if group_part:
        parsed = _parse_id(group_part)
        if parsed is not None:
            return parsed
        found = next((g for g in _group_entries(group) if g.name == group_part), None)
        if found is None:
            raise group.not_found("group", group_part)
        return found.gid
    return entry.gid if entry is not None else 0


def _additional_gids(
    group: _Database,
    entry: _PasswdEntry | None,
    gid: int,
    supplemental_groups: Sequence[int],
    strict_supplemental: bool,
) -> tuple[int, ...]:
    additional: list[int] = []
    if not strict_supplemental and entry is not None:
        additional.extend(g.gid for g in _group_entries(group) if entry.name in g.members)
    additional.extend(_check_id(g, "supplemental group") for g in supplemental_groups)
    # dict keeps first-seen order.
    return tuple(g for g in dict.fromkeys(additional) if g != gid)


# --- reading a file inside the rootfs --------------------------------------------------


def _read_in_root(root: Path, path: str, limit: int) -> bytes:
    """Read up to `limit` bytes of the regular file `path`, resolving every component as
    if `root` were "/": ".." stops at root, absolute symlinks restart from root. Each
    step opens the next directory with O_NOFOLLOW relative to the previous one's fd, so
    a component swapped for a symlink meanwhile fails instead of leading out."""
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    dirs = [root_fd]  # fds from root to the current directory
    try:
        parts = deque(path.split("/"))
        links = 0
        while parts:
            name = parts.popleft()
            if name in ("", "."):
                continue
            if name == "..":
                if len(dirs) > 1:
                    os.close(dirs.pop())
                continue
            st = os.stat(name, dir_fd=dirs[-1], follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > _MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
                target = os.readlink(name, dir_fd=dirs[-1])
                if target.startswith("/"):
                    while len(dirs) > 1:
                        os.close(dirs.pop())
                parts.extendleft(reversed(target.split("/")))
                continue
            if any(p not in ("", ".") for p in parts):
                dirs.append(
                    os.open(
                        name,
                        os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                        dir_fd=dirs[-1],
                    )
                )
                continue
            return _read_regular_file(dirs[-1], name, st, limit, path)
        # The path named a directory (or the root itself).
        raise OSError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    finally:
        for fd in dirs:
            os.close(fd)


def _read_regular_file(dir_fd: int, name: str, st: os.stat_result, limit: int, path: str) -> bytes:
    """Up to `limit` bytes of the file `name` in `dir_fd` (`st` its lstat), if it is a
    regular file: opening a device node or a fifo of the image on the host could block
    or have side effects."""
    if not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EINVAL, "not a regular file", path)
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        # Checked again on the open file: it may have been swapped since the lstat.
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        chunks = []
        remaining = limit
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
