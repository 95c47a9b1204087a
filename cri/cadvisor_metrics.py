"""Pod and container metrics under cAdvisor's names, for ListMetricDescriptors and
ListPodSandboxMetrics: what the kubelet serves on /metrics/cadvisor when it takes
metrics from the runtime instead of running cAdvisor itself.

Every series carries cAdvisor's labels (container, id, image, name, namespace, pod)
and the metric's own (cpu, interface, failure_type and scope, pagesize, ulimit), in the
order the descriptor lists them. A pod's network counters belong to the pod (container
"POD", as cAdvisor reports them on the pod's sandbox); everything else to its
containers. Names, labels and types are cAdvisor's; the hugetlb, memory reservation
and ulimit metrics also carry its help texts.

The CRI carries values as unsigned integers, so the ``*_seconds_total`` counters are
whole seconds (as in cri-o), and a value that cannot be known is left out rather
than sent as 0.

Plain data in and out; the servicer turns it into protobuf.
"""

from __future__ import annotations

from dataclasses import dataclass

from cri.stats import ContainerSample, FilesystemCapacity, PodSample
from runtime.cgroup_stats import (
    CgroupUsage,
    CpuUsage,
    DeviceIo,
    HugetlbUsage,
    MemoryUsage,
    ProcessCounts,
    device_name,
)
from runtime.cgroups import CgroupResources

BASE_LABELS = ("container", "id", "image", "name", "namespace", "pod")
POD_CONTAINER = "POD"
DEFAULT_CPU_PERIOD_US = 100_000
DEFAULT_CPU_SHARES = 1024
NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class Descriptor:
    name: str
    help: str
    labels: tuple[str, ...] = ()

    @property
    def label_keys(self) -> tuple[str, ...]:
        return BASE_LABELS + self.labels


@dataclass(frozen=True)
class MetricValue:
    name: str
    value: int
    label_values: tuple[str, ...]
    counter: bool


def _d(name: str, help_text: str, *labels: str) -> Descriptor:
    return Descriptor(name, help_text, labels)


