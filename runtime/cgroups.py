"""The cgroupfs driver: pod and container cgroups on cgroup v1 and v2, by writing the
control files under ``/sys/fs/cgroup`` directly.

A cgroup is named by an absolute path such as ``/kubepods/burstable/pod123``. On v1
the same relative directory is made in every mounted hierarchy that matters (cpu,
cpuacct, cpuset, memory, pids, hugetlb, devices, freezer, blkio; each mount may carry
one controller or several, e.g. the usual ``cpu,cpuacct``); on v2 it is one directory
of the unified tree, whose parents get the controllers enabled in
``cgroup.subtree_control``.

Resources are a plain dataclass (:class:`CgroupResources`); ``None`` (or an empty
string or mapping) means "leave this alone", so an update writes only what it is given.
Values are checked before anything is written (:class:`InvalidResources`); what the
kernel refuses comes back as an error that names the file and the value.

Control files are written with ``O_CREAT``: on a real cgroupfs the file is always
there (or the open fails), and on a plain directory tree built by a test the write
simply creates the file, so the unit tests can read back exactly what was written.

Everything here is a few short blocking syscalls; asyncio callers run it in a thread.
Stats will read the same files through :meth:`Cgroupfs.directory` and
:meth:`Cgroupfs.read`.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from base import failpoints
from base.errors import Internal, InvalidArgument, NotFound

log = logging.getLogger(__name__)

DEFAULT_ROOT = Path("/sys/fs/cgroup")

#: v1 controllers a pod or container cgroup is made in (when their hierarchy is mounted).
V1_CONTROLLERS = (
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "pids",
    "hugetlb",
    "devices",
    "freezer",
    "blkio",
)
#: v2 controllers enabled down to a new cgroup (those the root offers). All of them, not
#: only those the first resources need: a later update or stats read needs them too.
V2_CONTROLLERS = ("cpuset", "cpu", "io", "memory", "hugetlb", "pids")

# cpu.shares bounds (kernel MIN_SHARES/MAX_SHARES) and CFS bandwidth bounds (1 ms .. 1 s).
MIN_SHARES = 2
MAX_SHARES = 262144
MIN_CFS_US = 1000
MAX_CFS_PERIOD_US = 1_000_000
# The kernel refuses a larger quota (its bandwidth arithmetic has 44 bits): ~203 days.
MAX_CFS_QUOTA_US = 2**44 - 1
DEFAULT_CFS_PERIOD_US = 100_000

# What a v1 memory limit file reads when unlimited (PAGE_COUNTER_MAX pages, 4 KiB pages);
# anything at least this large counts as unlimited when comparing limits.
V1_MEMORY_UNLIMITED = 9223372036854771712

_CPUSET_LIST = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")
_HUGEPAGE_SIZE = re.compile(r"^\d+(KB|MB|GB)$")
_UNIFIED_KEY = re.compile(r"^[a-z][a-z0-9_]*\.[A-Za-z0-9_.]+$")
# Unified keys that would move or kill processes or reshape the tree, not set a resource.
_UNIFIED_REFUSED = frozenset(
    {"cgroup.procs", "cgroup.threads", "cgroup.kill", "cgroup.subtree_control", "cgroup.type"}
)


class CgroupError(Internal):
    pass


class InvalidResources(InvalidArgument, CgroupError):
    pass


class CgroupNotFound(NotFound, CgroupError):
    pass


@dataclass(frozen=True)
class CgroupResources:
    """Resources of one cgroup; ``None``/empty fields are left as they are.

    ``-1`` means unlimited where a limit can be unlimited (cpu_quota, memory_limit,
    memory_swap, pids_limit, hugepage limits). memory_swap is memory plus swap, as in
    v1's memsw and the OCI spec.
    """

    cpu_shares: int | None = None
    cpu_quota: int | None = None
    cpu_period: int | None = None
    cpuset_cpus: str = ""
    cpuset_mems: str = ""
    memory_limit: int | None = None
    memory_swap: int | None = None
    pids_limit: int | None = None
    hugepage_limits: Mapping[str, int] = field(default_factory=dict)
    unified: Mapping[str, str] = field(default_factory=dict)


def cpu_list_ranges(text: str) -> list[tuple[int, int]]:
    """'0-3,6' as [(0, 3), (6, 6)]; InvalidResources for anything else, or a range
    that runs backwards."""
    if not _CPUSET_LIST.match(text):
        raise InvalidResources(f"{text!r} is not a list like '0-3,6'")
    ranges = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        first, last = int(low), int(high or low)
        if first > last:
            raise InvalidResources(f"{text!r}: the range {part} runs backwards")
        ranges.append((first, last))
    return ranges


def outside(ranges: list[tuple[int, int]], present: frozenset[int]) -> list[int]:
    """The numbers of ``ranges`` not in ``present`` (a node's CPUs or memory nodes),
    without expanding a range beyond the largest present number."""
    top = max(present, default=-1)
    missing = []
    for first, last in ranges:
        if last > top:
            missing.append(max(first, top + 1))
        missing.extend(n for n in range(first, min(last, top) + 1) if n not in present)
    return sorted(set(missing))


def cgroup_version(root: Path = DEFAULT_ROOT) -> int:
    """2 when ``root`` is a cgroup2 mount (it has ``cgroup.controllers``), else 1.

    A hybrid host (v1 hierarchies plus an unified mount below ``root``) counts as v1:
    the resource controllers live in the v1 hierarchies there.
    """
    return 2 if (root / "cgroup.controllers").exists() else 1


def shares_to_weight(shares: int) -> int:
    """v1 cpu.shares [2, 262144] to v2 cpu.weight [1, 10000].

    The linear map runc, crun and the kubelet agree on (the kernel has no conversion of
    its own): it keeps the ends of the ranges in place (2 -> 1, 262144 -> 10000), so a
    BestEffort pod's 2 shares stay the minimum weight. The default 1024 shares become
    39, not v2's default weight 100; every runtime makes the same choice, which keeps
    the ratios between pods the kubelet computed.
    """
    return 1 + ((shares - 2) * 9999) // 262142


def _relative(path: str) -> str:
    """ "/kubepods/pod1" -> "kubepods/pod1", refusing anything that is not a plain path
    below the root (no "..", no empty components, not the root itself)."""
    if not path.startswith("/") or "\0" in path:
        raise InvalidResources(f"cgroup path {path!r} must be absolute, like /kubepods/pod1")
    parts = path[1:].rstrip("/").split("/")
    if parts == [""] or any(part in ("", ".", "..") for part in parts):
        raise InvalidResources(
            f"cgroup path {path!r} must name a cgroup below the root, without '..' or '//'"
        )
    return "/".join(parts)


def _control_file_name(file: str) -> str:
    if not file or "/" in file or file in (".", ".."):
        raise InvalidResources(f"{file!r} is not a cgroup control file name")
    return file


def validate(resources: CgroupResources, version: int) -> None:
    """Raise InvalidResources for values no kernel would take, before anything is written."""
    r = resources
    if r.cpu_shares is not None and not MIN_SHARES <= r.cpu_shares <= MAX_SHARES:
        raise InvalidResources(
            f"cpu_shares {r.cpu_shares} is out of range [{MIN_SHARES}, {MAX_SHARES}]"
        )
    if (
        r.cpu_quota is not None
        and r.cpu_quota != -1
        and not MIN_CFS_US <= r.cpu_quota <= MAX_CFS_QUOTA_US
    ):
        raise InvalidResources(
            f"cpu_quota {r.cpu_quota} must be -1 (unlimited) or from {MIN_CFS_US} to "
            f"{MAX_CFS_QUOTA_US} µs"
        )
    if r.cpu_period is not None and not MIN_CFS_US <= r.cpu_period <= MAX_CFS_PERIOD_US:
        raise InvalidResources(
            f"cpu_period {r.cpu_period} is out of range [{MIN_CFS_US}, {MAX_CFS_PERIOD_US}] µs"
        )
    for name, value in (("cpuset_cpus", r.cpuset_cpus), ("cpuset_mems", r.cpuset_mems)):
        if value:
            try:
                cpu_list_ranges(value)
            except InvalidResources as exc:
                raise InvalidResources(f"{name} {exc}") from None
    for name, limit in (
        ("memory_limit", r.memory_limit),
        ("memory_swap", r.memory_swap),
        ("pids_limit", r.pids_limit),
    ):
        if limit is not None and limit != -1 and limit <= 0:
            raise InvalidResources(f"{name} {limit} must be -1 (unlimited) or positive")
    if r.memory_swap is not None and r.memory_swap != -1 and r.memory_limit is not None:
        if r.memory_limit == -1:
            raise InvalidResources(
                f"memory_swap {r.memory_swap} needs a memory_limit, and memory_limit is -1"
            )
        if r.memory_swap < r.memory_limit:
            raise InvalidResources(
                f"memory_swap {r.memory_swap} (memory plus swap) is below "
                f"memory_limit {r.memory_limit}"
            )
    for size, limit in r.hugepage_limits.items():
        if not _HUGEPAGE_SIZE.match(size):
            raise InvalidResources(f"hugepage size {size!r} must look like '2MB' or '1GB'")
        if limit != -1 and limit < 0:
            raise InvalidResources(f"hugepage limit for {size} is {limit}, must be >= 0 or -1")
    if r.unified and version == 1:
        raise InvalidResources(
            "unified cgroup settings ("
            + ", ".join(sorted(r.unified))
            + ") need cgroup v2, and this node runs cgroup v1"
        )
    for key, value in r.unified.items():
        if not _UNIFIED_KEY.match(key) or key in _UNIFIED_REFUSED:
            raise InvalidResources(f"unified key {key!r} is not a resource file like 'memory.high'")
        if "\n" in value.rstrip("\n"):
            raise InvalidResources(f"unified value for {key} must be one line, got {value!r}")


def _write(file: Path, value: str) -> None:
    """One write(2) of the whole value, as the kernel parses each write on its own."""
    data = value.encode()
    try:
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            written = os.write(fd, data)
        finally:
            os.close(fd)
    except OSError as exc:
        raise _write_error(file, value, exc) from exc
    if written != len(data):
        raise CgroupError(f"writing {value!r} to {file}: short write ({written} of {len(data)})")


# Why the kernel may refuse a write, by (errno, file name); file name "" is any file.
_WRITE_HINTS: dict[tuple[int, str], str] = {
    (errno.EINVAL, "memory.limit_in_bytes"): (
        "the memory limit may not exceed memory.memsw.limit_in_bytes: raise memory_swap with it"
    ),
    (errno.EINVAL, "memory.memsw.limit_in_bytes"): (
        "memory plus swap may not be below memory.limit_in_bytes"
    ),
    (errno.EINVAL, ""): "the kernel refuses this value",
    (errno.ERANGE, ""): "the kernel refuses this value: out of range",
    (errno.EBUSY, "memory.limit_in_bytes"): (
        "the cgroup uses more memory than that, and it could not be reclaimed"
    ),
    (errno.EBUSY, "memory.memsw.limit_in_bytes"): (
        "the cgroup uses more memory plus swap than that, and it could not be reclaimed"
    ),
    (errno.EBUSY, "cgroup.subtree_control"): (
        "a cgroup with processes of its own cannot pass controllers to its children"
    ),
    (errno.ENOENT, ""): "the cgroup does not exist",
}


def _write_error(file: Path, value: str, exc: OSError) -> CgroupError:
    err = exc.errno or 0
    hint = _WRITE_HINTS.get((err, file.name)) or _WRITE_HINTS.get((err, ""))
    if err == errno.EACCES and not file.exists():
        # What kernfs answers to O_CREAT of a file it does not have.
        hint = "no such control file: its controller is not enabled there, or the kernel lacks it"
    message = f"writing {value!r} to {file}: {exc.strerror}" + (f" ({hint})" if hint else "")
    if err in (errno.EINVAL, errno.ERANGE):
        return InvalidResources(message)
    if err == errno.ENOENT:
        return CgroupNotFound(message)
    return CgroupError(message)


def _read(file: Path) -> str:
    try:
        return file.read_text()
    except FileNotFoundError as exc:
        raise CgroupNotFound(f"reading {file}: no such file") from exc
    except OSError as exc:
        raise CgroupError(f"reading {file}: {exc.strerror}") from exc


def _read_optional(file: Path) -> str:
    """The file's text, or "" when it does not exist."""
    try:
        return file.read_text()
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise CgroupError(f"reading {file}: {exc.strerror}") from exc


def _v1_bytes(limit: int) -> int:
    return V1_MEMORY_UNLIMITED if limit == -1 else min(limit, V1_MEMORY_UNLIMITED)


def _v2_limit(limit: int) -> str:
    return "max" if limit == -1 else str(limit)


class Cgroupfs:
    """Creates, updates and deletes cgroups by writing cgroupfs directly."""

    def __init__(self, root: Path = DEFAULT_ROOT, version: int | None = None) -> None:
        self.root = root
        self.version = cgroup_version(root) if version is None else version
        if self.version not in (1, 2):
            raise CgroupError(f"cgroup version {self.version} is neither 1 nor 2")
        self._hierarchies = self._find_hierarchies() if self.version == 1 else {}
        self._others = self._other_hierarchies() if self.version == 1 else []

    # ---- layout -------------------------------------------------------------------

    def _find_hierarchies(self) -> dict[str, Path]:
        """Controller -> mount directory of its v1 hierarchy, for those mounted.

        A directory under the root counts when it is a cgroup hierarchy (has
        ``cgroup.procs``); its name lists its controllers ("cpu,cpuacct"). An exact
        name (often a symlink such as cpu -> cpu,cpuacct) wins over a combined one.
        """
        found: dict[str, Path] = {}
        try:
            entries = sorted(self.root.iterdir())
        except OSError as exc:
            raise CgroupError(f"listing cgroup hierarchies in {self.root}: {exc.strerror}") from exc
        for entry in entries:
            if not (entry / "cgroup.procs").is_file():
                continue
            for name in entry.name.split(","):
                if name in V1_CONTROLLERS and (name == entry.name or name not in found):
                    found[name] = entry
        return found

    def _other_hierarchies(self) -> list[Path]:
        """v1 mounts with none of our controllers (name=systemd, a hybrid host's
        cgroup2): runc makes a container's path there too, parents included, so the
        parents skiff made are removed there as well."""
        ours = {os.path.realpath(base) for base in self._hierarchies.values()}
        try:
            entries = sorted(self.root.iterdir())
        except OSError:
            return []
        return [
            entry
            for entry in entries
            if (entry / "cgroup.procs").is_file() and os.path.realpath(entry) not in ours
        ]

    @property
    def hierarchies(self) -> dict[str, Path]:
        """v1: controller -> hierarchy mount (only the mounted ones); v2: empty."""
        return dict(self._hierarchies)

    def _bases(self) -> list[Path]:
        """The directories a cgroup path is made under: one per distinct v1 hierarchy
        (cpu and cpuacct share one when mounted together), or the v2 root."""
        if self.version == 2:
            return [self.root]
        bases: list[Path] = []
        seen: set[str] = set()
        for controller in V1_CONTROLLERS:
            base = self._hierarchies.get(controller)
            if base is None:
                continue
            real = os.path.realpath(base)
            if real not in seen:
                seen.add(real)
                bases.append(base)
        if not bases:
            raise CgroupError(
                f"no cgroup v1 hierarchy of {', '.join(V1_CONTROLLERS)} is mounted under "
                f"{self.root}"
            )
        return bases

    def directory(self, path: str, controller: str) -> Path:
        """Where ``controller``'s files of cgroup ``path`` are (v2: the one directory)."""
        rel = _relative(path)
        if self.version == 2:
            return self.root / rel
        return self._v1_base(controller, path) / rel

    def _v1_base(self, controller: str, why: str) -> Path:
        base = self._hierarchies.get(controller)
        if base is None:
            raise CgroupError(
                f"the cgroup v1 {controller} controller is not mounted under {self.root} "
                f"(needed for {why})"
            )
        return base

    def _v2_available(self) -> set[str]:
        return set(_read_optional(self.root / "cgroup.controllers").split())

    # ---- public operations --------------------------------------------------------

    def exists(self, path: str) -> bool:
        """True when the cgroup is there (on v1: in every hierarchy it is made in)."""
        rel = _relative(path)
        return all((base / rel).is_dir() for base in self._bases())

    def create(self, path: str, resources: CgroupResources | None = None) -> bool:
        """Make the cgroup (and missing parents), then apply ``resources``.

        Returns True when this call made the leaf (on v1: in at least one hierarchy;
        a partly made cgroup is completed), False when it was all there already. On
        any failure, the directories this call made are removed again.
        """
        rel = _relative(path)
        if resources is not None:
            validate(resources, self.version)
        created: list[Path] = []
        leaf_made = False
        try:
            for base in self._bases():
                leaf_made |= self._mkdirs(base, rel, created)
            if self.version == 1:
                if "cpuset" in self._hierarchies:
                    self._fill_cpuset(self._hierarchies["cpuset"], rel)
            else:
                self._enable_controllers(rel, resources)
            if resources is not None:
                self._apply(rel, path, resources)
        except BaseException:
            self._remove_created(created)
            raise
        if leaf_made:
            failpoints.step("cgroup-create")
        return leaf_made

    def update(self, path: str, resources: CgroupResources) -> None:
        """Write the fields of ``resources`` that are set; nothing else changes."""
        rel = _relative(path)
        validate(resources, self.version)
        missing = [str(base / rel) for base in self._bases() if not (base / rel).is_dir()]
        if missing:
            raise CgroupNotFound(f"cgroup {path} does not exist ({', '.join(missing)})")
        self._apply(rel, path, resources)

    def delete(self, path: str) -> None:
        """Remove the cgroup in every hierarchy, empty child cgroups first.

        A cgroup that is not there is fine. One that still has processes (itself or
        a child) is left whole and raises CgroupError naming it: nothing is killed.
        """
        rel = _relative(path)
        leaves = [base / rel for base in [*self._bases(), *self._others] if (base / rel).is_dir()]
        busy: list[str] = []
        doomed: list[Path] = []
        for leaf in leaves:
            for directory in self._subtree_bottom_up(leaf):
                pids = self._procs(directory)
                if pids:
                    busy.append(f"{directory} ({_pid_list(pids)})")
                doomed.append(directory)
        if busy:
            raise CgroupError(
                f"cgroup {path} still has processes, stop them first: " + "; ".join(busy)
            )
        errors: list[str] = []
        for directory in doomed:
            try:
                self._rmdir(directory)
            except FileNotFoundError:
                continue
            except OSError as exc:
                errors.append(f"{directory}: {exc.strerror}")
        if errors:
            raise CgroupError(f"removing cgroup {path}: " + "; ".join(errors))
        if doomed:
            failpoints.step("cgroup-delete")

    def attach(self, path: str, pid: int) -> None:
        """Move process ``pid`` into cgroup ``path`` in every hierarchy it is made in.
        On v2 the cgroup must be a leaf (no controllers enabled for children)."""
        rel = _relative(path)
        for base in self._bases():
            directory = base / rel
            try:
                with open(directory / "cgroup.procs", "w") as f:
                    f.write(str(pid))
            except OSError as exc:
                raise CgroupError(
                    f"moving process {pid} into cgroup {path} ({directory}): {exc.strerror}"
                ) from exc

    def remove_if_unused(self, path: str) -> bool:
        """rmdir ``path`` where it has no children and no processes; True when it is
        gone everywhere. A cgroup still in use (EBUSY) is left as it is."""
        rel = _relative(path)
        gone = True
        for base in [*self._bases(), *self._others]:
            try:
                self._rmdir(base / rel)
            except FileNotFoundError:
                continue
            except OSError as exc:
                if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                    raise CgroupError(f"removing cgroup {base / rel}: {exc.strerror}") from exc
                gone = False
        return gone

    def pids(self, path: str) -> list[int]:
        """Processes in the cgroup itself (not its children), over all hierarchies."""
        rel = _relative(path)
        found: set[int] = set()
        for base in self._bases():
            found.update(self._procs(base / rel))
        return sorted(found)

    def read(self, path: str, controller: str, file: str) -> str:
        """The raw text of one control file (v2 ignores ``controller``)."""
        return _read(self.directory(path, controller) / _control_file_name(file))

    # ---- helpers ------------------------------------------------------------------

    def _rmdir(self, directory: Path) -> None:
        """rmdir(2): on cgroupfs the control files go with the directory."""
        os.rmdir(directory)

    @staticmethod
    def _mkdirs(base: Path, rel: str, created: list[Path]) -> bool:
        """Make base/rel level by level, recording what was made; True if the leaf was.

        A parent that vanishes midway (another daemon removing a shared, empty parent
        such as "/skiff") is made again: up to three passes."""
        for attempt in range(3):
            current = base
            made = False
            try:
                for part in rel.split("/"):
                    current = current / part
                    try:
                        os.mkdir(current, 0o755)
                    except FileExistsError:
                        made = False
                        continue
                    created.append(current)
                    made = True
                return made
            except FileNotFoundError as exc:
                if attempt == 2:
                    raise CgroupError(f"creating cgroup {current}: {exc.strerror}") from exc
            except OSError as exc:
                raise CgroupError(f"creating cgroup {current}: {exc.strerror}") from exc
        raise AssertionError("unreachable")

    def _remove_created(self, created: list[Path]) -> None:
        for directory in reversed(created):
            try:
                self._rmdir(directory)
            except OSError as exc:
                # Another caller may have put a child under a parent made here.
                log.warning("rolling back cgroup %s: %s", directory, exc.strerror)

    @staticmethod
    def _subtree_bottom_up(leaf: Path) -> list[Path]:
        below = [
            Path(parent) / name
            for parent, names, _files in os.walk(leaf, topdown=False)
            for name in names
        ]
        return [*below, leaf]

    @staticmethod
    def _procs(directory: Path) -> list[int]:
        text = _read_optional(directory / "cgroup.procs")
        return [int(word) for word in text.split()]

    def _fill_cpuset(self, base: Path, rel: str) -> None:
        """Give every empty level its parent's cpus and mems.

        A new v1 cpuset cgroup starts with empty cpuset.cpus and cpuset.mems (unless
        the parent sets cgroup.clone_children), and the kernel refuses to attach a task
        to it (ENOSPC). Top-down, so each level copies an already filled parent. Levels
        that have values keep them; an empty one holds no task, so filling it changes
        nothing for anybody.
        """
        parent = base
        for part in rel.split("/"):
            current = parent / part
            for name in ("cpuset.cpus", "cpuset.mems"):
                if _read_optional(current / name).strip():
                    continue
                value = _read_optional(parent / name).strip()
                if not value:
                    raise CgroupError(f"cannot fill {current / name}: {parent / name} is empty too")
                _write(current / name, value)
            parent = current

    def _enable_controllers(self, rel: str, resources: CgroupResources | None) -> None:
        """Enable the v2 controllers in every ancestor's cgroup.subtree_control.

        A child's files of a controller exist only when its parent lists the
        controller in subtree_control, and a parent can only enable what it has
        itself (its cgroup.controllers), so this goes top-down from the root. Only the
        missing ones are written: on the kernel each "+name" token adds one.
        """
        available = self._v2_available()
        wanted = [c for c in V2_CONTROLLERS if c in available]
        if resources is not None:
            for key in resources.unified:
                prefix = key.split(".", 1)[0]
                if prefix in available and prefix not in wanted and prefix != "cgroup":
                    wanted.append(prefix)
        current = self.root
        for part in rel.split("/"):
            controllers_file = current / "cgroup.controllers"
            # A plain directory (a test's tree) has no cgroup.controllers: take all.
            here = (
                set(_read_optional(controllers_file).split())
                if controllers_file.exists()
                else set(wanted)
            )
            enabled = {
                token.lstrip("+")
                for token in _read_optional(current / "cgroup.subtree_control").split()
                if not token.startswith("-")
            }
            missing = [c for c in wanted if c in here and c not in enabled]
            if missing:
                _write(current / "cgroup.subtree_control", " ".join(f"+{c}" for c in missing))
            current = current / part

    def _apply(self, rel: str, path: str, r: CgroupResources) -> None:
        if self.version == 1:
            self._apply_v1(rel, path, r)
        else:
            self._apply_v2(rel, path, r)

    # ---- v1 -----------------------------------------------------------------------

    def _apply_v1(self, rel: str, path: str, r: CgroupResources) -> None:
        if r.cpu_shares is not None or r.cpu_quota is not None or r.cpu_period is not None:
            cpu = self._v1_base("cpu", f"cpu limits of {path}") / rel
            if r.cpu_shares is not None:
                _write(cpu / "cpu.shares", str(r.cpu_shares))
            self._cfs_v1(cpu, r.cpu_quota, r.cpu_period)
        if r.cpuset_cpus or r.cpuset_mems:
            cpuset = self._v1_base("cpuset", f"cpuset of {path}") / rel
            if r.cpuset_cpus:
                _write(cpuset / "cpuset.cpus", r.cpuset_cpus)
            if r.cpuset_mems:
                _write(cpuset / "cpuset.mems", r.cpuset_mems)
        if r.memory_limit is not None or r.memory_swap is not None:
            memory = self._v1_base("memory", f"memory limits of {path}") / rel
            self._memory_v1(memory, r.memory_limit, r.memory_swap)
        if r.pids_limit is not None:
            pids = self._v1_base("pids", f"pids limit of {path}") / rel
            _write(pids / "pids.max", _v2_limit(r.pids_limit))
        if r.hugepage_limits:
            hugetlb = self._v1_base("hugetlb", f"hugepage limits of {path}") / rel
            for size, limit in sorted(r.hugepage_limits.items()):
                _write(hugetlb / f"hugetlb.{size}.limit_in_bytes", str(limit))

    @staticmethod
    def _cfs_v1(cpu: Path, quota: int | None, period: int | None) -> None:
        """Period first, then quota; if the kernel refuses the period (the quota/period
        ratio it would make with the old quota breaks a parent's or child's bound),
        quota first, then period: the way runc orders them."""
        period_done = False
        if period is not None:
            try:
                _write(cpu / "cpu.cfs_period_us", str(period))
                period_done = True
            except InvalidResources:
                if quota is None:
                    raise
        if quota is not None:
            _write(cpu / "cpu.cfs_quota_us", str(quota))
            if period is not None and not period_done:
                _write(cpu / "cpu.cfs_period_us", str(period))

    @staticmethod
    def _memory_v1(memory: Path, limit: int | None, swap: int | None) -> None:
        """memory.limit_in_bytes and memory.memsw.limit_in_bytes, in an order the
        kernel takes: it keeps memsw >= limit at every write, so when the limit grows
        past the current memsw, memsw goes first.

        Without swap accounting (no memsw file: swapaccount=0, or no swap support)
        memory_swap is skipped: there is no swap limit to set.
        """
        swap_file = memory / "memory.memsw.limit_in_bytes"
        limit_file = memory / "memory.limit_in_bytes"
        if swap is not None and not swap_file.exists():
            log.debug("%s missing (no swap accounting); memory_swap %s skipped", swap_file, swap)
            swap = None
        if swap is None:
            if limit is not None:
                _write(limit_file, str(limit))
            return
        if limit is None:
            _write(swap_file, str(swap))
            return
        current_swap = _read_optional(swap_file).strip()
        current = int(current_swap) if current_swap.isdigit() else V1_MEMORY_UNLIMITED
        if _v1_bytes(limit) > current:
            _write(swap_file, str(swap))
            _write(limit_file, str(limit))
        else:
            _write(limit_file, str(limit))
            _write(swap_file, str(swap))

    # ---- v2 -----------------------------------------------------------------------

    def _require_v2(self, controller: str, what: str) -> None:
        if controller not in self._v2_available():
            raise CgroupError(
                f"the cgroup v2 {controller} controller is not available "
                f"({self.root / 'cgroup.controllers'} does not list it), needed for {what}"
            )

    def _apply_v2(self, rel: str, path: str, r: CgroupResources) -> None:
        directory = self.root / rel
        if r.cpu_shares is not None or r.cpu_quota is not None or r.cpu_period is not None:
            self._require_v2("cpu", f"cpu limits of {path}")
            if r.cpu_shares is not None:
                _write(directory / "cpu.weight", str(shares_to_weight(r.cpu_shares)))
            if r.cpu_quota is not None or r.cpu_period is not None:
                _write(directory / "cpu.max", self._cpu_max(directory, r.cpu_quota, r.cpu_period))
        if r.cpuset_cpus or r.cpuset_mems:
            self._require_v2("cpuset", f"cpuset of {path}")
            # v2 needs no copy from the parent: an empty cpuset.cpus means "the
            # parent's" (cpuset.cpus.effective), unlike v1.
            if r.cpuset_cpus:
                _write(directory / "cpuset.cpus", r.cpuset_cpus)
            if r.cpuset_mems:
                _write(directory / "cpuset.mems", r.cpuset_mems)
        if r.memory_limit is not None or r.memory_swap is not None:
            self._require_v2("memory", f"memory limits of {path}")
            if r.memory_limit is not None:
                _write(directory / "memory.max", _v2_limit(r.memory_limit))
            if r.memory_swap is not None:
                _write(directory / "memory.swap.max", self._swap_max(directory, r))
        if r.pids_limit is not None:
            self._require_v2("pids", f"pids limit of {path}")
            _write(directory / "pids.max", _v2_limit(r.pids_limit))
        if r.hugepage_limits:
            self._require_v2("hugetlb", f"hugepage limits of {path}")
            for size, limit in sorted(r.hugepage_limits.items()):
                _write(directory / f"hugetlb.{size}.max", _v2_limit(limit))
        # Last, so a raw setting wins over one derived from the fields above.
        for key, value in sorted(r.unified.items()):
            _write(directory / key, value)

    @staticmethod
    def _cpu_max(directory: Path, quota: int | None, period: int | None) -> str:
        """cpu.max is "$QUOTA $PERIOD" in one file, where v1 had two. A field not
        given keeps its current value (at creation: "max 100000", no limit), so
        changing only the period does not drop the quota; -1 is "max"."""
        current = _read_optional(directory / "cpu.max").split()
        quota_text = current[0] if current else "max"
        period_text = current[1] if len(current) > 1 else str(DEFAULT_CFS_PERIOD_US)
        if quota is not None:
            quota_text = _v2_limit(quota)
        if period is not None:
            period_text = str(period)
        return f"{quota_text} {period_text}"

    @staticmethod
    def _swap_max(directory: Path, r: CgroupResources) -> str:
        """v2 limits swap alone (memory.swap.max) where v1 and the OCI/CRI value limit
        memory plus swap, so swap.max = memory_swap - memory_limit: equal values mean
        no swap at all (0), -1 means unlimited ("max"). Without a memory_limit in the
        same call, the cgroup's current memory.max is the limit."""
        swap = r.memory_swap
        assert swap is not None
        if swap == -1:
            return "max"
        limit = r.memory_limit
        if limit is None:
            current = _read_optional(directory / "memory.max").strip()
            limit = int(current) if current.isdigit() else -1
        if limit == -1:
            raise InvalidResources(
                f"memory_swap {swap} needs a memory limit, and {directory / 'memory.max'} "
                "is unlimited"
            )
        if swap < limit:
            raise InvalidResources(
                f"memory_swap {swap} (memory plus swap) is below the memory limit {limit}"
            )
        return str(swap - limit)


def _pid_list(pids: Iterable[int]) -> str:
    pids = list(pids)
    shown = ", ".join(str(pid) for pid in pids[:10])
    more = f" and {len(pids) - 10} more" if len(pids) > 10 else ""
    return f"pid {shown}{more}" if len(pids) == 1 else f"pids {shown}{more}"


def hugepage_size_name(kib: int) -> str:
    """The name hugetlb control files give a page size of ``kib`` KiB: whole GB, MB
    or KB, the largest unit that fits (2048 -> "2MB", 1048576 -> "1GB")."""
    if kib >= 1 << 20:
        return f"{kib >> 20}GB"
    if kib >= 1 << 10:
        return f"{kib >> 10}MB"
    return f"{kib}KB"


@functools.lru_cache(maxsize=4)
def hugepage_sizes(directory: str = "/sys/kernel/mm/hugepages") -> tuple[str, ...] | None:
    """The node's huge page sizes, smallest first, as hugetlb control files and the
    CRI name them, from its ``hugepages-<N>kB`` directories (cached: they are fixed at
    boot). None when that directory cannot be read (sizes unknown)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return None
    kibs = []
    for name in names:
        number = name.removeprefix("hugepages-").removesuffix("kB")
        if name.startswith("hugepages-") and name.endswith("kB") and number.isdigit():
            kibs.append(int(number))
    return tuple(hugepage_size_name(kib) for kib in sorted(kibs))
