"""Stats and metrics of containers and pod sandboxes: the StatsManager's samples as
CRI messages, and the cAdvisor-named metrics the kubelet serves from the runtime."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from api.runtime.v1 import api_pb2 as pb
from cri import cadvisor_metrics as metrics
from cri.server.common import Context
from cri.stats import ContainerSample, LayerUsage, PodSample, StatsManager
from network.netstats import InterfaceCounters
from runtime.cgroup_stats import CgroupUsage

# Items per message of a streaming response: far below the message size limit.
STREAM_BATCH = 200


def _u64(value: int) -> pb.UInt64Value:
    return pb.UInt64Value(value=max(value, 0))


def _cpu(usage: CgroupUsage, nano_cores: int | None) -> pb.CpuUsage | None:
    if usage.cpu is None:
        return None
    cpu = pb.CpuUsage(
        timestamp=usage.timestamp_ns, usage_core_nano_seconds=_u64(usage.cpu.usage_ns)
    )
    if nano_cores is not None:
        cpu.usage_nano_cores.CopyFrom(_u64(nano_cores))
    return cpu


def _memory(usage: CgroupUsage) -> pb.MemoryUsage | None:
    m = usage.memory
    if m is None:
        return None
    memory = pb.MemoryUsage(
        timestamp=usage.timestamp_ns,
        working_set_bytes=_u64(m.working_set_bytes),
        usage_bytes=_u64(m.usage_bytes),
        rss_bytes=_u64(m.rss_bytes),
        page_faults=_u64(m.page_faults),
        major_page_faults=_u64(m.major_page_faults),
    )
    if m.available_bytes is not None:
        memory.available_bytes.CopyFrom(_u64(m.available_bytes))
    return memory


def _filesystem(layer: LayerUsage) -> pb.FilesystemUsage:
    return pb.FilesystemUsage(
        timestamp=layer.timestamp_ns,
        fs_id=pb.FilesystemIdentifier(mountpoint=layer.mountpoint),
        used_bytes=_u64(layer.used_bytes),
        inodes_used=_u64(layer.inodes_used),
    )


def container_stats_to_proto(sample: ContainerSample) -> pb.ContainerStats:
    c = sample.container
    stats = pb.ContainerStats(
        attributes=pb.ContainerAttributes(
            id=c.id,
            metadata=pb.ContainerMetadata(name=c.name, attempt=c.attempt),
            labels=c.labels,
            annotations=c.annotations,
        )
    )
    usage = sample.cgroup
    if usage is not None:
        cpu = _cpu(usage, sample.nano_cores)
        if cpu is not None:
            stats.cpu.CopyFrom(cpu)
        memory = _memory(usage)
        if memory is not None:
            stats.memory.CopyFrom(memory)
        if usage.memory is not None and usage.memory.swap_bytes is not None:
            stats.swap.CopyFrom(
                pb.SwapUsage(
                    timestamp=usage.timestamp_ns,
                    swap_usage_bytes=_u64(usage.memory.swap_bytes),
                )
            )
    if sample.writable_layer is not None:
        stats.writable_layer.CopyFrom(_filesystem(sample.writable_layer))
    return stats


def _interface(counters: InterfaceCounters) -> pb.NetworkInterfaceUsage:
    return pb.NetworkInterfaceUsage(
        name=counters.name,
        rx_bytes=_u64(counters.rx_bytes),
        rx_errors=_u64(counters.rx_errors),
        tx_bytes=_u64(counters.tx_bytes),
        tx_errors=_u64(counters.tx_errors),
    )


def pod_stats_to_proto(sample: PodSample) -> pb.PodSandboxStats:
    pod = sample.sandbox
    linux = pb.LinuxPodSandboxStats(
        containers=[container_stats_to_proto(c) for c in sample.containers]
    )
    usage = sample.cgroup
    if usage is not None:
        cpu = _cpu(usage, sample.nano_cores)
        if cpu is not None:
            linux.cpu.CopyFrom(cpu)
        memory = _memory(usage)
        if memory is not None:
            linux.memory.CopyFrom(memory)
        if usage.pids is not None:
            linux.process.CopyFrom(
                pb.ProcessUsage(timestamp=usage.timestamp_ns, process_count=_u64(usage.pids))
            )
    network = sample.network
    if network is not None:
        linux.network.CopyFrom(
            pb.NetworkUsage(
                timestamp=network.timestamp_ns,
                interfaces=[_interface(i) for i in network.interfaces],
            )
        )
        if network.default is not None:
            linux.network.default_interface.CopyFrom(_interface(network.default))
    return pb.PodSandboxStats(
        attributes=pb.PodSandboxAttributes(
            id=pod.id,
            metadata=pb.PodSandboxMetadata(
                name=pod.name, uid=pod.uid, namespace=pod.namespace, attempt=pod.attempt
            ),
            labels=pod.labels,
            annotations=pod.annotations,
        ),
        linux=linux,
    )


def _metric(value: metrics.MetricValue, timestamp_ns: int) -> pb.Metric:
    return pb.Metric(
        name=value.name,
        timestamp=timestamp_ns,
        metric_type=pb.MetricType.COUNTER if value.counter else pb.MetricType.GAUGE,
        label_values=value.label_values,
        value=_u64(value.value),
    )


class StatsRPCs:
    stats: StatsManager

    async def _container_stats(self, f: pb.ContainerStatsFilter) -> list[pb.ContainerStats]:
        samples = await self.stats.list_containers(f.id, f.pod_sandbox_id, dict(f.label_selector))
        return [container_stats_to_proto(s) for s in samples]

    async def _pod_stats(self, f: pb.PodSandboxStatsFilter) -> list[pb.PodSandboxStats]:
        samples = await self.stats.list_pods(f.id, dict(f.label_selector))
        return [pod_stats_to_proto(s) for s in samples]

    async def _pod_metrics(self) -> list[pb.PodSandboxMetrics]:
        samples = await self.stats.list_pods(detailed=True)
        fs = self.stats.layers.capacity()
        now = time.time_ns()
        out = []
        for pod in samples:
            out.append(
                pb.PodSandboxMetrics(
                    pod_sandbox_id=pod.sandbox.id,
                    metrics=[_metric(v, now) for v in metrics.pod_metrics(pod)],
                    container_metrics=[
                        pb.ContainerMetrics(
                            container_id=c.container.id,
                            metrics=[
                                _metric(v, now) for v in metrics.container_metrics(pod, c, fs, now)
                            ],
                        )
                        for c in pod.containers
                    ],
                )
            )
        return out

    async def ContainerStats(
        self, request: pb.ContainerStatsRequest, context: Context
    ) -> pb.ContainerStatsResponse:
        sample = await self.stats.container(request.container_id)
        return pb.ContainerStatsResponse(stats=container_stats_to_proto(sample))

    async def ListContainerStats(
        self, request: pb.ListContainerStatsRequest, context: Context
    ) -> pb.ListContainerStatsResponse:
        return pb.ListContainerStatsResponse(stats=await self._container_stats(request.filter))

    async def StreamContainerStats(
        self, request: pb.StreamContainerStatsRequest, context: Context
    ) -> AsyncIterator[pb.StreamContainerStatsResponse]:
        items = await self._container_stats(request.filter)
        for start in range(0, max(len(items), 1), STREAM_BATCH):
            yield pb.StreamContainerStatsResponse(
                container_stats=items[start : start + STREAM_BATCH]
            )

    async def PodSandboxStats(
        self, request: pb.PodSandboxStatsRequest, context: Context
    ) -> pb.PodSandboxStatsResponse:
        sample = await self.stats.pod(request.pod_sandbox_id)
        return pb.PodSandboxStatsResponse(stats=pod_stats_to_proto(sample))

    async def ListPodSandboxStats(
        self, request: pb.ListPodSandboxStatsRequest, context: Context
    ) -> pb.ListPodSandboxStatsResponse:
        return pb.ListPodSandboxStatsResponse(stats=await self._pod_stats(request.filter))

    async def StreamPodSandboxStats(
        self, request: pb.StreamPodSandboxStatsRequest, context: Context
    ) -> AsyncIterator[pb.StreamPodSandboxStatsResponse]:
        items = await self._pod_stats(request.filter)
        for start in range(0, max(len(items), 1), STREAM_BATCH):
            yield pb.StreamPodSandboxStatsResponse(
                pod_sandbox_stats=items[start : start + STREAM_BATCH]
            )

    async def ListMetricDescriptors(
        self, request: pb.ListMetricDescriptorsRequest, context: Context
    ) -> pb.ListMetricDescriptorsResponse:
        return pb.ListMetricDescriptorsResponse(
            descriptors=[
                pb.MetricDescriptor(name=d.name, help=d.help, label_keys=d.label_keys)
                for d in metrics.DESCRIPTORS
            ]
        )

    async def ListPodSandboxMetrics(
        self, request: pb.ListPodSandboxMetricsRequest, context: Context
    ) -> pb.ListPodSandboxMetricsResponse:
        return pb.ListPodSandboxMetricsResponse(pod_metrics=await self._pod_metrics())

    async def StreamPodSandboxMetrics(
        self, request: pb.StreamPodSandboxMetricsRequest, context: Context
    ) -> AsyncIterator[pb.StreamPodSandboxMetricsResponse]:
        items = await self._pod_metrics()
        for start in range(0, max(len(items), 1), STREAM_BATCH):
            yield pb.StreamPodSandboxMetricsResponse(
                pod_sandbox_metrics=items[start : start + STREAM_BATCH]
            )
