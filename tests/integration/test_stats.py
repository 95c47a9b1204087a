"""Container and pod stats and metrics from the real skiffd: cgroup v1 figures of
running containers, a pod's network counters after real traffic over the CNI bridge,
filters, unknown ids and the metric descriptors the kubelet and critest expect."""

from __future__ import annotations

import secrets
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import grpc
import pytest

from api.runtime.v1 import api_pb2 as pb
from runtime.cgroups import cgroup_version
from runtime.oci_spec import host_facts
from tests.integration.nodes import MakeNode, Node, sandbox_config
from tests.integration.soak import open_files

T = TypeVar("T")
MiB = 1024 * 1024

BURN = ["sh", "-c", "while :; do :; done"]
IDLE = ["sleep", "1000"]


def _container_stats(node: Node, container_id: str) -> pb.ContainerStats:
    return node.runtime.ContainerStats(
        pb.ContainerStatsRequest(container_id=container_id), timeout=10
    ).stats


def _list_stats(node: Node, **filter_fields: object) -> list[pb.ContainerStats]:
    request = pb.ListContainerStatsRequest(filter=pb.ContainerStatsFilter(**filter_fields))  # type: ignore[arg-type]
    return list(node.runtime.ListContainerStats(request, timeout=10).stats)


def _pod_stats(node: Node, pod_id: str) -> pb.PodSandboxStats:
    return node.runtime.PodSandboxStats(
        pb.PodSandboxStatsRequest(pod_sandbox_id=pod_id), timeout=10
    ).stats


def _eventually(read: Callable[[], T], ok: Callable[[T], bool], timeout: float = 15) -> T:
    deadline = time.monotonic() + timeout
    value = read()
    while not ok(value):
        assert time.monotonic() < deadline, f"still not there after {timeout}s: {value}"
        time.sleep(0.2)
        value = read()
    return value


@contextmanager
def pod_with_cgroup(node: Node, name: str) -> Iterator[tuple[str, str]]:
    """A second pod on the node, with a pod cgroup of this test's own; yields
    (pod id, cgroup path). The cgroup goes with the pod; if anything is left, it is
    removed here (only this test's path)."""
    cgroup = f"/skiff-stats-{secrets.token_hex(4)}"
    config = sandbox_config(name, node.log_dir.parent / name)
    config.linux.cgroup_parent = cgroup
    pod = ""
    try:
        pod = node.runtime.RunPodSandbox(
            pb.RunPodSandboxRequest(config=config), timeout=30
        ).pod_sandbox_id
        yield pod, cgroup
    finally:
        if pod:
            node.runtime.RemovePodSandbox(
                pb.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=60
            )
        for hierarchy in Path("/sys/fs/cgroup").iterdir():
            leftover = hierarchy / cgroup.lstrip("/")
            if leftover.is_dir():
                leftover.rmdir()


def test_cpu_burner_shows_growing_usage_and_a_rate(make_node: MakeNode) -> None:
    node = make_node()
    burner = node.run("burner", command=BURN)
    idle = node.run("idle", command=IDLE)
    first = _eventually(
        lambda: _container_stats(node, burner),
        lambda s: s.cpu.usage_core_nano_seconds.value > 100_000_000,  # > 0.1 s of CPU
    )
    assert first.attributes.id == burner
    assert first.attributes.metadata.name == "burner"
    assert first.cpu.timestamp > 0 and first.memory.timestamp > 0
    _container_stats(node, idle)
    time.sleep(1.5)
    used = first.cpu.usage_core_nano_seconds.value
    second = _eventually(
        lambda: _container_stats(node, burner),
        lambda s: s.cpu.usage_core_nano_seconds.value - used > 300_000_000,
    )
    idle_second = _container_stats(node, idle)
    assert second.cpu.timestamp > first.cpu.timestamp
    assert second.HasField("cpu") and second.cpu.HasField("usage_nano_cores")
    # A busy loop uses about one core; sleeping uses next to nothing.
    assert second.cpu.usage_nano_cores.value > 200_000_000, second.cpu
    assert idle_second.cpu.usage_nano_cores.value < 50_000_000, idle_second.cpu
    # The working set of a shell loop is small but not zero, and no limit means no
    # available_bytes.
    assert 0 < second.memory.working_set_bytes.value < 64 * MiB
    assert not second.memory.HasField("available_bytes")


