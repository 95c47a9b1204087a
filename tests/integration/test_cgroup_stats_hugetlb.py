"""Huge page usage read from a real cgroup2 hierarchy's hugetlb files.

On a hybrid host the hugetlb controller, bound to no v1 hierarchy, is the cgroup2
mount's (``/sys/fs/cgroup/unified``); on a v2 host it is the root's. The test enables
hugetlb below that root if it is not yet, reserves one 2 MiB huge page if none is free,
works in "/skiff-hugetlb-<random>" cgroups of its own with processes of its own
(killed by pid), and puts back whatever it changed.
"""

from __future__ import annotations

import mmap
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from runtime.cgroup_stats import CgroupStatsReader, HugetlbUsage, hugepage_sizes
from runtime.cgroups import Cgroupfs

MIB = 1 << 20
PAGES_2MB = Path("/sys/kernel/mm/hugepages/hugepages-2048kB")
# Faults in one 2 MiB huge page once it is in its cgroup, says so, then waits. Where
# the cgroup's limit refuses the page, the fault kills it with SIGBUS.
TOUCH = (
    "import mmap, sys, time\n"
    "sys.stdin.readline()\n"
    f"flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | {getattr(mmap, 'MAP_HUGETLB', 0x40000)}\n"
    "page = mmap.mmap(-1, 2 * 1024 * 1024, flags=flags)\n"
    "page[0] = 1\n"
    "print('ready', flush=True)\n"
    "time.sleep(1000)\n"
)


def _hugetlb_root() -> Path | None:
    for root in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
        controllers = root / "cgroup.controllers"
        if controllers.is_file() and "hugetlb" in controllers.read_text().split():
            return root
    return None


ROOT = _hugetlb_root()
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or ROOT is None or not PAGES_2MB.is_dir(),
    reason="needs root, a cgroup2 hierarchy with the hugetlb controller and 2 MiB pages",
)


@contextmanager
def _hugetlb_enabled(root: Path) -> Iterator[None]:
    control = root / "cgroup.subtree_control"
    if "hugetlb" in control.read_text().split():
        yield
        return
    control.write_text("+hugetlb")
    try:
        yield
    finally:
        control.write_text("-hugetlb")


@contextmanager
def _one_free_2mb_page() -> Iterator[None]:
    total = PAGES_2MB / "nr_hugepages"
    before = int(total.read_text())
    if int((PAGES_2MB / "free_hugepages").read_text()) >= 1:
        yield
        return
    total.write_text(str(before + 1))
    try:
        if int((PAGES_2MB / "free_hugepages").read_text()) < 1:
            pytest.skip("the kernel could not set aside a 2 MiB huge page")
        yield
    finally:
        total.write_text(str(before))


@contextmanager
def _cgroup(root: Path, name: str, files: dict[str, str]) -> Iterator[str]:
    directory = root / name
    directory.mkdir()
    try:
        for file, value in files.items():
            (directory / file).write_text(value)
        yield f"/{name}"
    finally:
        directory.rmdir()


@contextmanager
def _toucher(root: Path, path: str) -> Iterator[subprocess.Popen[bytes]]:
    """A process of this test's own that faults in a huge page inside cgroup ``path``."""
    proc = subprocess.Popen(
        [sys.executable, "-c", TOUCH], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert proc.stdin is not None
        (root / path.lstrip("/") / "cgroup.procs").write_text(str(proc.pid))
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        yield proc
    finally:
        proc.kill()
        proc.communicate()


def _size(usage: tuple[HugetlbUsage, ...], pagesize: str) -> HugetlbUsage:
    (found,) = [u for u in usage if u.pagesize == pagesize]
    return found


def test_huge_pages_in_use_and_refused_show_per_page_size() -> None:
    assert ROOT is not None
    name = f"skiff-hugetlb-{secrets.token_hex(4)}"
    with ExitStack() as stack:
        stack.enter_context(_hugetlb_enabled(ROOT))
        stack.enter_context(_one_free_2mb_page())
        path = stack.enter_context(_cgroup(ROOT, name, {}))
        capped = stack.enter_context(_cgroup(ROOT, f"{name}-capped", {"hugetlb.2MB.max": "0"}))
        cgroups = Cgroupfs(ROOT)
        assert cgroups.version == 2
        reader = CgroupStatsReader(cgroups)
        stack.callback(reader.files.close)

        idle = reader.read(path, detailed=True).hugetlb
        # One entry per page size of the machine, named as the kernel names them.
        assert tuple(u.pagesize for u in idle) == hugepage_sizes()
        assert _size(idle, "2MB") == HugetlbUsage("2MB", 0, None, 0)

        with _toucher(ROOT, path) as proc:
            assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
            busy = reader.read(path, detailed=True)
            # v2 keeps no peak, and nothing was refused.
            assert _size(busy.hugetlb, "2MB") == HugetlbUsage("2MB", 2 * MIB, None, 0)
            assert reader.read(path).hugetlb == ()  # not for the CRI stats
        assert _size(reader.read(path, detailed=True).hugetlb, "2MB").usage_bytes == 0

        # A limit of 0 refuses the fault: the process dies of SIGBUS, the refusal counts.
        with _toucher(ROOT, capped) as proc:
            assert proc.wait(timeout=10) == -signal.SIGBUS
        refused = _size(reader.read(capped, detailed=True).hugetlb, "2MB")
        assert refused.failcnt >= 1 and refused.usage_bytes == 0
