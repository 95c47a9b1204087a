"""The OCI runtime spec (a bundle's ``config.json``) of a container.

:func:`build_spec` turns a :class:`~runtime.container_spec.ContainerSpec` into the
dict runc and crun read. It is pure but for a few documented reads: the seccomp
profile file, ``stat`` of the devices a container asks for, and (for a privileged
container) the host's ``/dev``. What it needs to know about the host comes in a
:class:`HostFacts`, made once by :func:`host_facts`, so tests can give a fake host.

The spec targets runc 1.1 (OCI 1.0.2-dev) and crun 1.8: only fields both know.
"""

from __future__ import annotations

import logging
import os
import posixpath
import resource
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from base.errors import InvalidArgument
from runtime.capabilities import UnknownCapability, effective_capabilities, host_bounding_set
from runtime.cgroups import (
    DEFAULT_ROOT,
    CgroupResources,
    InvalidResources,
    cgroup_version,
    cpu_list_ranges,
    hugepage_sizes,
    outside,
    validate,
)
from runtime.container_spec import (
    HOST,
    NEW,
    ContainerSpec,
    DeviceSpec,
    MountSpec,
    SecuritySpec,
    who,
)
from runtime.seccomp import DEFAULT_PROFILE_PATH, RUNTIME_DEFAULT, load_profile, with_capabilities

log = logging.getLogger(__name__)

OCI_VERSION = "1.0.2"

#: The open-files limit a container starts with, when the host allows that much.
NOFILE_LIMIT = 1_048_576

#: Namespace kinds in the order they go into the spec; all but "cgroup" are made new
#: when the ContainerSpec does not mention them.
NAMESPACE_KINDS = ("pid", "network", "ipc", "uts", "mount", "cgroup")