def test_memory_hog_shows_its_working_set_against_its_limit(make_node: MakeNode) -> None:
    node = make_node()
    limit = 256 * MiB
    resources = pb.LinuxContainerResources(memory_limit_in_bytes=limit)
    # 40 MiB written into the pod's /dev/shm (tmpfs) stay charged to the writer's cgroup
    # as shared memory, which is never inactive file cache: all of it is working set.
    hog = node.run(
        "hog",
        command=["sh", "-c", "dd if=/dev/zero of=/dev/shm/fill bs=1M count=40; sleep 1000"],
        linux=pb.LinuxContainerConfig(resources=resources),
    )
    idle = node.run("idle", command=IDLE)
    stats = _eventually(
        lambda: _container_stats(node, hog),
        lambda s: s.memory.working_set_bytes.value >= 40 * MiB,
    )
    memory = stats.memory
    assert memory.usage_bytes.value >= memory.working_set_bytes.value
    assert memory.available_bytes.value == limit - memory.working_set_bytes.value
    assert memory.page_faults.value > 0
    idle_memory = _container_stats(node, idle).memory
    assert idle_memory.working_set_bytes.value < 20 * MiB
    if cgroup_version() == 1:  # swap is reported where the kernel accounts it (memsw)
        accounted = Path("/sys/fs/cgroup/memory/memory.memsw.usage_in_bytes").exists()
        assert stats.HasField("swap") == accounted
        # A memory limit alone sets no swap limit: nothing to be available below.
        assert not stats.swap.HasField("swap_available_bytes")


