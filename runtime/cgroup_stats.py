"""Usage of one cgroup (a container's or a pod's), read from cgroupfs on v1 and v2.

Where the files are comes from :class:`runtime.cgroups.Cgroupfs` (its root, its version
and, on v1, which hierarchy holds which controller), so a test can point it at a tree
it built. Reading is a handful of small files per cgroup, by pread(2) on descriptors
kept open (:class:`ControlFiles`), and no subprocess: cheap enough to do for every
container on every stats call.

The figures are the ones the kubelet and cAdvisor use:

- CPU: total usage in ns (v1 ``cpuacct.usage``, v2 ``cpu.stat`` usage_usec), user and
  system time, CFS periods and throttling.
- Memory: usage (v1 ``memory.usage_in_bytes``, v2 ``memory.current``); the working set,
  usage minus inactive file pages, which is what eviction and ``kubectl top`` read;
  RSS (v1 total_rss, v2 anon); page faults; bytes available below the limit (only
  when there is a limit); swap in use (v1 memory.stat total_swap, v2
  ``memory.swap.current``; unknown without swap accounting) and swap left below the
  swap limit (only when there is one: v2 ``memory.swap.max``; v1 memsw limits memory
  plus swap, so its allowance is ``memory.memsw.limit_in_bytes`` minus
  ``memory.limit_in_bytes``).
- pids.current.
- For metrics only (``detailed``): user/system time, throttling, kernel memory, peak
  usage, limit hits, OOM kills, the pids limit, block I/O per device, huge pages per
  page size (v1 ``hugetlb.<size>.usage_in_bytes``, ``max_usage_in_bytes`` and
  ``failcnt``; v2 ``hugetlb.<size>.current`` and the ``max`` count of
  ``hugetlb.<size>.events``; v2 keeps no peak), the memory reservation (v1
  ``memory.soft_limit_in_bytes``, v2 ``memory.min``, as cAdvisor reads them); and on
  v2 the pressure stall figures (PSI) of CPU, memory and I/O, which the CRI stats
  carry too.
- For metrics, from ``/proc``: the cgroup's processes, threads, open files and
  sockets, and the soft ulimits of a container's first process (``limits``).

v1 keeps hierarchical totals under ``total_*`` in memory.stat; v2's memory.stat is
hierarchical already. A controller whose files are missing (not mounted, or not
enabled for the cgroup) leaves its part ``None`` rather than failing the whole read.
"""

from __future__ import annotations

import errno
import functools
import os
import resource
import threading
import time
from dataclasses import dataclass, replace

from runtime.cgroups import (
    V1_MEMORY_UNLIMITED,
    CgroupError,
    Cgroupfs,
    CgroupNotFound,
    hugepage_sizes,
)

# Directories of this many cgroup paths are remembered (then forgotten all at once).
MAX_CACHED_PATHS = 4096
# Control files kept open at most (a few per cgroup); beyond, files are opened per read.
MAX_OPEN_FILES = 8192
# cpuacct.stat counts in USER_HZ ticks.
_TICK_NS = 1_000_000_000 // (os.sysconf("SC_CLK_TCK") or 100)


@dataclass(frozen=True)
class Stall:
    """One line of a v2 pressure file: the share of time (percent, averaged over 10,
    60 and 300 s) and the total time (ns) tasks were stalled."""

    total_ns: int
    avg10: float
    avg60: float
    avg300: float


@dataclass(frozen=True)
class Pressure:
    """Pressure stall information (PSI) of a resource: ``some`` task waiting, or
    ``full``: every task stalled at once."""

    some: Stall | None
    full: Stall | None


@dataclass(frozen=True)
class CpuUsage:
    usage_ns: int
    user_ns: int = 0
    system_ns: int = 0
    periods: int = 0
    throttled_periods: int = 0
    throttled_ns: int = 0
    # v2 only (cpu.pressure).
    pressure: Pressure | None = None


