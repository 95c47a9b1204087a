"""The node's parts restarted under running pods: skiffd killed with SIGKILL and started
again, the kubelet restarted, and the kubelet with the EventedPLEG feature, where skiff's
GetContainerEvents stream is its source of truth. Needs the suite's own node."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from api.runtime.v1 import api_pb2 as pb
from tests.e2e.k8s.cluster import Cluster
from tests.e2e.node import LocalNode
from tests.e2e.workloads import (
    Pods,
    container,
    container_status,
    is_ready,
    phase_is,
    shell,
    terminated,
)


@pytest.fixture(scope="module")
def local(cluster: Cluster) -> LocalNode:
    return cluster.require_local()


@pytest.fixture(scope="module")
def running(pods: Pods, local: LocalNode) -> Iterator[dict[str, str]]:
    """Two pods that must ride through every restart: name -> container id."""
    del local
    web = container("web", pods.images.web)
    sleeper = container("main", pods.images.busybox, "sleep", "3600")
    made = {}
    for name, pod in (pods.run("web", [web]), pods.run("sleeper", [sleeper])):
        made[name] = pod["status"]["containerStatuses"][0]["containerID"]
    yield made


def _pid(local: LocalNode, container_id: str) -> int:
    status = local.skiffd.runtime().ContainerStatus(
        pb.ContainerStatusRequest(container_id=container_id.removeprefix("skiff://"), verbose=True),
        timeout=10,
    )
    pid = int(json.loads(status.info["info"])["pid"])
    assert pid > 0
    return pid


def _node_ready(cluster: Cluster) -> bool:
    conditions = cluster.kube.node(cluster.node)["status"]["conditions"]
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _still_the_same(pods: Pods, running: dict[str, str], settle: float = 8.0) -> None:
    """Every pod keeps its container (same id, no restart) and stays Ready, for a while
    after the restart too: a kubelet that lost track of a container would restart it."""
    deadline = time.monotonic() + settle
    while True:
        for name, container_id in running.items():
            pod = pods.get(name)
            status = pod["status"]["containerStatuses"][0]
            assert status["containerID"] == container_id, f"{name} got a new container"
            assert status["restartCount"] == 0, f"{name} restarted"
            assert is_ready(pod), f"{name} is not Ready"
        if time.monotonic() > deadline:
            return
        time.sleep(1)


def test_skiffd_killed_and_started_again(
    cluster: Cluster, pods: Pods, local: LocalNode, running: dict[str, str]
) -> None:
    pids = {name: _pid(local, container_id) for name, container_id in running.items()}
    local.kill_skiffd()
    time.sleep(2)  # long enough for the kubelet to find the runtime gone
    local.start_skiffd()
    _still_the_same(pods, running)
    assert _node_ready(cluster)
    # The very same processes, and exec reaches them through the restarted daemon.
    assert {name: _pid(local, cid) for name, cid in running.items()} == pids
    for name in running:
        assert pods.exec(name, "cat", "/proc/1/cmdline")
    # New work runs on the restarted daemon.
    name, pod = pods.finish("after-skiffd", [shell("main", pods.images.busybox, "echo fine")])
    assert pod["status"]["phase"] == "Succeeded" and pods.logs(name) == "fine\n"


def test_kubelet_restarted(
    cluster: Cluster, pods: Pods, local: LocalNode, running: dict[str, str]
) -> None:
    local.restart_kubelet()
    _still_the_same(pods, running)
    assert _node_ready(cluster)
    name, pod = pods.finish("after-kubelet", [shell("main", pods.images.busybox, "echo fine")])
    assert pod["status"]["phase"] == "Succeeded" and pods.logs(name) == "fine\n"


def test_evented_pleg(
    cluster: Cluster, pods: Pods, local: LocalNode, running: dict[str, str]
) -> None:
    gates = {**local.kubelet_config()["featureGates"], "EventedPLEG": True}
    seen_before = local.kubelet.log.read_text().count("Received Container Started Event")
    # At -v=4 the kubelet logs each event it takes from skiff's stream.
    local.restart_kubelet({**local.kubelet_config_extra, "featureGates": gates}, verbosity=4)
    try:
        _still_the_same(pods, running)
        # Starts, exits and deletions reach the API server from skiff's event stream.
        name, pod = pods.finish("evented", [shell("main", pods.images.busybox, "echo x; exit 4")])
        assert terminated(pod, "main")["exitCode"] == 4
        waiter = pods.create(
            "evented-run", [container("main", pods.images.busybox, "sleep", "3600")]
        )
        pods.wait(waiter, "Ready", is_ready)
        pods.delete(waiter)
        restarting = pods.create(
            "evented-restart",
            [shell("main", pods.images.busybox, "sleep 1; exit 1")],
            restartPolicy="Always",
        )
        pods.wait(
            restarting,
            "restarted",
            lambda p: container_status(p, "main").get("restartCount", 0) >= 1,
            timeout=60,
        )
        assert phase_is("Failed")(pods.get(name))
        log = local.kubelet.log.read_text()
        assert log.count("Received Container Started Event") > seen_before
        assert "Fall back to Generic PLEG" not in log
    finally:
        local.restart_kubelet(
            {k: v for k, v in local.kubelet_config_extra.items() if k != "featureGates"}
        )
