"""The cAdvisor-named series built from stats samples: names, labels and values."""

from __future__ import annotations

from dataclasses import replace

from cri import cadvisor_metrics as metrics
from cri.stats import ContainerSample, FilesystemCapacity, PodSample
from runtime.cgroup_stats import HugetlbUsage, Ulimit
from tests.unit.records import stats_sample

S = 1_000_000_000
MIB = 1 << 20


def _with_hugetlb(container: ContainerSample, *pages: HugetlbUsage) -> ContainerSample:
    assert container.cgroup is not None
    return replace(container, cgroup=replace(container.cgroup, hugetlb=pages))


def _series(
    pod: PodSample, container: ContainerSample, name: str
) -> dict[tuple[str, ...], metrics.MetricValue]:
    """The container's series of one metric, by their own label values."""
    base = len(metrics.BASE_LABELS)
    return {
        v.label_values[base:]: v
        for v in metrics.container_metrics(pod, container, None, 9 * S)
        if v.name == name
    }


def test_every_series_has_one_value_per_label_key_of_its_descriptor() -> None:
    pod, container = stats_sample()
    container = _with_hugetlb(container, HugetlbUsage("2MB", 0, 0, 0))
    assert container.processes is not None
    ulimits = (Ulimit("max_open_files", 1024, 1024),)
    container = replace(container, processes=replace(container.processes, ulimits=ulimits))
    fs = FilesystemCapacity("/var/lib/skiff/containers", 10**9, 10**8, 1000, 900)
    series = metrics.pod_metrics(pod) + metrics.container_metrics(pod, container, fs, 9 * S)
    keys = {d.name: d.label_keys for d in metrics.DESCRIPTORS}
    for value in series:
        assert len(value.label_values) == len(keys[value.name]), value.name
    # Every descriptor has a value here, but swap: this sample does not know it.
    assert {v.name for v in series} == set(keys) - {"container_memory_swap"}


def test_values_and_labels() -> None:
    pod, container = stats_sample()
    series = metrics.container_metrics(pod, container, None, 9 * S)
    by_name: dict[str, list[metrics.MetricValue]] = {}
    for value in series:
        by_name.setdefault(value.name, []).append(value)

    def one(name: str) -> metrics.MetricValue:
        (value,) = by_name[name]
        return value

    cpu = one("container_cpu_usage_seconds_total")
    labels = dict(zip((*metrics.BASE_LABELS, "cpu"), cpu.label_values, strict=True))
    assert labels == {
        "container": "web",
        "id": "c" * 64,
        "image": "registry.example/web:1",
        "name": "web",
        "namespace": "prod",
        "pod": "shop",
        "cpu": "total",
    }
    assert (cpu.value, cpu.counter) == (3, True)  # whole seconds: the CRI carries integers
    assert one("container_memory_working_set_bytes").value == 200
    assert not one("container_memory_working_set_bytes").counter
    assert one("container_spec_cpu_shares").value == 256
    assert one("container_spec_cpu_quota").value == 50000
    assert one("container_spec_memory_limit_bytes").value == 1 << 26
    assert one("container_spec_memory_swap_limit_bytes").value == 0  # none asked
    assert one("container_start_time_seconds").value == 1700000000
    assert one("container_threads_max").value == 0  # unlimited
    assert one("container_pressure_cpu_waiting_seconds_total").value == 12
    assert one("container_pressure_io_stalled_seconds_total").value == 2
    # No reservation (unlimited) is 0, as cAdvisor sends it.
    assert one("container_spec_memory_reservation_limit_bytes").value == 0
    assert not one("container_spec_memory_reservation_limit_bytes").counter
    # Unknown swap is left out, not sent as 0; no filesystem figures without statvfs.
    assert "container_memory_swap" not in by_name
    assert "container_fs_limit_bytes" not in by_name
    failures = {v.label_values[-2:]: v.value for v in by_name["container_memory_failures_total"]}
    assert failures[("pgmajfault", "container")] == 4
    assert failures[("pgfault", "hierarchy")] == 40
    blkio = {v.label_values[-1]: v.value for v in by_name["container_blkio_device_usage_total"]}
    assert blkio == {"Read": 4096, "Write": 512}
    # Network counters are the pod's, under the pod's sandbox id.
    network = metrics.pod_metrics(pod)
    received = next(v for v in network if v.name == "container_network_receive_bytes_total")
    assert received.value == 1000
    assert received.label_values[:2] == ("POD", "p" * 64)
    assert received.label_values[-1] == "eth0"


