"""The Prometheus endpoint of the real skiffd: scraped over HTTP and parsed with
prometheus_client's own parser while real RPCs, pulls from a real registry, a pod on a
real CNI bridge and a container under conmon and runc move the series."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from api.runtime.v1 import api_pb2 as pb
from tests.integration.nodes import MakeNode
from tests.integration.skiffd import Skiffd, short_tempdir

# Port 0: skiffd picks a free one and logs it, so parallel runs never collide.
METRICS_ON = {"metrics": {"enabled": True, "address": "127.0.0.1", "port": 0}}
LISTENING = re.compile(r'msg="metrics server listening".* url=(http://\S+/metrics)')

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def metrics_url(daemon: Skiffd) -> str:
    found = LISTENING.search(daemon.logs())
    assert found, f"no metrics server in the log:\n{daemon.logs()}"
    return found.group(1)


def scrape(daemon: Skiffd) -> Samples:
    return scrape_url(metrics_url(daemon))


def scrape_url(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 for a labelled series that has not appeared yet."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


RPCS = "skiff_grpc_requests_total"


def test_rpcs_pulls_pods_and_containers_move_the_metrics(make_node: MakeNode) -> None:
    # make_node pulls two images from the test registry and runs a pod on a CNI bridge.
    node = make_node(config=METRICS_ON)
    daemon, runtime = node.daemon, node.runtime
    before = scrape(daemon)
    assert value(before, RPCS, method="PullImage", code="OK") == 2
    assert value(before, RPCS, method="RunPodSandbox", code="OK") == 1
    assert value(before, "skiff_image_pulls_total") == 2
    assert value(before, "skiff_image_pull_duration_seconds_count") == 2
    assert value(before, "skiff_image_pull_bytes_total") > 0
    assert value(before, "skiff_images_stored") == 2
    assert value(before, "skiff_layers_stored") >= 1
    assert value(before, "skiff_layers_stored_bytes") > 0
    assert value(before, "skiff_pod_sandboxes", state="ready") == 1
    assert value(before, "skiff_asyncio_tasks") >= 1  # the scrape's own, at least
    add = {"plugin": "bridge", "command": "ADD"}
    assert value(before, "skiff_cni_plugin_duration_seconds_count", **add) == 1
    assert value(before, "skiff_cni_plugin_duration_seconds_sum", **add) > 0
    assert value(before, "skiff_cni_plugin_failures_total", **add) == 0

    for _ in range(3):
        runtime.Version(pb.VersionRequest(), timeout=10)
    unknown = "0" * 64
    with pytest.raises(grpc.RpcError) as err:
        runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=unknown), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    missing = f"{node.world.registry.host}/library/no-such-image:1"
    with pytest.raises(grpc.RpcError) as err:
        daemon.images().PullImage(
            pb.PullImageRequest(image=pb.ImageSpec(image=missing)), timeout=60
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # Its layers are stored: pulling it again downloads none.
    daemon.images().PullImage(
        pb.PullImageRequest(image=pb.ImageSpec(image=node.world.busybox)), timeout=60
    )
    assert value(scrape(daemon), "skiff_image_pull_bytes_total") == value(
        before, "skiff_image_pull_bytes_total"
    )

    cid = node.run("short", command=["true"])
    node.wait_exit(cid)
    node.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=node.pod), timeout=60)

    after = scrape(daemon)
    assert (
        value(after, RPCS, method="Version", code="OK")
        - value(before, RPCS, method="Version", code="OK")
        == 3
    )
    assert value(after, RPCS, method="ContainerStatus", code="NOT_FOUND") == 1
    not_found = {"method": "ContainerStatus", "code": "NOT_FOUND"}
    assert value(after, "skiff_grpc_request_duration_seconds_count", **not_found) == 1
    assert value(after, "skiff_grpc_request_duration_seconds_bucket", le="+Inf", **not_found) == 1
    assert value(after, RPCS, method="PullImage", code="NOT_FOUND") == 1
    assert value(after, "skiff_image_pulls_total") == 4
    assert value(after, "skiff_image_pull_failures_total", code="NOT_FOUND") == 1
    assert value(after, "skiff_image_pull_duration_seconds_count") == 3  # successes only
    assert value(after, RPCS, method="CreateContainer", code="OK") == 1
    assert value(after, RPCS, method="StartContainer", code="OK") == 1
    # The container ran and exited; the pod was stopped (its network torn down).
    assert value(after, "skiff_containers", state="exited") == 1
    assert value(after, "skiff_containers", state="running") == 0
    assert value(after, "skiff_pod_sandboxes", state="notready") == 1
    assert value(after, "skiff_pod_sandboxes", state="ready") == 0
    delete = {"plugin": "bridge", "command": "DEL"}
    assert value(after, "skiff_cni_plugin_duration_seconds_count", **delete) == 1
    assert value(after, "skiff_container_oom_kills_total") == 0
    for verb in ("create", "start"):
        call = {"handler": "runc", "verb": verb}
        assert value(after, "skiff_oci_runtime_duration_seconds_count", **call) == 1
        assert value(after, "skiff_oci_runtime_failures_total", **call) == 0


def test_an_oom_killed_container_is_counted(make_node: MakeNode) -> None:
    node = make_node(config=METRICS_ON)
    limits = pb.LinuxContainerResources(memory_limit_in_bytes=16 * 1024 * 1024)
    cid = node.run(
        "hog", command=["tail", "/dev/zero"], linux=pb.LinuxContainerConfig(resources=limits)
    )
    assert node.wait_exit(cid, timeout=30).reason == "OOMKilled"
    assert value(scrape(node.daemon), "skiff_container_oom_kills_total") == 1


def test_a_taken_metrics_port_stops_startup_with_a_clear_message() -> None:
    base = short_tempdir("met")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        daemon = Skiffd(base, {"metrics": {"enabled": True, "port": port}})
        try:
            daemon.start(wait=False)
            assert daemon.proc is not None
            status = daemon.proc.wait(timeout=30)
            assert status == 1, daemon.logs()
            assert f"metrics server cannot listen on 127.0.0.1:{port}" in daemon.logs()
            assert not daemon.socket.exists()
        except subprocess.TimeoutExpired:
            raise AssertionError(f"skiffd kept running:\n{daemon.logs()}") from None
        finally:
            daemon.kill()
            shutil.rmtree(base, ignore_errors=True)