DESCRIPTORS: tuple[Descriptor, ...] = (
    _d("container_last_seen", "Last time the container was seen by the runtime, in seconds."),
    _d("container_start_time_seconds", "Start time of the container since the epoch, in seconds."),
    _d("container_cpu_usage_seconds_total", "Cumulative CPU time consumed, in seconds.", "cpu"),
    _d("container_cpu_user_seconds_total", "Cumulative user CPU time consumed, in seconds."),
    _d("container_cpu_system_seconds_total", "Cumulative system CPU time consumed, in seconds."),
    _d("container_cpu_cfs_periods_total", "Number of elapsed CFS enforcement periods."),
    _d("container_cpu_cfs_throttled_periods_total", "Number of throttled CFS periods."),
    _d(
        "container_cpu_cfs_throttled_seconds_total",
        "Total time the container has been throttled, in seconds.",
    ),
    _d("container_memory_usage_bytes", "Current memory usage, all memory whatever its age."),
    _d("container_memory_working_set_bytes", "Current working set: usage minus inactive file."),
    _d("container_memory_rss", "Size of anonymous memory (RSS), in bytes."),
    _d("container_memory_cache", "Page cache memory, in bytes."),
    _d("container_memory_mapped_file", "Size of memory-mapped files, in bytes."),
    _d("container_memory_kernel_usage", "Kernel memory charged to the container, in bytes."),
    _d("container_memory_swap", "Swap used by the container, in bytes."),
    _d("container_memory_max_usage_bytes", "Maximum memory usage recorded, in bytes."),
    _d("container_memory_failcnt", "Number of times memory usage hit the limit."),
    _d(
        "container_memory_failures_total",
        "Cumulative count of memory allocation failures (page faults).",
        "failure_type",
        "scope",
    ),
    _d("container_oom_events_total", "Count of out-of-memory kills in the container."),
    *(
        _d(
            f"container_pressure_{resource}_{kind}_seconds_total",
            f"Total time some tasks {verb} on {resource} (cgroup v2 PSI), in seconds.",
        )
        for resource in ("cpu", "memory", "io")
        for kind, verb in (("waiting", "waited"), ("stalled", "were all stalled"))
    ),
    # Per huge page size, labelled as the kernel names it ("2MB", "1GB"): the name
    # cAdvisor takes from runc's cgroup library.
    _d("container_hugetlb_failcnt", "Number of hugepage usage hits limits", "pagesize"),
    _d("container_hugetlb_usage_bytes", "Current hugepage usage in bytes", "pagesize"),
    _d(
        "container_hugetlb_max_usage_bytes",
        "Maximum hugepage usage recorded in bytes",
        "pagesize",
    ),
    _d("container_processes", "Number of processes running in the container."),
    _d("container_threads", "Number of threads running in the container."),
    _d("container_threads_max", "Maximum number of threads allowed, 0 for unlimited."),
    _d("container_file_descriptors", "Number of open file descriptors of the container."),
    _d(
        "container_ulimits_soft",
        "Soft ulimit values for the container root process. Unlimited if -1, except "
        "priority and nice",
        "ulimit",
    ),
    _d("container_sockets", "Number of open sockets of the container."),
    _d("container_fs_usage_bytes", "Bytes used by the container's writable layer."),
    _d("container_fs_limit_bytes", "Size of the filesystem holding the writable layer."),
    _d("container_fs_inodes_total", "Inodes of the filesystem holding the writable layer."),
    _d("container_fs_inodes_free", "Free inodes of the filesystem holding the writable layer."),
    _d("container_fs_reads_bytes_total", "Cumulative bytes read from the device.", "device"),
    _d("container_fs_reads_total", "Cumulative count of reads from the device.", "device"),
    _d("container_fs_writes_bytes_total", "Cumulative bytes written to the device.", "device"),
    _d("container_fs_writes_total", "Cumulative count of writes to the device.", "device"),
    _d(
        "container_blkio_device_usage_total",
        "Block I/O bytes of the container per device and operation.",
        "device",
        "major",
        "minor",
        "operation",
    ),
    _d("container_spec_cpu_period", "CPU CFS period of the container, in microseconds."),
    _d("container_spec_cpu_quota", "CPU CFS quota of the container, in microseconds."),
    _d("container_spec_cpu_shares", "CPU shares of the container."),
    _d("container_spec_memory_limit_bytes", "Memory limit of the container, 0 for none."),
    _d(
        "container_spec_memory_swap_limit_bytes",
        "Memory plus swap limit of the container, 0 for none.",
    ),
    _d(
        "container_spec_memory_reservation_limit_bytes",
        "Memory reservation limit for the container.",
    ),
    _d(
        "container_network_receive_bytes_total",
        "Cumulative count of bytes received.",
        "interface",
    ),
    _d(
        "container_network_receive_packets_total",
        "Cumulative count of packets received.",
        "interface",
    ),
    _d(
        "container_network_receive_packets_dropped_total",
        "Cumulative count of packets dropped while receiving.",
        "interface",
    ),
    _d(
        "container_network_receive_errors_total",
        "Cumulative count of errors while receiving.",
        "interface",
    ),
    _d(
        "container_network_transmit_bytes_total",
        "Cumulative count of bytes transmitted.",
        "interface",
    ),
    _d(
        "container_network_transmit_packets_total",
        "Cumulative count of packets transmitted.",
        "interface",
    ),
    _d(
        "container_network_transmit_packets_dropped_total",
        "Cumulative count of packets dropped while transmitting.",
        "interface",
    ),
    _d(
        "container_network_transmit_errors_total",
        "Cumulative count of errors while transmitting.",
        "interface",
    ),
)

_BY_NAME = {d.name: d for d in DESCRIPTORS}


def descriptors(*, hugetlb: bool, pressure: bool) -> tuple[Descriptor, ...]:
    """The metrics this node can report (a descriptor whose series never appear tells a
    client, critest among them, something untrue): the hugetlb series only where its
    cgroups have the hugetlb controller and it has huge pages, the pressure (PSI)
    series only on cgroup v2."""
    left_out = ("container_hugetlb_",) * (not hugetlb) + ("container_pressure_",) * (not pressure)
    return tuple(d for d in DESCRIPTORS if not d.name.startswith(left_out))