def _swap_accounted() -> bool:
    if cgroup_version() == 1:
        return Path("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists()
    return any(Path("/sys/fs/cgroup").glob("*/memory.swap.max"))


@pytest.mark.skipif(not _swap_accounted(), reason="the kernel accounts no swap to cgroups")
def test_swap_available_is_what_the_swap_limit_leaves(make_node: MakeNode) -> None:
    node = make_node()
    # The CRI's swap limit is memory plus swap (as v1's memsw): 96 MiB over a 64 MiB
    # limit allows 32 MiB of swap.
    limited = node.run(
        "swapper",
        command=IDLE,
        linux=pb.LinuxContainerConfig(
            resources=pb.LinuxContainerResources(
                memory_limit_in_bytes=64 * MiB, memory_swap_limit_in_bytes=96 * MiB
            )
        ),
    )
    unlimited = node.run(
        "plain",
        command=IDLE,
        linux=pb.LinuxContainerConfig(
            resources=pb.LinuxContainerResources(memory_limit_in_bytes=64 * MiB)
        ),
    )
    swap = _container_stats(node, limited).swap
    assert swap.timestamp > 0
    assert swap.HasField("swap_available_bytes"), swap
    assert swap.swap_available_bytes.value == 32 * MiB - swap.swap_usage_bytes.value
    # No swap limit of its own: usage is known, what is available is not.
    plain = _container_stats(node, unlimited).swap
    assert plain.HasField("swap_usage_bytes")
    assert not plain.HasField("swap_available_bytes")
    # The pod's stats carry each container's swap (the CRI has no pod-level swap).
    pod = {c.attributes.id: c for c in _pod_stats(node, node.pod).linux.containers}
    assert pod[limited].swap.swap_available_bytes.value == swap.swap_available_bytes.value
    assert not pod[unlimited].swap.HasField("swap_available_bytes")


def test_pod_stats_network_counters_grow_with_traffic(make_node: MakeNode) -> None:
    node = make_node()
    node.run(
        "web",
        command=[
            "sh",
            "-c",
            "mkdir -p /www; head -c 300000 /dev/zero > /www/blob; httpd -f -p 8080 -h /www",
        ],
    )
    ip = node.runtime.PodSandboxStatus(
        pb.PodSandboxStatusRequest(pod_sandbox_id=node.pod)
    ).status.network.ip
    time.sleep(0.5)
    before = _pod_stats(node, node.pod)
    network = before.linux.network
    assert network.timestamp > 0
    assert network.default_interface.name == "eth0"
    assert {i.name for i in network.interfaces} >= {"lo", "eth0"}
    with urllib.request.urlopen(f"http://{ip}:8080/blob", timeout=10) as response:
        assert len(response.read()) == 300000
    after = _pod_stats(node, node.pod).linux.network.default_interface
    sent = after.tx_bytes.value - network.default_interface.tx_bytes.value
    received = after.rx_bytes.value - network.default_interface.rx_bytes.value
    assert sent >= 300000, sent
    assert 0 < received < sent
    # The pod's containers are in its stats; the pod's cgroup (skiff's own here: the
    # pod names no cgroup parent) holds them.
    stats = _pod_stats(node, node.pod)
    assert [c.attributes.metadata.name for c in stats.linux.containers] == ["web"]
    web = stats.linux.containers[0]
    assert stats.linux.cpu.usage_core_nano_seconds.value >= web.cpu.usage_core_nano_seconds.value
    assert stats.linux.process.process_count.value >= 1
    assert stats.attributes.metadata.name == "pod"

    metrics = node.runtime.ListPodSandboxMetrics(pb.ListPodSandboxMetricsRequest()).pod_metrics
    ours = next(m for m in metrics if m.pod_sandbox_id == node.pod)
    transmitted = next(
        m
        for m in ours.metrics
        if m.name == "container_network_transmit_bytes_total" and m.label_values[-1] == "eth0"
    )
    assert transmitted.value.value >= after.tx_bytes.value
    assert transmitted.metric_type == pb.MetricType.COUNTER


def test_pod_cgroup_totals_and_processes(make_node: MakeNode) -> None:
    node = make_node()
    with pod_with_cgroup(node, "cgpod") as (pod, cgroup):
        burner = node.run("burner", command=BURN, pod=pod)
        node.run("idle", command=["sh", "-c", "sleep 1000 & sleep 1000"], pod=pod)
        first = _eventually(
            lambda: _pod_stats(node, pod), lambda s: s.linux.process.process_count.value == 5
        )
        time.sleep(1.0)
        stats = _pod_stats(node, pod)
        assert stats.attributes.id == pod
        # The pod cgroup holds both containers and their conmons: its CPU covers the
        # burner's, its processes are the burner's shell, the idle container's two
        # sleeps (its shell execs the last command) and the two conmons.
        containers = {c.attributes.metadata.name: c for c in stats.linux.containers}
        assert set(containers) == {"burner", "idle"}
        burner_cpu = containers["burner"].cpu.usage_core_nano_seconds.value
        assert stats.linux.cpu.usage_core_nano_seconds.value >= burner_cpu
        assert stats.linux.cpu.usage_nano_cores.value > 200_000_000
        assert stats.linux.process.process_count.value == 5
        assert stats.linux.memory.working_set_bytes.value > 0
        assert first.linux.cpu.timestamp < stats.linux.cpu.timestamp
        usage_file = Path(f"/sys/fs/cgroup/cpuacct{cgroup}/cpuacct.usage")
        assert int(usage_file.read_text()) >= stats.linux.cpu.usage_core_nano_seconds.value
        node.runtime.StopContainer(pb.StopContainerRequest(container_id=burner, timeout=0))
        after = _pod_stats(node, pod)
        assert [c.attributes.metadata.name for c in after.linux.containers] == ["idle"]


def test_filters_states_and_unknown_ids(make_node: MakeNode) -> None:
    node = make_node()
    tagged = node.run("tagged", command=IDLE, labels={"app": "stats", "tier": "a"})
    other = node.run("other", command=IDLE, labels={"app": "stats", "tier": "b"})
    done = node.run("done", command=["true"])
    node.wait_exit(done)

    def ids(stats: list[pb.ContainerStats]) -> set[str]:
        return {s.attributes.id for s in stats}

    # Exited containers are not listed, as in cri-o and containerd.
    assert ids(_list_stats(node)) == {tagged, other}
    assert ids(_list_stats(node, id=tagged)) == {tagged}
    assert ids(_list_stats(node, id=tagged[:12])) == {tagged}
    assert ids(_list_stats(node, pod_sandbox_id=node.pod)) == {tagged, other}
    assert ids(_list_stats(node, pod_sandbox_id="0" * 64)) == set()
    assert ids(_list_stats(node, label_selector={"app": "stats"})) == {tagged, other}
    assert ids(_list_stats(node, label_selector={"tier": "b"})) == {other}
    assert ids(_list_stats(node, label_selector={"tier": "c"})) == set()
    # By id, an exited container is answered, without cgroup figures.
    exited = _container_stats(node, done)
    assert exited.attributes.id == done
    assert not exited.HasField("cpu") and not exited.HasField("memory")

    streamed = [
        s.attributes.id
        for response in node.runtime.StreamContainerStats(
            pb.StreamContainerStatsRequest(filter=pb.ContainerStatsFilter(id=other))
        )
        for s in response.container_stats
    ]
    assert streamed == [other]

    pods = node.runtime.ListPodSandboxStats(
        pb.ListPodSandboxStatsRequest(filter=pb.PodSandboxStatsFilter(id=node.pod))
    ).stats
    assert [p.attributes.id for p in pods] == [node.pod]
    none = node.runtime.ListPodSandboxStats(
        pb.ListPodSandboxStatsRequest(
            filter=pb.PodSandboxStatsFilter(label_selector={"no": "such"})
        )
    ).stats
    assert list(none) == []
    streamed_pods = [
        p.attributes.id
        for response in node.runtime.StreamPodSandboxStats(pb.StreamPodSandboxStatsRequest())
        for p in response.pod_sandbox_stats
    ]
    assert streamed_pods == [node.pod]

    missing = "f" * 64
    for call in (
        lambda: _container_stats(node, missing),
        lambda: _pod_stats(node, missing),
    ):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert missing in (err.value.details() or "")


def test_writable_layer_and_container_filesystem(make_node: MakeNode) -> None:
    node = make_node()
    writer = node.run(
        "writer",
        command=["sh", "-c", "head -c 3000000 /dev/urandom > /data.bin && touch /done; sleep 1000"],
    )
    _eventually(lambda: node.exec(writer, "test", "-f", "/done").exit_code, lambda rc: rc == 0)
    stats = _eventually(
        lambda: _container_stats(node, writer),
        lambda s: s.writable_layer.used_bytes.value >= 3_000_000,
    )
    layer = stats.writable_layer
    assert layer.inodes_used.value >= 3  # the upper dir and the two files
    info = node.daemon.images().ImageFsInfo(pb.ImageFsInfoRequest())
    # One disk: the kubelet must see the image and container filesystems as the same one
    # (it compares their names), and the writable layers on it.
    (image_fs,) = info.image_filesystems
    assert [fs.fs_id.mountpoint for fs in info.container_filesystems] == [image_fs.fs_id.mountpoint]
    assert layer.fs_id.mountpoint == image_fs.fs_id.mountpoint
    assert info.container_filesystems[0].used_bytes.value >= layer.used_bytes.value
    assert info.image_filesystems[0].used_bytes.value > 0
    # The layer is measured in the background, not walked per call: what is written
    # now shows up at the next refresh (every 10 s), not in the very next answer.
    node.exec(writer, "sh", "-c", "head -c 2000000 /dev/urandom > /more.bin")
    right_after = _container_stats(node, writer).writable_layer
    assert right_after.timestamp < time.time_ns()
    assert right_after.used_bytes.value < layer.used_bytes.value + 2_000_000
    _eventually(
        lambda: _container_stats(node, writer).writable_layer.used_bytes.value,
        lambda used: used >= layer.used_bytes.value + 2_000_000,
        timeout=25,
    )


def _container_series(node: Node, container_id: str) -> dict[str, list[pb.Metric]]:
    pod_metrics = node.runtime.ListPodSandboxMetrics(pb.ListPodSandboxMetricsRequest()).pod_metrics
    ours = next(m for m in pod_metrics if m.pod_sandbox_id == node.pod)
    (container,) = [c for c in ours.container_metrics if c.container_id == container_id]
    series: dict[str, list[pb.Metric]] = {}
    for metric in container.metrics:
        series.setdefault(metric.name, []).append(metric)
    return series


def test_soft_ulimits_are_those_of_the_container_init(make_node: MakeNode) -> None:
    node = make_node()
    # The shell lowers its own soft open-files limit, then execs: the container's first
    # process keeps its pid and the lowered limit.
    cid = node.run("limited", command=["sh", "-c", "ulimit -S -n 321 && exec sleep 1000"])
    descriptor = next(
        d
        for d in node.runtime.ListMetricDescriptors(pb.ListMetricDescriptorsRequest()).descriptors
        if d.name == "container_ulimits_soft"
    )
    assert list(descriptor.label_keys[-1:]) == ["ulimit"]

    def soft_ulimits() -> list[pb.Metric]:
        return _container_series(node, cid).get("container_ulimits_soft", [])

    (metric,) = _eventually(soft_ulimits, lambda found: [m.value.value for m in found] == [321])
    assert metric.label_values[-1] == "max_open_files"
    assert metric.metric_type == pb.MetricType.GAUGE


# Block I/O: critest expects the descriptors, and values only where the node accounts
# block I/O to cgroups (not on overlay over a virtual disk, nor on tmpfs).
BLOCK_IO_METRICS = {
    "container_blkio_device_usage_total",
    "container_fs_reads_bytes_total",
    "container_fs_reads_total",
    "container_fs_writes_bytes_total",
    "container_fs_writes_total",
}
# The names critest (pkg/validate/pod.go) expects with values, less the ones it lets
# runtimes leave out for now.
EXPECTED_METRICS = {
    "container_cpu_cfs_periods_total",
    "container_cpu_cfs_throttled_periods_total",
    "container_cpu_cfs_throttled_seconds_total",
    "container_cpu_system_seconds_total",
    "container_cpu_usage_seconds_total",
    "container_cpu_user_seconds_total",
    "container_file_descriptors",
    "container_fs_inodes_free",
    "container_fs_inodes_total",
    "container_fs_limit_bytes",
    "container_fs_usage_bytes",
    "container_last_seen",
    "container_memory_cache",
    "container_memory_failcnt",
    "container_memory_failures_total",
    "container_memory_kernel_usage",
    "container_memory_mapped_file",
    "container_memory_max_usage_bytes",
    "container_memory_rss",
    "container_memory_swap",
    "container_memory_usage_bytes",
    "container_memory_working_set_bytes",
    "container_network_receive_bytes_total",
    "container_network_receive_errors_total",
    "container_network_receive_packets_dropped_total",
    "container_network_receive_packets_total",
    "container_network_transmit_bytes_total",
    "container_network_transmit_errors_total",
    "container_network_transmit_packets_dropped_total",
    "container_network_transmit_packets_total",
    "container_oom_events_total",
    "container_processes",
    "container_sockets",
    "container_spec_cpu_period",
    "container_spec_cpu_shares",
    "container_spec_memory_limit_bytes",
    "container_spec_memory_swap_limit_bytes",
    "container_start_time_seconds",
    "container_threads",
    "container_threads_max",
}


def test_metric_descriptors_and_pod_metrics_agree(make_node: MakeNode) -> None:
    node = make_node()
    limits = pb.LinuxContainerResources(
        cpu_period=100000, cpu_quota=20000, cpu_shares=512, memory_limit_in_bytes=64 * MiB
    )
    cid = node.run("metered", command=IDLE, linux=pb.LinuxContainerConfig(resources=limits))
    descriptors = {
        d.name: d
        for d in node.runtime.ListMetricDescriptors(pb.ListMetricDescriptorsRequest()).descriptors
    }
    wanted = EXPECTED_METRICS | BLOCK_IO_METRICS
    assert set(descriptors) >= wanted, wanted - set(descriptors)
    assert all(d.help and d.label_keys for d in descriptors.values())
    assert list(descriptors["container_cpu_usage_seconds_total"].label_keys[-1:]) == ["cpu"]
    assert list(descriptors["container_network_receive_bytes_total"].label_keys[-1:]) == [
        "interface"
    ]
    hugetlb = {n for n in descriptors if n.startswith("container_hugetlb_")}
    pressure = {n for n in descriptors if n.startswith("container_pressure_")}
    host = host_facts(restrict_oom_score_adj=True)
    if host.hugetlb_controller and host.hugepage_sizes:
        for name in ("container_hugetlb_usage_bytes", "container_hugetlb_max_usage_bytes"):
            assert list(descriptors[name].label_keys[-1:]) == ["pagesize"]
    else:
        # Series the node can never report are not advertised (critest checks this).
        assert hugetlb == set()
    assert (pressure != set()) == (host.cgroup_version == 2)

    pod_metrics = node.runtime.ListPodSandboxMetrics(pb.ListPodSandboxMetricsRequest()).pod_metrics
    ours = next(m for m in pod_metrics if m.pod_sandbox_id == node.pod)
    assert [c.container_id for c in ours.container_metrics] == [cid]
    series = list(ours.metrics) + list(ours.container_metrics[0].metrics)
    found = {m.name for m in series}
    assert found >= EXPECTED_METRICS, EXPECTED_METRICS - found
    # Every descriptor but the block I/O ones (no per-device stats on a virtual disk, as
    # critest allows) has its series.
    assert set(descriptors) - BLOCK_IO_METRICS - found == set()
    for metric in series:
        keys = descriptors[metric.name].label_keys
        assert len(metric.label_values) == len(keys), metric.name
    values = {m.name: m for m in ours.container_metrics[0].metrics}
    labels = dict(
        zip(
            descriptors["container_spec_cpu_shares"].label_keys,
            values["container_spec_cpu_shares"].label_values,
            strict=True,
        )
    )
    assert labels["id"] == cid and labels["container"] == "metered" and labels["pod"] == "pod"
    assert values["container_spec_cpu_shares"].value.value == 512
    assert values["container_spec_cpu_quota"].value.value == 20000
    assert values["container_spec_memory_limit_bytes"].value.value == 64 * MiB
    assert values["container_processes"].value.value == 1
    # Nothing sets a soft limit (v1) or memory.min (v2) here: 0, as cAdvisor sends it.
    reservation = values["container_spec_memory_reservation_limit_bytes"]
    assert (reservation.value.value, reservation.metric_type) == (0, pb.MetricType.GAUGE)
    assert values["container_memory_working_set_bytes"].metric_type == pb.MetricType.GAUGE
    if cgroup_version() == 1 and not Path("/sys/fs/cgroup/hugetlb").is_dir():
        # No v1 hugetlb hierarchy, no huge page figures (rather than zeros).
        assert not any(m.name.startswith("container_hugetlb_") for m in series)
    streamed = [
        m.pod_sandbox_id
        for response in node.runtime.StreamPodSandboxMetrics(pb.StreamPodSandboxMetricsRequest())
        for m in response.pod_sandbox_metrics
    ]
    assert streamed == [node.pod]


def test_the_cgroup_files_of_removed_containers_and_pods_are_let_go(make_node: MakeNode) -> None:
    # Stats read cgroup files through descriptors kept open; kept past the removal
    # they would hold on to removed cgroups until some later unfiltered stats list.
    node = make_node()
    assert node.daemon.proc is not None
    skiffd = node.daemon.proc.pid
    pod = node.runtime.RunPodSandbox(
        pb.RunPodSandboxRequest(config=sandbox_config("let-go", node.log_dir.parent / "let-go")),
        timeout=30,
    ).pod_sandbox_id
    cid = node.run("idle", pod=pod, command=IDLE)
    _container_stats(node, cid)
    _pod_stats(node, pod)

    def held(marker: str) -> list[str]:
        return [path for path in open_files(skiffd) if marker in path]

    assert held(f"skiff-{cid[:12]}") != [] and held(f"pod-{pod[:12]}") != []
    node.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0), timeout=30)
    node.remove(cid)
    assert held(f"skiff-{cid[:12]}") == []
    node.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=30)
    node.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=30)
    assert held(f"pod-{pod[:12]}") == []