#: /proc and /sys entries that leak host information or reach host hardware or kernel
#: state; hidden (masked) unless the ContainerSpec lists its own or is privileged.
DEFAULT_MASKED_PATHS = (
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
#: Kernel knobs a container may read but not turn (they are not namespaced).
DEFAULT_READONLY_PATHS = (
    "/proc/asound",
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)

_RWM = "rwm"

#: Device-cgroup rules every container gets: the nodes runc creates in its /dev, plus
#: the pty master and slaves for a terminal. Everything else is denied.
_STANDARD_DEVICE_RULES: tuple[tuple[str, int, int | None], ...] = (
    ("c", 1, 3),  # /dev/null
    ("c", 1, 5),  # /dev/zero
    ("c", 1, 7),  # /dev/full
    ("c", 1, 8),  # /dev/random
    ("c", 1, 9),  # /dev/urandom
    ("c", 5, 0),  # /dev/tty
    ("c", 5, 1),  # /dev/console
    ("c", 5, 2),  # /dev/ptmx
    ("c", 136, None),  # /dev/pts/*
)

#: Parts of the host's /dev a privileged container does not get as device nodes: the
#: container has its own pts, shm and mqueue mounts, /dev/fd is /proc's, and its
#: console and ptmx are set up by the OCI runtime.
_SKIPPED_DEV_DIRS = frozenset({"pts", "shm", "mqueue", "fd", ".udev", ".lxc", ".lxd-mounts"})
_SKIPPED_DEV_FILES = frozenset({"console", "ptmx"})


class SpecError(InvalidArgument, ValueError):
    pass


@dataclass(frozen=True)
class HostFacts:
    """What the spec depends on about the node; read once by :func:`host_facts`."""

    bounding_set: frozenset[str]
    cgroup_version: int
    #: None: oom_score_adj as asked; else a lower value is raised to this one.
    min_oom_score_adj: int | None
    seccomp_default_path: Path
    #: The hard RLIMIT_NOFILE a container may have: NOFILE_LIMIT, or less when skiffd's
    #: own hard limit is lower (without CAP_SYS_RESOURCE it cannot be raised).
    nofile_limit: int = NOFILE_LIMIT
    #: Whether the memory controller limits swap (v1 memsw files, v2 memory.swap.max);
    #: without it a swap limit is left out, as runc would fail writing it.
    swap_accounting: bool = True
    #: The host's device directory, walked for a privileged container.
    dev_root: Path = Path("/dev")
    #: The huge page sizes the node has ("2MB", "1GB"; None: unknown), and whether its
    #: cgroups have the hugetlb controller: without it hugepage limits are left out (as
    #: cri-o does; the kubelet sends a limit of 0 for every size), runc would fail.
    hugepage_sizes: frozenset[str] | None = None
    hugetlb_controller: bool = True
    #: The node's online CPUs and memory nodes, which a cpuset may name (None: unknown).
    online_cpus: frozenset[int] | None = None
    online_mems: frozenset[int] | None = None


def online(path: Path) -> frozenset[int] | None:
    """The numbers of a kernel list file such as /sys/devices/system/cpu/online."""
    try:
        ranges = cpu_list_ranges(path.read_text().strip())
    except (OSError, InvalidResources):
        return None
    return frozenset(n for first, last in ranges for n in range(first, last + 1))


def host_facts(restrict_oom_score_adj: bool) -> HostFacts:
    """Read the node's facts: capability bounding set, cgroup version, limits.

    With ``restrict_oom_score_adj`` a container's oom_score_adj is never below
    skiffd's own (containerd's rule): lowering it needs CAP_SYS_RESOURCE, which a
    node inside another container often lacks, and the OCI runtime would fail.
    """
    version = cgroup_version()
    minimum = None
    if restrict_oom_score_adj:
        minimum = int(Path("/proc/self/oom_score_adj").read_text().strip())
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    nofile = NOFILE_LIMIT if hard == resource.RLIM_INFINITY else min(NOFILE_LIMIT, hard)
    sizes = hugepage_sizes()
    return HostFacts(
        bounding_set=host_bounding_set(),
        cgroup_version=version,
        min_oom_score_adj=minimum,
        seccomp_default_path=DEFAULT_PROFILE_PATH,
        nofile_limit=nofile,
        swap_accounting=_swap_accounting(version),
        hugepage_sizes=None if sizes is None else frozenset(sizes),
        hugetlb_controller=_hugetlb_controller(version),
        online_cpus=online(Path("/sys/devices/system/cpu/online")),
        online_mems=online(Path("/sys/devices/system/node/online")),
    )


def _hugetlb_controller(version: int, root: Path = DEFAULT_ROOT) -> bool:
    if version == 1:
        return (root / "hugetlb").is_dir()
    try:
        return "hugetlb" in (root / "cgroup.controllers").read_text().split()
    except OSError:
        return True


def _swap_accounting(version: int, root: Path = DEFAULT_ROOT) -> bool:
    if version == 1:
        return (root / "memory" / "memory.memsw.limit_in_bytes").exists()
    # v2: the root cgroup has no memory.swap.max; look where skiffd itself runs.
    try:
        own = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return True
    for line in own:
        if line.startswith("0::"):
            relative = line[3:].strip().lstrip("/")
            return not relative or (root / relative / "memory.swap.max").exists()
    return True


def build_spec(spec: ContainerSpec, host: HostFacts) -> dict[str, Any]:
    """The OCI runtime spec of ``spec`` on ``host``.

    Raises SpecError for input no runtime would take (an unknown capability, a
    missing device, a relative path), and SeccompError for a Localhost profile that
    cannot be used (INVALID_ARGUMENT) or a missing default profile (INTERNAL).
    """
    security = spec.security
    privileged = security.privileged
    try:
        capabilities = effective_capabilities(
            privileged,
            security.capabilities_add,
            security.capabilities_drop,
            host.bounding_set,
        )
    except UnknownCapability as exc:
        raise SpecError(f"{who(spec)}: {exc}") from exc
    namespaces = _namespaces(spec)
    joined = {ns["type"] for ns in namespaces}

    oci: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": _process(spec, host, capabilities),
        "root": {"path": spec.rootfs, "readonly": security.readonly_rootfs},
        "mounts": _mounts(spec.mounts, privileged),
    }
    if spec.hostname and "uts" in joined:
        # runc refuses a hostname without a UTS namespace of the container's own.
        oci["hostname"] = spec.hostname
    oci["linux"] = _linux(spec, host, namespaces, capabilities)
    if spec.annotations:
        oci["annotations"] = dict(spec.annotations)
    return oci


def _linux(
    spec: ContainerSpec, host: HostFacts, namespaces: list[dict[str, str]], capabilities: list[str]
) -> dict[str, Any]:
    """The spec's ``linux`` section."""
    privileged = spec.security.privileged
    linux: dict[str, Any] = {"namespaces": namespaces}
    if spec.cgroups_path:
        linux["cgroupsPath"] = spec.cgroups_path
    devices, device_rules = _devices(spec.devices, privileged, host.dev_root)
    linux["resources"] = _resources(spec.resources, device_rules, host)
    if devices:
        linux["devices"] = devices
    if not privileged:
        linux.update(_confinement(spec.security, host, capabilities))
    if spec.sysctls:
        linux["sysctl"] = dict(spec.sysctls)
    if spec.rootfs_propagation:
        linux["rootfsPropagation"] = spec.rootfs_propagation
    return linux


