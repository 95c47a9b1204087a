"""A container's root filesystem: an overlay of the image's unpacked layers (read-only
lower dirs, shared by every container of the image) plus a writable upper dir of its own.

    <container_dir>/upper/   the container's writable layer
    <container_dir>/work/    overlayfs scratch space (same filesystem as upper)
    <container_dir>/merged/  the overlay mount: the OCI spec's root.path
    <container_dir>/empty/   the lower dir of an image without layers (overlay needs one)

Many layers. Legacy mount(2) passes the options as one page (4095 bytes and a NUL), which
128 absolute layer paths of a real store overflow. containers/storage works around it by
chdir-ing to a directory of short symlinks and passing relative paths, but chdir is
process-wide and skiffd runs mounts on worker threads. So:

1. First choice, the new mount API (fsopen/fsconfig/fsmount/move_mount): each lower dir
   is its own `lowerdir+` parameter (Linux >= 6.8), so there is no length limit left
   short of overlay's own 500 layers, paths need no escaping, and a failure comes back
   with the kernel's own explanation (read from the fs context).
2. Fallback (kernels before 6.8 by their version, the new API blocked by a seccomp
   filter, or `lowerdir+` refused after all): mount(2) with absolute paths while they
   fit; if they don't, each lower dir is opened O_PATH and named by its
   `/proc/self/fd/<n>` magic link, about 18 bytes whatever the store's path, so some
   200 layers fit. Overlay resolves the paths once at mount time, so the fds are
   closed right after. (The cost: mountinfo shows fd paths instead of layer paths.)

Options. Overlay's defaults are kept except `index=off`: the defaults follow module
parameters an admin may change, and with the index on an upper dir is tied to the exact
inodes of its lower dirs, so a stopped container's upper would no longer mount after its
image's layers were unpacked again. Docker sets the same. `userxattr` is not used
(skiffd mounts as real root, whiteouts and opaque dirs are trusted.overlay.* xattrs).

Read-only root. The overlay is always mounted read-write with an upper dir, read-only or
not: the OCI runtime creates mount points (/proc, /dev, volume targets missing from the
image) inside the root before it remounts the root read-only in the container's own
mount namespace when the spec says root.readonly. A read-only overlay (no upper, or
MS_RDONLY here) would break those mkdirs. `Rootfs.readonly` carries the caller's wish to
the spec builder; cri-o and containerd do the same.

Blocking calls (mount, tree walks); the caller runs them on a worker thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from base import directories, failpoints
from base.errors import Internal
from base.trees import remove_tree

__all__ = ["Rootfs", "RootfsError", "mount_rootfs", "rootfs_usage", "unmount_rootfs"]


class RootfsError(Internal):
    pass


@dataclass(frozen=True)
class Rootfs:
    merged: Path  # the mount point: the OCI spec's root.path
    upper: Path
    work: Path
    # The root is to be read-only inside the container: the spec builder sets
    # root.readonly from it (the overlay itself stays read-write, see the module doc).
    readonly: bool = False


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.syscall.restype = ctypes.c_long

# The mount API syscalls came after the syscall tables were unified: one number on every
# architecture but alpha, so x86_64 and aarch64 share these.
_SYS_MOVE_MOUNT = 429
_SYS_FSOPEN = 430
_SYS_FSCONFIG = 431
_SYS_FSMOUNT = 432

_FSOPEN_CLOEXEC = 0x1
_FSCONFIG_SET_STRING = 1
_FSCONFIG_CMD_CREATE = 6
_FSMOUNT_CLOEXEC = 0x1
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_AT_FDCWD = -100

_MNT_DETACH = 0x2
# mount(2) copies at most one page of options, the NUL included.
_MAX_MOUNT_DATA = 4095
_OVERLAY_OPTIONS = ("index=off",)


class _MountApi:
    # Whether to use the new mount API: None until the first mount decides, then fixed
    # for the process. Tests set it to False to exercise the fallback.
    use_new: bool | None = None


_mount_api = _MountApi()


def _kernel_takes_lowerdir_add() -> bool:
    """Linux 6.8 added `lowerdir+`. Before 6.5, overlay had no fs_context of its own and
    fsconfig() only appended to a legacy one-page option string, which neither
    rejects the unknown key early nor lifts the limit: hence a version check rather
    than a probe. A distro kernel with the feature backported merely takes the
    fallback, which works too."""
    match = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return match is not None and (int(match[1]), int(match[2])) >= (6, 8)


class _Unsupported(Exception):
    """The new mount API, or its `lowerdir+`, is not available: use mount(2)."""


# --- mounting --------------------------------------------------------------------------


def mount_rootfs(layer_dirs: Sequence[Path], container_dir: Path, readonly: bool = False) -> Rootfs:
    """Mount the overlay of `layer_dirs` (base layer first, as in the image) on
    `container_dir/merged`, with `container_dir/upper` as its writable layer.

    Existing upper and work dirs are reused (a stopped container's writable layer is
    kept). On failure everything this call created is removed again and RootfsError
    raised.
    """
    container_dir = Path(os.path.abspath(container_dir))
    for layer in layer_dirs:
        if not Path(layer).is_dir():
            raise RootfsError(f"layer directory {layer} is missing; pull the image again")
    if len(layer_dirs) > 500:
        # overlayfs' own stacking limit (OVL_MAX_STACK).
        raise RootfsError(f"image has {len(layer_dirs)} layers; overlayfs stacks at most 500")

    created: list[Path] = []  # what to remove on failure, outermost first
    merged = container_dir / "merged"
    upper = container_dir / "upper"
    work = container_dir / "work"
    try:
        created.extend(_mkdir_parents(container_dir))
        if _mkdir(container_dir, 0o700):
            # Private to root: otherwise a host user could reach the image's setuid
            # binaries through the merged view.
            created.append(container_dir)
        if _is_mounted(merged):
            raise RootfsError(f"{merged} is already mounted; unmount the rootfs first")
        if _mkdir(upper, 0o755):
            created.append(upper)
            if layer_dirs:
                # The merged root dir takes its owner and mode from the upper root dir:
                # copy them from the top layer, or a container's "/" would be 0755
                # root-owned whatever the image says (containers/storage does the same).
                top = os.stat(layer_dirs[-1])
                os.chown(upper, top.st_uid, top.st_gid)
                os.chmod(upper, stat.S_IMODE(top.st_mode))
        if _mkdir(work, 0o700):
            created.append(work)
        if _mkdir(merged, 0o700):
            created.append(merged)
        lowers = [Path(os.path.abspath(p)) for p in reversed(layer_dirs)]  # top first
        if not lowers:
            empty = container_dir / "empty"
            if _mkdir(empty, 0o755):
                created.append(empty)
            lowers = [empty]
        _mount_overlay(lowers, upper, work, merged)
    except BaseException as exc:
        _undo(created)
        if isinstance(exc, RootfsError):
            raise
        if isinstance(exc, OSError):
            raise RootfsError(f"preparing the rootfs in {container_dir}: {exc}") from exc
        raise
    failpoints.step("rootfs-mount")
    return Rootfs(merged=merged, upper=upper, work=work, readonly=readonly)


def _mkdir(path: Path, mode: int) -> bool:
    try:
        return directories.make_directory(path, mode)
    except NotADirectoryError as exc:
        raise RootfsError(str(exc)) from None


def _mkdir_parents(path: Path) -> list[Path]:
    try:
        return directories.make_parents(path)
    except NotADirectoryError as exc:
        raise RootfsError(str(exc)) from None


def _undo(created: list[Path]) -> None:
    """Remove the dirs a failed mount_rootfs made, innermost first. The overlay is
    attached by the very last step, so a failure never leaves it mounted; a mount found
    there anyway is someone else's, and nothing is deleted through it. The container dir
    and its parents go only if empty: another container may have moved in meanwhile."""
    for path in reversed(created):
        if any(True for _ in _mounts_under(path)):
            continue
        if path.name in ("upper", "work", "merged", "empty"):
            with contextlib.suppress(OSError):
                remove_tree(path)
        else:
            with contextlib.suppress(OSError):
                path.rmdir()


def _mount_overlay(lowers: list[Path], upper: Path, work: Path, merged: Path) -> None:
    if _mount_api.use_new is None:
        _mount_api.use_new = _kernel_takes_lowerdir_add()
    if _mount_api.use_new:
        try:
            _mount_new_api(lowers, upper, work, merged)
            return
        except _Unsupported:
            _mount_api.use_new = False  # a benign race: all threads reach the same answer
    _mount_legacy(lowers, upper, work, merged)


def _sys(nr: int, *args: ctypes.c_int | ctypes.c_uint | ctypes.c_char_p | None) -> int:
    result = int(_libc.syscall(ctypes.c_long(nr), *args))
    if result < 0:
        raise OSError(ctypes.get_errno(), "")
    return result


def _kernel_log(fs_fd: int) -> str:
    """The messages the kernel left in an fs context ("e overlayfs: ..."), joined."""
    lines = []
    while True:
        try:
            lines.append(os.read(fs_fd, 4096).decode(errors="replace").strip())
        except OSError:  # ENODATA: no more messages
            break
    return "; ".join(line[2:] if line[1:2] == " " else line for line in lines if line)


def _fsconfig(fs_fd: int, merged: Path, key: str | None, value: str | None = None) -> None:
    """Set one string parameter, or with key None create the superblock."""
    cmd = _FSCONFIG_SET_STRING if key is not None else _FSCONFIG_CMD_CREATE
    try:
        _sys(
            _SYS_FSCONFIG,
            ctypes.c_int(fs_fd),
            ctypes.c_uint(cmd),
            ctypes.c_char_p(key.encode() if key is not None else None),
            ctypes.c_char_p(os.fsencode(value) if value is not None else None),
            ctypes.c_int(0),
        )
    except OSError as exc:
        detail = _kernel_log(fs_fd) or os.strerror(exc.errno or 0)
        if key == "lowerdir+" and exc.errno == errno.EINVAL and "nknown parameter" in detail:
            raise _Unsupported from exc  # a kernel without it after all
        what = f"setting {key}={value}" if key is not None else "creating the overlay"
        raise RootfsError(f"mounting the rootfs on {merged}: {what}: {detail}") from exc


def _mount_new_api(lowers: list[Path], upper: Path, work: Path, merged: Path) -> None:
    try:
        fs_fd = _sys(_SYS_FSOPEN, ctypes.c_char_p(b"overlay"), ctypes.c_uint(_FSOPEN_CLOEXEC))
    except OSError as exc:
        if exc.errno in (errno.ENOSYS, errno.EPERM, errno.EOPNOTSUPP):
            raise _Unsupported from exc  # too old, or a seccomp filter says no
        raise RootfsError(f"creating an overlay context: {os.strerror(exc.errno or 0)}") from exc
    mount_fd = -1
    try:
        _fsconfig(fs_fd, merged, "source", "overlay")
        for option in _OVERLAY_OPTIONS:
            name, _, value = option.partition("=")
            _fsconfig(fs_fd, merged, name, value)
        for lower in lowers:
            _fsconfig(fs_fd, merged, "lowerdir+", str(lower))  # taken literally, no escapes
        # upperdir and workdir still go through overlay's unescaping (of backslashes).
        _fsconfig(fs_fd, merged, "upperdir", _escape(str(upper), ""))
        _fsconfig(fs_fd, merged, "workdir", _escape(str(work), ""))
        _fsconfig(fs_fd, merged, None)
        try:
            mount_fd = _sys(
                _SYS_FSMOUNT, ctypes.c_int(fs_fd), ctypes.c_uint(_FSMOUNT_CLOEXEC), ctypes.c_uint(0)
            )
            _sys(
                _SYS_MOVE_MOUNT,
                ctypes.c_int(mount_fd),
                ctypes.c_char_p(b""),
                ctypes.c_int(_AT_FDCWD),
                ctypes.c_char_p(os.fsencode(str(merged))),
                ctypes.c_uint(_MOVE_MOUNT_F_EMPTY_PATH),
            )
        except OSError as exc:
            detail = _kernel_log(fs_fd) or os.strerror(exc.errno or 0)
            raise RootfsError(f"mounting the rootfs on {merged}: {detail}") from exc
    finally:
        # Closing the fd of a mount never moved into place frees that detached mount.
        if mount_fd >= 0:
            os.close(mount_fd)
        os.close(fs_fd)


def _escape(path: str, specials: str = ",:") -> str:
    """Overlay unescapes backslashes in its paths; mount(2) data also splits on ',' and
    lowerdir on ':'."""
    out = path.replace("\\", "\\\\")
    for char in specials:
        out = out.replace(char, "\\" + char)
    return out


def _legacy_data(lowerdir: str, upper: Path, work: Path) -> bytes:
    return ",".join(
        [
            f"lowerdir={lowerdir}",
            f"upperdir={_escape(str(upper))}",
            f"workdir={_escape(str(work))}",
            *_OVERLAY_OPTIONS,
        ]
    ).encode()


def _mount_legacy(lowers: list[Path], upper: Path, work: Path, merged: Path) -> None:
    fds: list[int] = []
    try:
        data = _legacy_data(":".join(_escape(str(p)) for p in lowers), upper, work)
        if len(data) > _MAX_MOUNT_DATA:
            for lower in lowers:
                fds.append(os.open(lower, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
            data = _legacy_data(":".join(f"/proc/self/fd/{fd}" for fd in fds), upper, work)
            if len(data) > _MAX_MOUNT_DATA:
                raise RootfsError(
                    f"{len(lowers)} layers do not fit in one mount(2) call on this kernel "
                    "(Linux 6.8 or newer takes them one by one)"
                )
        target = os.fsencode(str(merged))
        if _libc.mount(b"overlay", target, b"overlay", 0, data) != 0:
            err = ctypes.get_errno()
            raise RootfsError(
                f"mounting the rootfs on {merged}: {os.strerror(err)} (the kernel log says more)"
            )
    except OSError as exc:
        raise RootfsError(f"mounting the rootfs on {merged}: {exc}") from exc
    finally:
        for fd in fds:
            os.close(fd)


# --- unmounting ------------------------------------------------------------------------


def unmount_rootfs(container_dir: Path) -> None:
    """Unmount the container's overlay (detached if busy) and remove container_dir with
    its upper, work and merged dirs. Nothing there is fine: idempotent."""
    container_dir = Path(os.path.abspath(container_dir))
    # It returns only once mountinfo lists nothing left below, and raises otherwise.
    _unmount_all(container_dir)
    failpoints.step("rootfs-unmount")
    try:
        # The upper dir is the container's to fill: a tree of any depth.
        remove_tree(container_dir)
    except OSError as exc:
        raise RootfsError(f"removing {container_dir}: {exc}") from exc


def _unmount_all(root: Path) -> None:
    """Unmount everything at or below root, deepest and most recent first: mounts may be
    stacked on one point, so go round until none is left."""
    for _ in range(64):
        points = list(_mounts_under(root))
        if not points:
            return
        for point in points:
            _umount(point)
    raise RootfsError(f"{root} keeps being mounted; giving up unmounting it")


def _umount(point: str) -> None:
    target = os.fsencode(point)
    if _libc.umount2(target, 0) == 0:
        return
    err = ctypes.get_errno()
    if err == errno.EBUSY:
        # A process still uses it (a shell cd'ed into it, a file open): detach it from
        # the tree now; the kernel frees it when the last user lets go.
        if _libc.umount2(target, _MNT_DETACH) == 0:
            return
        err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOENT):
        return  # gone in the meantime
    raise RootfsError(f"unmounting {point}: {os.strerror(err)}")


_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def _mounts_under(root: Path) -> Iterator[str]:
    """Mount points at or below root (resolved), deepest then most recent first."""
    wanted = os.path.realpath(root)
    prefix = wanted.rstrip("/") + "/"
    found: list[tuple[int, int, str]] = []
    with open("/proc/self/mountinfo", "rb") as f:
        for index, raw in enumerate(f):
            fields = raw.split(b" ")
            if len(fields) < 5:
                continue
            # mountinfo escapes space, tab, newline and backslash as \ooo.
            point = _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), os.fsdecode(fields[4]))
            if point == wanted or point.startswith(prefix):
                found.append((point.count("/"), index, point))
    for _, _, point in sorted(found, reverse=True):
        yield point


def _is_mounted(path: Path) -> bool:
    wanted = os.path.realpath(path)
    return any(point == wanted for point in _mounts_under(path))


# --- usage -----------------------------------------------------------------------------


def rootfs_usage(container_dir: Path) -> tuple[int, int]:
    """Bytes and inodes the container's writable layer takes: disk blocks (as du counts
    them, so sparse files count what they use), each hard-linked inode once, the upper
    dir itself included. Symlinks are counted, not followed. A missing upper dir (the
    container being removed) is (0, 0); files vanishing during the walk are skipped."""
    upper = Path(container_dir) / "upper"
    try:
        top = os.lstat(upper)
    except FileNotFoundError:
        return 0, 0
    if not stat.S_ISDIR(top.st_mode):
        raise RootfsError(f"{upper} is not a directory")
    seen = {(top.st_dev, top.st_ino)}
    used = top.st_blocks * 512
    stack = [str(upper)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode) and st.st_dev == top.st_dev:
                stack.append(entry.path)  # never into another filesystem mounted here
            key = (st.st_dev, st.st_ino)
            if key not in seen:
                seen.add(key)
                used += st.st_blocks * 512
    return used, len(seen)
