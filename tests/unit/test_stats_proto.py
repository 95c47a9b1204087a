"""Stats samples as CRI messages: what is unknown stays unset, PSI where v2 has it."""

from __future__ import annotations

from dataclasses import replace

from api.runtime.v1 import api_pb2 as pb
from cri.server.stats import container_stats_to_proto, pod_metrics_to_proto, pod_stats_to_proto
from cri.stats import ContainerSample, LayerUsage, NetworkSample, PodSample
from network.netstats import InterfaceCounters
from runtime.cgroup_stats import CgroupUsage, CpuUsage, MemoryUsage, Pressure, Stall
from tests.unit.records import container_record, sandbox_record, stats_sample

PRESSURE = Pressure(Stall(5000, 1.5, 0.5, 0.25), None)


def test_a_running_v2container_record() -> None:
    usage = CgroupUsage(
        42,
        CpuUsage(usage_ns=900, pressure=PRESSURE),
        MemoryUsage(
            usage_bytes=300,
            working_set_bytes=200,
            rss_bytes=100,
            page_faults=7,
            major_page_faults=1,
            limit_bytes=1000,
            available_bytes=800,
            swap_bytes=0,
            swap_available_bytes=4096,
            pressure=PRESSURE,
        ),
        pids=2,
        io_pressure=PRESSURE,
    )
    layer = LayerUsage("/var/lib/skiff/containers", 4096, 3, 41)
    stats = container_stats_to_proto(ContainerSample(container_record(), usage, 450, layer))
    assert stats.attributes.metadata.name == "web"
    assert (stats.cpu.timestamp, stats.cpu.usage_core_nano_seconds.value) == (42, 900)
    assert stats.cpu.usage_nano_cores.value == 450
    assert stats.cpu.psi.Some.Total == 5000 and stats.cpu.psi.Some.Avg10 == 1.5
    assert not stats.cpu.psi.HasField("Full")
    memory = stats.memory
    assert (memory.working_set_bytes.value, memory.available_bytes.value) == (200, 800)
    assert (memory.page_faults.value, memory.major_page_faults.value) == (7, 1)
    assert memory.psi.Some.Avg300 == 0.25
    assert stats.swap.HasField("swap_usage_bytes") and stats.swap.swap_usage_bytes.value == 0
    assert stats.swap.swap_available_bytes.value == 4096
    assert stats.swap.timestamp == 42
    # Swap accounted but no swap limit: usage without an available figure.
    assert usage.memory is not None
    unlimited = replace(usage, memory=replace(usage.memory, swap_available_bytes=None))
    no_limit = container_stats_to_proto(ContainerSample(container_record(), unlimited, 450, layer))
    assert no_limit.swap.HasField("swap_usage_bytes")
    assert not no_limit.swap.HasField("swap_available_bytes")
    assert stats.io.psi.Some.Total == 5000
    assert stats.writable_layer.used_bytes.value == 4096
    assert stats.writable_layer.fs_id.mountpoint == "/var/lib/skiff/containers"


def test_what_is_not_known_is_left_unset() -> None:
    # The first sample has no rate yet; v1 has no PSI; no limit, no available bytes.
    usage = CgroupUsage(1, CpuUsage(5), MemoryUsage(10, 5, 1), None)
    stats = container_stats_to_proto(ContainerSample(container_record(), usage, None, None))
    assert not stats.cpu.HasField("usage_nano_cores")
    assert not stats.cpu.HasField("psi")
    assert not stats.memory.HasField("available_bytes")
    assert not stats.HasField("swap") and not stats.HasField("io")
    assert not stats.HasField("writable_layer")
    # No cgroup (an exited container): no CPU or memory figures at all, not zeros.
    gone = container_stats_to_proto(
        ContainerSample(container_record(state="exited"), None, None, None)
    )
    assert not gone.HasField("cpu") and not gone.HasField("memory")


def test_a_pod_with_its_network_and_containers() -> None:
    eth0 = InterfaceCounters("eth0", 1000, 10, 1, 0, 500, 5, 2, 0)
    lo = InterfaceCounters("lo", 70, 1, 0, 0, 70, 1, 0, 0)
    usage = CgroupUsage(9, CpuUsage(100), MemoryUsage(10, 5, 1), pids=4)
    container = ContainerSample(container_record(), usage, None, None)
    pod = PodSample(sandbox_record(), usage, 33, NetworkSample(8, (lo, eth0), eth0), (container,))
    stats = pod_stats_to_proto(pod)
    assert stats.attributes.metadata.namespace == "prod"
    assert stats.linux.cpu.usage_nano_cores.value == 33
    assert stats.linux.process.process_count.value == 4
    network = stats.linux.network
    assert network.timestamp == 8
    assert network.default_interface.name == "eth0"
    assert (
        network.default_interface.rx_errors.value,
        network.default_interface.tx_errors.value,
    ) == (
        1,
        2,
    )
    assert [i.name for i in network.interfaces] == ["lo", "eth0"]
    assert [c.attributes.id for c in stats.linux.containers] == [container.container.id]
    no_network = pod_stats_to_proto(PodSample(sandbox_record(), None, None, None, ()))
    assert not no_network.linux.HasField("network") and not no_network.linux.HasField("cpu")
    # Only loopback left (CNI has just taken eth0 away): no network usage at all, since
    # the kubelet dereferences default_interface whenever network is set.
    only_lo = PodSample(sandbox_record(), usage, None, NetworkSample(8, (lo,), None), ())
    assert not pod_stats_to_proto(only_lo).linux.HasField("network")


def test_pod_metrics_as_messages() -> None:
    pod, container = stats_sample()
    (message,) = pod_metrics_to_proto([pod], None, 77)
    assert message.pod_sandbox_id == pod.sandbox.id
    received = next(m for m in message.metrics if m.name == "container_network_receive_bytes_total")
    assert (received.value.value, received.timestamp) == (1000, 77)
    assert received.metric_type == pb.MetricType.COUNTER
    (ours,) = message.container_metrics
    assert ours.container_id == container.container.id
    rss = next(m for m in ours.metrics if m.name == "container_memory_rss")
    assert (rss.value.value, rss.metric_type) == (100, pb.MetricType.GAUGE)
    assert list(rss.label_values[:2]) == ["web", container.container.id]
