"""Unpack one OCI image layer (an uncompressed tar stream) into an overlayfs lower dir.

Layers come from registries, so every entry is treated as hostile. The design:

- The tar is read with `tarfile` in stream mode ("r|"): one sequential pass, no seeks,
  file data copied in fixed chunks, so memory stays flat whatever the layer size.
  `tarfile` only parses; every filesystem object is created here, never by
  `TarFile.extract*`. After the tar's end the stream is drained, so a hashing reader
  around it sees every byte (the diff id covers padding and trailing blocks too).
- Paths never go through a symlink: each entry's parent is reached component by
  component from a descriptor of the layer root with O_DIRECTORY|O_NOFOLLOW, and the
  entry is made with the `dir_fd=` forms of the system calls. A symlink in the layer
  is just data; an entry whose path crosses one is refused. Absolute names, `..`
  components, NUL bytes and hardlinks to anything not made earlier in this layer are
  refused too, with an `UnsafeLayerError` naming the entry.
- OCI whiteouts become what overlayfs understands: `.wh.<name>` a 0:0 character
  device, `.wh..wh..opq` the `trusted.overlay.opaque` xattr on the directory. The
  layer's own `*.overlay.*` xattrs are dropped so it cannot forge either.
- Per object: create, chown, then chmod (chown clears setuid/setgid), then xattrs
  (chown also clears security.capability), then times. Directory times are set last,
  as adding children changes them.

On any error `dest` is left half-filled; the caller throws the work dir away.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import stat
import tarfile
from dataclasses import dataclass
from typing import BinaryIO, Self

from base.errors import InvalidArgument

log = logging.getLogger(__name__)

CHUNK = 1 << 20
# Pax and GNU long-name headers are read whole into memory by tarfile; a layer must not
# be able to make us buffer gigabytes that way. Go's archive/tar uses the same bound.
MAX_METADATA_HEADER = 1 << 20

WHITEOUT_PREFIX = ".wh."
WHITEOUT_META_PREFIX = ".wh..wh."
WHITEOUT_OPAQUE = ".wh..wh..opq"
OPAQUE_XATTR = b"trusted.overlay.opaque"
# overlayfs reads trusted.overlay.* (or user.overlay.* when mounted with userxattr).
FORGEABLE_XATTR_PREFIXES = (b"trusted.overlay.", b"user.overlay.")
PAX_XATTR_PREFIX = "SCHILY.xattr."

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_METADATA_TYPES = (
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
)
_PAX_TIME = re.compile(r"(-?)([0-9]{1,18})(?:\.([0-9]+))?")
# 2**32-1 is "leave unchanged" to chown(2), so it cannot be a real id.
_MAX_ID = 2**32 - 2


@dataclass(frozen=True)
class UnpackStats:
    bytes: int  # total size of regular file content written
    inodes: int  # filesystem objects created; hardlinks add no inode and are not counted


class UnsafeLayerError(InvalidArgument):
    """The layer is malformed or tries to write outside its root."""


class MalformedLayerError(UnsafeLayerError):
    """The bytes do not read as tar at all: broken as built, or changed on the way (the
    puller's digest check tells which)."""


class _StrictTarInfo(tarfile.TarInfo):
    """TarInfo that refuses what plain tarfile would accept too quietly.

    tarfile ends the archive silently on a bad header past the first member, which would
    let a corrupt layer pass as a shorter valid one; only a zero block (the real end
    marker) or a clean EOF between members may end it here.
    """

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
        info = super().frombuf(buf, encoding, errors)
        if info.type in _METADATA_TYPES and info.size > MAX_METADATA_HEADER:
            raise tarfile.HeaderError(
                f"a metadata header of {info.size} bytes (more than {MAX_METADATA_HEADER})"
            )
        return info

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> Self:
        # typeshed does not list tarfile's HeaderError subclasses, hence the ignores.
        try:
            return super().fromtarfile(tar)
        except (tarfile.EOFHeaderError, tarfile.EmptyHeaderError):  # type: ignore[attr-defined]
            raise
        except tarfile.HeaderError as exc:
            # TarFile.next() turns this one into a ReadError wherever it happens.
            raise tarfile.SubsequentHeaderError(str(exc)) from None  # type: ignore[attr-defined]


def unpack_layer(stream: BinaryIO, dest: os.PathLike[str] | str) -> UnpackStats:
    """Extract the uncompressed tar `stream` into the empty directory `dest`.

    Raises UnsafeLayerError for a malformed or malicious layer; OSError for trouble of
    the host (disk full, ...), with a note naming the entry.
    """
    # The pull path hands us a fresh work dir without this last component.
    with contextlib.suppress(FileExistsError):
        os.mkdir(dest, 0o755)
    root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        unpacker = _Unpacker(root_fd)
        with _open_tar(stream) as tar:
            while (member := _next_member(tar)) is not None:
                unpacker.add(tar, member)
        while stream.read(CHUNK):
            pass
        unpacker.finish()
        return UnpackStats(bytes=unpacker.bytes, inodes=unpacker.inodes)
    finally:
        os.close(root_fd)


def _open_tar(stream: BinaryIO) -> tarfile.TarFile:
    try:
        return tarfile.open(fileobj=stream, mode="r|", tarinfo=_StrictTarInfo)
    except (tarfile.TarError, ValueError) as exc:
        raise MalformedLayerError(f"layer is not a valid tar stream: {exc}") from None


def _next_member(tar: tarfile.TarFile) -> tarfile.TarInfo | None:
    try:
        member = tar.next()
    except (tarfile.TarError, ValueError) as exc:
        # ValueError: tarfile's sparse-map parsing lets it escape on garbage.
        raise MalformedLayerError(f"layer is not a valid tar stream: {exc}") from None
    # TarFile remembers every member it has read; in a streaming pass that is a leak
    # proportional to the entry count and nothing here needs the history. (`members` is
    # missing from typeshed.)
    tar.members.clear()  # type: ignore[attr-defined]
    return member


def _refuse(name: str, problem: str) -> UnsafeLayerError:
    return UnsafeLayerError(f"layer entry {name!r} {problem}")


def _split(path: str, entry: str, link: bool = False) -> tuple[str, ...]:
    """The components of a layer-relative path: the entry's name, or its hardlink target."""
    if "\x00" in path:
        raise _refuse(entry, f"has a NUL byte in its {'hardlink target' if link else 'name'}")
    if path.startswith("/"):
        raise _refuse(entry, f"has an absolute hardlink target {path!r}" if link else "is absolute")
    parts = tuple(part for part in path.split("/") if part not in ("", "."))
    if ".." in parts:
        problem = f"has a hardlink target {path!r} that " if link else ""
        raise _refuse(entry, f"{problem}escapes the layer root")
    return parts


def _is_aufs_metadata(parts: tuple[str, ...]) -> bool:
    """Whether the entry is aufs bookkeeping (`.wh..wh.plnk/...`), meaningless to overlayfs."""
    if any(part.startswith(WHITEOUT_META_PREFIX) for part in parts[:-1]):
        return True
    return (
        bool(parts) and parts[-1].startswith(WHITEOUT_META_PREFIX) and parts[-1] != WHITEOUT_OPAQUE
    )


def _time_ns(member: tarfile.TarInfo) -> int:
    """The entry's mtime in ns, exact when a pax header gives sub-second digits."""
    text = member.pax_headers.get("mtime")
    if text is not None:
        match = _PAX_TIME.fullmatch(text)
        if match is None:
            raise _refuse(member.name, f"has an invalid mtime {text!r}")
        sign, seconds, fraction = match.groups()
        ns = int(seconds) * 1_000_000_000 + int((fraction or "")[:9].ljust(9, "0"))
        return -ns if sign else ns
    mtime = member.mtime
    # Base-256 header fields can hold numbers no time_t can.
    if not isinstance(mtime, int) or abs(mtime) >= 10**18:
        raise _refuse(member.name, f"has an invalid mtime {mtime!r}")
    return mtime * 1_000_000_000


def _owner(member: tarfile.TarInfo) -> tuple[int, int]:
    for value in (member.uid, member.gid):
        if not 0 <= value <= _MAX_ID:
            raise _refuse(member.name, f"has an invalid owner {member.uid}:{member.gid}")
    return member.uid, member.gid


def _xattrs(member: tarfile.TarInfo) -> list[tuple[bytes, bytes]]:
    out = []
    for key, value in member.pax_headers.items():
        if not key.startswith(PAX_XATTR_PREFIX):
            continue
        # tarfile decoded these as utf-8, falling back to surrogateescape for binary
        # values such as security.capability; this gives the original bytes back.
        name = key[len(PAX_XATTR_PREFIX) :].encode("utf-8", "surrogateescape")
        if name.startswith(FORGEABLE_XATTR_PREFIXES):
            continue
        out.append((name, value.encode("utf-8", "surrogateescape")))
    return out


class _Unpacker:
    def __init__(self, root_fd: int) -> None:
        self.root_fd = root_fd
        self.bytes = 0
        self.inodes = 0
        # Directory path -> mtime, applied by finish(): keyed so a later entry for the
        # same directory wins and a removed directory can be forgotten.
        self.dir_times: dict[tuple[str, ...], int] = {}

    def add(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        name = member.name
        parts = _split(name, name)
        if _is_aufs_metadata(parts):
            return
        try:
            if parts and parts[-1].startswith(WHITEOUT_PREFIX):
                self._whiteout(member, parts)
            elif member.isdir():
                self._directory(member, parts)
            elif not parts:
                raise _refuse(name, "is not a directory but names the layer root")
            elif member.isreg():
                self._regular(tar, member, parts)
            elif member.islnk():
                self._hardlink(member, parts)
            elif member.issym():
                self._symlink(member, parts)
            elif member.ischr() or member.isblk() or member.isfifo():
                self._node(member, parts)
            else:
                raise _refuse(name, f"has an unsupported type {member.type!r}")
        except (ValueError, OverflowError) as exc:
            # Header numbers (device ids, ...) the system calls cannot take.
            raise _refuse(name, f"has an invalid header: {exc}") from None
        except OSError as exc:
            exc.add_note(f"while unpacking layer entry {name!r}")
            raise

    def finish(self) -> None:
        for parts, ns in self.dir_times.items():
            try:
                fd = self._open_dir(parts, "", create=False)
            except (OSError, UnsafeLayerError):
                continue
            try:
                os.utime(fd, ns=(ns, ns))
            finally:
                os.close(fd)

    # --- entry kinds -------------------------------------------------------------------

    def _directory(self, member: tarfile.TarInfo, parts: tuple[str, ...]) -> None:
        uid, gid = _owner(member)
        ns = _time_ns(member)
        if parts:
            parent = self._open_dir(parts[:-1], member.name, create=True)
            try:
                if not self._make_room(parent, parts, keep_dir=True):
                    os.mkdir(parts[-1], 0o700, dir_fd=parent)
                    self.inodes += 1
                fd = self._open_child_dir(parent, parts, member.name)
            finally:
                os.close(parent)
        else:
            fd = os.dup(self.root_fd)
        try:
            os.fchown(fd, uid, gid)
            os.fchmod(fd, member.mode & 0o7777)
            self._set_xattrs(member, fd)
        finally:
            os.close(fd)
        self.dir_times[parts] = ns

    def _regular(
        self, tar: tarfile.TarFile, member: tarfile.TarInfo, parts: tuple[str, ...]
    ) -> None:
        uid, gid = _owner(member)
        ns = _time_ns(member)
        source = tar.extractfile(member)
        if source is None:
            raise _refuse(member.name, "has no readable content")
        parent = self._open_dir(parts[:-1], member.name, create=True)
        try:
            self._make_room(parent, parts, keep_dir=False)
            fd = os.open(parts[-1], _FILE_FLAGS, 0o600, dir_fd=parent)
        finally:
            os.close(parent)
        self.inodes += 1
        try:
            while True:
                try:
                    chunk = source.read(CHUNK)
                except tarfile.TarError as exc:
                    raise _refuse(member.name, f"cannot be read: {exc}") from None
                if not chunk:
                    break
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
                self.bytes += len(chunk)
            os.fchown(fd, uid, gid)
            os.fchmod(fd, member.mode & 0o7777)
            self._set_xattrs(member, fd)
            os.utime(fd, ns=(ns, ns))
        finally:
            os.close(fd)

    def _hardlink(self, member: tarfile.TarInfo, parts: tuple[str, ...]) -> None:
        name = member.name
        target = _split(member.linkname, name, link=True)
        missing = _refuse(name, f"is a hardlink to {member.linkname!r}, which is not in the layer")
        if not target:
            raise missing
        try:
            target_parent = self._open_dir(
                target[:-1], name, create=False, what="has a hardlink target that "
            )
        except FileNotFoundError:
            raise missing from None
        try:
            try:
                target_st = os.stat(target[-1], dir_fd=target_parent, follow_symlinks=False)
            except FileNotFoundError:
                raise missing from None
            if stat.S_ISDIR(target_st.st_mode):
                raise _refuse(name, f"is a hardlink to directory {member.linkname!r}")
            parent = self._open_dir(parts[:-1], name, create=True)
            try:
                current = self._lstat(parent, parts[-1])
                if current is not None and os.path.samestat(current, target_st):
                    return
                self._make_room(parent, parts, keep_dir=False)
                try:
                    os.link(
                        target[-1],
                        parts[-1],
                        src_dir_fd=target_parent,
                        dst_dir_fd=parent,
                        follow_symlinks=False,
                    )
                except FileNotFoundError:
                    # Making room removed the tree the target was in.
                    raise missing from None
            finally:
                os.close(parent)
        finally:
            os.close(target_parent)

    def _symlink(self, member: tarfile.TarInfo, parts: tuple[str, ...]) -> None:
        if "\x00" in member.linkname:
            raise _refuse(member.name, "has a NUL byte in its symlink target")
        if not member.linkname:
            raise _refuse(member.name, "is a symlink with an empty target")
        uid, gid = _owner(member)
        ns = _time_ns(member)
        parent = self._open_dir(parts[:-1], member.name, create=True)
        try:
            self._make_room(parent, parts, keep_dir=False)
            os.symlink(member.linkname, parts[-1], dir_fd=parent)
            self.inodes += 1
            os.chown(parts[-1], uid, gid, dir_fd=parent, follow_symlinks=False)
            self._set_xattrs(member, parent, parts[-1])
            os.utime(parts[-1], ns=(ns, ns), dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(parent)

    def _node(self, member: tarfile.TarInfo, parts: tuple[str, ...]) -> None:
        uid, gid = _owner(member)
        ns = _time_ns(member)
        if member.ischr():
            kind, device = stat.S_IFCHR, os.makedev(member.devmajor, member.devminor)
        elif member.isblk():
            kind, device = stat.S_IFBLK, os.makedev(member.devmajor, member.devminor)
        else:
            kind, device = stat.S_IFIFO, 0
        parent = self._open_dir(parts[:-1], member.name, create=True)
        try:
            self._make_room(parent, parts, keep_dir=False)
            os.mknod(parts[-1], kind | 0o600, device, dir_fd=parent)
            self.inodes += 1
            os.chown(parts[-1], uid, gid, dir_fd=parent, follow_symlinks=False)
            # chmod has no no-follow form, but this name was made just now as a non-symlink.
            os.chmod(parts[-1], member.mode & 0o7777, dir_fd=parent)
            self._set_xattrs(member, parent, parts[-1])
            os.utime(parts[-1], ns=(ns, ns), dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(parent)

    def _whiteout(self, member: tarfile.TarInfo, parts: tuple[str, ...]) -> None:
        leaf = parts[-1]
        if leaf == WHITEOUT_OPAQUE:
            parent = self._open_dir(parts[:-1], member.name, create=True)
            try:
                os.setxattr(parent, OPAQUE_XATTR, b"y")
            finally:
                os.close(parent)
            return
        hidden = leaf[len(WHITEOUT_PREFIX) :]
        if hidden in ("", ".", ".."):
            raise _refuse(member.name, f"is a whiteout of the invalid name {hidden!r}")
        uid, gid = _owner(member)
        target = (*parts[:-1], hidden)
        parent = self._open_dir(parts[:-1], member.name, create=True)
        try:
            self._make_room(parent, target, keep_dir=False)
            os.mknod(hidden, stat.S_IFCHR, os.makedev(0, 0), dir_fd=parent)
            self.inodes += 1
            os.chown(hidden, uid, gid, dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(parent)

    # --- helpers -----------------------------------------------------------------------

    def _open_dir(self, parts: tuple[str, ...], entry: str, *, create: bool, what: str = "") -> int:
        """A new descriptor of directory `parts`, reached without following symlinks.

        With `create`, missing directories are made root-owned 0755 as tar does;
        without, a missing one raises FileNotFoundError.
        """
        fd = os.dup(self.root_fd)
        try:
            for depth in range(len(parts)):
                try:
                    child = self._open_child_dir(fd, parts[: depth + 1], entry, what)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(parts[depth], 0o700, dir_fd=fd)
                    self.inodes += 1
                    child = self._open_child_dir(fd, parts[: depth + 1], entry, what)
                    # Explicit, so neither the umask nor a setgid parent decides.
                    os.fchown(child, 0, 0)
                    os.fchmod(child, 0o755)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _open_child_dir(
        self, parent: int, parts: tuple[str, ...], entry: str, what: str = ""
    ) -> int:
        try:
            return os.open(parts[-1], _DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise
            where = "/".join(parts)
            st = self._lstat(parent, parts[-1])
            if st is not None and stat.S_ISLNK(st.st_mode):
                raise _refuse(entry, f"{what}goes through symlink {where!r}") from None
            raise _refuse(
                entry, f"{what}goes through {where!r}, which is not a directory"
            ) from None

    @staticmethod
    def _lstat(parent: int, leaf: str) -> os.stat_result | None:
        try:
            return os.stat(leaf, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def _make_room(self, parent: int, parts: tuple[str, ...], *, keep_dir: bool) -> bool:
        """Remove what an earlier entry left at `parts`; True if a directory was kept."""
        st = self._lstat(parent, parts[-1])
        if st is None:
            return False
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(parts[-1], dir_fd=parent)
            return False
        if keep_dir:
            return True
        # rmtree with dir_fd works on descriptors and never follows a symlink inside.
        shutil.rmtree(parts[-1], dir_fd=parent)
        depth = len(parts)
        self.dir_times = {p: t for p, t in self.dir_times.items() if p[:depth] != parts}
        return False

    def _set_xattrs(self, member: tarfile.TarInfo, fd: int, leaf: str | None = None) -> None:
        """Set the entry's xattrs on `fd`, or on `leaf` in directory `fd` without following it."""
        for name, value in _xattrs(member):
            try:
                if leaf is None:
                    os.setxattr(fd, name, value)
                else:
                    # No *xattrat() calls exist; the /proc link pins the parent directory
                    # and the l-variant leaves the last component unfollowed.
                    path = os.fsencode(f"/proc/self/fd/{fd}/") + os.fsencode(leaf)
                    os.setxattr(path, name, value, follow_symlinks=False)
            except OSError as exc:
                # Like other runtimes: the filesystem may not take every namespace (user.*
                # on symlinks and devices is EPERM), and a missing attribute is no risk.
                if exc.errno not in (errno.ENOTSUP, errno.EPERM):
                    raise
                log.warning(
                    "layer xattr not set",
                    extra={"entry": member.name, "xattr": name.decode(errors="replace")},
                )
