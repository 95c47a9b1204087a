"""cgroup usage read from this machine's real cgroup v1 hierarchies.

The test works in a "/skiff-statsv1-<random>" cgroup of its own, runs one process of
its own in it (killed by pid), and removes the cgroup whatever happens.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runtime.cgroup_stats import CgroupStatsReader
from runtime.cgroups import Cgroupfs, CgroupNotFound, CgroupResources, cgroup_version

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or cgroup_version(Path("/sys/fs/cgroup")) != 1,
    reason="needs root and cgroup v1 hierarchies at /sys/fs/cgroup",
)

# Waits until it is in the cgroup (cgroup v1 leaves memory charged where it was
# touched), touches 32 MiB of anonymous memory, says so, then burns CPU.
HOG = (
    "import sys\n"
    "sys.stdin.readline()\n"
    "data = bytearray(32 * 1024 * 1024)\n"
    "print('ready', flush=True)\n"
    "while True:\n"
    "    pass\n"
)
MIB = 1 << 20


def test_a_busy_process_shows_in_its_cgroup_until_the_cgroup_goes() -> None:
    cgroups = Cgroupfs()
    path = f"/skiff-statsv1-{secrets.token_hex(4)}"
    cgroups.create(path, CgroupResources(memory_limit=256 * MIB))
    proc: subprocess.Popen[bytes] | None = None
    try:
        reader = CgroupStatsReader(cgroups)
        soft_limit = cgroups.directory(path, "memory") / "memory.soft_limit_in_bytes"
        unreserved = reader.read(path, detailed=True).memory
        assert unreserved is not None and unreserved.reservation_bytes is None
        soft_limit.write_text(str(128 * MIB))
        idle = reader.read(path)
        assert idle.cpu is not None and idle.cpu.usage_ns == 0
        assert idle.pids == 0
        proc = subprocess.Popen(
            [sys.executable, "-c", HOG], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        assert proc.stdin is not None and proc.stdout is not None
        cgroups.attach(path, proc.pid)
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == b"ready\n"
        time.sleep(1.0)
        first = reader.read(path, detailed=True)
        time.sleep(0.5)
        second = reader.read(path)
        assert first.cpu is not None and second.cpu is not None
        assert second.cpu.usage_ns > first.cpu.usage_ns > 200_000_000
        assert first.cpu.user_ns > 0
        assert first.memory is not None and first.memory.reservation_bytes == 128 * MIB
        memory = second.memory
        assert memory is not None
        assert memory.working_set_bytes >= 30 * MIB
        assert memory.rss_bytes >= 30 * MIB
        assert memory.limit_bytes == 256 * MIB
        assert memory.available_bytes == 256 * MIB - memory.working_set_bytes
        assert memory.page_faults > 0
        assert second.pids == 1
        assert reader.files.open_count > 0  # kept open between reads
    finally:
        if proc is not None:
            proc.kill()
            proc.communicate()
        cgroups.delete(path)
    # The kept descriptors now read ENODEV: the cgroup counts as gone.
    with pytest.raises(CgroupNotFound, match=path):
        reader.read(path)
    assert reader.files.open_count == 0
