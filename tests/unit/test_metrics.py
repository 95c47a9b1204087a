"""The metrics definitions: names, labels, what each record call moves, and the gauges
read from the image store and the managers at collection time."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cri import container_record, sandboxes
from cri.errors import NotFound
from cri.metrics import CONTAINER_STATES, SANDBOX_STATES, Metrics, failure_code
from image.store import ImageNotFound, ImageStore
from tests.unit.test_image_store import _digest, _done, _image, _layer

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(metrics: Metrics) -> Samples:
    """Every sample of the text exposition, parsed by prometheus_client's own parser."""
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_rpcs_are_counted_and_timed_by_method_and_code() -> None:
    metrics = Metrics()
    metrics.record_rpc("Version", "OK", 0.002)
    metrics.record_rpc("Version", "OK", 0.004)
    metrics.record_rpc("ContainerStatus", "NOT_FOUND", 0.3)
    samples = scrape(metrics)
    assert value(samples, "skiff_grpc_requests_total", method="Version", code="OK") == 2
    assert value(samples, "skiff_grpc_requests_total", method="ContainerStatus", code="NOT_FOUND")
    name = "skiff_grpc_request_duration_seconds"
    assert value(samples, f"{name}_count", method="Version", code="OK") == 2
    assert value(samples, f"{name}_sum", method="Version", code="OK") == pytest.approx(0.006)
    by_bucket = {"le": "0.005", "method": "Version", "code": "OK"}
    assert value(samples, f"{name}_bucket", **by_bucket) == 2
    slow = {"le": "0.25", "method": "ContainerStatus", "code": "NOT_FOUND"}
    assert value(samples, f"{name}_bucket", **slow) == 0


def test_two_daemons_in_one_process_keep_their_own_series() -> None:
    one, two = Metrics(), Metrics()
    one.record_oom_kill()
    assert value(scrape(one), "skiff_container_oom_kills_total") == 1
    assert value(scrape(two), "skiff_container_oom_kills_total") == 0


def test_every_skiff_name_has_the_prefix_and_a_unit_or_total_suffix() -> None:
    metrics = Metrics()
    metrics.record_rpc("Version", "OK", 0.1)
    text = generate_latest(metrics.registry).decode()
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    ours = {name: kind for name, kind in families.items() if not name.startswith("process_")}
    assert ours, families
    assert all(name.startswith("skiff_") for name in ours), sorted(ours)
    assert not [name for name in families if name.endswith("_created")]
    for name, kind in ours.items():
        if kind == "histogram":
            assert name.endswith("_seconds"), name
    # The parser drops a counter's _total from the family name; the samples keep it.
    counters = [name for name, kind in ours.items() if kind == "counter"]
    assert "skiff_grpc_requests" in counters
    assert "skiff_grpc_requests_total" in {name for name, _ in scrape(metrics)}


def test_pulls_count_successes_bytes_durations_and_failures_by_code() -> None:
    metrics = Metrics()
    metrics.record_pull(2.0)
    metrics.count_download(4_000_000)
    metrics.count_download(1_000_000)
    metrics.record_pull_failure(ImageNotFound("no such image"))
    metrics.record_pull_failure(asyncio.CancelledError())
    samples = scrape(metrics)
    assert value(samples, "skiff_image_pulls_total") == 3
    assert value(samples, "skiff_image_pull_bytes_total") == 5_000_000
    assert value(samples, "skiff_image_pull_duration_seconds_count") == 1
    assert value(samples, "skiff_image_pull_failures_total", code="NOT_FOUND") == 1
    assert value(samples, "skiff_image_pull_failures_total", code="CANCELLED") == 1


def test_failure_codes() -> None:
    assert failure_code(NotFound("x")) == "NOT_FOUND"
    assert failure_code(ImageNotFound("x")) == "NOT_FOUND"  # a lower layer's error kind
    assert failure_code(asyncio.CancelledError()) == "CANCELLED"
    assert failure_code(ValueError("a bug")) == "INTERNAL"


