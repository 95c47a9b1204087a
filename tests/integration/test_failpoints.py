"""skiffd killed (SIGKILL, by an armed failpoint) in the middle of a lifecycle step, then
started again on the same root: the step either completed or left nothing, and what
the node really is (the OCI runtime, the CNI allocations, the cgroups) wins over what
the record last said."""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from api.runtime.v1 import api_pb2 as pb
from base.files import temp_path
from tests.integration.nodes import CNI_BIN, MakeNode, Node, sandbox_config


def _restart_armed(node: Node, *points: str) -> None:
    assert node.daemon.stop() == 0, node.daemon.logs()
    node.daemon.start(failpoints=points)


def _dies(call: object) -> None:
    """The call reaches the failpoint: skiffd is gone before it answers."""
    with pytest.raises(grpc.RpcError) as err:
        call()  # type: ignore[operator]
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value


def _pid_alive(pid: int) -> bool:
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def _allocations(node: Node, pod: str) -> list[Path]:
    """host-local's files for the pod's IPs (each names the pod's sandbox id)."""
    return [
        f
        for f in node.world.ipam_dir.rglob("*")
        if f.is_file() and f.name[0].isdigit() and pod in f.read_text()
    ]


def test_an_unknown_failpoint_stops_skiffd_at_start(make_node: MakeNode) -> None:
    node = make_node()
    assert node.daemon.stop() == 0
    node.daemon.start(wait=False, failpoints=("RunPodSandbox/after-no-such-step",))
    assert node.daemon.proc is not None
    assert node.daemon.proc.wait(20) == 2
    assert "cannot exist: RunPodSandbox/after-no-such-step" in node.daemon.logs()
    node.daemon.start()


def test_start_cut_short_after_the_runtime_started_it(make_node: MakeNode) -> None:
    node = make_node()
    _restart_armed(node, "StartContainer/after-runtime-start")
    cid = node.create("started", command=["sleep", "1000"])
    _dies(lambda: node.start(cid))
    node.daemon.wait_killed()
    node.daemon.start()
    # runc ran it: skiff says so, and watches it as any running container.
    status = node.status(cid, verbose=True)
    assert status.status.state == pb.ContainerState.CONTAINER_RUNNING
    assert status.status.started_at > 0
    pid = json.loads(status.info["info"])["pid"]
    assert _pid_alive(pid)
    # The kubelet's retry is told it is not a created container (not UNKNOWN from runc),
    # and nothing was marked exited.
    with pytest.raises(grpc.RpcError) as err:
        node.start(cid)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert node.status(cid).status.state == pb.ContainerState.CONTAINER_RUNNING
    assert "start cut short by skiffd's death reconciled" in node.daemon.logs()
    node.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0), timeout=30)
    assert node.status(cid).status.state == pb.ContainerState.CONTAINER_EXITED
    assert not _pid_alive(pid)
    node.remove(cid)


def test_start_cut_short_before_the_runtime_started_it(make_node: MakeNode) -> None:
    """The intent was recorded, runc never started it: still CREATED, the retry runs it."""
    node = make_node()
    cid = node.create("later", command=["sleep", "1000"])
    runtime_root = next((node.daemon.runroot / "runtimes").iterdir())
    # What skiffd wrote before asking runc: the start time, as the intent to start.
    node.daemon.kill()
    with sqlite3.connect(node.daemon.root / "state.db") as db:
        (data,) = db.execute("SELECT data FROM records WHERE id = ?", (cid,)).fetchone()
        record = json.loads(data)
        record["started_ns"] = 1
        db.execute("UPDATE records SET data = ? WHERE id = ?", (json.dumps(record), cid))
    node.daemon.start()
    assert node.status(cid).status.state == pb.ContainerState.CONTAINER_CREATED
    node.start(cid)
    assert node.status(cid).status.state == pb.ContainerState.CONTAINER_RUNNING
    state = subprocess.run(
        ["runc", "--root", str(runtime_root), "state", cid],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(state.stdout)["status"] == "running"
    node.remove(cid)


@pytest.mark.parametrize(
    "point", ["StopPodSandbox/after-sandbox-record-update", "StopPodSandbox/after-cni-del"]
)
def test_stop_pod_cut_short_around_the_cni_del(make_node: MakeNode, point: str) -> None:
    node = make_node()
    cid = node.run("app", command=["sleep", "1000"])
    assert _allocations(node, node.pod) != []
    _restart_armed(node, point)
    _dies(
        lambda: node.runtime.StopPodSandbox(
            pb.StopPodSandboxRequest(pod_sandbox_id=node.pod), timeout=30
        )
    )
    node.daemon.wait_killed()
    node.daemon.start()
    # Not ready, and no longer holding an IP that host-local may give to another pod
    # (skiffd finished the DEL at start where the death came before it).
    status = node.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=node.pod))
    assert status.status.state == pb.PodSandboxState.SANDBOX_NOTREADY
    assert status.status.network.ip == ""
    assert _allocations(node, node.pod) == []
    assert node.status(cid).status.state == pb.ContainerState.CONTAINER_EXITED
    error = node.create_error("late", command=["true"])
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    # The kubelet's retries: stop again, then remove.
    node.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=node.pod), timeout=30)
    node.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=node.pod), timeout=30)
    assert list(node.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items) == []


