"""The cgroupfs driver on this machine's real cgroup v1 hierarchies.

Every test works below its own "/skiff-test-<random>" cgroup and removes everything
under it in every hierarchy at the end, whatever happened; it touches no other cgroup.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from runtime.cgroups import (
    CgroupError,
    Cgroupfs,
    CgroupResources,
    InvalidResources,
    cgroup_version,
)

ROOT = Path("/sys/fs/cgroup")
MIB = 1 << 20
POD_RESOURCES = CgroupResources(
    cpu_shares=512,
    cpu_quota=50000,
    cpu_period=100000,
    memory_limit=64 * MIB,
    memory_swap=64 * MIB,
    pids_limit=100,
)

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or cgroup_version(ROOT) != 1,
    reason="needs root and cgroup v1 hierarchies at /sys/fs/cgroup",
)


@dataclass
class Scratch:
    """A test's own cgroup prefix, and the processes it started."""

    fs: Cgroupfs
    prefix: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def path(self, name: str) -> str:
        return f"{self.prefix}/{name}-{uuid.uuid4().hex[:8]}"

    def dirs(self, path: str) -> list[Path]:
        """The cgroup's directory in every hierarchy the driver uses."""
        rel = path.lstrip("/")
        return [base / rel for base in self.fs.hierarchies.values()]

    def sleeper(self) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(["sleep", "30"])
        self.processes.append(process)
        return process


def _hierarchy_roots() -> list[Path]:
    return [entry for entry in ROOT.iterdir() if (entry / "cgroup.procs").is_file()]


def _remove_tree(top: Path) -> None:
    """rmdir top and its sub-cgroups, deepest first (cgroupfs dirs only hold files the
    kernel removes with them)."""
    if not top.is_dir():
        return
    for parent, names, _files in os.walk(top, topdown=False):
        for name in names:
            _rmdir_patiently(Path(parent) / name)
    _rmdir_patiently(top)


def _rmdir_patiently(directory: Path) -> None:
    # A killed task may take a moment to leave its cgroup.
    for _ in range(50):
        try:
            os.rmdir(directory)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)
    os.rmdir(directory)


@pytest.fixture
def scratch() -> Iterator[Scratch]:
    prefix = f"/skiff-test-{uuid.uuid4().hex[:12]}"
    state = Scratch(Cgroupfs(ROOT), prefix)
    try:
        yield state
    finally:
        for process in state.processes:
            if process.poll() is None:
                process.kill()
            process.wait()
        for base in _hierarchy_roots():
            _remove_tree(base / prefix.lstrip("/"))


def _read(scratch: Scratch, path: str, controller: str, file: str) -> str:
    return scratch.fs.read(path, controller, file).strip()


def test_hierarchies_of_this_machine(scratch: Scratch) -> None:
    # cpu and cpuacct are separate mounts here; both are used.
    hierarchies = scratch.fs.hierarchies
    for controller in ("cpu", "cpuacct", "cpuset", "memory", "pids"):
        assert controller in hierarchies, hierarchies
    assert "systemd" not in hierarchies


def test_create_applies_resources(scratch: Scratch) -> None:
    fs = scratch.fs
    pod = scratch.path("pod")
    assert fs.create(pod, POD_RESOURCES) is True
    assert fs.exists(pod)
    for directory in scratch.dirs(pod) + scratch.dirs(scratch.prefix):
        assert directory.is_dir(), directory
    assert _read(scratch, pod, "cpu", "cpu.shares") == "512"
    assert _read(scratch, pod, "cpu", "cpu.cfs_quota_us") == "50000"
    assert _read(scratch, pod, "cpu", "cpu.cfs_period_us") == "100000"
    assert _read(scratch, pod, "memory", "memory.limit_in_bytes") == str(64 * MIB)
    if (scratch.fs.directory(pod, "memory") / "memory.memsw.limit_in_bytes").exists():
        assert _read(scratch, pod, "memory", "memory.memsw.limit_in_bytes") == str(64 * MIB)
    assert _read(scratch, pod, "pids", "pids.max") == "100"
    # The cpuset was copied into every new level: without it no task could join.
    root_cpus = (ROOT / "cpuset" / "cpuset.cpus").read_text().strip()
    root_mems = (ROOT / "cpuset" / "cpuset.mems").read_text().strip()
    for level in (scratch.prefix, pod):
        assert _read(scratch, level, "cpuset", "cpuset.cpus") == root_cpus
        assert _read(scratch, level, "cpuset", "cpuset.mems") == root_mems
    assert fs.create(pod, POD_RESOURCES) is False


