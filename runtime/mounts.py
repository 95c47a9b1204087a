"""Mounts the runner makes itself (a pod's /dev/shm), through mount(2) directly: no
subprocess, and errors carry the errno."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from pathlib import Path

from base import failpoints
from base.errors import Internal

MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MNT_DETACH = 0x2

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


class MountError(Internal, OSError):
    pass


def mount_tmpfs(target: Path, size_bytes: int, mode: int = 0o1777) -> None:
    target.mkdir(parents=True, exist_ok=True)
    options = f"mode={mode:o},size={size_bytes}".encode()
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    if _libc.mount(b"shm", str(target).encode(), b"tmpfs", flags, options) != 0:
        err = ctypes.get_errno()
        raise MountError(err, f"mounting tmpfs on {target}: {os.strerror(err)}")
    failpoints.step("shm-mount")


def unmount(target: Path) -> None:
    """Detach a mount; not mounted (or missing) is fine."""
    if _libc.umount2(str(target).encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOENT):
            return
        raise MountError(err, f"unmounting {target}: {os.strerror(err)}")
    failpoints.step("shm-unmount")


def kernel_has_mount_setattr(release: str | None = None) -> bool:
    """Recursive mount attributes (an OCI runtime's ``rro``) need mount_setattr(2),
    which Linux has since 5.12."""
    numbers = (release or os.uname().release).split("-", 1)[0].split(".")
    try:
        major, minor = int(numbers[0]), int(numbers[1])
    except (IndexError, ValueError):
        return False
    return (major, minor) >= (5, 12)


def is_mountpoint(path: Path) -> bool:
    wanted = str(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == wanted for line in f)


def propagation_of(path: Path) -> str:
    """How the mount holding `path` propagates: "shared", "slave" or "private"."""
    target = str(path.resolve())
    best, best_fields = "", ""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split(" - ")[0].split()
            point = fields[4]
            inside = target == point or target.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best):
                best, best_fields = point, " ".join(fields[6:])
    if "shared:" in best_fields:
        return "shared"
    if "master:" in best_fields:
        return "slave"
    return "private"