@dataclass(frozen=True)
class MemoryUsage:
    usage_bytes: int
    working_set_bytes: int
    rss_bytes: int
    cache_bytes: int = 0
    mapped_file_bytes: int = 0
    kernel_bytes: int = 0
    page_faults: int = 0
    major_page_faults: int = 0
    # None when the cgroup has no memory limit of its own.
    limit_bytes: int | None = None
    available_bytes: int | None = None
    # None when the kernel does not account swap for the cgroup.
    swap_bytes: int | None = None
    # None without a swap limit of the cgroup's own (or without swap accounting).
    swap_available_bytes: int | None = None
    max_usage_bytes: int | None = None
    failcnt: int = 0
    oom_kills: int = 0
    # Detailed reads only; None when unlimited (or not read).
    reservation_bytes: int | None = None
    # v2 only (memory.pressure).
    pressure: Pressure | None = None


@dataclass(frozen=True)
class DeviceIo:
    """Block I/O of a cgroup on one device (major:minor), since the cgroup was made."""

    major: int
    minor: int
    read_bytes: int = 0
    write_bytes: int = 0
    reads: int = 0
    writes: int = 0


@dataclass(frozen=True)
class HugetlbUsage:
    """Huge pages of one size charged to a cgroup (pages faulted in, which is what
    ``hugetlb.<size>.max`` and v1's ``limit_in_bytes`` limit)."""

    # As the kernel names the size in the control files ("2MB", "1GB"); cAdvisor's
    # pagesize label is this same name.
    pagesize: str
    usage_bytes: int
    # v1 only: v2 records no peak.
    max_usage_bytes: int | None = None
    # Faults refused at the limit.
    failcnt: int = 0


@dataclass(frozen=True)
class CgroupUsage:
    timestamp_ns: int
    cpu: CpuUsage | None
    memory: MemoryUsage | None
    pids: int | None
    pids_limit: int | None = None
    # Only in detailed reads; empty when the cgroup did no block I/O.
    io: tuple[DeviceIo, ...] = ()
    # v2 only (io.pressure).
    io_pressure: Pressure | None = None
    # Only in detailed reads, one per page size of the machine; empty without the
    # hugetlb controller.
    hugetlb: tuple[HugetlbUsage, ...] = ()


class FlatKeyed:
    """``key value`` lines (memory.stat, cpu.stat, memory.events): values are turned
    into integers only when asked for, as a call wants a handful of memory.stat's ~40
    keys. A key that is missing or not an integer reads as ``default``."""

    def __init__(self, text: str) -> None:
        words = text.split()
        self._values = dict(zip(words[::2], words[1::2], strict=False))

    def get(self, key: str, default: int = 0) -> int:
        value = self._values.get(key)
        if value is None:
            return default
        try:
            return int(value)
        except ValueError:
            return default

    def __contains__(self, key: str) -> bool:
        return key in self._values

    def optional(self, key: str) -> int | None:
        return self.get(key) if key in self._values else None


def parse_v1_blkio(service_bytes: str, serviced: str) -> tuple[DeviceIo, ...]:
    """v1 ``blkio.throttle.io_service_bytes_recursive`` and ``io_serviced_recursive``
    ("8:0 Read 4096" lines, then "Total N") as per-device figures."""
    found: dict[tuple[int, int], dict[str, int]] = {}
    for text, suffix in ((service_bytes, "_bytes"), (serviced, "s")):
        for line in text.splitlines():
            parts = line.split()
            if len(parts) != 3 or ":" not in parts[0] or parts[1] not in ("Read", "Write"):
                continue
            major, _, minor = parts[0].partition(":")
            try:
                key = (int(major), int(minor))
                value = int(parts[2])
            except ValueError:
                continue
            found.setdefault(key, {})[parts[1].lower() + suffix] = value
    return tuple(
        DeviceIo(major, minor, **figures)
        for (major, minor), figures in sorted(found.items())
        if any(figures.values())
    )