class _Collector:
    def __init__(self, base: tuple[str, ...]) -> None:
        self.base = base
        self.values: list[MetricValue] = []

    def add(self, name: str, value: int | None, *labels: str, counter: bool = False) -> None:
        if value is None:
            return
        assert len(labels) == len(_BY_NAME[name].labels), name
        self.values.append(MetricValue(name, max(value, 0), self.base + labels, counter))


def _pod_labels(
    sample: PodSample, container: str, container_id: str, image: str
) -> tuple[str, ...]:
    pod = sample.sandbox
    # cAdvisor's "name" is the runtime's name of the container.
    return (container, container_id, image, container, pod.namespace, pod.name)


def pod_metrics(sample: PodSample) -> list[MetricValue]:
    """The pod's own series: its network counters, per interface."""
    out = _Collector(_pod_labels(sample, POD_CONTAINER, sample.sandbox.id, ""))
    if sample.network is not None:
        for nic in sample.network.interfaces:
            for name, value in (
                ("container_network_receive_bytes_total", nic.rx_bytes),
                ("container_network_receive_packets_total", nic.rx_packets),
                ("container_network_receive_packets_dropped_total", nic.rx_dropped),
                ("container_network_receive_errors_total", nic.rx_errors),
                ("container_network_transmit_bytes_total", nic.tx_bytes),
                ("container_network_transmit_packets_total", nic.tx_packets),
                ("container_network_transmit_packets_dropped_total", nic.tx_dropped),
                ("container_network_transmit_errors_total", nic.tx_errors),
            ):
                out.add(name, value, nic.name, counter=True)
    return out.values