def test_update(scratch: Scratch) -> None:
    fs = scratch.fs
    pod = scratch.path("pod")
    fs.create(pod, POD_RESOURCES)
    fs.update(
        pod,
        CgroupResources(
            cpu_shares=1024,
            cpu_quota=-1,
            memory_limit=128 * MIB,
            memory_swap=256 * MIB,
            pids_limit=-1,
            cpuset_cpus="0",
        ),
    )
    assert _read(scratch, pod, "cpu", "cpu.shares") == "1024"
    assert _read(scratch, pod, "cpu", "cpu.cfs_quota_us") == "-1"
    assert _read(scratch, pod, "cpu", "cpu.cfs_period_us") == "100000"  # untouched
    assert _read(scratch, pod, "memory", "memory.limit_in_bytes") == str(128 * MIB)
    if (fs.directory(pod, "memory") / "memory.memsw.limit_in_bytes").exists():
        # Growing past the old memsw (64 MiB) works because memsw is raised first.
        assert _read(scratch, pod, "memory", "memory.memsw.limit_in_bytes") == str(256 * MIB)
    assert _read(scratch, pod, "pids", "pids.max") == "max"
    assert _read(scratch, pod, "cpuset", "cpuset.cpus") == "0"
    fs.update(pod, CgroupResources(memory_limit=32 * MIB, memory_swap=32 * MIB))
    assert _read(scratch, pod, "memory", "memory.limit_in_bytes") == str(32 * MIB)


def test_delete_refused_while_a_process_is_inside(scratch: Scratch) -> None:
    fs = scratch.fs
    pod = scratch.path("pod")
    fs.create(pod, POD_RESOURCES)
    sleeper = scratch.sleeper()
    for controller in ("memory", "pids"):
        (fs.directory(pod, controller) / "cgroup.procs").write_text(str(sleeper.pid))
    assert fs.pids(pod) == [sleeper.pid]
    assert _read(scratch, pod, "pids", "pids.current") == "1"

    with pytest.raises(CgroupError) as caught:
        fs.delete(pod)
    assert f"cgroup {pod} still has processes" in str(caught.value)
    assert f"pid {sleeper.pid}" in str(caught.value)
    assert fs.exists(pod)  # nothing was removed, nothing was killed
    assert sleeper.poll() is None

    sleeper.kill()
    sleeper.wait()
    fs.delete(pod)
    assert not fs.exists(pod)
    assert not any(directory.exists() for directory in scratch.dirs(pod))
    assert all(directory.is_dir() for directory in scratch.dirs(scratch.prefix))
    fs.delete(pod)  # idempotent
    fs.delete(scratch.prefix)
    assert not any(directory.exists() for directory in scratch.dirs(scratch.prefix))


def test_delete_removes_empty_children(scratch: Scratch) -> None:
    fs = scratch.fs
    pod = scratch.path("pod")
    fs.create(f"{pod}/ctr1")
    fs.create(f"{pod}/ctr2")
    fs.delete(pod)
    assert not any(directory.exists() for directory in scratch.dirs(pod))


def test_kernel_refusal_names_file_and_value(scratch: Scratch) -> None:
    fs = scratch.fs
    pod = scratch.path("pod")
    fs.create(pod)
    with pytest.raises(InvalidResources) as caught:
        fs.update(pod, CgroupResources(cpuset_cpus="999999"))
    message = str(caught.value)
    assert "'999999'" in message
    assert str(fs.directory(pod, "cpuset") / "cpuset.cpus") in message
    if (fs.directory(pod, "memory") / "memory.memsw.limit_in_bytes").exists():
        fs.update(pod, CgroupResources(memory_limit=32 * MIB, memory_swap=32 * MIB))
        with pytest.raises(InvalidResources, match=r"memory\.limit_in_bytes.*memory_swap"):
            fs.update(pod, CgroupResources(memory_limit=64 * MIB))


def test_failed_create_removes_what_it_made(scratch: Scratch) -> None:
    fs = scratch.fs
    pod = f"{scratch.prefix}/pod"
    with pytest.raises(InvalidResources, match=r"cpuset\.cpus"):
        fs.create(pod, CgroupResources(pids_limit=10, cpuset_cpus="999999"))
    assert not any(directory.exists() for directory in scratch.dirs(scratch.prefix))


def test_unified_is_refused_on_v1(scratch: Scratch) -> None:
    pod = scratch.path("pod")
    with pytest.raises(InvalidResources, match="need cgroup v2"):
        scratch.fs.create(pod, CgroupResources(unified={"memory.high": "1000000"}))
    assert not any(directory.exists() for directory in scratch.dirs(scratch.prefix))


def test_hugepages_without_the_hugetlb_hierarchy(scratch: Scratch) -> None:
    if "hugetlb" in scratch.fs.hierarchies:
        pytest.skip("hugetlb is mounted on this machine")
    pod = scratch.path("pod")
    with pytest.raises(CgroupError, match="hugetlb controller is not mounted"):
        scratch.fs.create(pod, CgroupResources(hugepage_limits={"2MB": 0}))
    assert not any(directory.exists() for directory in scratch.dirs(scratch.prefix))