def _v1_dirs(cgroup: str) -> list[Path]:
    return [
        h / cgroup.lstrip("/")
        for h in Path("/sys/fs/cgroup").iterdir()
        if h.name != "unified" and (h / cgroup.lstrip("/")).is_dir()
    ]


def test_run_pod_cut_short_after_making_a_cgroup_the_kubelet_did_not(
    make_node: MakeNode,
) -> None:
    node = make_node()
    top = f"/skiff-fp-{secrets.token_hex(3)}"
    cgroup = f"{top}/pod"
    _restart_armed(node, "RunPodSandbox/after-cgroup-create")
    config = sandbox_config("cut", node.log_dir.parent / "cut")
    config.linux.cgroup_parent = cgroup
    try:
        _dies(
            lambda: node.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=30)
        )
        node.daemon.wait_killed()
        assert _v1_dirs(cgroup) != []
        node.daemon.start()
        assert _v1_dirs(cgroup) == [], "the cut-short pod's cgroup was left"
        assert _v1_dirs(top) == [], "the parent made for the cut-short pod was left"
        names = [
            p.metadata.name for p in node.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items
        ]
        assert names == ["pod"]
    finally:
        for directory in _v1_dirs(cgroup) + _v1_dirs(top):
            directory.rmdir()


def test_parent_cgroups_made_for_pods_go_with_the_last_of_them(make_node: MakeNode) -> None:
    """A deep cgroup_parent has skiff make its missing ancestors: they were left behind
    for good (106 paths in every hierarchy after a fuzz run)."""
    node = make_node()
    top = f"/skiff-anc-{secrets.token_hex(3)}"
    try:
        pods = []
        for name in ("first", "second"):
            config = sandbox_config(name, node.log_dir.parent / name)
            config.linux.cgroup_parent = f"{top}/shared/{name}"
            pods.append(
                node.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=30)
            )
        first, second = (pod.pod_sandbox_id for pod in pods)
        node.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=first))
        assert _v1_dirs(f"{top}/shared") != [], "still the second pod's parent"
        assert _v1_dirs(f"{top}/shared/first") == []
        node.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=second))
        assert _v1_dirs(top) == []
    finally:
        for path in sorted(
            (
                d
                for p in ("shared/first", "shared/second", "shared", "")
                for d in _v1_dirs(f"{top}/{p}")
            ),
            key=lambda d: -len(str(d)),
        ):
            path.rmdir()


def test_a_conmon_cgroup_made_in_only_some_hierarchies_is_removed(make_node: MakeNode) -> None:
    """What a CreateContainer killed while making conmon's cgroup leaves: the container's
    directory, the runtime's state directory naming the cgroup, and that cgroup in the
    hierarchies made so far."""
    node = make_node()
    pod_cgroup = node.pod_cgroup()
    node.daemon.kill()
    lost = secrets.token_hex(32)
    (node.daemon.root / "containers" / lost).mkdir(parents=True)
    conmon_cgroup = f"{pod_cgroup}/skiff-conmon-{lost[:12]}"
    runtime_state = node.daemon.runroot / "containers" / lost
    runtime_state.mkdir(parents=True)
    (runtime_state / "conmon-cgroup").write_text(conmon_cgroup)
    half = Path("/sys/fs/cgroup/memory") / conmon_cgroup.lstrip("/")
    half.mkdir()
    try:
        node.daemon.start()
        assert not half.exists()
        assert not (node.daemon.root / "containers" / lost).exists()
        assert not runtime_state.exists()
    finally:
        if half.exists():
            half.rmdir()