def test_hugetlb_series_per_page_size() -> None:
    pod, container = stats_sample()
    keys = {d.name: d.label_keys for d in metrics.DESCRIPTORS}
    for name in (
        "container_hugetlb_usage_bytes",
        "container_hugetlb_max_usage_bytes",
        "container_hugetlb_failcnt",
    ):
        assert keys[name] == (*metrics.BASE_LABELS, "pagesize")
    help_text = {d.name: d.help for d in metrics.DESCRIPTORS}
    assert help_text["container_hugetlb_usage_bytes"] == "Current hugepage usage in bytes"
    # v1 (a peak) for 2MB pages, v2 (no peak) for 1GB ones.
    container = _with_hugetlb(
        container, HugetlbUsage("2MB", 4 * MIB, 6 * MIB, 2), HugetlbUsage("1GB", 1024 * MIB)
    )
    usage = _series(pod, container, "container_hugetlb_usage_bytes")
    assert {k: v.value for k, v in usage.items()} == {("2MB",): 4 * MIB, ("1GB",): 1024 * MIB}
    assert not usage[("2MB",)].counter
    peak = _series(pod, container, "container_hugetlb_max_usage_bytes")
    assert {k: v.value for k, v in peak.items()} == {("2MB",): 6 * MIB}
    failures = _series(pod, container, "container_hugetlb_failcnt")
    assert {k: v.value for k, v in failures.items()} == {("2MB",): 2, ("1GB",): 0}
    assert failures[("2MB",)].counter
    # No hugetlb controller: no series at all.
    pod, plain = stats_sample()
    assert _series(pod, plain, "container_hugetlb_usage_bytes") == {}


def test_memory_reservation_comes_from_the_cgroup() -> None:
    pod, container = stats_sample()
    assert container.cgroup is not None and container.cgroup.memory is not None
    memory = replace(container.cgroup.memory, reservation_bytes=32 * MIB)
    reserved = replace(container, cgroup=replace(container.cgroup, memory=memory))
    (value,) = _series(pod, reserved, "container_spec_memory_reservation_limit_bytes").values()
    assert value.value == 32 * MIB
    # No memory figures at all (no memory controller): no reservation either.
    no_memory = replace(container, cgroup=replace(container.cgroup, memory=None))
    assert _series(pod, no_memory, "container_spec_memory_reservation_limit_bytes") == {}


def test_soft_ulimits_of_the_container_init() -> None:
    pod, container = stats_sample()
    keys = {d.name: d.label_keys for d in metrics.DESCRIPTORS}
    assert keys["container_ulimits_soft"] == (*metrics.BASE_LABELS, "ulimit")
    assert container.processes is not None
    limited = replace(
        container,
        processes=replace(container.processes, ulimits=(Ulimit("max_open_files", 1024, 4096),)),
    )
    series = _series(pod, limited, "container_ulimits_soft")
    assert {k: (v.value, v.counter) for k, v in series.items()} == {
        ("max_open_files",): (1024, False)
    }
    # Unlimited (cAdvisor's -1) cannot travel as an unsigned value: left out.
    unlimited = replace(
        container,
        processes=replace(container.processes, ulimits=(Ulimit("max_open_files", None, None),)),
    )
    assert _series(pod, unlimited, "container_ulimits_soft") == {}


def test_descriptors_leave_out_what_the_node_cannot_report() -> None:
    every = {d.name for d in metrics.descriptors(hugetlb=True, pressure=True)}
    assert every == {d.name for d in metrics.DESCRIPTORS}
    v1_without_hugetlb = {d.name for d in metrics.descriptors(hugetlb=False, pressure=False)}
    assert every - v1_without_hugetlb == {
        n for n in every if n.startswith(("container_hugetlb_", "container_pressure_"))
    }
    assert "container_hugetlb_failcnt" in every - v1_without_hugetlb
    assert "container_cpu_usage_seconds_total" in v1_without_hugetlb