def parse_v2_io_stat(text: str) -> tuple[DeviceIo, ...]:
    """v2 ``io.stat`` ("8:16 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0" lines)."""
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        device, *fields = line.split()
        major, sep, minor = device.partition(":")
        if not sep:
            continue
        values = dict(field.partition("=")[::2] for field in fields)
        try:
            out.append(
                DeviceIo(
                    int(major),
                    int(minor),
                    read_bytes=int(values.get("rbytes", 0)),
                    write_bytes=int(values.get("wbytes", 0)),
                    reads=int(values.get("rios", 0)),
                    writes=int(values.get("wios", 0)),
                )
            )
        except ValueError:
            continue
    return tuple(out)


@functools.lru_cache(maxsize=256)
def device_name(major: int, minor: int, sysfs: str = "/sys") -> str:
    """``/dev/<name>`` of a block device from its uevent in sysfs, or "major:minor"
    when sysfs does not know it (cached: devices are few and rarely change)."""
    text = _read(f"{sysfs}/dev/block/{major}:{minor}", "uevent") or ""
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key == "DEVNAME" and value:
            return f"/dev/{value}"
    return f"{major}:{minor}"


def parse_pressure(text: str) -> Pressure | None:
    """A v2 pressure file ("some avg10=0.12 avg60=0.30 avg300=0.05 total=123456" and a
    "full" line; totals in µs); None when there is no line to read."""
    stalls: dict[str, Stall] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        kind, *fields = line.split()
        values = dict(field.partition("=")[::2] for field in fields)
        try:
            stalls[kind] = Stall(
                int(values["total"]) * 1000,
                float(values["avg10"]),
                float(values["avg60"]),
                float(values["avg300"]),
            )
        except (KeyError, ValueError):
            continue
    if not stalls:
        return None
    return Pressure(stalls.get("some"), stalls.get("full"))


def parse_limit(text: str) -> int | None:
    """A limit file's value: None for "max" (v2) or v1's unlimited page-counter maximum."""
    value = text.strip()
    if not value or value == "max":
        return None
    number = int(value)
    return None if number >= V1_MEMORY_UNLIMITED else number


def working_set(usage: int, inactive_file: int) -> int:
    """Usage minus the inactive file cache the kernel can drop at once; never below 0."""
    return max(usage - inactive_file, 0)


def available(limit: int | None, working: int) -> int | None:
    return None if limit is None else max(limit - working, 0)