def container_metrics(
    pod: PodSample, sample: ContainerSample, fs: FilesystemCapacity | None, now_ns: int
) -> list[MetricValue]:
    c = sample.container
    out = _Collector(_pod_labels(pod, c.name, c.id, c.image))
    out.add("container_last_seen", now_ns // NS_PER_S)
    out.add("container_start_time_seconds", c.started_ns // NS_PER_S if c.started_ns else None)
    usage = sample.cgroup
    if usage is not None:
        _add_cgroup_usage(out, usage)
    if sample.processes is not None:
        _add_processes(out, sample.processes)
    for io in usage.io if usage is not None else ():
        _add_device_io(out, io)
    if sample.writable_layer is not None:
        out.add("container_fs_usage_bytes", sample.writable_layer.used_bytes)
    if fs is not None:
        _add_filesystem_capacity(out, fs)
    _add_spec(out, c.resources or CgroupResources())
    return out.values


def _add_cgroup_usage(out: _Collector, usage: CgroupUsage) -> None:
    if usage.cpu is not None:
        _add_cpu(out, usage.cpu)
    if usage.memory is not None:
        _add_memory(out, usage.memory)
    _add_pressure(out, usage)
    for pages in usage.hugetlb:
        _add_hugetlb(out, pages)
    if usage.pids is not None:
        out.add("container_threads_max", usage.pids_limit or 0)


def _add_cpu(out: _Collector, cpu: CpuUsage) -> None:
    out.add("container_cpu_usage_seconds_total", cpu.usage_ns // NS_PER_S, "total", counter=True)
    out.add("container_cpu_user_seconds_total", cpu.user_ns // NS_PER_S, counter=True)
    out.add("container_cpu_system_seconds_total", cpu.system_ns // NS_PER_S, counter=True)
    out.add("container_cpu_cfs_periods_total", cpu.periods, counter=True)
    out.add("container_cpu_cfs_throttled_periods_total", cpu.throttled_periods, counter=True)
    out.add("container_cpu_cfs_throttled_seconds_total", cpu.throttled_ns // NS_PER_S, counter=True)


def _add_memory(out: _Collector, memory: MemoryUsage) -> None:
    out.add("container_memory_usage_bytes", memory.usage_bytes)
    out.add("container_memory_working_set_bytes", memory.working_set_bytes)
    out.add("container_memory_rss", memory.rss_bytes)
    out.add("container_memory_cache", memory.cache_bytes)
    out.add("container_memory_mapped_file", memory.mapped_file_bytes)
    out.add("container_memory_kernel_usage", memory.kernel_bytes)
    out.add("container_memory_swap", memory.swap_bytes)
    out.add("container_memory_max_usage_bytes", memory.max_usage_bytes)
    out.add("container_memory_failcnt", memory.failcnt, counter=True)
    # A container's cgroup has no children: its own and its hierarchy's count agree.
    for scope in ("container", "hierarchy"):
        out.add(
            "container_memory_failures_total", memory.page_faults, "pgfault", scope, counter=True
        )
        out.add(
            "container_memory_failures_total",
            memory.major_page_faults,
            "pgmajfault",
            scope,
            counter=True,
        )
    out.add("container_oom_events_total", memory.oom_kills, counter=True)
    # Read from the cgroup, as cAdvisor does (the CRI has no such resource): 0 when
    # unlimited, as cAdvisor sends it.
    out.add("container_spec_memory_reservation_limit_bytes", memory.reservation_bytes or 0)


def _add_pressure(out: _Collector, usage: CgroupUsage) -> None:
    cpu, memory = usage.cpu, usage.memory
    for resource, pressure in (
        ("cpu", cpu.pressure if cpu is not None else None),
        ("memory", memory.pressure if memory is not None else None),
        ("io", usage.io_pressure),
    ):
        if pressure is None:
            continue
        for kind, stall in (("waiting", pressure.some), ("stalled", pressure.full)):
            if stall is not None:
                out.add(
                    f"container_pressure_{resource}_{kind}_seconds_total",
                    stall.total_ns // NS_PER_S,
                    counter=True,
                )


def _add_hugetlb(out: _Collector, pages: HugetlbUsage) -> None:
    out.add("container_hugetlb_failcnt", pages.failcnt, pages.pagesize, counter=True)
    out.add("container_hugetlb_usage_bytes", pages.usage_bytes, pages.pagesize)
    # cgroup v2 keeps no peak: left out there (cAdvisor would send 0).
    out.add("container_hugetlb_max_usage_bytes", pages.max_usage_bytes, pages.pagesize)


def _add_processes(out: _Collector, processes: ProcessCounts) -> None:
    out.add("container_processes", processes.processes)
    out.add("container_threads", processes.threads)
    out.add("container_file_descriptors", processes.file_descriptors)
    out.add("container_sockets", processes.sockets)
    for ulimit in processes.ulimits:
        # The CRI carries no negative values: an unlimited soft limit (cAdvisor's
        # -1; never the case for open files, which the kernel always bounds) is
        # left out.
        out.add("container_ulimits_soft", ulimit.soft, ulimit.name)


def _add_device_io(out: _Collector, io: DeviceIo) -> None:
    device = device_name(io.major, io.minor)
    out.add("container_fs_reads_bytes_total", io.read_bytes, device, counter=True)
    out.add("container_fs_reads_total", io.reads, device, counter=True)
    out.add("container_fs_writes_bytes_total", io.write_bytes, device, counter=True)
    out.add("container_fs_writes_total", io.writes, device, counter=True)
    major, minor = str(io.major), str(io.minor)
    for operation, value in (("Read", io.read_bytes), ("Write", io.write_bytes)):
        out.add(
            "container_blkio_device_usage_total",
            value,
            device,
            major,
            minor,
            operation,
            counter=True,
        )


def _add_filesystem_capacity(out: _Collector, fs: FilesystemCapacity) -> None:
    out.add("container_fs_limit_bytes", fs.capacity_bytes)
    out.add("container_fs_inodes_total", fs.inodes)
    out.add("container_fs_inodes_free", fs.inodes_free)


def _add_spec(out: _Collector, resources: CgroupResources) -> None:
    """The limits the container was created with."""
    out.add("container_spec_cpu_period", resources.cpu_period or DEFAULT_CPU_PERIOD_US)
    quota = resources.cpu_quota
    out.add("container_spec_cpu_quota", quota if quota and quota > 0 else None)
    out.add("container_spec_cpu_shares", resources.cpu_shares or DEFAULT_CPU_SHARES)
    limit = resources.memory_limit
    out.add("container_spec_memory_limit_bytes", limit if limit and limit > 0 else 0)
    swap = resources.memory_swap
    out.add("container_spec_memory_swap_limit_bytes", swap if swap and swap > 0 else 0)
