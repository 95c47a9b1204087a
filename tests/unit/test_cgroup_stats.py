"""Reading cgroup usage from v2 and v1 trees built from the kernel's file formats."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest

from runtime.cgroup_stats import (
    CgroupStatsReader,
    ControlFiles,
    DeviceIo,
    FlatKeyed,
    HugetlbUsage,
    Pressure,
    Stall,
    Ulimit,
    available,
    device_name,
    parse_limit,
    parse_limits,
    parse_pressure,
    parse_v1_blkio,
    parse_v2_io_stat,
    working_set,
)
from runtime.cgroups import (
    V1_MEMORY_UNLIMITED,
    Cgroupfs,
    CgroupNotFound,
    hugepage_size_name,
    hugepage_sizes,
)

# What a 6.x kernel writes, trimmed to a representative part (order and extra keys kept).
V2_CPU_STAT = """usage_usec 2451320
user_usec 1580212
system_usec 871108
core_sched.force_idle_usec 0
nr_periods 120
nr_throttled 15
throttled_usec 305000
nr_bursts 0
burst_usec 0
"""

V2_MEMORY_STAT = """anon 41943040
file 10485760
kernel 1171456
kernel_stack 49152
pagetables 102400
sec_pagetables 0
percpu 1200
sock 0
vmalloc 0
shmem 0
zswap 0
zswapped 0
file_mapped 2097152
file_dirty 4096
file_writeback 0
swapcached 0
anon_thp 0
file_thp 0
shmem_thp 0
inactive_anon 40960000
active_anon 983040
inactive_file 8388608
active_file 2097152
unevictable 0
slab_reclaimable 600000
slab_unreclaimable 400000
slab 1000000
workingset_refault_anon 0
workingset_refault_file 0
pgscan 0
pgsteal 0
pgfault 13205
pgmajfault 7
pgrefill 0
thp_fault_alloc 0
"""

CPU_PRESSURE = """some avg10=0.75 avg60=10.09 avg300=15.69 total=940672340
full avg10=0.00 avg60=0.00 avg300=0.00 total=0
"""

V2_MEMORY_EVENTS = """low 0
high 0
max 4
oom 1
oom_kill 1
oom_group_kill 0
"""


def _write(directory: Path, files: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)


def _v2_tree(root: Path) -> Cgroupfs:
    _write(root, {"cgroup.controllers": "cpuset cpu io memory hugetlb pids rdma misc\n"})
    return Cgroupfs(root)


def test_v2_figures_come_from_the_v2_files(tmp_path: Path) -> None:
    cgroups = _v2_tree(tmp_path)
    assert cgroups.version == 2
    _write(
        tmp_path / "kubepods" / "pod1" / "ctr",
        {
            "cpu.stat": V2_CPU_STAT,
            "memory.current": "52428800\n",
            "memory.stat": V2_MEMORY_STAT,
            "memory.events": V2_MEMORY_EVENTS,
            "memory.max": "67108864\n",
            "memory.swap.current": "1048576\n",
            "memory.swap.max": "8388608\n",
            "memory.peak": "60000000\n",
            "memory.min": "16777216\n",
            "pids.current": "3\n",
            "pids.max": "max\n",
            "cpu.pressure": CPU_PRESSURE,
            "memory.pressure": "some avg10=0.00 avg60=0.00 avg300=0.00 total=7\n"
            "full avg10=0.00 avg60=0.00 avg300=0.00 total=3\n",
            "io.pressure": "some avg10=1.50 avg60=0.20 avg300=0.01 total=900\n"
            "full avg10=1.00 avg60=0.10 avg300=0.00 total=800\n",
        },
    )
    usage = CgroupStatsReader(cgroups).read("/kubepods/pod1/ctr", detailed=True)
    assert usage.cpu is not None and usage.memory is not None
    assert usage.cpu.pressure == parse_pressure(CPU_PRESSURE)
    assert usage.memory.pressure == Pressure(Stall(7000, 0, 0, 0), Stall(3000, 0, 0, 0))
    assert usage.io_pressure is not None and usage.io_pressure.full == Stall(800_000, 1, 0.1, 0)
    assert usage.timestamp_ns > 0
    assert usage.cpu is not None
    assert usage.cpu.usage_ns == 2451320 * 1000
    assert (usage.cpu.user_ns, usage.cpu.system_ns) == (1580212000, 871108000)
    assert (usage.cpu.periods, usage.cpu.throttled_periods) == (120, 15)
    assert usage.cpu.throttled_ns == 305000 * 1000
    memory = usage.memory
    assert memory is not None
    assert memory.usage_bytes == 52428800
    assert memory.working_set_bytes == 52428800 - 8388608
    assert memory.rss_bytes == 41943040
    assert memory.cache_bytes == 10485760
    assert memory.mapped_file_bytes == 2097152
    assert memory.kernel_bytes == 1171456
    assert (memory.page_faults, memory.major_page_faults) == (13205, 7)
    assert memory.limit_bytes == 67108864
    assert memory.available_bytes == 67108864 - (52428800 - 8388608)
    assert memory.swap_bytes == 1048576
    assert memory.swap_available_bytes == 8388608 - 1048576
    assert memory.max_usage_bytes == 60000000
    assert (memory.failcnt, memory.oom_kills) == (4, 1)
    assert memory.reservation_bytes == 16777216
    assert (usage.pids, usage.pids_limit) == (3, None)


def test_v2_unlimited_memory_has_no_available_bytes(tmp_path: Path) -> None:
    cgroups = _v2_tree(tmp_path)
    stat = V2_MEMORY_STAT.replace("kernel 1171456\n", "")  # a kernel before 5.18
    _write(
        tmp_path / "pod",
        {"memory.current": "4096\n", "memory.stat": stat, "memory.max": "max\n"},
    )
    memory = CgroupStatsReader(cgroups).read("/pod").memory
    assert memory is not None
    assert memory.limit_bytes is None and memory.available_bytes is None
    # Without memory.swap.current (no swap accounting) swap is unknown, not 0.
    assert memory.swap_bytes is None and memory.swap_available_bytes is None
    # The working set never goes below zero, even when the cache outgrows usage.
    assert memory.working_set_bytes == 0
    assert memory.kernel_bytes == 49152 + 102400 + 1000000 + 0


@pytest.mark.parametrize(
    ("swap_max", "expected"),
    [
        ("max\n", None),  # no swap limit: nothing to be available below
        ("0\n", 0),  # no swap allowed at all
        ("1048576\n", 1048576 - 4096),
        ("2048\n", 0),  # lowered below what is already swapped out
    ],
)
def test_v2_swap_available_is_the_swap_limit_minus_swap_in_use(
    tmp_path: Path, swap_max: str, expected: int | None
) -> None:
    cgroups = _v2_tree(tmp_path)
    _write(
        tmp_path / "ctr",
        {
            "memory.current": "8192\n",
            "memory.stat": V2_MEMORY_STAT,
            "memory.max": "max\n",
            "memory.swap.current": "4096\n",
            "memory.swap.max": swap_max,
        },
    )
    memory = CgroupStatsReader(cgroups).read("/ctr").memory
    assert memory is not None
    assert memory.swap_bytes == 4096
    assert memory.swap_available_bytes == expected


def test_v2_controllers_not_enabled_leave_their_part_empty(tmp_path: Path) -> None:
    cgroups = _v2_tree(tmp_path)
    _write(tmp_path / "bare", {"cgroup.procs": ""})
    usage = CgroupStatsReader(cgroups).read("/bare")
    assert (usage.cpu, usage.memory, usage.pids) == (None, None, None)


def test_a_missing_cgroup_is_not_found(tmp_path: Path) -> None:
    cgroups = _v2_tree(tmp_path)
    with pytest.raises(CgroupNotFound, match="/gone"):
        CgroupStatsReader(cgroups).read("/gone")


V1_MEMORY_STAT = """cache 0
rss 0
pgfault 10
pgmajfault 0
inactive_file 0
total_cache 20971520
total_rss 31457280
total_mapped_file 1048576
total_pgfault 5000
total_pgmajfault 2
total_inactive_anon 0
total_active_anon 31457280
total_inactive_file 16777216
total_active_file 4194304
total_swap 2097152
"""


def _v1_tree(root: Path) -> Cgroupfs:
    for hierarchy in ("cpu", "cpuacct", "memory", "pids"):
        _write(root / hierarchy, {"cgroup.procs": ""})
    return Cgroupfs(root)


def test_v1_figures_come_from_each_hierarchy(tmp_path: Path) -> None:
    cgroups = _v1_tree(tmp_path)
    assert cgroups.version == 1
    _write(
        tmp_path / "cpuacct" / "pod" / "ctr",
        {"cpuacct.usage": "987654321\n", "cpuacct.stat": "user 50\nsystem 25\n"},
    )
    _write(
        tmp_path / "cpu" / "pod" / "ctr",
        {"cpu.stat": "nr_periods 10\nnr_throttled 2\nthrottled_time 123456\n"},
    )
    _write(
        tmp_path / "memory" / "pod" / "ctr",
        {
            "memory.usage_in_bytes": "58720256\n",
            "memory.stat": V1_MEMORY_STAT,
            "memory.limit_in_bytes": f"{V1_MEMORY_UNLIMITED}\n",
            "memory.max_usage_in_bytes": "70000000\n",
            "memory.failcnt": "0\n",
            "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
            "memory.soft_limit_in_bytes": "33554432\n",
        },
    )
    _write(tmp_path / "pids" / "pod" / "ctr", {"pids.current": "5\n", "pids.max": "100\n"})
    usage = CgroupStatsReader(cgroups).read("/pod/ctr", detailed=True)
    assert usage.cpu is not None
    assert usage.cpu.usage_ns == 987654321
    assert usage.cpu.user_ns > usage.cpu.system_ns > 0
    assert (usage.cpu.periods, usage.cpu.throttled_periods, usage.cpu.throttled_ns) == (
        10,
        2,
        123456,
    )
    memory = usage.memory
    assert memory is not None
    assert memory.working_set_bytes == 58720256 - 16777216
    assert memory.rss_bytes == 31457280
    assert (memory.page_faults, memory.major_page_faults) == (5000, 2)
    assert memory.limit_bytes is None and memory.available_bytes is None
    assert memory.swap_bytes == 2097152
    assert memory.oom_kills == 2
    assert memory.reservation_bytes == 33554432
    assert (usage.pids, usage.pids_limit) == (5, 100)
    # What the CRI stats do not carry is only read when asked for.
    brief = CgroupStatsReader(cgroups).read("/pod/ctr")
    assert brief.cpu is not None and brief.memory is not None
    assert (brief.cpu.usage_ns, brief.cpu.user_ns, brief.cpu.periods) == (987654321, 0, 0)
    assert brief.memory.working_set_bytes == memory.working_set_bytes
    assert (brief.memory.oom_kills, brief.memory.max_usage_bytes, brief.pids_limit) == (
        0,
        None,
        None,
    )
    assert brief.memory.reservation_bytes is None


def test_v1_limit_gives_available_bytes_and_no_swap_accounting_unknown_swap(tmp_path: Path) -> None:
    cgroups = _v1_tree(tmp_path)
    _write(
        tmp_path / "memory" / "c",
        {
            "memory.usage_in_bytes": "1000\n",
            "memory.stat": "total_inactive_file 200\n",
            "memory.limit_in_bytes": "5000\n",
        },
    )
    usage = CgroupStatsReader(cgroups).read("/c")
    assert usage.cpu is None and usage.pids is None
    assert usage.memory is not None
    assert usage.memory.available_bytes == 5000 - 800
    assert usage.memory.swap_bytes is None


MIB = 1 << 20


@pytest.mark.parametrize(
    ("limit", "memsw", "swap_line", "expected"),
    [
        # memsw limits memory plus swap: 96 MiB with 64 MiB of memory leaves 32 MiB of
        # swap, of which 4 MiB are in use.
        (64 * MIB, 96 * MIB, f"total_swap {4 * MIB}\n", 28 * MIB),
        (64 * MIB, 64 * MIB, "total_swap 0\n", 0),  # memsw == limit: no swap allowed
        (64 * MIB, V1_MEMORY_UNLIMITED, "total_swap 0\n", None),  # no swap limit
        (V1_MEMORY_UNLIMITED, V1_MEMORY_UNLIMITED, "total_swap 0\n", None),
        # No swap lines in memory.stat: no swap accounting, whatever the files say.
        (64 * MIB, 96 * MIB, "", None),
    ],
)
def test_v1_swap_available_is_the_memsw_allowance_minus_swap_in_use(
    tmp_path: Path, limit: int, memsw: int, swap_line: str, expected: int | None
) -> None:
    cgroups = _v1_tree(tmp_path)
    _write(
        tmp_path / "memory" / "c",
        {
            "memory.usage_in_bytes": f"{8 * MIB}\n",
            "memory.stat": "total_inactive_file 0\n" + swap_line,
            "memory.limit_in_bytes": f"{limit}\n",
            "memory.memsw.limit_in_bytes": f"{memsw}\n",
        },
    )
    memory = CgroupStatsReader(cgroups).read("/c").memory
    assert memory is not None
    assert memory.swap_available_bytes == expected
    assert memory.swap_bytes == (int(swap_line.split()[1]) if swap_line else None)


def test_v1_missing_everywhere_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(CgroupNotFound, match="/nope"):
        CgroupStatsReader(_v1_tree(tmp_path)).read("/nope")


def test_parsing_helpers() -> None:
    stat = FlatKeyed("a 1\nb x\nc -2\n")
    assert (stat.get("a"), stat.get("b"), stat.get("c"), stat.get("d", 7)) == (1, 0, -2, 7)
    assert "b" in stat and "d" not in stat
    assert (stat.optional("a"), stat.optional("d")) == (1, None)
    assert parse_limit("max\n") is None
    assert parse_limit(f"{V1_MEMORY_UNLIMITED}\n") is None
    assert parse_limit("1024\n") == 1024
    assert working_set(100, 30) == 70
    assert working_set(10, 30) == 0
    assert available(None, 5) is None
    assert available(100, 70) == 30
    assert available(100, 170) == 0


def test_process_counts_come_from_the_cgroup_procs_and_proc(tmp_path: Path) -> None:
    cgroups = _v2_tree(tmp_path / "cg")
    _write(tmp_path / "cg" / "pod", {"cgroup.procs": "10\n11\n12\n"})
    proc = tmp_path / "proc"
    for pid, tasks, links in (
        (10, 3, ["/dev/null", "socket:[123]", "pipe:[9]"]),
        (11, 1, ["socket:[7]", "socket:[8]"]),
    ):  # 12 exited before it was read
        (proc / str(pid) / "fd").mkdir(parents=True)
        for tid in range(tasks):
            (proc / str(pid) / "task" / str(pid + tid)).mkdir(parents=True)
        for fd, target in enumerate(links):
            (proc / str(pid) / "fd" / str(fd)).symlink_to(target)
    counts = CgroupStatsReader(cgroups).processes("/pod", str(proc))
    assert (counts.processes, counts.threads) == (2, 4)
    assert (counts.file_descriptors, counts.sockets) == (5, 3)
    assert counts.ulimits == ()  # only asked for with the container's first process
    (proc / "10" / "limits").write_text(PROC_LIMITS)
    (proc / "99").mkdir()
    (proc / "99" / "limits").write_text(PROC_LIMITS)
    reader = CgroupStatsReader(cgroups)
    assert reader.processes("/pod", str(proc), init_pid=10).ulimits == (
        Ulimit("max_open_files", 1024, 524288),
    )
    # A pid not in the cgroup (reused since the container's start) is not read, nor
    # one that exited meanwhile.
    assert reader.processes("/pod", str(proc), init_pid=99).ulimits == ()
    assert reader.processes("/pod", str(proc), init_pid=12).ulimits == ()


def _limits_row(name: str, soft: str, hard: str, units: str) -> str:
    # As fs/proc/base.c writes each row: fixed-width columns, trailing blanks kept.
    return f"{name:<25} {soft:<20} {hard:<20} {units:<10}\n"


# /proc/<pid>/limits as the kernel writes it.
PROC_LIMITS = "".join(
    _limits_row(*row)
    for row in (
        ("Limit", "Soft Limit", "Hard Limit", "Units"),
        ("Max cpu time", "unlimited", "unlimited", "seconds"),
        ("Max file size", "unlimited", "unlimited", "bytes"),
        ("Max stack size", "8388608", "unlimited", "bytes"),
        ("Max processes", "96365", "96365", "processes"),
        ("Max open files", "1024", "524288", "files"),
        ("Max locked memory", "8388608", "8388608", "bytes"),
        ("Max nice priority", "0", "0", ""),
        ("Max realtime timeout", "unlimited", "unlimited", "us"),
    )
)


def test_limits_rows_under_cadvisor_names() -> None:
    assert parse_limits(PROC_LIMITS) == (Ulimit("max_open_files", 1024, 524288),)
    unlimited = _limits_row("Max open files", "unlimited", "unlimited", "files")
    assert parse_limits(unlimited) == (Ulimit("max_open_files", None, None),)
    assert parse_limits("Max open files            x   y   files\n") == ()
    assert parse_limits("") == ()


def test_block_io_per_device_from_v1_and_v2_files(tmp_path: Path) -> None:
    service_bytes = "8:0 Read 40960\n8:0 Write 8192\n8:0 Sync 0\n8:0 Async 49152\n"
    service_bytes += "8:0 Discard 0\n8:0 Total 49152\n7:1 Read 0\n7:1 Write 0\nTotal 49152\n"
    serviced = "8:0 Read 10\n8:0 Write 2\n8:0 Total 12\nTotal 12\n"
    # A device with nothing done is left out.
    assert parse_v1_blkio(service_bytes, serviced) == (DeviceIo(8, 0, 40960, 8192, 10, 2),)
    assert parse_v1_blkio("Total 0\n", "Total 0\n") == ()
    io_stat = "8:16 rbytes=1459200 wbytes=314773504 rios=192 wios=353 dbytes=0 dios=0\n"
    assert parse_v2_io_stat(io_stat) == (DeviceIo(8, 16, 1459200, 314773504, 192, 353),)

    cgroups = _v2_tree(tmp_path)
    _write(tmp_path / "ctr", {"cpu.stat": V2_CPU_STAT, "io.stat": io_stat})
    reader = CgroupStatsReader(cgroups)
    assert reader.read("/ctr", detailed=True).io == parse_v2_io_stat(io_stat)
    assert reader.read("/ctr").io == ()  # not for the CRI stats


def test_device_names_come_from_sysfs_uevents(tmp_path: Path) -> None:
    _write(tmp_path / "dev" / "block" / "8:16", {"uevent": "MAJOR=8\nMINOR=16\nDEVNAME=sdb\n"})
    assert device_name(8, 16, str(tmp_path)) == "/dev/sdb"
    assert device_name(9, 9, str(tmp_path)) == "9:9"


def test_pressure_lines_are_parsed_with_totals_in_ns() -> None:
    pressure = parse_pressure(CPU_PRESSURE)
    assert pressure == Pressure(
        Stall(940672340 * 1000, 0.75, 10.09, 15.69), Stall(0, 0.0, 0.0, 0.0)
    )
    # Kernels before 5.13 have no "full" line for cpu.
    only_some = parse_pressure(CPU_PRESSURE.splitlines()[0])
    assert only_some is not None and only_some.full is None
    assert parse_pressure("") is None
    assert parse_pressure("\n") is None
    assert parse_v2_io_stat("\n") == ()


def test_control_files_stay_open_and_read_the_current_text(tmp_path: Path) -> None:
    files = ControlFiles(max_open=2)
    a, b = tmp_path / "a", tmp_path / "b"
    _write(a, {"x": "1\n", "y": "max\n"})
    _write(b, {"z": "7\n"})
    assert files.integer(str(a), "x") == 1
    assert files.limit(str(a), "y") is None
    assert files.open_count == 2
    (a / "x").write_text("2\n")  # the same file, rewritten: read anew
    assert files.integer(str(a), "x") == 2
    assert files.integer(str(b), "z") == 7  # past max_open: read the plain way
    assert files.open_count == 2
    assert files.text(str(a), "missing") is None
    files.keep_only({str(b)})
    assert files.open_count == 0
    assert files.integer(str(b), "z") == 7
    files.close()
    assert files.open_count == 0


def test_the_reader_lets_go_of_cgroups_no_longer_asked_for(tmp_path: Path) -> None:
    cgroups = _v2_tree(tmp_path)
    for name in ("one", "two"):
        _write(tmp_path / name, {"cpu.stat": V2_CPU_STAT, "memory.current": "1\n"})
    reader = CgroupStatsReader(cgroups)
    reader.read("/one")
    reader.read("/two")
    opened = reader.files.open_count
    assert opened > 0
    reader.keep_only({"/two"})
    assert 0 < reader.files.open_count < opened
    reader.keep_only(set())
    assert reader.files.open_count == 0


def test_open_files_stay_within_a_quarter_of_the_descriptor_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        assert ControlFiles().max_open == 64
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_hugepage_sizes_are_named_as_the_kernel_names_them(tmp_path: Path) -> None:
    assert hugepage_size_name(2048) == "2MB"
    assert hugepage_size_name(1048576) == "1GB"
    assert hugepage_size_name(16 * 1048576) == "16GB"
    assert hugepage_size_name(32768) == "32MB"
    assert hugepage_size_name(64) == "64KB"
    hugepages = tmp_path / "kernel" / "mm" / "hugepages"
    for name in ("hugepages-1048576kB", "hugepages-2048kB", "hugepages-64kB", "other"):
        (hugepages / name).mkdir(parents=True)
    assert hugepage_sizes(str(hugepages)) == ("64KB", "2MB", "1GB")
    assert hugepage_sizes(str(tmp_path / "none")) is None


def test_v2_hugetlb_per_page_size_only_in_detailed_reads(tmp_path: Path) -> None:
    cgroups = _v2_tree(tmp_path)
    # What a 6.x kernel has for each size once hugetlb is enabled for the cgroup.
    files = {"cpu.stat": V2_CPU_STAT}
    for size, current, refused in (("2MB", 4194304, 3), ("1GB", 0, 0)):
        files |= {
            f"hugetlb.{size}.current": f"{current}\n",
            f"hugetlb.{size}.events": f"max {refused}\n",
            f"hugetlb.{size}.events.local": f"max {refused}\n",
            f"hugetlb.{size}.max": "max\n",
            f"hugetlb.{size}.rsvd.current": f"{current + 2097152}\n",
            f"hugetlb.{size}.rsvd.max": "max\n",
        }
    _write(tmp_path / "ctr", files)
    _write(tmp_path / "plain", {"cpu.stat": V2_CPU_STAT})
    reader = CgroupStatsReader(cgroups, hugepages=("2MB", "1GB"))
    assert reader.read("/ctr", detailed=True).hugetlb == (
        HugetlbUsage("2MB", 4194304, None, 3),
        HugetlbUsage("1GB", 0, None, 0),
    )
    assert reader.read("/ctr").hugetlb == ()  # not for the CRI stats
    # Not enabled for the cgroup (no files), or a machine without huge pages: none.
    assert reader.read("/plain", detailed=True).hugetlb == ()
    assert CgroupStatsReader(cgroups, hugepages=()).read("/ctr", detailed=True).hugetlb == ()


def test_v1_hugetlb_comes_from_its_own_hierarchy(tmp_path: Path) -> None:
    _v1_tree(tmp_path)
    _write(tmp_path / "hugetlb", {"cgroup.procs": ""})
    cgroups = Cgroupfs(tmp_path)
    assert "hugetlb" in cgroups.hierarchies
    _write(tmp_path / "cpuacct" / "ctr", {"cpuacct.usage": "1\n"})
    _write(
        tmp_path / "hugetlb" / "ctr",
        {
            "hugetlb.2MB.usage_in_bytes": "2097152\n",
            "hugetlb.2MB.max_usage_in_bytes": "6291456\n",
            "hugetlb.2MB.failcnt": "1\n",
            "hugetlb.2MB.limit_in_bytes": "8388608\n",
            "hugetlb.1GB.usage_in_bytes": "0\n",
            "hugetlb.1GB.max_usage_in_bytes": "0\n",
            "hugetlb.1GB.failcnt": "0\n",
        },
    )
    reader = CgroupStatsReader(cgroups, hugepages=("2MB", "1GB"))
    assert reader.read("/ctr", detailed=True).hugetlb == (
        HugetlbUsage("2MB", 2097152, 6291456, 1),
        HugetlbUsage("1GB", 0, 0, 0),
    )
    assert reader.read("/ctr").hugetlb == ()
    # Without a hugetlb hierarchy nothing is read for it.
    without = _v1_tree(tmp_path / "other")
    _write(tmp_path / "other" / "cpuacct" / "ctr", {"cpuacct.usage": "1\n"})
    assert CgroupStatsReader(without, ("2MB",)).read("/ctr", detailed=True).hugetlb == ()


@pytest.mark.parametrize(
    ("version", "file", "text", "expected"),
    [
        (2, "memory.min", "0\n", 0),  # the default: nothing protected
        (2, "memory.min", "max\n", None),
        (1, "memory.soft_limit_in_bytes", f"{V1_MEMORY_UNLIMITED}\n", None),  # the default
        (1, "memory.soft_limit_in_bytes", "67108864\n", 67108864),
    ],
)
def test_memory_reservation_is_read_as_cadvisor_reads_it(
    tmp_path: Path, version: int, file: str, text: str, expected: int | None
) -> None:
    if version == 2:
        cgroups = _v2_tree(tmp_path)
        directory = tmp_path / "ctr"
        files = {"memory.current": "4096\n", "memory.stat": V2_MEMORY_STAT}
    else:
        cgroups = _v1_tree(tmp_path)
        directory = tmp_path / "memory" / "ctr"
        files = {"memory.usage_in_bytes": "4096\n", "memory.stat": V1_MEMORY_STAT}
    _write(directory, files | {file: text})
    memory = CgroupStatsReader(cgroups).read("/ctr", detailed=True).memory
    assert memory is not None and memory.reservation_bytes == expected