SLOW_DEL_PLUGIN = """#!/bin/sh
# A CNI plugin that passes ADD's result on and takes its time over DEL.
config=$(cat)
marker=$(echo "$config" | sed -n 's/.*"marker": *"\\([^"]*\\)".*/\\1/p')
case "$CNI_COMMAND" in
ADD) echo "$config" | sed -n 's/.*"prevResult": *\\({.*}\\)}$/\\1/p' ;;
DEL) echo started >> "$marker"; sleep 1.5; echo finished >> "$marker" ;;
VERSION) echo '{"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0"]}' ;;
esac
"""


def test_pod_network_teardown_outlives_the_callers_deadline(make_node: MakeNode) -> None:
    """A StopPodSandbox whose deadline ends during the CNI DEL: the DEL still runs to its
    end (a plugin killed halfway left iptables rules behind), and the retry waits for it."""
    plugins = Path(tempfile.mkdtemp(prefix="skiff-cni-", dir="/tmp"))
    try:
        (plugins / "slowdel").write_text(SLOW_DEL_PLUGIN)
        (plugins / "slowdel").chmod(0o755)
        marker = plugins / "marker"
        node = make_node(config={"network": {"cni_plugin_dirs": [CNI_BIN, str(plugins)]}})
        conflist = node.world.conflist()
        conflist["plugins"].append({"type": "slowdel", "marker": str(marker)})
        (node.daemon.cni_dir / "10-test.conflist").write_text(json.dumps(conflist))
        node.daemon.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while node.daemon.logs().count("config reloaded") < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        config = sandbox_config("slow", node.log_dir.parent / "slow")
        pod = node.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=30)
        stop = pb.StopPodSandboxRequest(pod_sandbox_id=pod.pod_sandbox_id)
        with pytest.raises(grpc.RpcError) as err:
            node.runtime.StopPodSandbox(stop, timeout=0.5)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        started = time.monotonic()
        node.runtime.StopPodSandbox(stop, timeout=30)  # waits for the same DEL
        assert marker.read_text().splitlines() == ["started", "finished"]
        assert time.monotonic() - started > 0.5
        assert _allocations(node, pod.pod_sandbox_id) == []
        remove = pb.RemovePodSandboxRequest(pod_sandbox_id=pod.pod_sandbox_id)
        node.runtime.RemovePodSandbox(remove, timeout=30)
        assert marker.read_text().splitlines() == ["started", "finished"]
    finally:
        shutil.rmtree(plugins, ignore_errors=True)


def test_writes_cut_short_before_their_rename_are_removed_at_start(make_node: MakeNode) -> None:
    """A death between a temp file's write and its rename (the kill -9 storm hit one in
    the CNI cache) leaves the temp file: skiffd removes them at start, and keeps the
    finished files beside them."""
    node = make_node()
    node.daemon.kill()
    root = node.daemon.root
    cache_entries = sorted(p.name for p in (root / "cni-cache").iterdir())
    assert cache_entries, "the node's pod has a CNI cache entry"
    unfinished = [  # named as base/files.py names the temp files of its writes
        temp_path(root / "cni-cache" / cache_entries[0]),
        temp_path(root / "blobs" / "sha256" / ("0" * 64)),
        temp_path(root / "images" / f"{'0' * 64}.json"),
    ]
    for path in unfinished:
        path.write_text("{")
    node.daemon.start()
    assert [p for p in unfinished if p.exists()] == []
    assert sorted(p.name for p in (root / "cni-cache").iterdir()) == cache_entries
    status = node.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=node.pod))
    assert status.status.network.ip != ""


