"""Proto messages shared by several RPC families, turned into plain data."""

from __future__ import annotations

from api.runtime.v1 import api_pb2 as pb
from runtime.cgroups import CgroupResources


def resources(message: pb.LinuxContainerResources) -> CgroupResources:
    """LinuxContainerResources as cgroup settings; zero values mean "not set"."""
    return CgroupResources(
        cpu_shares=message.cpu_shares or None,
        cpu_quota=message.cpu_quota or None,
        cpu_period=message.cpu_period or None,
        cpuset_cpus=message.cpuset_cpus,
        cpuset_mems=message.cpuset_mems,
        memory_limit=message.memory_limit_in_bytes or None,
        memory_swap=message.memory_swap_limit_in_bytes or None,
        hugepage_limits={h.page_size: h.limit for h in message.hugepage_limits},
        unified=dict(message.unified),
    )
