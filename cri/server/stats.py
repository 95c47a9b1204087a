"""Stats and metrics of containers and pod sandboxes: the StatsManager's samples as
CRI messages, and the cAdvisor-named metrics the kubelet serves from the runtime."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from api.runtime.v1 import api_pb2 as pb
from cri import cadvisor_metrics as metrics
from cri.server.common import Context, batches
from cri.stats import ContainerSample, FilesystemCapacity, LayerUsage, PodSample, StatsManager
from network.netstats import InterfaceCounters
from runtime.cgroup_stats import CgroupUsage, Pressure, Stall


def _u64(value: int) -> pb.UInt64Value:
    return pb.UInt64Value(value=max(value, 0))


def _stall(stall: Stall | None) -> pb.PsiData | None:
    if stall is None:
        return None
    return pb.PsiData(
        Total=stall.total_ns, Avg10=stall.avg10, Avg60=stall.avg60, Avg300=stall.avg300
    )


def _psi(pressure: Pressure | None) -> pb.PsiStats | None:
    if pressure is None:
        return None
    return pb.PsiStats(Full=_stall(pressure.full), Some=_stall(pressure.some))


def _cpu(usage: CgroupUsage | None, nano_cores: int | None) -> pb.CpuUsage | None:
    if usage is None or usage.cpu is None:
        return None
    return pb.CpuUsage(
        timestamp=usage.timestamp_ns,
        usage_core_nano_seconds=_u64(usage.cpu.usage_ns),
        usage_nano_cores=_u64(nano_cores) if nano_cores is not None else None,
        psi=_psi(usage.cpu.pressure),
    )


def _io(usage: CgroupUsage | None) -> pb.IoUsage | None:
    if usage is None or usage.io_pressure is None:
        return None
    return pb.IoUsage(timestamp=usage.timestamp_ns, psi=_psi(usage.io_pressure))


def _memory(usage: CgroupUsage | None) -> pb.MemoryUsage | None:
    m = usage.memory if usage is not None else None
    if usage is None or m is None:
        return None
    return pb.MemoryUsage(
        timestamp=usage.timestamp_ns,
        working_set_bytes=_u64(m.working_set_bytes),
        available_bytes=_u64(m.available_bytes) if m.available_bytes is not None else None,
        usage_bytes=_u64(m.usage_bytes),
        rss_bytes=_u64(m.rss_bytes),
        page_faults=_u64(m.page_faults),
        major_page_faults=_u64(m.major_page_faults),
        psi=_psi(m.pressure),
    )


def _swap(usage: CgroupUsage | None) -> pb.SwapUsage | None:
    m = usage.memory if usage is not None else None
    if usage is None or m is None or m.swap_bytes is None:
        return None
    # Without a swap limit there is no "available" to speak of: unset rather than 0, as
    # the kubelet leaves it when it reads cAdvisor, and as containerd's CRI does.
    return pb.SwapUsage(
        timestamp=usage.timestamp_ns,
        swap_usage_bytes=_u64(m.swap_bytes),
        swap_available_bytes=(
            _u64(m.swap_available_bytes) if m.swap_available_bytes is not None else None
        ),
    )


def _filesystem(layer: LayerUsage | None) -> pb.FilesystemUsage | None:
    if layer is None:
        return None
    return pb.FilesystemUsage(
        timestamp=layer.timestamp_ns,
        fs_id=pb.FilesystemIdentifier(mountpoint=layer.mountpoint),
        used_bytes=_u64(layer.used_bytes),
        inodes_used=_u64(layer.inodes_used),
    )


def container_stats_to_proto(sample: ContainerSample) -> pb.ContainerStats:
    c = sample.container
    usage = sample.cgroup
    # Unset parts (None) stay unset: a container without a cgroup has no CPU figures,
    # which is not the same as zero.
    return pb.ContainerStats(
        attributes=pb.ContainerAttributes(
            id=c.id,
            metadata=pb.ContainerMetadata(name=c.name, attempt=c.attempt),
            labels=c.labels,
            annotations=c.annotations,
        ),
        cpu=_cpu(usage, sample.nano_cores),
        memory=_memory(usage),
        swap=_swap(usage),
        writable_layer=_filesystem(sample.writable_layer),
        io=_io(usage),
    )


def _interface(counters: InterfaceCounters) -> pb.NetworkInterfaceUsage:
    return pb.NetworkInterfaceUsage(
        name=counters.name,
        rx_bytes=_u64(counters.rx_bytes),
        rx_errors=_u64(counters.rx_errors),
        tx_bytes=_u64(counters.tx_bytes),
        tx_errors=_u64(counters.tx_errors),
    )


def _network(sample: PodSample) -> pb.NetworkUsage | None:
    network = sample.network
    # Without its default interface (a pod whose eth0 CNI has just taken away) there
    # is no network usage to report: the kubelet reads default_interface whenever the
    # field is set, and a nil one crashes it (v1.36 addCRIPodNetworkStats).
    if network is None or network.default is None:
        return None
    return pb.NetworkUsage(
        timestamp=network.timestamp_ns,
        default_interface=_interface(network.default),
        interfaces=[_interface(i) for i in network.interfaces],
    )


def pod_stats_to_proto(sample: PodSample) -> pb.PodSandboxStats:
    pod = sample.sandbox
    usage = sample.cgroup
    process = None
    if usage is not None and usage.pids is not None:
        process = pb.ProcessUsage(timestamp=usage.timestamp_ns, process_count=_u64(usage.pids))
    return pb.PodSandboxStats(
        attributes=pb.PodSandboxAttributes(
            id=pod.id,
            metadata=pb.PodSandboxMetadata(
                name=pod.name, uid=pod.uid, namespace=pod.namespace, attempt=pod.attempt
            ),
            labels=pod.labels,
            annotations=pod.annotations,
        ),
        linux=pb.LinuxPodSandboxStats(
            cpu=_cpu(usage, sample.nano_cores),
            memory=_memory(usage),
            network=_network(sample),
            process=process,
            containers=[container_stats_to_proto(c) for c in sample.containers],
            io=_io(usage),
        ),
    )


def _add_metrics(
    into: RepeatedCompositeFieldContainer[pb.Metric],
    values: list[metrics.MetricValue],
    timestamp_ns: int,
) -> None:
    """Append ``values`` to a repeated Metric field. Thousands per scrape: adding in
    place costs a third of building each message and its UInt64Value apart."""
    for v in values:
        metric = into.add(
            name=v.name,
            timestamp=timestamp_ns,
            metric_type=pb.MetricType.COUNTER if v.counter else pb.MetricType.GAUGE,
            label_values=v.label_values,
        )
        metric.value.value = v.value


def pod_metrics_to_proto(
    samples: list[PodSample], fs: FilesystemCapacity | None, now_ns: int
) -> list[pb.PodSandboxMetrics]:
    out = []
    for pod in samples:
        message = pb.PodSandboxMetrics(pod_sandbox_id=pod.sandbox.id)
        _add_metrics(message.metrics, metrics.pod_metrics(pod), now_ns)
        for c in pod.containers:
            container = message.container_metrics.add(container_id=c.container.id)
            _add_metrics(container.metrics, metrics.container_metrics(pod, c, fs, now_ns), now_ns)
        out.append(message)
    return out


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
        # Some 50 series per container: built on a worker thread, so that the event
        # loop keeps answering other calls meanwhile.
        return await asyncio.to_thread(pod_metrics_to_proto, samples, fs, time.time_ns())

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
        for batch in batches(items):
            yield pb.StreamContainerStatsResponse(container_stats=batch)

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
        for batch in batches(items):
            yield pb.StreamPodSandboxStatsResponse(pod_sandbox_stats=batch)

    async def ListMetricDescriptors(
        self, request: pb.ListMetricDescriptorsRequest, context: Context
    ) -> pb.ListMetricDescriptorsResponse:
        host = await asyncio.to_thread(self.stats.containers.host)
        reportable = metrics.descriptors(
            hugetlb=host.hugetlb_controller and bool(host.hugepage_sizes),
            pressure=host.cgroup_version == 2,
        )
        return pb.ListMetricDescriptorsResponse(
            descriptors=[
                pb.MetricDescriptor(name=d.name, help=d.help, label_keys=d.label_keys)
                for d in reportable
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
        for batch in batches(items):
            yield pb.StreamPodSandboxMetricsResponse(pod_sandbox_metrics=batch)