def _confinement(
    security: SecuritySpec, host: HostFacts, capabilities: list[str]
) -> dict[str, Any]:
    """What an unprivileged container is kept from: its masked and read-only paths, and
    the syscalls its seccomp profile denies."""
    confinement: dict[str, Any] = {}
    masked = DEFAULT_MASKED_PATHS if security.masked_paths is None else security.masked_paths
    readonly = (
        DEFAULT_READONLY_PATHS if security.readonly_paths is None else security.readonly_paths
    )
    if masked:
        confinement["maskedPaths"] = list(masked)
    if readonly:
        confinement["readonlyPaths"] = list(readonly)
    seccomp = load_profile(
        security.seccomp, security.seccomp_profile_path, host.seccomp_default_path
    )
    if seccomp is not None:
        if security.seccomp == RUNTIME_DEFAULT:
            seccomp = with_capabilities(seccomp, capabilities)
        confinement["seccomp"] = seccomp
    return confinement


# ---- process ----------------------------------------------------------------------


def _process(spec: ContainerSpec, host: HostFacts, capabilities: list[str]) -> dict[str, Any]:
    if not spec.args:
        raise SpecError(f"{who(spec)}: no command to run (args is empty)")
    if not spec.cwd.startswith("/"):
        raise SpecError(f"{who(spec)}: working directory {spec.cwd!r} must be absolute")
    process: dict[str, Any] = {
        "terminal": spec.terminal,
        "user": {
            "uid": spec.user.uid,
            "gid": spec.user.gid,
            "additionalGids": list(spec.user.additional_gids),
        },
        "args": list(spec.args),
        "env": list(spec.env),
        "cwd": spec.cwd,
        "capabilities": {
            "bounding": list(capabilities),
            "effective": list(capabilities),
            "permitted": list(capabilities),
            # Empty, not the same set: with inheritable capabilities, a non-root
            # process exec'ing a file with inheritable file capabilities would gain
            # them (CVE-2022-29162). Ambient stays empty as in every runtime.
            "inheritable": [],
            "ambient": [],
        },
        "noNewPrivileges": spec.security.no_new_privileges,
        "rlimits": [
            {"type": "RLIMIT_NOFILE", "hard": host.nofile_limit, "soft": host.nofile_limit}
        ],
    }
    adj = spec.oom_score_adj
    if adj is not None:
        if not -1000 <= adj <= 1000:
            raise SpecError(f"{who(spec)}: oom_score_adj {adj} is outside [-1000, 1000]")
        if host.min_oom_score_adj is not None and adj < host.min_oom_score_adj:
            adj = host.min_oom_score_adj
        process["oomScoreAdj"] = adj
    return process


# ---- namespaces -------------------------------------------------------------------


def _namespaces(spec: ContainerSpec) -> list[dict[str, str]]:
    unknown = sorted(set(spec.namespaces) - set(NAMESPACE_KINDS))
    if unknown:
        raise SpecError(
            f"{who(spec)}: unknown namespace kind {unknown[0]!r}; "
            f"kinds are {', '.join(NAMESPACE_KINDS)}"
        )
    result: list[dict[str, str]] = []
    for kind in NAMESPACE_KINDS:
        if kind == "mount":
            # Always a mount namespace of its own: the rootfs and /proc, /dev, /sys
            # are mounted there, never in the host's or another container's.
            result.append({"type": "mount"})
            continue
        if kind not in spec.namespaces:
            if kind == "cgroup":
                continue  # the OCI runtime's own choice, as before cgroup namespaces
            value = NEW
        else:
            value = spec.namespaces[kind]
        if value == HOST:
            continue
        if value == NEW:
            result.append({"type": kind})
        elif value.startswith("/"):
            result.append({"type": kind, "path": value})
        else:
            raise SpecError(
                f"{who(spec)}: {kind} namespace {value!r} must be "
                f"{NEW!r}, {HOST!r} or the absolute path of a namespace to join"
            )
    return result


# ---- mounts -----------------------------------------------------------------------


def _default_mounts(privileged: bool) -> list[dict[str, Any]]:
    sys_mode = "rw" if privileged else "ro"
    return [
        {
            "destination": "/proc",
            "type": "proc",
            "source": "proc",
            "options": ["nosuid", "noexec", "nodev"],
        },
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
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
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
            "options": ["nosuid", "noexec", "nodev", sys_mode],
        },
        {
            "destination": "/sys/fs/cgroup",
            "type": "cgroup",
            "source": "cgroup",
            "options": ["nosuid", "noexec", "nodev", "relatime", sys_mode],
        },
    ]


