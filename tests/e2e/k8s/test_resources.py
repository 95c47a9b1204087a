"""Resources and statistics: requests and limits land in the container's and the pod's
cgroups, and the kubelet's summary API carries skiff's CRI statistics for every pod."""

from __future__ import annotations

import time
from pathlib import Path

from tests.e2e.k8s.cluster import Cluster
from tests.e2e.workloads import Pods, container, shell

MEMORY_LIMIT = 64 * 1024 * 1024


def _cgroup_v1_limits(pods: Pods, name: str) -> dict[str, int]:
    """The container's own cgroup files, which runc mounts at /sys/fs/cgroup in it."""
    script = (
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.cfs_quota_us"
        " /sys/fs/cgroup/cpu/cpu.cfs_period_us /sys/fs/cgroup/cpu/cpu.shares"
    )
    values = pods.exec(name, "sh", "-c", script).split()
    return dict(zip(("memory", "quota", "period", "shares"), map(int, values), strict=True))


def test_requests_and_limits_land_in_the_cgroups(cluster: Cluster, pods: Pods) -> None:
    main = container(
        "main",
        pods.images.busybox,
        "sleep",
        "3600",
        resources={
            "requests": {"cpu": "100m", "memory": "32Mi"},
            "limits": {"cpu": "250m", "memory": "64Mi"},
        },
    )
    name, pod = pods.run("limits", [main])
    assert pod["status"]["qosClass"] == "Burstable"
    if pods.exec(name, "stat", "-f", "-c", "%T", "/sys/fs/cgroup").strip() == "cgroup2fs":
        limits = pods.exec(name, "cat", "/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/cpu.max")
        assert limits.split() == [str(MEMORY_LIMIT), "25000", "100000"]
    else:
        assert _cgroup_v1_limits(pods, name) == {
            "memory": MEMORY_LIMIT,
            "quota": 25000,
            "period": 100000,
            "shares": 102,  # 100m of 1024 shares per CPU
        }
    local = cluster.local
    if local is not None:
        # The kubelet's pod cgroup (cgroupfs driver) holds the pod's sum of limits, and
        # skiff put the container under it.
        uid = pod["metadata"]["uid"]
        pod_cgroup = Path("/sys/fs/cgroup/memory") / local.cgroup_root.lstrip("/")
        pod_cgroup = pod_cgroup / "kubepods" / "burstable" / f"pod{uid}"
        assert int((pod_cgroup / "memory.limit_in_bytes").read_text()) == MEMORY_LIMIT
        children = [c for c in pod_cgroup.iterdir() if c.is_dir()]
        limited = [
            c for c in children if int((c / "memory.limit_in_bytes").read_text()) == MEMORY_LIMIT
        ]
        assert len(limited) == 1 and limited[0].name.startswith("skiff-"), children
        cpu = Path("/sys/fs/cgroup/cpu") / pod_cgroup.relative_to("/sys/fs/cgroup/memory")
        assert int((cpu / "cpu.cfs_quota_us").read_text()) == 25000


def test_the_summary_api_has_every_pods_statistics(cluster: Cluster, pods: Pods) -> None:
    busy = shell("busy", pods.images.busybox, "while true; do echo tick > /tmp/f; done")
    idle = container("idle", pods.images.busybox, "sleep", "3600")
    names = {pods.run("busy", [busy])[0], pods.run("idle", [idle])[0]}
    for name in names:
        # Some traffic on the pod's interface: to its gateway, the node's end of the pod
        # network (nothing needs to answer).
        gateway = "$(ip route | awk '/^default/ {print $3}')"
        pods.exec(name, "sh", "-c", f"wget -q -T 1 -O /dev/null http://{gateway}:9/ || true")
    deadline = time.monotonic() + 60
    while True:
        summary = cluster.kube.node_proxy(cluster.node, "stats/summary")
        stats = {
            p["podRef"]["name"]: p
            for p in summary["pods"]
            if p["podRef"]["namespace"] == pods.namespace
        }
        # A CPU rate needs two samples of the pod: it is there from the second call on.
        complete = names <= stats.keys() and all(
            _complete(stats[n]) and stats[n]["cpu"].get("usageNanoCores") is not None for n in names
        )
        if complete or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert names <= stats.keys(), f"summary lacks pods {names - stats.keys()}"
    for name in names:
        pod = stats[name]
        assert _complete(pod), pod
        (only,) = pod["containers"]
        assert only["rootfs"]["usedBytes"] > 0 or only["rootfs"]["inodesUsed"] > 0
        assert only["logs"]["usedBytes"] >= 0
        assert pod["network"]["interfaces"] and pod["network"]["name"] == "eth0"
        assert pod["ephemeral-storage"]["usedBytes"] > 0
    busy_pod = stats[next(n for n in names if n.startswith("busy"))]
    assert busy_pod["cpu"]["usageNanoCores"] > 0


def _complete(pod: dict[str, object]) -> bool:
    cpu = pod.get("cpu") or {}
    memory = pod.get("memory") or {}
    network = pod.get("network") or {}
    containers = pod.get("containers") or []
    return bool(
        isinstance(cpu, dict)
        and cpu.get("usageCoreNanoSeconds", 0) > 0
        and isinstance(memory, dict)
        and memory.get("workingSetBytes", 0) > 0
        and isinstance(network, dict)
        and network.get("txBytes", 0) > 0
        and isinstance(containers, list)
        and containers
        and all(c.get("cpu", {}).get("usageCoreNanoSeconds", 0) > 0 for c in containers)
        and all(c.get("memory", {}).get("workingSetBytes", 0) > 0 for c in containers)
    )
