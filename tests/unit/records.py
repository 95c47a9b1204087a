"""Container and sandbox records, and stats samples of them, for unit tests of what is
built from them."""

from __future__ import annotations

from typing import Any

from cri.container_record import Container
from cri.sandboxes import Sandbox
from cri.stats import ContainerSample, LayerUsage, NetworkSample, PodSample
from network.netstats import InterfaceCounters
from runtime.cgroup_stats import (
    CgroupUsage,
    CpuUsage,
    DeviceIo,
    MemoryUsage,
    Pressure,
    ProcessCounts,
    Stall,
)
from runtime.cgroups import CgroupResources

S = 1_000_000_000


def container_record(**overrides: Any) -> Container:
    fields: dict[str, Any] = {
        "id": "c" * 64,
        "sandbox_id": "p" * 64,
        "name": "web",
        "attempt": 0,
        "image": "registry.example/web:1",
        "image_id": "sha256:" + "1" * 64,
        "image_ref": "registry.example/web@sha256:" + "2" * 64,
        "state": "running",
        "created_ns": 1,
        "started_ns": 1700000000 * S,
        "finished_ns": 0,
        "exit_code": 0,
        "reason": "",
        "message": "",
        "labels": {},
        "annotations": {},
        "log_path": "",
        "runtime_handler": "",
        "container_dir": "/nowhere",
        "mounts": [],
        "uid": 0,
        "gid": 0,
        "groups": [],
        "resources": CgroupResources(cpu_shares=256, cpu_quota=50000, memory_limit=1 << 26),
        "stop_signal": 0,
        "pid": 1,
        "tty": False,
        "stdin": False,
        "config": {},
    }
    fields.update(overrides)
    return Container(**fields)


def sandbox_record() -> Sandbox:
    return Sandbox(
        id="p" * 64,
        name="shop",
        namespace="prod",
        uid="u1",
        attempt=0,
        state="ready",
        created_ns=1,
        runtime_handler="",
        hostname="shop",
        log_directory="",
        labels={},
        annotations={},
        host_network=False,
        host_ipc=False,
        host_pid=False,
        pid_mode="container",
        cgroup_parent="",
        cgroup_created=False,
        netns="/run/netns/x",
        ipcns=None,
        utsns=None,
        ips=[],
        network_name="",
        files_dir="",
        shm_path=None,
        port_mappings=[],
        config={},
    )


PRESSURE = Pressure(Stall(12 * S + 5, 1.0, 0.5, 0.1), Stall(2 * S, 0.0, 0.0, 0.0))


def stats_sample() -> tuple[PodSample, ContainerSample]:
    """A pod with one running container and every figure known but swap."""
    usage = CgroupUsage(
        5 * S,
        CpuUsage(usage_ns=3 * S + 7, user_ns=2 * S, system_ns=S, periods=10, pressure=PRESSURE),
        MemoryUsage(
            usage_bytes=300,
            working_set_bytes=200,
            rss_bytes=100,
            page_faults=40,
            major_page_faults=4,
            swap_bytes=None,
            max_usage_bytes=400,
            pressure=PRESSURE,
        ),
        pids=3,
        pids_limit=None,
        io=(DeviceIo(8, 0, read_bytes=4096, write_bytes=512, reads=2, writes=1),),
        io_pressure=PRESSURE,
    )
    container = ContainerSample(
        container_record(),
        usage,
        None,
        LayerUsage("/var/lib/skiff/containers", 12345, 6, 1),
        ProcessCounts(processes=2, threads=5, file_descriptors=9, sockets=1),
    )
    eth0 = InterfaceCounters("eth0", 1000, 10, 1, 2, 500, 5, 0, 0)
    pod = PodSample(sandbox_record(), usage, None, NetworkSample(1, (eth0,), eth0), (container,))
    return pod, container