def _mounts(requested: tuple[MountSpec, ...], privileged: bool) -> list[dict[str, Any]]:
    """The default mounts, less those a requested mount replaces, then the requested
    ones in order; stably sorted by depth so a parent is mounted before its children
    (a later /data would otherwise hide an earlier /data/cache)."""
    own: list[dict[str, Any]] = []
    for mount in requested:
        if not mount.destination.startswith("/"):
            raise SpecError(
                f"mount of {mount.source!r}: destination {mount.destination!r} must be absolute"
            )
        if "\0" in mount.destination:
            raise SpecError(f"mount destination {mount.destination!r} contains a NUL byte")
        entry: dict[str, Any] = {
            "destination": posixpath.normpath(mount.destination),
            "type": mount.type,
            "source": mount.source,
        }
        if mount.options:
            entry["options"] = list(mount.options)
        own.append(entry)
    replaced = {m["destination"] for m in own}
    mounts = [m for m in _default_mounts(privileged) if m["destination"] not in replaced]
    mounts.extend(own)
    return sorted(mounts, key=lambda m: _depth(m["destination"]))


def _depth(path: str) -> int:
    return 0 if path == "/" else path.count("/")


# ---- devices ----------------------------------------------------------------------


def _device_entry(container_path: str, st: os.stat_result) -> dict[str, Any]:
    kind = "c" if stat.S_ISCHR(st.st_mode) else "b"
    return {
        "path": container_path,
        "type": kind,
        "major": os.major(st.st_rdev),
        "minor": os.minor(st.st_rdev),
        "fileMode": stat.S_IMODE(st.st_mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
    }


def _is_device(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)


def host_devices(root: Path = Path("/dev")) -> Iterator[tuple[str, os.stat_result]]:
    """(path, lstat) of the character and block devices below ``root``, sorted.

    Symlinks are not followed (they are aliases, e.g. /dev/disk/by-id, or point into
    /proc, e.g. /dev/stdin), and the directories a container has of its own are skipped.
    """
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        log.debug("listing %s: %s", root, exc.strerror)
        return
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                if entry.name not in _SKIPPED_DEV_DIRS:
                    yield from host_devices(Path(entry.path))
                continue
            if entry.name in _SKIPPED_DEV_FILES:
                continue
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue  # gone while we looked (udev at work)
        if _is_device(st):
            yield entry.path, st


def _requested_devices(device: DeviceSpec, dev_root: Path) -> list[dict[str, Any]]:
    """The device nodes one DeviceSpec asks for: its host path (symlinks followed,
    as in /dev/disk/by-id/...), or every device below it when it is a directory."""
    if not device.container_path.startswith("/"):
        raise SpecError(
            f"device {device.host_path!r}: container path {device.container_path!r} "
            "must be absolute"
        )
    if not device.permissions or set(device.permissions) - set(_RWM):
        raise SpecError(
            f"device {device.host_path!r}: permissions {device.permissions!r} must be "
            "made of r, w and m"
        )
    try:
        st = os.stat(device.host_path)
    except FileNotFoundError as exc:
        raise SpecError(f"device {device.host_path!r} does not exist on this node") from exc
    except OSError as exc:
        raise SpecError(f"device {device.host_path!r}: {exc.strerror}") from exc
    container_path = posixpath.normpath(device.container_path)
    if _is_device(st):
        return [_device_entry(container_path, st)]
    if stat.S_ISDIR(st.st_mode):
        base = Path(device.host_path)
        if not Path(os.path.realpath(base)).is_relative_to(dev_root):
            # A directory asks for every device below it: walking the node's whole tree
            # (host_path "/") is no way to find them.
            raise SpecError(
                f"device {device.host_path!r} is a directory outside {dev_root}; name a "
                "device node, or a directory of them under it"
            )
        return [
            _device_entry(posixpath.join(container_path, str(Path(path).relative_to(base))), found)
            for path, found in host_devices(base)
        ]
    raise SpecError(f"device {device.host_path!r} is not a character or block device")


def _devices(
    requested: tuple[DeviceSpec, ...], privileged: bool, dev_root: Path
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """linux.devices and the device-cgroup rules (linux.resources.devices)."""
    devices: list[dict[str, Any]] = []
    rules: list[dict[str, Any]] = []
    for device in requested:
        for node in _requested_devices(device, dev_root):
            devices.append(node)
            rules.append(_allow(node["type"], node["major"], node["minor"], device.permissions))
    if privileged:
        # A privileged container sees the host's devices, as with runc/containerd,
        # and may use any device; a requested device keeps its own entry.
        taken = {d["path"] for d in devices}
        for path, st in host_devices(dev_root):
            container_path = "/dev/" + str(Path(path).relative_to(dev_root))
            if container_path not in taken:
                devices.append(_device_entry(container_path, st))
        return devices, [{"allow": True, "type": "a", "access": _RWM}]
    standard = [_allow(kind, major, minor, _RWM) for kind, major, minor in _STANDARD_DEVICE_RULES]
    return devices, [{"allow": False, "type": "a", "access": _RWM}, *standard, *rules]


def _allow(kind: str, major: int, minor: int | None, access: str) -> dict[str, Any]:
    """An allow rule; no minor means all minors of the major."""
    rule: dict[str, Any] = {"allow": True, "type": kind, "major": major}
    if minor is not None:
        rule["minor"] = minor
    rule["access"] = access
    return rule


# ---- resources --------------------------------------------------------------------


def _resources(
    resources: CgroupResources | None, device_rules: list[dict[str, Any]], host: HostFacts
) -> dict[str, Any]:
    """linux.resources in the OCI's v1-style fields on both cgroup versions: runc and
    crun convert them for v2 themselves (shares to weight, memory+swap to swap.max)."""
    out: dict[str, Any] = {"devices": device_rules}
    if resources is None:
        return out
    try:
        validate(resources, host.cgroup_version)
    except InvalidResources as exc:
        raise SpecError(str(exc)) from exc
    r = resources
    _check_cpusets_online(r, host)
    cpu: dict[str, Any] = {}
    if r.cpu_shares is not None:
        cpu["shares"] = r.cpu_shares
    if r.cpu_quota is not None:
        cpu["quota"] = r.cpu_quota
    if r.cpu_period is not None:
        cpu["period"] = r.cpu_period
    if r.cpuset_cpus:
        cpu["cpus"] = r.cpuset_cpus
    if r.cpuset_mems:
        cpu["mems"] = r.cpuset_mems
    if cpu:
        out["cpu"] = cpu
    memory: dict[str, Any] = {}
    if r.memory_limit is not None:
        memory["limit"] = r.memory_limit
    if r.memory_swap is not None:
        if host.swap_accounting:
            memory["swap"] = r.memory_swap
        else:
            log.debug("no swap accounting on this node: memory_swap %s left out", r.memory_swap)
    if memory:
        out["memory"] = memory
    if r.pids_limit is not None:
        out["pids"] = {"limit": r.pids_limit}
    hugepages = _hugepage_limits(r.hugepage_limits, host)
    if hugepages:
        out["hugepageLimits"] = hugepages
    if r.unified:
        out["unified"] = dict(r.unified)
    return out


def _check_cpusets_online(r: CgroupResources, host: HostFacts) -> None:
    """SpecError when a cpuset names a CPU or memory node the node does not have online."""
    for name, value, present, what in (
        ("cpuset_cpus", r.cpuset_cpus, host.online_cpus, "CPU"),
        ("cpuset_mems", r.cpuset_mems, host.online_mems, "memory node"),
    ):
        missing = outside(cpu_list_ranges(value), present) if value and present else []
        if missing:
            raise SpecError(
                f"{name} {value[:80]!r} names {what} {missing[0]}, which this node does not "
                f"have online ({what}s online: {len(present or ())})"
            )


def _hugepage_limits(limits: Mapping[str, int], host: HostFacts) -> list[dict[str, Any]]:
    """linux.resources.hugepageLimits, by page size; SpecError for a size the node does
    not have. Empty on a node without the hugetlb controller."""
    # OCI's hugepage limit is unsigned, so -1 (unlimited) cannot be written; it is
    # what a new cgroup has anyway, so such an entry is left out.
    hugepages = [
        {"pageSize": size, "limit": limit} for size, limit in sorted(limits.items()) if limit != -1
    ]
    for size in limits:
        if host.hugepage_sizes is not None and size not in host.hugepage_sizes:
            have = ", ".join(sorted(host.hugepage_sizes)) or "none"
            raise SpecError(
                f"hugepage size {size[:20]!r} is not one this node has (it has: {have})"
            )
    if hugepages and not host.hugetlb_controller:
        log.debug("no hugetlb cgroup controller on this node: hugepage limits left out")
        return []
    return hugepages
