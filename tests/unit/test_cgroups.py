"""The cgroupfs driver against cgroup trees built by the tests in tmp_path.

The trees use the real file formats. What the kernel does by itself is simulated where
it matters: control files appear when the driver writes them (it opens with O_CREAT),
and FakeKernelCgroupfs.rmdir removes a cgroup's control files with it and refuses
a cgroup that has children or processes, as cgroupfs does.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from cri.errors import status_of
from runtime import cgroups
from runtime.cgroups import (
    CgroupError,
    Cgroupfs,
    CgroupNotFound,
    CgroupResources,
    InvalidResources,
    cgroup_version,
    cpu_list_ranges,
    outside,
    shares_to_weight,
)

V2_CONTROLLERS = "cpuset cpu io memory hugetlb pids"
ALL_ENABLED = "+cpuset +cpu +io +memory +hugetlb +pids"
MIB = 1 << 20
POD_RESOURCES = CgroupResources(
    cpu_shares=512,
    cpu_quota=50000,
    cpu_period=100000,
    memory_limit=64 * MIB,
    memory_swap=128 * MIB,
    pids_limit=100,
    hugepage_limits={"2MB": 4 * MIB},
)


class FakeKernelCgroupfs(Cgroupfs):
    """rmdir as cgroupfs does it: the control files go with the directory, but not
    while there are child cgroups (ENOTEMPTY) or processes (EBUSY)."""

    def _rmdir(self, directory: Path) -> None:
        if any(entry.is_dir() for entry in directory.iterdir()):
            raise OSError(errno.ENOTEMPTY, os.strerror(errno.ENOTEMPTY), str(directory))
        procs = directory / "cgroup.procs"
        if procs.exists() and procs.read_text().split():
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), str(directory))
        for entry in directory.iterdir():
            entry.unlink()
        os.rmdir(directory)


def _v2_tree(root: Path, controllers: str = V2_CONTROLLERS) -> Path:
    root.mkdir()
    (root / "cgroup.controllers").write_text(controllers + "\n")
    (root / "cgroup.subtree_control").write_text("\n")
    (root / "cgroup.procs").write_text("1\n")
    return root


def _v1_tree(root: Path) -> Path:
    """cpu and cpuacct mounted together (with the usual symlinks), the other
    hierarchies one each, name=systemd and an unified mount that are no resource
    controllers, and a hugetlb directory nothing is mounted on."""
    root.mkdir()
    for name in ("cpu,cpuacct", "cpuset", "memory", "pids", "devices", "freezer", "blkio"):
        (root / name).mkdir()
        (root / name / "cgroup.procs").write_text("1\n")
    (root / "cpu").symlink_to("cpu,cpuacct")
    (root / "cpuacct").symlink_to("cpu,cpuacct")
    (root / "cpuset" / "cpuset.cpus").write_text("0-3\n")
    (root / "cpuset" / "cpuset.mems").write_text("0\n")
    for other in ("systemd", "unified"):
        (root / other).mkdir()
        (root / other / "cgroup.procs").write_text("1\n")
    (root / "hugetlb").mkdir()
    return root


@pytest.fixture
def v2(tmp_path: Path) -> FakeKernelCgroupfs:
    return FakeKernelCgroupfs(_v2_tree(tmp_path / "cgroup"))


@pytest.fixture
def v1(tmp_path: Path) -> FakeKernelCgroupfs:
    return FakeKernelCgroupfs(_v1_tree(tmp_path / "cgroup"))


def _text(path: Path) -> str:
    return path.read_text().strip()


def _record_writes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    writes: list[tuple[str, str]] = []
    real = cgroups._write

    def recording(file: Path, value: str) -> None:
        writes.append((file.name, value))
        real(file, value)

    monkeypatch.setattr(cgroups, "_write", recording)
    return writes


def _fail_writes_to(
    monkeypatch: pytest.MonkeyPatch, name: str, error: Callable[[Path, str], Exception]
) -> None:
    real = cgroups._write

    def failing(file: Path, value: str) -> None:
        if file.name == name:
            raise error(file, value)
        real(file, value)

    monkeypatch.setattr(cgroups, "_write", failing)


# ---- detection and conversions ----------------------------------------------------


def test_cgroup_version_detection(tmp_path: Path) -> None:
    assert cgroup_version(_v2_tree(tmp_path / "two")) == 2
    assert cgroup_version(_v1_tree(tmp_path / "one")) == 1
    (tmp_path / "empty").mkdir()
    assert cgroup_version(tmp_path / "empty") == 1
    assert FakeKernelCgroupfs(tmp_path / "two").version == 2
    assert FakeKernelCgroupfs(tmp_path / "one").version == 1


def test_shares_to_weight() -> None:
    assert shares_to_weight(2) == 1
    assert shares_to_weight(262144) == 10000
    assert shares_to_weight(512) == 20  # 1 + 510 * 9999 // 262142
    assert shares_to_weight(1024) == 39


@pytest.mark.parametrize("path", ["kubepods", "/", "", "/a/../b", "//a", "/a//b", "/a/./b"])
def test_bad_paths_are_refused(v2: FakeKernelCgroupfs, path: str) -> None:
    with pytest.raises(InvalidResources, match="cgroup path"):
        v2.create(path)
    assert sorted(p.name for p in v2.root.iterdir()) == [
        "cgroup.controllers",
        "cgroup.procs",
        "cgroup.subtree_control",
    ]


# ---- v2 ---------------------------------------------------------------------------


def test_v2_create_writes_resources_and_enables_controllers(v2: FakeKernelCgroupfs) -> None:
    resources = CgroupResources(
        cpu_shares=512,
        cpu_quota=50000,
        cpu_period=100000,
        cpuset_cpus="0-1",
        cpuset_mems="0",
        memory_limit=64 * MIB,
        memory_swap=128 * MIB,
        pids_limit=100,
        hugepage_limits={"2MB": 4 * MIB, "1GB": 0},
        unified={"memory.high": "50331648", "io.weight": "default 200"},
    )
    assert v2.create("/kubepods/burstable/pod1", resources) is True
    leaf = v2.root / "kubepods" / "burstable" / "pod1"
    assert _text(leaf / "cpu.weight") == "20"
    assert _text(leaf / "cpu.max") == "50000 100000"
    assert _text(leaf / "cpuset.cpus") == "0-1"
    assert _text(leaf / "cpuset.mems") == "0"
    assert _text(leaf / "memory.max") == str(64 * MIB)
    assert _text(leaf / "memory.swap.max") == str(64 * MIB)  # (memory + swap) - memory
    assert _text(leaf / "pids.max") == "100"
    assert _text(leaf / "hugetlb.2MB.max") == str(4 * MIB)
    assert _text(leaf / "hugetlb.1GB.max") == "0"
    assert (leaf / "memory.high").read_text() == "50331648"
    assert (leaf / "io.weight").read_text() == "default 200"
    for parent in (v2.root, v2.root / "kubepods", v2.root / "kubepods" / "burstable"):
        assert _text(parent / "cgroup.subtree_control") == ALL_ENABLED
    assert not (leaf / "cgroup.subtree_control").exists()
    assert v2.exists("/kubepods/burstable/pod1")
    assert v2.read("/kubepods/burstable/pod1", "ignored", "cpu.max") == "50000 100000"
    # Again: nothing to make, resources are written again.
    assert v2.create("/kubepods/burstable/pod1", CgroupResources(pids_limit=50)) is False
    assert _text(leaf / "pids.max") == "50"


def test_v2_create_without_resources_writes_no_resource_file(v2: FakeKernelCgroupfs) -> None:
    assert v2.create("/pod") is True
    assert list((v2.root / "pod").iterdir()) == []
    assert _text(v2.root / "cgroup.subtree_control") == ALL_ENABLED


def test_v2_enables_only_missing_and_available_controllers(tmp_path: Path) -> None:
    root = _v2_tree(tmp_path / "cgroup", controllers="cpu io memory pids misc")
    (root / "cgroup.subtree_control").write_text("cpu memory\n")
    # An existing middle level, as the kernel shows it: it only got cpu and memory.
    (root / "kubepods").mkdir()
    (root / "kubepods" / "cgroup.controllers").write_text("cpu memory\n")
    (root / "kubepods" / "cgroup.subtree_control").write_text("memory\n")
    fs = FakeKernelCgroupfs(root)
    fs.create("/kubepods/pod1", CgroupResources(unified={"misc.max": "res_a 1"}))
    assert _text(root / "cgroup.subtree_control") == "+io +pids +misc"
    assert _text(root / "kubepods" / "cgroup.subtree_control") == "+cpu"
    assert _text(root / "kubepods" / "pod1" / "misc.max") == "res_a 1"


def test_v2_cpu_max_unlimited_and_partial_updates(v2: FakeKernelCgroupfs) -> None:
    cpu_max = v2.root / "pod" / "cpu.max"
    v2.create("/pod", CgroupResources(cpu_quota=-1, cpu_period=100000))
    assert _text(cpu_max) == "max 100000"
    v2.update("/pod", CgroupResources(cpu_quota=20000))
    assert _text(cpu_max) == "20000 100000"
    v2.update("/pod", CgroupResources(cpu_period=50000))  # keeps the quota
    assert _text(cpu_max) == "20000 50000"
    v2.update("/pod", CgroupResources(cpu_quota=-1))
    assert _text(cpu_max) == "max 50000"
    v2.create("/other", CgroupResources(cpu_quota=30000))  # no file yet: default period
    assert _text(v2.root / "other" / "cpu.max") == "30000 100000"


def test_v2_unlimited_memory_swap_and_pids(v2: FakeKernelCgroupfs) -> None:
    leaf = v2.root / "pod"
    v2.create("/pod", CgroupResources(memory_limit=-1, memory_swap=-1, pids_limit=-1))
    assert _text(leaf / "memory.max") == "max"
    assert _text(leaf / "memory.swap.max") == "max"
    assert _text(leaf / "pids.max") == "max"
    v2.update("/pod", CgroupResources(memory_limit=32 * MIB, memory_swap=32 * MIB))
    assert _text(leaf / "memory.swap.max") == "0"  # equal: no swap at all
    # Swap alone is taken relative to the current memory.max.
    v2.update("/pod", CgroupResources(memory_swap=40 * MIB))
    assert _text(leaf / "memory.swap.max") == str(8 * MIB)
    with pytest.raises(InvalidResources, match="below the memory limit"):
        v2.update("/pod", CgroupResources(memory_swap=16 * MIB))
    v2.update("/pod", CgroupResources(memory_limit=-1))
    with pytest.raises(InvalidResources, match=r"memory\.max"):
        v2.update("/pod", CgroupResources(memory_swap=40 * MIB))


def test_v2_update_writes_only_given_fields(v2: FakeKernelCgroupfs) -> None:
    v2.create("/pod", POD_RESOURCES)
    before = {p.name: p.read_text() for p in (v2.root / "pod").iterdir()}
    v2.update("/pod", CgroupResources(pids_limit=7))
    after = {p.name: p.read_text() for p in (v2.root / "pod").iterdir()}
    assert after.pop("pids.max") == "7"
    before.pop("pids.max")
    assert after == before


def test_v2_missing_controller_is_an_error_and_rolls_back(tmp_path: Path) -> None:
    fs = FakeKernelCgroupfs(_v2_tree(tmp_path / "cgroup", controllers="cpu memory pids"))
    with pytest.raises(CgroupError, match="hugetlb controller is not available"):
        fs.create("/kubepods/pod1", CgroupResources(hugepage_limits={"2MB": 0}))
    assert not (fs.root / "kubepods").exists()


def test_v2_failure_midway_removes_what_create_made(
    v2: FakeKernelCgroupfs, monkeypatch: pytest.MonkeyPatch
) -> None:
    (v2.root / "kubepods").mkdir()  # already there: must stay
    _fail_writes_to(
        monkeypatch, "pids.max", lambda f, v: InvalidResources(f"writing {v!r} to {f}: nope")
    )
    with pytest.raises(InvalidResources, match=r"'100' to .*/pod1/pids\.max"):
        v2.create("/kubepods/burstable/pod1", POD_RESOURCES)
    assert (v2.root / "kubepods").is_dir()
    assert not (v2.root / "kubepods" / "burstable").exists()
    assert not v2.exists("/kubepods/burstable/pod1")


def test_v2_update_of_a_missing_cgroup(v2: FakeKernelCgroupfs) -> None:
    with pytest.raises(CgroupNotFound, match="cgroup /nope does not exist"):
        v2.update("/nope", CgroupResources(pids_limit=1))
    assert not (v2.root / "nope").exists()


def test_v2_delete(v2: FakeKernelCgroupfs) -> None:
    v2.create("/kubepods/pod1", POD_RESOURCES)
    v2.create("/kubepods/pod1/ctr1")
    v2.create("/kubepods/pod1/ctr2/inner")
    procs = v2.root / "kubepods" / "pod1" / "ctr2" / "inner" / "cgroup.procs"
    procs.write_text("4321\n4322\n")
    assert v2.pids("/kubepods/pod1/ctr2/inner") == [4321, 4322]
    with pytest.raises(CgroupError, match=r"cgroup /kubepods/pod1 still has .*pids 4321, 4322"):
        v2.delete("/kubepods/pod1")
    assert v2.exists("/kubepods/pod1/ctr1")  # nothing removed
    procs.write_text("")
    v2.delete("/kubepods/pod1")  # children first
    assert not (v2.root / "kubepods" / "pod1").exists()
    assert v2.exists("/kubepods")  # only the leaf goes
    v2.delete("/kubepods/pod1")  # idempotent
    assert v2.pids("/kubepods/pod1") == []


def test_v2_kernel_refusals_name_file_and_value(tmp_path: Path) -> None:
    fs = FakeKernelCgroupfs(_v2_tree(tmp_path / "cgroup"))
    fs.create("/pod")
    (fs.root / "pod" / "pids.max").mkdir()  # so the write fails with EISDIR
    with pytest.raises(CgroupError, match=r"writing '5' to .*/pod/pids\.max"):
        fs.update("/pod", CgroupResources(pids_limit=5))


def test_read(v2: FakeKernelCgroupfs) -> None:
    v2.create("/pod", CgroupResources(pids_limit=3))
    assert v2.read("/pod", "pids", "pids.max") == "3"
    with pytest.raises(CgroupNotFound, match=r"memory\.current"):
        v2.read("/pod", "memory", "memory.current")
    with pytest.raises(InvalidResources, match="control file"):
        v2.read("/pod", "pids", "../cgroup.controllers")


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        (CgroupResources(cpu_shares=1), "cpu_shares 1"),
        (CgroupResources(cpu_shares=262145), "cpu_shares 262145"),
        (CgroupResources(cpu_quota=999), "cpu_quota 999"),
        (CgroupResources(cpu_quota=0), "cpu_quota 0"),
        (CgroupResources(cpu_quota=2**44), "cpu_quota 17592186044416"),
        (CgroupResources(cpu_period=500), "cpu_period 500"),
        (CgroupResources(cpuset_cpus="3-1"), "cpuset_cpus '3-1': the range 3-1 runs backwards"),
        (CgroupResources(cpuset_cpus="0-3 ; rm"), "cpuset_cpus"),
        (CgroupResources(cpuset_mems="a"), "cpuset_mems"),
        (CgroupResources(memory_limit=0), "memory_limit 0"),
        (CgroupResources(memory_swap=-2), "memory_swap -2"),
        (CgroupResources(pids_limit=0), "pids_limit 0"),
        (CgroupResources(memory_limit=64, memory_swap=32), "below memory_limit"),
        (CgroupResources(memory_limit=-1, memory_swap=32), "needs a memory_limit"),
        (CgroupResources(hugepage_limits={"2M": 1}), "hugepage size '2M'"),
        (CgroupResources(hugepage_limits={"2MB": -5}), "hugepage limit for 2MB"),
        (CgroupResources(unified={"../escape": "1"}), "unified key '../escape'"),
        (CgroupResources(unified={"cgroup.procs": "1"}), "unified key 'cgroup.procs'"),
        (CgroupResources(unified={"memory.high": "1\n2"}), "one line"),
    ],
)
def test_invalid_resources_are_refused_before_anything_is_made(
    v2: FakeKernelCgroupfs, resources: CgroupResources, message: str
) -> None:
    with pytest.raises(InvalidResources, match=message) as caught:
        v2.create("/kubepods/pod1", resources)
    assert status_of(caught.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert not (v2.root / "kubepods").exists()
    assert _text(v2.root / "cgroup.subtree_control") == ""


# ---- v1 ---------------------------------------------------------------------------


def test_v1_hierarchies(v1: FakeKernelCgroupfs) -> None:
    found = {name: path.name for name, path in v1.hierarchies.items()}
    assert found == {
        "cpu": "cpu",
        "cpuacct": "cpuacct",
        "cpuset": "cpuset",
        "memory": "memory",
        "pids": "pids",
        "devices": "devices",
        "freezer": "freezer",
        "blkio": "blkio",
    }  # no hugetlb (nothing mounted), no systemd or unified


def test_v1_create_makes_every_hierarchy_and_copies_cpuset(v1: FakeKernelCgroupfs) -> None:
    assert v1.create("/kubepods/pod1", replace(POD_RESOURCES, hugepage_limits={})) is True
    root = v1.root
    made = sorted(str(p.relative_to(root)) for p in root.glob("*/kubepods/pod1"))
    # cpu and cpuacct are one hierarchy here: made once (seen through both links).
    assert made == [
        "blkio/kubepods/pod1",
        "cpu,cpuacct/kubepods/pod1",
        "cpu/kubepods/pod1",
        "cpuacct/kubepods/pod1",
        "cpuset/kubepods/pod1",
        "devices/kubepods/pod1",
        "freezer/kubepods/pod1",
        "memory/kubepods/pod1",
        "pids/kubepods/pod1",
    ]
    for level in ("kubepods", "kubepods/pod1"):
        assert _text(root / "cpuset" / level / "cpuset.cpus") == "0-3"
        assert _text(root / "cpuset" / level / "cpuset.mems") == "0"
    leaf_cpu = root / "cpu,cpuacct" / "kubepods" / "pod1"
    assert _text(leaf_cpu / "cpu.shares") == "512"
    assert _text(leaf_cpu / "cpu.cfs_quota_us") == "50000"
    assert _text(leaf_cpu / "cpu.cfs_period_us") == "100000"
    memory = root / "memory" / "kubepods" / "pod1"
    assert _text(memory / "memory.limit_in_bytes") == str(64 * MIB)
    assert not (memory / "memory.memsw.limit_in_bytes").exists()  # no swap accounting
    assert _text(root / "pids" / "kubepods" / "pod1" / "pids.max") == "100"
    assert list((root / "devices" / "kubepods" / "pod1").iterdir()) == []
    assert v1.read("/kubepods/pod1", "cpuacct", "cpu.shares") == "512"
    assert v1.create("/kubepods/pod1") is False


def test_v1_cpuset_of_the_leaf_overrides_the_copy(v1: FakeKernelCgroupfs) -> None:
    v1.create("/kubepods/pod1", CgroupResources(cpuset_cpus="1", cpuset_mems="0"))
    assert _text(v1.root / "cpuset" / "kubepods" / "cpuset.cpus") == "0-3"
    assert _text(v1.root / "cpuset" / "kubepods" / "pod1" / "cpuset.cpus") == "1"


def test_v1_existing_cpuset_values_are_kept(v1: FakeKernelCgroupfs) -> None:
    (v1.root / "cpuset" / "kubepods").mkdir()
    (v1.root / "cpuset" / "kubepods" / "cpuset.cpus").write_text("2-3\n")
    (v1.root / "cpuset" / "kubepods" / "cpuset.mems").write_text("0\n")
    v1.create("/kubepods/pod1")
    assert _text(v1.root / "cpuset" / "kubepods" / "cpuset.cpus") == "2-3"
    assert _text(v1.root / "cpuset" / "kubepods" / "pod1" / "cpuset.cpus") == "2-3"


def test_v1_unlimited_values(v1: FakeKernelCgroupfs) -> None:
    v1.create("/pod", CgroupResources(cpu_quota=-1, memory_limit=-1, pids_limit=-1))
    assert _text(v1.root / "cpu" / "pod" / "cpu.cfs_quota_us") == "-1"
    assert _text(v1.root / "memory" / "pod" / "memory.limit_in_bytes") == "-1"
    assert _text(v1.root / "pids" / "pod" / "pids.max") == "max"


def test_v1_memsw_order(v1: FakeKernelCgroupfs, monkeypatch: pytest.MonkeyPatch) -> None:
    v1.create("/pod")
    memsw = v1.root / "memory" / "pod" / "memory.memsw.limit_in_bytes"
    memsw.write_text(f"{32 * MIB}\n")  # swap accounting on, memory + swap at 32 MiB
    writes = _record_writes(monkeypatch)
    # Growing past the current memsw: memsw first, or the kernel says EINVAL.
    v1.update("/pod", CgroupResources(memory_limit=64 * MIB, memory_swap=128 * MIB))
    assert writes == [
        ("memory.memsw.limit_in_bytes", str(128 * MIB)),
        ("memory.limit_in_bytes", str(64 * MIB)),
    ]
    writes.clear()
    v1.update("/pod", CgroupResources(memory_limit=16 * MIB, memory_swap=16 * MIB))
    assert writes == [
        ("memory.limit_in_bytes", str(16 * MIB)),
        ("memory.memsw.limit_in_bytes", str(16 * MIB)),
    ]
    writes.clear()
    v1.update("/pod", CgroupResources(memory_limit=-1, memory_swap=-1))
    assert [name for name, _ in writes] == ["memory.memsw.limit_in_bytes", "memory.limit_in_bytes"]


def test_v1_cfs_period_refused_then_quota_first(
    v1: FakeKernelCgroupfs, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1.create("/pod")
    writes = _record_writes(monkeypatch)
    refused = [True]
    real = cgroups._write

    def period_refused_once(file: Path, value: str) -> None:
        if file.name == "cpu.cfs_period_us" and refused:
            refused.clear()
            raise InvalidResources(f"writing {value!r} to {file}: Invalid argument")
        real(file, value)

    monkeypatch.setattr(cgroups, "_write", period_refused_once)
    v1.update("/pod", CgroupResources(cpu_quota=20000, cpu_period=50000))
    assert refused == []  # the period was tried first, and refused
    assert writes == [
        ("cpu.cfs_quota_us", "20000"),
        ("cpu.cfs_period_us", "50000"),
    ]
    assert _text(v1.root / "cpu" / "pod" / "cpu.cfs_period_us") == "50000"


def test_v1_partial_cgroup_is_completed_and_exists_needs_all(v1: FakeKernelCgroupfs) -> None:
    v1.create("/kubepods/pod1")
    v1._rmdir(v1.root / "freezer" / "kubepods" / "pod1")
    assert not v1.exists("/kubepods/pod1")
    assert v1.create("/kubepods/pod1") is True
    assert v1.exists("/kubepods/pod1")


def test_v1_unified_is_refused(v1: FakeKernelCgroupfs) -> None:
    with pytest.raises(InvalidResources, match=r"memory\.high.*need cgroup v2"):
        v1.create("/pod", CgroupResources(unified={"memory.high": "1"}))
    assert not list(v1.root.glob("*/pod"))


def test_v1_hugetlb_not_mounted_rolls_back(v1: FakeKernelCgroupfs) -> None:
    with pytest.raises(CgroupError, match="hugetlb controller is not mounted"):
        v1.create("/kubepods/pod1", CgroupResources(hugepage_limits={"2MB": 0}))
    assert not list(v1.root.glob("*/kubepods"))


def test_v1_hugetlb_mounted(v1: FakeKernelCgroupfs) -> None:
    (v1.root / "hugetlb" / "cgroup.procs").write_text("")
    fs = FakeKernelCgroupfs(v1.root)
    fs.create("/pod", CgroupResources(hugepage_limits={"2MB": 2 * MIB}))
    assert _text(v1.root / "hugetlb" / "pod" / "hugetlb.2MB.limit_in_bytes") == str(2 * MIB)


def test_v1_delete_in_every_hierarchy(v1: FakeKernelCgroupfs) -> None:
    v1.create("/kubepods/pod1", CgroupResources(pids_limit=10))
    v1.create("/kubepods/pod1/ctr")
    (v1.root / "pids" / "kubepods" / "pod1" / "ctr" / "cgroup.procs").write_text("99\n")
    (v1.root / "memory" / "kubepods" / "pod1" / "cgroup.procs").write_text("98\n")
    assert v1.pids("/kubepods/pod1") == [98]
    with pytest.raises(CgroupError) as caught:
        v1.delete("/kubepods/pod1")
    assert "cgroup /kubepods/pod1 still has processes" in str(caught.value)
    assert "pid 99" in str(caught.value) and "pid 98" in str(caught.value)
    assert v1.exists("/kubepods/pod1/ctr")
    (v1.root / "pids" / "kubepods" / "pod1" / "ctr" / "cgroup.procs").write_text("")
    (v1.root / "memory" / "kubepods" / "pod1" / "cgroup.procs").write_text("")
    v1.delete("/kubepods/pod1")
    assert not list(v1.root.glob("*/kubepods/pod1"))
    assert v1.exists("/kubepods")
    v1.delete("/kubepods/pod1")
    v1.delete("/kubepods")
    assert not list(v1.root.glob("*/kubepods"))


def test_v1_without_hierarchies(tmp_path: Path) -> None:
    (tmp_path / "cgroup").mkdir()
    fs = Cgroupfs(tmp_path / "cgroup")
    with pytest.raises(CgroupError, match="no cgroup v1 hierarchy"):
        fs.create("/pod")


def test_cpu_lists_and_what_a_node_lacks() -> None:
    assert cpu_list_ranges("0-3,6") == [(0, 3), (6, 6)]
    present = frozenset({0, 1, 2, 3, 6})
    assert outside([(0, 3), (6, 6)], present) == []
    assert outside([(4, 6)], present) == [4, 5]
    # A huge range is not expanded: the first number past the node's is enough.
    assert outside([(0, 2**32)], present) == [4, 5, 7]