def _read(directory: str, name: str) -> str | None:
    """The text of a file read once (open, read, close), or None when it is not
    there."""
    path = f"{directory}/{name}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CgroupError(f"reading {path}: {exc.strerror}") from exc
    try:
        return os.read(fd, 1 << 16).decode()
    except OSError as exc:
        raise CgroupError(f"reading {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)


class ControlFiles:
    """Control files read with pread(2) on descriptors kept open.

    A pread at offset 0 of an open cgroupfs file makes the kernel render the file
    anew, for a fraction of open + read + close; stats read the same few files of
    the same cgroups call after call. Once a cgroup is removed its open files read
    ENODEV: such a descriptor is closed and the file counts as missing. Descriptors
    of cgroups no longer asked for are closed by :meth:`keep_only`; past ``max_open``
    files are read the plain way. One lock covers a read or a close, so a descriptor
    is never closed under a read (or its number reused) on another thread.
    """

    def __init__(self, max_open: int | None = None) -> None:
        # A quarter of the process's descriptors at most: the rest are for sockets,
        # pipes to conmon and runc, the store.
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        limit = MAX_OPEN_FILES if soft == resource.RLIM_INFINITY else min(MAX_OPEN_FILES, soft // 4)
        self.max_open = limit if max_open is None else max_open
        self._fds: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def text(self, directory: str, name: str) -> str | None:
        """The file's current text, or None when it is not there."""
        key = (directory, name)
        with self._lock:
            fd = self._fds.get(key)
            if fd is None:
                if len(self._fds) >= self.max_open:
                    return _read(directory, name)
                try:
                    fd = os.open(f"{directory}/{name}", os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    return None
                except OSError as exc:
                    raise CgroupError(f"reading {directory}/{name}: {exc.strerror}") from exc
                self._fds[key] = fd
            try:
                return os.pread(fd, 1 << 16, 0).decode()
            except OSError as exc:
                del self._fds[key]
                os.close(fd)
                if exc.errno in (errno.ENODEV, errno.ENOENT):
                    return None  # the cgroup was removed
                raise CgroupError(f"reading {directory}/{name}: {exc.strerror}") from exc

    def integer(self, directory: str, name: str) -> int | None:
        text = self.text(directory, name)
        if text is None:
            return None
        text = text.strip()
        return int(text) if text.lstrip("-").isdigit() else None

    def limit(self, directory: str, name: str) -> int | None:
        text = self.text(directory, name)
        return parse_limit(text) if text is not None else None

    def pressure(self, directory: str, name: str) -> Pressure | None:
        text = self.text(directory, name)
        return parse_pressure(text) if text is not None else None

    def keep_only(self, directories: set[str]) -> None:
        """Close the files of every directory not in ``directories``."""
        with self._lock:
            for key in [k for k in self._fds if k[0] not in directories]:
                os.close(self._fds.pop(key))

    def forget(self, directories: set[str]) -> None:
        """Close the files of ``directories`` (a cgroup found gone)."""
        with self._lock:
            for key in [k for k in self._fds if k[0] in directories]:
                os.close(self._fds.pop(key))

    def close(self) -> None:
        self.keep_only(set())

    @property
    def open_count(self) -> int:
        return len(self._fds)


class CgroupStatsReader:
    """Reads usage of cgroups named as :class:`Cgroupfs` names them."""

    def __init__(self, cgroups: Cgroupfs, hugepages: tuple[str, ...] | None = None) -> None:
        self.cgroups = cgroups
        # The page sizes whose hugetlb files are read (default: this machine's).
        self.hugepages = (hugepage_sizes() or ()) if hugepages is None else hugepages
        hierarchies = cgroups.hierarchies
        self._v1_controllers = [
            c for c in ("cpuacct", "cpu", "memory", "pids", "blkio", "hugetlb") if c in hierarchies
        ]
        # cgroup path -> controller -> directory, as strings: building them with
        # pathlib for every read of every cgroup costs as much as a file read.
        self._directories: dict[str, dict[str, str]] = {}
        self.files = ControlFiles()

    def keep_only(self, paths: set[str]) -> None:
        """Let go of what is kept for cgroups other than ``paths`` (gone ones)."""
        live = {d for path in paths for d in self._dirs(path).values()}
        self.files.keep_only(live)
        # list() copies the keys in one step: reads on worker threads may add paths.
        for path in list(self._directories):
            if path not in paths:
                self._directories.pop(path, None)

    def _dirs(self, path: str) -> dict[str, str]:
        found = self._directories.get(path)
        if found is None:
            if len(self._directories) >= MAX_CACHED_PATHS:
                self._directories.clear()
            if self.cgroups.version == 2:
                found = {"": str(self.cgroups.directory(path, ""))}
            else:
                found = {c: str(self.cgroups.directory(path, c)) for c in self._v1_controllers}
            self._directories[path] = found
        return found

    def processes(self, path: str, proc: str = "/proc", init_pid: int = 0) -> ProcessCounts:
        """Process, thread, file descriptor and socket counts of cgroup ``path`` itself
        (not its children); every hierarchy holds the same processes, one is read.
        With ``init_pid`` (a container's first process) also that process's ulimits,
        as cAdvisor reports them, if it is still in the cgroup (not a reused pid)."""
        dirs = self._dirs(path)
        directory = next((dirs[c] for c in ("", "pids", "cpuacct", "memory") if c in dirs), None)
        text = self.files.text(directory, "cgroup.procs") if directory is not None else None
        pids = [int(word) for word in (text or "").split()]
        counts = count_processes(pids, proc)
        if init_pid > 0 and init_pid in pids:
            counts = replace(counts, ulimits=read_ulimits(init_pid, proc))
        return counts

    def _gone(self, path: str) -> None:
        self.files.forget(set(self._dirs(path).values()))
        self._directories.pop(path, None)

    def read(self, path: str, detailed: bool = False) -> CgroupUsage:
        """Usage of cgroup ``path`` (like ``/kubepods/pod1/ctr``); CgroupNotFound when
        the cgroup is not there.

        Without ``detailed``, only what the CRI stats carry is read (CPU usage, memory
        usage, working set, RSS, faults, limit, swap, pids); ``detailed`` adds user and
        system time, throttling, kernel memory, peak usage, limit hits, OOM kills, the
        pids limit, block I/O per device and huge pages, for metrics.
        """
        now = time.time_ns()
        files = self.files
        if self.cgroups.version == 2:
            directory = self._dirs(path)[""]
            cpu = _cpu_v2(files, directory)
            if cpu is None and not os.path.isdir(directory):
                self._gone(path)
                raise CgroupNotFound(f"cgroup {path} does not exist ({directory})")
            pids, pids_limit = _pids(files, directory, detailed)
            device_io = parse_v2_io_stat(files.text(directory, "io.stat") or "") if detailed else ()
            memory_v2 = _memory_v2(files, directory, detailed)
            io_pressure = files.pressure(directory, "io.pressure")
            pages = _hugetlb_v2(files, directory, self.hugepages) if detailed else ()
            return CgroupUsage(now, cpu, memory_v2, pids, pids_limit, device_io, io_pressure, pages)
        dirs = self._dirs(path)
        cpu = memory = None
        pids = pids_limit = None
        if "cpuacct" in dirs:
            cpu = _cpu_v1(files, dirs["cpuacct"], dirs.get("cpu"), detailed)
        if "memory" in dirs:
            memory = _memory_v1(files, dirs["memory"], detailed)
        if "pids" in dirs:
            pids, pids_limit = _pids(files, dirs["pids"], detailed)
        nothing = cpu is None and memory is None and pids is None
        if nothing and not any(os.path.isdir(d) for d in dirs.values()):
            self._gone(path)
            raise CgroupNotFound(f"cgroup {path} does not exist under {self.cgroups.root}")
        io: tuple[DeviceIo, ...] = ()
        if detailed and "blkio" in dirs:
            io = parse_v1_blkio(
                files.text(dirs["blkio"], "blkio.throttle.io_service_bytes_recursive") or "",
                files.text(dirs["blkio"], "blkio.throttle.io_serviced_recursive") or "",
            )
        huge: tuple[HugetlbUsage, ...] = ()
        if detailed and "hugetlb" in dirs:
            huge = _hugetlb_v1(files, dirs["hugetlb"], self.hugepages)
        return CgroupUsage(now, cpu, memory, pids, pids_limit, io, hugetlb=huge)


def _pids(files: ControlFiles, directory: str, detailed: bool) -> tuple[int | None, int | None]:
    current = files.integer(directory, "pids.current")
    if current is None or not detailed:
        return current, None
    return current, files.limit(directory, "pids.max")


# ---- v1 ---------------------------------------------------------------------------


def _cpu_v1(files: ControlFiles, cpuacct: str, cpu: str | None, detailed: bool) -> CpuUsage | None:
    usage = files.integer(cpuacct, "cpuacct.usage")
    if usage is None or not detailed:
        return None if usage is None else CpuUsage(usage)
    times = FlatKeyed(files.text(cpuacct, "cpuacct.stat") or "")
    throttling = FlatKeyed((files.text(cpu, "cpu.stat") or "") if cpu is not None else "")
    return CpuUsage(
        usage_ns=usage,
        user_ns=times.get("user", 0) * _TICK_NS,
        system_ns=times.get("system", 0) * _TICK_NS,
        periods=throttling.get("nr_periods", 0),
        throttled_periods=throttling.get("nr_throttled", 0),
        throttled_ns=throttling.get("throttled_time", 0),
    )


def _memory_v1(files: ControlFiles, directory: str, detailed: bool) -> MemoryUsage | None:
    usage = files.integer(directory, "memory.usage_in_bytes")
    if usage is None:
        return None
    stat = FlatKeyed(files.text(directory, "memory.stat") or "")
    limit = files.limit(directory, "memory.limit_in_bytes")
    working = working_set(usage, stat.get("total_inactive_file", 0))
    # memory.stat has swap lines only with swap accounting (memsw) on.
    swap = stat.optional("total_swap")
    swap_available = None
    if swap is not None and limit is not None:
        # The kernel keeps memsw >= limit, so a memsw limit implies a memory limit;
        # the difference is what the cgroup may have in swap.
        memsw = files.limit(directory, "memory.memsw.limit_in_bytes")
        if memsw is not None:
            swap_available = available(memsw - limit, swap)
    memory = MemoryUsage(
        usage_bytes=usage,
        working_set_bytes=working,
        rss_bytes=stat.get("total_rss", 0),
        cache_bytes=stat.get("total_cache", 0),
        mapped_file_bytes=stat.get("total_mapped_file", 0),
        page_faults=stat.get("total_pgfault", 0),
        major_page_faults=stat.get("total_pgmajfault", 0),
        limit_bytes=limit,
        available_bytes=available(limit, working),
        swap_bytes=swap,
        swap_available_bytes=swap_available,
    )
    if not detailed:
        return memory
    oom = FlatKeyed(files.text(directory, "memory.oom_control") or "")
    return replace(
        memory,
        kernel_bytes=files.integer(directory, "memory.kmem.usage_in_bytes") or 0,
        max_usage_bytes=files.integer(directory, "memory.max_usage_in_bytes"),
        failcnt=files.integer(directory, "memory.failcnt") or 0,
        oom_kills=oom.get("oom_kill", 0),
        reservation_bytes=files.limit(directory, "memory.soft_limit_in_bytes"),
    )


def _hugetlb_v1(
    files: ControlFiles, directory: str, sizes: tuple[str, ...]
) -> tuple[HugetlbUsage, ...]:
    out = []
    for size in sizes:
        usage = files.integer(directory, f"hugetlb.{size}.usage_in_bytes")
        if usage is None:
            continue
        out.append(
            HugetlbUsage(
                size,
                usage,
                files.integer(directory, f"hugetlb.{size}.max_usage_in_bytes"),
                files.integer(directory, f"hugetlb.{size}.failcnt") or 0,
            )
        )
    return tuple(out)


# ---- v2 ---------------------------------------------------------------------------


def _cpu_v2(files: ControlFiles, directory: str) -> CpuUsage | None:
    text = files.text(directory, "cpu.stat")
    if text is None:
        return None
    stat = FlatKeyed(text)
    if "usage_usec" not in stat:
        return None
    return CpuUsage(
        usage_ns=stat.get("usage_usec") * 1000,
        user_ns=stat.get("user_usec", 0) * 1000,
        system_ns=stat.get("system_usec", 0) * 1000,
        periods=stat.get("nr_periods", 0),
        throttled_periods=stat.get("nr_throttled", 0),
        throttled_ns=stat.get("throttled_usec", 0) * 1000,
        pressure=files.pressure(directory, "cpu.pressure"),
    )


def _memory_v2(files: ControlFiles, directory: str, detailed: bool) -> MemoryUsage | None:
    usage = files.integer(directory, "memory.current")
    if usage is None:
        return None
    stat = FlatKeyed(files.text(directory, "memory.stat") or "")
    limit = files.limit(directory, "memory.max")
    working = working_set(usage, stat.get("inactive_file", 0))
    swap = files.integer(directory, "memory.swap.current")
    # Without memory.swap.current there is no swap accounting, and no limit to read.
    swap_limit = files.limit(directory, "memory.swap.max") if swap is not None else None
    kernel = stat.optional("kernel")
    if kernel is None:  # kernels before 5.18 have no "kernel" line: add up its parts
        kernel = sum(stat.get(key, 0) for key in ("kernel_stack", "pagetables", "slab", "sock"))
    memory = MemoryUsage(
        usage_bytes=usage,
        working_set_bytes=working,
        rss_bytes=stat.get("anon", 0),
        cache_bytes=stat.get("file", 0),
        mapped_file_bytes=stat.get("file_mapped", 0),
        kernel_bytes=kernel,
        page_faults=stat.get("pgfault", 0),
        major_page_faults=stat.get("pgmajfault", 0),
        limit_bytes=limit,
        available_bytes=available(limit, working),
        swap_bytes=swap,
        swap_available_bytes=available(swap_limit, swap) if swap is not None else None,
        pressure=files.pressure(directory, "memory.pressure"),
    )
    if not detailed:
        return memory
    events = FlatKeyed(files.text(directory, "memory.events") or "")
    return replace(
        memory,
        max_usage_bytes=files.integer(directory, "memory.peak"),
        failcnt=events.get("max", 0),
        oom_kills=events.get("oom_kill", 0),
        # The protected amount: cAdvisor's reservation on v2 (not memory.low, which
        # runc writes the OCI reservation to).
        reservation_bytes=files.limit(directory, "memory.min"),
    )


def _hugetlb_v2(
    files: ControlFiles, directory: str, sizes: tuple[str, ...]
) -> tuple[HugetlbUsage, ...]:
    out = []
    for size in sizes:
        # Missing unless the hugetlb controller is enabled for the cgroup.
        usage = files.integer(directory, f"hugetlb.{size}.current")
        if usage is None:
            continue
        events = FlatKeyed(files.text(directory, f"hugetlb.{size}.events") or "")
        out.append(HugetlbUsage(size, usage, failcnt=events.get("max", 0)))
    return tuple(out)


# ---- processes --------------------------------------------------------------------

# The rows of /proc/<pid>/limits reported, under cAdvisor's names for them (cAdvisor
# reports this one only).
ULIMIT_NAMES = {"Max open files": "max_open_files"}


@dataclass(frozen=True)
class Ulimit:
    """A resource limit of a process; None for unlimited."""

    name: str
    soft: int | None
    hard: int | None


@dataclass(frozen=True)
class ProcessCounts:
    processes: int
    threads: int
    file_descriptors: int
    sockets: int
    # Of the container's init process, when asked for and still in the cgroup.
    ulimits: tuple[Ulimit, ...] = ()


def _limit_value(word: str) -> int | None:
    return None if word == "unlimited" else int(word)


def parse_limits(text: str) -> tuple[Ulimit, ...]:
    """The rows of ULIMIT_NAMES in a /proc/<pid>/limits text ("Max open files  1024
    524288  files": the row name, then soft and hard limit, then units)."""
    out = []
    for line in text.splitlines():
        for row, name in ULIMIT_NAMES.items():
            if not line.startswith(row):
                continue
            fields = line[len(row) :].split()
            try:
                out.append(Ulimit(name, _limit_value(fields[0]), _limit_value(fields[1])))
            except (IndexError, ValueError):
                continue
    return tuple(out)


def read_ulimits(pid: int, proc: str = "/proc") -> tuple[Ulimit, ...]:
    """Process ``pid``'s limits of ULIMIT_NAMES; none when it has exited."""
    # Gone (or unreadable): no figures, rather than a failed metrics call.
    try:
        fd = os.open(f"{proc}/{pid}/limits", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return ()
    try:
        text = os.read(fd, 1 << 14).decode()
    except OSError:
        return ()
    finally:
        os.close(fd)
    return parse_limits(text)


def count_processes(pids: list[int], proc: str = "/proc") -> ProcessCounts:
    """The processes ``pids`` and their threads, open file descriptors and sockets,
    from ``/proc``. Costs a directory listing and a readlink per open file: for
    metrics scrapes, not for every stats call. A process that exits meanwhile is
    skipped."""
    processes = threads = fds = sockets = 0
    for pid in pids:
        base = f"{proc}/{pid}"
        try:
            task_count = len(os.listdir(f"{base}/task"))
            links = []
            for name in os.listdir(f"{base}/fd"):
                try:
                    links.append(os.readlink(f"{base}/fd/{name}"))
                except FileNotFoundError:
                    continue  # closed meanwhile
        except (FileNotFoundError, ProcessLookupError):
            continue
        processes += 1
        threads += task_count
        fds += len(links)
        sockets += sum(1 for link in links if link.startswith("socket:"))
    return ProcessCounts(processes, threads, fds, sockets)
