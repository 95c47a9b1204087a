"""OCI bundles for the runtime tests, built from Debian's dynamic busybox.

A rootfs holds ``/bin/busybox`` with the shared libraries ``ldd`` names (and the dynamic
loader), its applets as hardlinks (as upstream busybox images do: a dynamic busybox
execs its applets, so what the kernel sees is a real exec), ``/etc/passwd`` and
``/etc/group``, and empty ``/proc /dev /sys /tmp``. One template per process is built
under a ``/tmp/skiff-bbox-*`` dir and copied into each bundle as hardlinks, so a bundle costs a few
hundred inode operations, not megabytes.

``config.json`` is written here, on purpose independent of ``runtime/``'s spec builder:
a small runc-style spec with the pid/ipc/uts/mount/network namespaces, the usual
/proc /dev /dev/pts /dev/shm /dev/mqueue /sys mounts, a small default capability set,
no seccomp, no oomScoreAdj, and ``linux.cgroupsPath`` under a per-test prefix that
:func:`remove_cgroup_tree` clears from every v1 hierarchy afterwards.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.integration.busybox import busybox_binary

CGROUP_ROOT = Path("/sys/fs/cgroup")
DEFAULT_ENV = (
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME=/root",
)
APPLETS = (
    "sh",
    "echo",
    "cat",
    "sleep",
    "true",
    "false",
    "id",
    "ls",
    "kill",
    "head",
    "yes",
    "dd",
    "ps",
    "printf",
    "env",
    "tr",
    "wc",
    "seq",
)
CAPABILITIES = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_KILL",
]
MASKED_PATHS = [
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
]
READONLY_PATHS = [
    "/proc/asound",
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
]


def _libraries(binary: Path) -> list[Path]:
    """The shared objects ``ldd`` lists for ``binary``, the loader included."""
    out = subprocess.run(["ldd", str(binary)], check=True, capture_output=True, text=True)
    found: list[Path] = []
    for line in out.stdout.splitlines():
        match = re.search(r"(/\S+)\s+\(0x", line)
        if match:
            found.append(Path(match.group(1)))
    return found


def _copy_into(rootfs: Path, source: Path) -> None:
    """Copy ``source`` to the same path inside ``rootfs``, and if it is reached through
    a symlink (``/lib64/ld-linux...`` -> ``/lib/x86_64-linux-gnu/...``), the target too."""
    real = source.resolve()
    for path in {source, real}:
        dest = rootfs / str(path).lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            continue
        shutil.copy2(real, dest)


@functools.cache
def rootfs_template() -> Path:
    """One busybox rootfs per process, built on first use and removed at exit (it
    holds no mounts and no processes)."""
    top = Path(tempfile.mkdtemp(prefix="skiff-bbox-"))
    atexit.register(shutil.rmtree, top, True)
    rootfs = top / "rootfs"
    for sub in ("bin", "etc", "proc", "dev", "sys", "tmp", "root"):
        (rootfs / sub).mkdir(parents=True)
    os.chmod(rootfs / "tmp", 0o1777)
    shutil.copy2(busybox_binary(), rootfs / "bin" / "busybox")
    for lib in _libraries(busybox_binary()):
        _copy_into(rootfs, lib)
    for applet in APPLETS:
        os.link(rootfs / "bin" / "busybox", rootfs / "bin" / applet)
    (rootfs / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
    )
    (rootfs / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
    return rootfs


def _mounts() -> list[dict[str, Any]]:
    return [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", "ro"],
        },
    ]


def config(
    args: Sequence[str],
    cgroups_path: str,
    *,
    env: Sequence[str] = DEFAULT_ENV,
    terminal: bool = False,
    resources: Mapping[str, Any] | None = None,
    hostname: str = "skiff-test",
) -> dict[str, Any]:
    """A minimal OCI runtime config (runtime-spec 1.0.2) for a busybox container."""
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": terminal,
            "user": {"uid": 0, "gid": 0},
            "args": list(args),
            "env": list(env),
            "cwd": "/",
            "capabilities": {
                "bounding": CAPABILITIES,
                "effective": CAPABILITIES,
                "permitted": CAPABILITIES,
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": False},
        "hostname": hostname,
        "mounts": _mounts(),
        "linux": {
            "namespaces": [
                {"type": "pid"},
                {"type": "ipc"},
                {"type": "uts"},
                {"type": "mount"},
                {"type": "network"},
            ],
            "cgroupsPath": cgroups_path,
            "resources": {
                "devices": [{"allow": False, "access": "rwm"}],
                **(resources or {}),
            },
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
        },
    }


def make_bundle(
    directory: Path,
    args: Sequence[str],
    cgroups_path: str,
    *,
    env: Sequence[str] = DEFAULT_ENV,
    terminal: bool = False,
    resources: Mapping[str, Any] | None = None,
) -> Path:
    """Make ``directory`` an OCI bundle: ``rootfs/`` (hardlinked from the template)
    and ``config.json``. Returns ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copytree(rootfs_template(), directory / "rootfs", symlinks=True, copy_function=os.link)
    spec = config(args, cgroups_path, env=env, terminal=terminal, resources=resources)
    (directory / "config.json").write_text(json.dumps(spec, indent=2))
    return directory


def cgroup_prefix() -> str:
    """A fresh top-level cgroup name for one test's containers."""
    return f"/skiff-test-{uuid.uuid4().hex[:10]}"


def cgroup_hierarchies() -> list[Path]:
    """Every mounted v1 hierarchy (named ones such as name=systemd included)."""
    if not CGROUP_ROOT.is_dir():
        return []
    return sorted(
        entry
        for entry in CGROUP_ROOT.iterdir()
        if not entry.is_symlink() and (entry / "cgroup.procs").is_file()
    )


def cgroup_dirs(prefix: str) -> list[Path]:
    """The directories at or below ``prefix`` in every hierarchy, deepest first."""
    found: list[Path] = []
    for base in cgroup_hierarchies():
        top = base / prefix.strip("/")
        if not top.is_dir():
            continue
        for parent, names, _files in os.walk(top, topdown=False):
            found.extend(Path(parent) / name for name in names)
        found.append(top)
    return found


def remove_cgroup_tree(prefix: str) -> list[str]:
    """rmdir ``prefix`` and everything below it in every hierarchy, deepest first.
    Returns what could not be removed (a cgroup that still holds a process)."""
    left: list[str] = []
    for directory in cgroup_dirs(prefix):
        try:
            os.rmdir(directory)
        except FileNotFoundError:
            continue
        except OSError as exc:
            left.append(f"{directory}: {exc.strerror}")
    return left