def test_a_death_while_finishing_a_cut_short_stop_is_recovered_from_too(
    make_node: MakeNode,
) -> None:
    """skiffd dies during StopPodSandbox before the CNI DEL, then again while it finishes
    that DEL at start: the third start still leaves a stopped pod without an IP."""
    node = make_node()
    node.run("app", command=["sleep", "1000"])
    _restart_armed(node, "StopPodSandbox/after-sandbox-record-update")
    stop = pb.StopPodSandboxRequest(pod_sandbox_id=node.pod)
    _dies(lambda: node.runtime.StopPodSandbox(stop, timeout=30))
    node.daemon.wait_killed()
    node.daemon.start(wait=False, failpoints=("Startup/after-cni-del",))
    node.daemon.wait_killed()
    assert "finishing the network teardown of a stop cut short" in node.daemon.logs()
    node.daemon.start()
    status = node.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=node.pod))
    assert status.status.state == pb.PodSandboxState.SANDBOX_NOTREADY
    assert status.status.network.ip == ""
    assert _allocations(node, node.pod) == []
    node.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=node.pod), timeout=30)


def test_a_parent_made_by_a_cut_short_pod_goes_with_the_pods_that_kept_it(
    make_node: MakeNode,
) -> None:
    """A RunPodSandbox cut short made /top for its pod while another pod's run found
    /top there already: at start the leftover's /top is still in use, and the pod using
    it takes it over (it was left for good; found by a kill -9 storm)."""
    node = make_node()
    top = f"/skiff-cut-{secrets.token_hex(3)}"
    for directory in _v1_paths(top):
        directory.mkdir()
    try:
        config = sandbox_config("stays", node.log_dir.parent / "stays")
        config.linux.cgroup_parent = f"{top}/stays"
        stays = node.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=30)
        node.daemon.kill()
        # What the cut-short pod left: its files directory naming what it made.
        lost = node.daemon.runroot / "sandboxes" / secrets.token_hex(32)
        lost.mkdir()
        (lost / "cgroup-made").write_text(f"{top}\n{top}/lost\n")
        for directory in _v1_paths(f"{top}/lost"):
            directory.mkdir()
        node.daemon.start()
        assert _v1_dirs(f"{top}/lost") == []
        assert _v1_dirs(top) != [], "still the other pod's parent"
        remove = pb.RemovePodSandboxRequest(pod_sandbox_id=stays.pod_sandbox_id)
        node.runtime.RemovePodSandbox(remove, timeout=30)
        assert _v1_dirs(top) == []
    finally:
        for path in sorted(
            (d for p in ("stays", "lost", "") for d in _v1_dirs(f"{top}/{p}")),
            key=lambda d: -len(str(d)),
        ):
            path.rmdir()


def _v1_paths(cgroup: str) -> list[Path]:
    return [h / cgroup.lstrip("/") for h in Path("/sys/fs/cgroup").iterdir() if h.name != "unified"]


def test_pods_sharing_made_parents_run_and_go_side_by_side(make_node: MakeNode) -> None:
    """Pods made and removed at once under parents skiff makes (the kubelet-shaped
    benchmark's 110 pods): a removal handing the parents over to a pod going at the
    same time failed with NOTFOUND naming that pod, or left the parents behind."""
    node = make_node()
    top = f"/skiff-side-{secrets.token_hex(3)}"
    names = [f"side{i}" for i in range(8)]

    def run(name: str) -> str:
        config = sandbox_config(name, node.log_dir.parent / name)
        config.linux.cgroup_parent = f"{top}/kubepods/besteffort/{name}"
        request = pb.RunPodSandboxRequest(config=config)
        return str(node.runtime.RunPodSandbox(request, timeout=60).pod_sandbox_id)

    def remove(pod_id: str) -> None:
        request = pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id)
        node.runtime.RemovePodSandbox(request, timeout=60)

    try:
        for _ in range(3):
            with ThreadPoolExecutor(len(names)) as pool:
                pods = list(pool.map(run, names))
            with ThreadPoolExecutor(len(names)) as pool:
                list(pool.map(remove, pods))  # each removal must succeed the first time
            assert _v1_dirs(top) == [], "the parents made for the pods were left"
    finally:
        leftovers = [d for name in names for d in _v1_dirs(f"{top}/kubepods/besteffort/{name}")]
        for path in sorted(
            leftovers
            + [d for p in ("kubepods/besteffort", "kubepods", "") for d in _v1_dirs(f"{top}/{p}")],
            key=lambda d: -len(str(d)),
        ):
            with contextlib.suppress(OSError):
                path.rmdir()