def test_cni_and_runtime_calls_are_timed_and_failures_counted() -> None:
    metrics = Metrics()
    metrics.observe_cni("bridge", "ADD", 0.05, True)
    metrics.observe_cni("bridge", "DEL", 0.02, False)
    metrics.observe_runtime("runc", "start", 0.01, True)
    metrics.observe_runtime("runc", "kill", 0.01, False)
    samples = scrape(metrics)
    cni = "skiff_cni_plugin_duration_seconds_count"
    assert value(samples, cni, plugin="bridge", command="ADD") == 1
    assert value(samples, cni, plugin="bridge", command="DEL") == 1
    assert value(samples, "skiff_cni_plugin_failures_total", plugin="bridge", command="DEL") == 1
    assert ("skiff_cni_plugin_failures_total", (("command", "ADD"), ("plugin", "bridge"))) not in (
        samples
    )
    runtime = "skiff_oci_runtime_duration_seconds_count"
    assert value(samples, runtime, handler="runc", verb="start") == 1
    assert value(samples, "skiff_oci_runtime_failures_total", handler="runc", verb="kill") == 1


@dataclass
class Thing:
    id: str
    state: str
    sandbox_id: str = ""


class FakeSandboxes:
    def __init__(self, items: list[Thing]) -> None:
        self.items = items

    def select(self) -> list[Thing]:
        return list(self.items)


class FakeContainers:
    def __init__(self, items: list[Thing]) -> None:
        self.items = items

    def everything(self) -> list[Thing]:
        return list(self.items)


def test_pods_and_containers_by_state_are_read_at_each_scrape(tmp_path: Path) -> None:
    pods = FakeSandboxes([Thing("p1", "ready"), Thing("p2", "notready")])
    ctrs = FakeContainers(
        [Thing("c1", "running", "p1"), Thing("c2", "running", "p1"), Thing("c3", "exited", "p2")]
    )
    store = ImageStore(tmp_path / "root")
    store.open()
    metrics = Metrics()
    metrics.watch(store, pods, ctrs)
    samples = scrape(metrics)
    assert value(samples, "skiff_pod_sandboxes", state="ready") == 1
    assert value(samples, "skiff_pod_sandboxes", state="notready") == 1
    assert value(samples, "skiff_containers", state="running") == 2
    assert value(samples, "skiff_containers", state="exited") == 1
    assert value(samples, "skiff_containers", state="created") == 0  # present, at zero

    ctrs.items[0].state = "exited"
    pods.items.append(Thing("p3", "unusual"))
    samples = scrape(metrics)
    assert value(samples, "skiff_containers", state="running") == 1
    assert value(samples, "skiff_containers", state="exited") == 2
    assert value(samples, "skiff_pod_sandboxes", state="unusual") == 1


def test_images_and_layers_stored_are_read_from_the_store(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "root")
    store.open()
    metrics = Metrics()
    metrics.watch(store, FakeSandboxes([]), FakeContainers([]))
    samples = scrape(metrics)
    assert value(samples, "skiff_images_stored") == 0
    assert value(samples, "skiff_layers_stored") == 0

    base, top1, top2 = _digest("base"), _digest("top1"), _digest("top2")
    for chain, content in ((base, "base"), (top1, "t1"), (top2, "t2")):
        _layer(store, chain, content)
    store.save_image(_image("one", [base, top1], ["docker.io/library/one:1"]))
    store.save_image(_image("two", [base, top2], ["docker.io/library/two:1"]))
    _done(store, base, top1, top2)
    samples = scrape(metrics)
    assert value(samples, "skiff_images_stored") == 2
    assert value(samples, "skiff_layers_stored") == 3  # base shared, counted once
    assert value(samples, "skiff_layers_stored_bytes") == len("base") + len("t1") + len("t2")


def test_the_loops_tasks_are_counted_at_each_scrape() -> None:
    async def scrapes() -> tuple[float, float, float]:
        metrics = Metrics()
        metrics.watch_loop(asyncio.get_running_loop())
        alone = value(scrape(metrics), "skiff_asyncio_tasks")  # this coroutine's task
        release = asyncio.Event()
        waiting = [asyncio.create_task(release.wait()) for _ in range(3)]
        busy = value(scrape(metrics), "skiff_asyncio_tasks")
        release.set()
        await asyncio.gather(*waiting)
        return alone, busy, value(scrape(metrics), "skiff_asyncio_tasks")

    assert asyncio.run(scrapes()) == (1, 4, 1)


def test_known_states_are_the_managers_states() -> None:
    assert set(SANDBOX_STATES) == {sandboxes.READY, sandboxes.NOTREADY}
    assert set(CONTAINER_STATES) == set(container_record.STATES)
