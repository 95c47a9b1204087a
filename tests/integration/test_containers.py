"""Containers under the real skiffd, conmon and runc: images from a real registry, pods
on a real CNI bridge. Exit codes, logs, users, security, resources, exec, restarts,
bad input and leaks."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from api.runtime.v1 import api_pb2 as pb
from tests.integration.netns import wait_gone
from tests.integration.nodes import MakeNode, _assert_no_container_leaks
from tests.integration.skiffd import mounts_below, short_tempdir

# --- running and exiting ------------------------------------------------------------------


def test_exit_code_reason_and_cri_logs(make_node: MakeNode) -> None:
    node = make_node()
    cid = node.run("exits", command=["sh", "-c", "echo out; echo err >&2; printf partial; exit 3"])
    status = node.wait_exit(cid)
    assert status.exit_code == 3
    assert status.reason == "Error"
    assert status.finished_at >= status.started_at > status.created_at > 0
    assert status.log_path == str(node.log_dir / "exits.log")
    lines = node.logs(cid).splitlines()
    pattern = re.compile(
        r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+(Z|[+-]\d\d:\d\d) (stdout|stderr) (F|P) "
    )
    assert lines and all(pattern.match(line) for line in lines), lines
    assert any(line.endswith(" stdout F out") for line in lines), lines
    assert any(line.endswith(" stderr F err") for line in lines), lines
    assert any(" stdout P partial" in line for line in lines), lines

    ok = node.run("completes", command=["true"])
    status = node.wait_exit(ok)
    assert (status.exit_code, status.reason) == (0, "Completed")

    listed = node.runtime.ListContainers(
        pb.ListContainersRequest(filter=pb.ContainerFilter(pod_sandbox_id=node.pod))
    ).containers
    assert sorted(c.id for c in listed) == sorted([cid, ok])
    exited = node.runtime.ListContainers(
        pb.ListContainersRequest(
            filter=pb.ContainerFilter(
                state=pb.ContainerStateValue(state=pb.ContainerState.CONTAINER_RUNNING)
            )
        )
    ).containers
    assert list(exited) == []


def test_env_and_command_merging(make_node: MakeNode) -> None:
    node = make_node()
    cid = node.run(
        "env",
        command=["sh", "-c"],
        args=["echo $FROM_IMAGE $SHARED $FROM_CONFIG $HOSTNAME; pwd"],
        envs={"SHARED": "config", "FROM_CONFIG": "yes"},
        working_dir="/tmp",
    )
    node.wait_exit(cid)
    assert node.output(cid).splitlines() == ["yes config yes pod", "/tmp"]
    # Only args: the image's entrypoint (none) + args replace its Cmd.
    args_only = node.run("args", args=["echo", "args only"])
    node.wait_exit(args_only)
    assert node.output(args_only) == "args only"


def test_stop_signal_from_the_image_then_kill(make_node: MakeNode) -> None:
    node = make_node()
    polite = node.run("polite", image=node.world.stopper)
    node.wait_output(polite, "ready")  # its trap is set
    node.runtime.StopContainer(pb.StopContainerRequest(container_id=polite, timeout=10), timeout=30)
    status = node.status(polite).status
    assert status.state == pb.ContainerState.CONTAINER_EXITED
    assert status.exit_code == 0
    assert "got usr1" in node.output(polite)

    stubborn = node.run(
        "stubborn",
        command=["sh", "-c", "trap '' TERM; echo ready; while true; do sleep 0.1; done"],
    )
    node.wait_output(stubborn, "ready")
    started = time.monotonic()
    node.runtime.StopContainer(
        pb.StopContainerRequest(container_id=stubborn, timeout=1), timeout=30
    )
    assert time.monotonic() - started < 10
    status = node.status(stubborn).status
    assert status.state == pb.ContainerState.CONTAINER_EXITED
    assert status.exit_code == 137


def test_users_and_groups(make_node: MakeNode) -> None:
    node = make_node()
    from_image = node.run("img-user", image=node.world.stopper)  # USER app in the image
    assert node.exec(from_image, "id", "-u").stdout.strip() == b"1000"
    status = node.status(from_image).status
    assert (status.user.linux.uid, status.user.linux.gid) == (1000, 1000)

    ctx = pb.LinuxContainerSecurityContext(
        run_as_user=pb.Int64Value(value=65534),
        run_as_group=pb.Int64Value(value=1000),
        supplemental_groups=[4242],
    )
    cid = node.run("override", command=["id"], linux=pb.LinuxContainerConfig(security_context=ctx))
    node.wait_exit(cid)
    output = node.output(cid)
    assert "uid=65534" in output and "gid=1000" in output and "4242" in output, output

    unknown = pb.LinuxContainerSecurityContext(run_as_username="ghost")
    error = node.create_error("ghost", linux=pb.LinuxContainerConfig(security_context=unknown))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ghost" in (error.details() or "")


def test_readonly_rootfs_and_capabilities(make_node: MakeNode) -> None:
    node = make_node()
    ro = pb.LinuxContainerSecurityContext(readonly_rootfs=True)
    cid = node.run(
        "ro",
        command=["sh", "-c", "touch /x && echo wrote || echo refused"],
        linux=pb.LinuxContainerConfig(security_context=ro),
    )
    node.wait_exit(cid)
    assert node.output(cid) == "refused"

    def cap_eff(name: str, ctx: pb.LinuxContainerSecurityContext) -> int:
        container = node.run(
            name,
            command=["grep", "CapEff", "/proc/self/status"],
            linux=pb.LinuxContainerConfig(security_context=ctx),
        )
        node.wait_exit(container)
        return int(node.output(container).split()[-1], 16)

    default = cap_eff("caps-default", pb.LinuxContainerSecurityContext())
    net_admin = 1 << 12
    assert not default & net_admin
    added = cap_eff(
        "caps-add",
        pb.LinuxContainerSecurityContext(
            capabilities=pb.Capability(add_capabilities=["NET_ADMIN"])
        ),
    )
    assert added & net_admin
    dropped = cap_eff(
        "caps-drop",
        pb.LinuxContainerSecurityContext(capabilities=pb.Capability(drop_capabilities=["ALL"])),
    )
    assert dropped == 0
    privileged = cap_eff("caps-priv", pb.LinuxContainerSecurityContext(privileged=True))
    with open("/proc/self/status") as f:
        host_bounding = int(next(line for line in f if line.startswith("CapBnd")).split()[1], 16)
    assert privileged == host_bounding


def test_mounts(make_node: MakeNode) -> None:
    node = make_node()
    host_dir = short_tempdir("mnt")
    try:
        (host_dir / "hello.txt").write_text("from the host\n")
        mounts = [
            pb.Mount(container_path="/data", host_path=str(host_dir), readonly=True),
            pb.Mount(container_path="/rw", host_path=str(host_dir)),
        ]
        cid = node.run(
            "mounts",
            command=[
                "sh",
                "-c",
                "cat /data/hello.txt; touch /data/x 2>/dev/null || echo ro; touch /rw/y && echo rw",
            ],
            mounts=mounts,
        )
        node.wait_exit(cid)
        assert node.output(cid).splitlines() == ["from the host", "ro", "rw"]
        assert (host_dir / "y").exists()
        status = node.status(cid).status
        assert [m.container_path for m in status.mounts] == ["/data", "/rw"]

        missing = [pb.Mount(container_path="/nope", host_path=str(host_dir / "missing"))]
        error = node.create_error("missing-mount", command=["true"], mounts=missing)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "missing" in (error.details() or "")
    finally:
        shutil.rmtree(host_dir, ignore_errors=True)


def test_pod_files_are_mounted(make_node: MakeNode) -> None:
    node = make_node()
    cid = node.run(
        "files",
        command=[
            "sh",
            "-c",
            "cat /etc/hostname; hostname; grep -c localhost /etc/hosts; df /dev/shm | tail -1",
        ],
    )
    node.wait_exit(cid)
    lines = node.output(cid).splitlines()
    assert lines[0] == "pod" and lines[1] == "pod"
    assert int(lines[2]) >= 1
    assert "shm" in lines[3] or "tmpfs" in lines[3] or "65536" in lines[3], lines


# --- exec, resources, logs -------------------------------------------------------------------


def test_exec_sync(make_node: MakeNode) -> None:
    node = make_node()
    cid = node.run("sleeper", command=["sleep", "1000"])
    response = node.exec(cid, "echo", "hi")
    assert (response.exit_code, response.stdout) == (0, b"hi\n")
    assert node.exec(cid, "sh", "-c", "echo e >&2; exit 5").exit_code == 5
    assert node.exec(cid, "sh", "-c", "echo e >&2; exit 5").stderr == b"e\n"
    with pytest.raises(grpc.RpcError) as err:
        node.exec(cid, "sleep", "100", timeout=1)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "timed out" in (err.value.details() or "")
    processes = node.exec(cid, "ps", "-o", "args").stdout.decode().splitlines()
    # Killed; at most a zombie ("[sleep]") that the container's own init never reaps.
    assert "sleep 100" not in processes, processes


def test_status_names_the_image_as_the_pod_did(make_node: MakeNode) -> None:
    """The kubelet creates containers from the image id and names the image as the pod
    spec did in user_specified_image; `kubectl get pods` shows ContainerStatus's image."""
    node = make_node()
    busybox = node.world.busybox
    image_id = (
        node.daemon.images()
        .ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=busybox)))
        .image.id
    )
    as_kubelet = node.create(
        "kubelet",
        command=["true"],
        image=pb.ImageSpec(image=image_id, user_specified_image=busybox),
    )
    by_id = node.create("by-id", image=image_id, command=["true"])
    by_name = node.create("by-name", command=["true"])
    for cid in (as_kubelet, by_id, by_name):
        status = node.status(cid).status
        assert status.image.image == busybox, cid
        assert status.image_id == image_id
        assert status.image_ref.startswith(busybox.rsplit(":", 1)[0] + "@sha256:")
    listed = {c.id: c for c in node.runtime.ListContainers(pb.ListContainersRequest()).containers}
    # ListContainers keeps the image as the create request named it.
    assert listed[as_kubelet].image.image == image_id
    assert listed[by_name].image.image == busybox


def test_a_container_cannot_make_itself_unremovable(make_node: MakeNode) -> None:
    """A tree deeper than Python's recursion limit (and PATH_MAX) in the writable layer:
    RemoveContainer failed INTERNAL (RecursionError in shutil.rmtree) forever."""
    node = make_node()
    dig = "i=0; while [ $i -lt 1200 ]; do mkdir d && cd d || exit 1; i=$((i+1)); done; echo dug"
    cid = node.run("digger", command=["sh", "-c", dig])
    assert node.wait_exit(cid, timeout=60).exit_code == 0
    assert node.output(cid) == "dug"
    node.remove(cid)
    assert not (node.daemon.root / "containers" / cid).exists()
    _assert_no_container_leaks(node)


def test_paths_a_request_names_stall_nothing(make_node: MakeNode) -> None:
    """A FIFO as a Localhost seccomp profile blocked the event loop (every call, Version
    too) until a writer came; a device directory of "/" walked the node's whole tree."""
    node = make_node()
    fifo = node.daemon.base / "profile.fifo"
    os.mkfifo(fifo)
    profile = pb.SecurityProfile(
        profile_type=pb.SecurityProfile.ProfileType.Localhost, localhost_ref=str(fifo)
    )
    linux = pb.LinuxContainerConfig(
        security_context=pb.LinuxContainerSecurityContext(seccomp=profile)
    )
    started = time.monotonic()
    error = node.create_error("fifo", command=["true"], linux=linux)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a regular file" in (error.details() or "")
    everything = [pb.Device(container_path="/dev/all", host_path="/", permissions="rw")]
    error = node.create_error("root-devices", command=["true"], devices=everything)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "directory outside /dev" in (error.details() or "")
    assert time.monotonic() - started < 5
    _assert_no_container_leaks(node)


def test_creates_racing_the_pods_removal_leave_nothing(make_node: MakeNode) -> None:
    """CreateContainer while RemovePodSandbox runs: each create either made a container
    that went with the pod, or was refused as the pod was going; nothing is left (a
    container made after the removal listed the pod's failed it with INTERNAL)."""
    node = make_node()
    outcomes: list[str] = []

    def create(i: int) -> None:
        try:
            shared = pb.NamespaceOption(pid=pb.NamespaceMode.POD)  # starts the pod's pause
            linux = pb.LinuxContainerConfig(
                security_context=pb.LinuxContainerSecurityContext(namespace_options=shared)
            )
            node.create(f"racer-{i}", command=["sleep", "1000"], linux=linux)
            outcomes.append("created")
        except grpc.RpcError as err:
            assert err.code() in (
                grpc.StatusCode.FAILED_PRECONDITION,
                grpc.StatusCode.NOT_FOUND,
            ), err
            outcomes.append(err.code().name)

    def remove() -> None:
        time.sleep(0.05)
        node.runtime.RemovePodSandbox(
            pb.RemovePodSandboxRequest(pod_sandbox_id=node.pod), timeout=60
        )

    with ThreadPoolExecutor(7) as pool:
        futures = [pool.submit(create, i) for i in range(6)] + [pool.submit(remove)]
        for future in futures:
            future.result()
    assert len(outcomes) == 6, outcomes
    # The race is real: some creates got in before the removal, some did not.
    assert "created" in outcomes, outcomes
    assert list(node.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items) == []
    assert list(node.runtime.ListContainers(pb.ListContainersRequest()).containers) == []
    _assert_no_container_leaks(node)


def test_update_resources_reach_the_cgroup(make_node: MakeNode) -> None:
    node = make_node()
    cid = node.run("limited", command=["sleep", "1000"])
    info = json.loads(node.status(cid, verbose=True).info["info"])
    node.runtime.UpdateContainerResources(
        pb.UpdateContainerResourcesRequest(
            container_id=cid,
            linux=pb.LinuxContainerResources(
                memory_limit_in_bytes=64 * 1024 * 1024, cpu_shares=512
            ),
        )
    )
    pid = info["pid"]
    cgroup_line = next(
        line for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines() if ":memory:" in line
    )
    memory_dir = Path("/sys/fs/cgroup/memory" + cgroup_line.split(":", 2)[2])
    assert int((memory_dir / "memory.limit_in_bytes").read_text()) == 64 * 1024 * 1024
    status = node.status(cid).status
    assert status.resources.linux.memory_limit_in_bytes == 64 * 1024 * 1024


def test_a_memory_limit_below_what_the_container_uses_is_a_precondition(
    make_node: MakeNode,
) -> None:
    """runc cannot set it (the kernel cannot reclaim that much): the kubelet is told why,
    and the container keeps its old limit (runc's message was UNKNOWN)."""
    node = make_node()
    cid = node.run("resized", command=["sleep", "1000"])
    request = pb.UpdateContainerResourcesRequest(
        container_id=cid, linux=pb.LinuxContainerResources(memory_limit_in_bytes=4096)
    )
    with pytest.raises(grpc.RpcError) as err:
        node.runtime.UpdateContainerResources(request, timeout=30)
    details = err.value.details() or ""
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, details
    assert cid in details
    assert "more than the memory limit of 4096 bytes" in details
    assert node.status(cid).status.state == pb.ContainerState.CONTAINER_RUNNING
    assert node.status(cid).status.resources.linux.memory_limit_in_bytes == 0


def test_updating_a_container_that_just_stopped_is_a_precondition(make_node: MakeNode) -> None:
    """The kubelet resizes a container while it stops: whether or not skiff has seen the
    exit yet, the answer is FAILED_PRECONDITION (runc's "not running" was UNKNOWN)."""
    node = make_node()
    resources = pb.LinuxContainerResources(cpu_shares=256)
    for round_ in range(8):
        cid = node.run(f"brief-{round_}", command=["sleep", "1000"])
        pid = json.loads(node.status(cid, verbose=True).info["info"])["pid"]
        os.kill(pid, signal.SIGKILL)
        # Under load the signal may not have taken effect when kill returns, and
        # resizing a container still running is allowed.
        assert wait_gone(pid), f"container {cid} (pid {pid}) outlived SIGKILL"
        request = pb.UpdateContainerResourcesRequest(container_id=cid, linux=resources)
        with pytest.raises(grpc.RpcError) as err:
            node.runtime.UpdateContainerResources(request, timeout=30)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, err.value.details()
        node.remove(cid)


def test_reopen_container_log(make_node: MakeNode) -> None:
    node = make_node()
    cid = node.run("chatty", command=["sh", "-c", "while true; do echo tick; sleep 0.1; done"])
    node.wait_output(cid, "tick")
    log_path = Path(node.status(cid).status.log_path)
    rotated = log_path.with_suffix(".1")
    log_path.rename(rotated)
    node.runtime.ReopenContainerLog(pb.ReopenContainerLogRequest(container_id=cid))
    # The new file exists when the call returns; lines reach it as the loop prints them.
    assert log_path.exists(), "no new log file after ReopenContainerLog"
    node.wait_output(cid, "tick")


# --- bad input -------------------------------------------------------------------------------


def test_bad_requests_leave_nothing(make_node: MakeNode) -> None:
    node = make_node()
    error = node.create_error(
        "noimage", image=f"{node.world.registry.host}/not/pulled:1", command=["true"]
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "not/pulled" in (error.details() or "")
    error = node.create_error("nopod", pod="0" * 64, command=["true"])
    assert error.code() == grpc.StatusCode.NOT_FOUND
    node.create("dup", command=["true"])
    error = node.create_error("dup", command=["true"])
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    bad = pb.LinuxContainerConfig(resources=pb.LinuxContainerResources(cpu_shares=1))
    error = node.create_error("badres", command=["true"], linux=bad)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Named as the client knows it: a failed create never told it the container's id.
    bad = pb.LinuxContainerConfig(resources=pb.LinuxContainerResources(oom_score_adj=5000))
    error = node.create_error("badoom", command=["true"], linux=bad)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "container 'badoom': oom_score_adj 5000" in (error.details() or ""), error.details()
    own_userns = pb.NamespaceOption(
        userns_options=pb.UserNamespace(
            mode=pb.NamespaceMode.POD,
            uids=[pb.IDMapping(container_id=0, host_id=100000, length=65536)],
            gids=[pb.IDMapping(container_id=0, host_id=100000, length=65536)],
        )
    )
    linux = pb.LinuxContainerConfig(
        security_context=pb.LinuxContainerSecurityContext(namespace_options=own_userns)
    )
    error = node.create_error("userns", command=["true"], linux=linux)
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "'userns'" in (error.details() or "")
    for container in node.runtime.ListContainers(pb.ListContainersRequest()).containers:
        node.remove(container.id)
    _assert_no_container_leaks(node)


def test_an_image_in_use_cannot_be_removed(make_node: MakeNode) -> None:
    node = make_node()
    cid = node.create("user-of-image", command=["true"])
    with pytest.raises(grpc.RpcError) as err:
        node.daemon.images().RemoveImage(
            pb.RemoveImageRequest(image=pb.ImageSpec(image=node.world.busybox))
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "container" in (err.value.details() or "")
    node.remove(cid)
    node.daemon.images().RemoveImage(
        pb.RemoveImageRequest(image=pb.ImageSpec(image=node.world.busybox))
    )


# --- pods, restarts, cycles ------------------------------------------------------------------


def test_stopping_and_removing_the_pod_takes_its_containers(make_node: MakeNode) -> None:
    node = make_node()
    cid = node.run("in-pod", command=["sleep", "1000"])
    pod_cgroup = node.pod_cgroup().lstrip("/")
    node.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=node.pod), timeout=60)
    assert node.status(cid).status.state == pb.ContainerState.CONTAINER_EXITED
    node.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=node.pod), timeout=60)
    assert list(node.runtime.ListContainers(pb.ListContainersRequest()).containers) == []
    _assert_no_container_leaks(node)
    # runc makes the container's path in every hierarchy (name=systemd and a hybrid
    # host's cgroup2 too): the pod's cgroup must be gone from all of them.
    left = [
        str(hierarchy / pod_cgroup)
        for hierarchy in Path("/sys/fs/cgroup").iterdir()
        if (hierarchy / pod_cgroup).exists()
    ]
    assert left == [], "pod cgroup left"


def test_containers_outlive_skiffd_and_exits_are_reconciled(make_node: MakeNode) -> None:
    node = make_node()
    survivor = node.run("survivor", command=["sleep", "1000"])
    short = node.run("short", command=["sh", "-c", "sleep 2; exit 7"])
    pid = json.loads(node.status(survivor, verbose=True).info["info"])["pid"]
    node.daemon.kill()
    time.sleep(3)  # "short" exits while skiffd is down
    assert Path(f"/proc/{pid}").exists(), "the container died with skiffd"
    node.daemon.start()
    assert node.status(survivor).status.state == pb.ContainerState.CONTAINER_RUNNING
    status = node.status(short).status
    assert status.state == pb.ContainerState.CONTAINER_EXITED
    assert status.exit_code == 7
    # The restarted skiffd watches the survivor's exit again: a List (which reads memory
    # only, no exit file) sees it exited once it is killed.
    os.kill(pid, signal.SIGKILL)
    running = pb.ContainerFilter(
        id=survivor, state=pb.ContainerStateValue(state=pb.ContainerState.CONTAINER_RUNNING)
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not node.runtime.ListContainers(pb.ListContainersRequest(filter=running)).containers:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the survivor's exit was not noticed after the restart")


def test_what_a_create_cut_short_by_kill_9_made_is_removed_at_start(make_node: MakeNode) -> None:
    node = make_node()
    kept = node.run("kept", command=["sleep", "1000"])
    lost = node.run("lost", command=["sleep", "1000"])
    info = json.loads(node.status(lost, verbose=True).info["info"])
    conmon_pid = int((node.daemon.runroot / "containers" / lost / "conmon.pid").read_text())
    pod_cgroup = node.pod_cgroup()
    node.daemon.kill()
    # What a create killed before it wrote its record leaves behind: everything it made
    # (overlay, runc container, conmon and its cgroup, directories), no record.
    with contextlib.closing(sqlite3.connect(node.daemon.root / "state.db")) as db:
        db.execute("DELETE FROM records WHERE kind = 'container' AND id = ?", (lost,))
        db.commit()
    node.daemon.start()
    listed = [c.id for c in node.runtime.ListContainers(pb.ListContainersRequest()).containers]
    assert listed == [kept]
    assert not _alive(info["pid"]) and not _alive(conmon_pid)
    assert not (node.daemon.root / "containers" / lost).exists()
    assert not (node.daemon.runroot / "containers" / lost).exists()
    assert not [m for m in mounts_below(node.daemon.root) if lost in m]
    memory = Path("/sys/fs/cgroup/memory") / pod_cgroup.lstrip("/")
    children = {c.name for c in memory.iterdir() if c.is_dir()} - {"skiff-pause"}
    assert children == {f"skiff-{kept[:12]}", f"skiff-conmon-{kept[:12]}"}
    assert "removed what an interrupted creation left" in node.daemon.logs()
    node.remove(kept)
    _assert_no_container_leaks(node)


def _alive(pid: int) -> bool:
    """Running, not merely a zombie its new parent (the node's init) has yet to reap."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def _hybrid_cgroups() -> bool:
    """cgroup v1 controllers with a cgroup2 mount beside them (this CI's layout)."""
    with open("/proc/self/mountinfo") as f:
        kinds = {line.split(" - ")[1].split()[0] for line in f if " - " in line}
    return "cgroup" in kinds and "cgroup2" in kinds


def test_crun_handler(make_node: MakeNode) -> None:
    node = make_node("crunpod", runtime_handler="crun")
    # Debian 12's crun 1.8.1 cannot say it knows rro (no `crun features`): refused.
    rro = pb.Mount(container_path="/v", host_path="/tmp", readonly=True, recursive_read_only=True)
    error = node.create_error("rro-on-crun", command=["true"], mounts=[rro])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "handler 'crun' cannot make recursive read-only mounts" in (error.details() or "")
    if _hybrid_cgroups():
        # crun 1.8 refuses hybrid cgroup hosts; the error must say so, not hide it.
        error = node.create_error("on-crun", command=["sh", "-c", "exit 4"])
        assert "hybrid" in (error.details() or ""), error.details()
        _assert_no_container_leaks(node)
        return
    cid = node.run("on-crun", command=["sh", "-c", "exit 4"])
    assert node.wait_exit(cid).exit_code == 4


def test_fifty_cycles_leave_nothing(make_node: MakeNode) -> None:
    node = make_node()
    for i in range(50):
        cid = node.run(f"cycle-{i}", command=["sleep", "100"])
        node.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0), timeout=30)
        node.remove(cid)
    _assert_no_container_leaks(node)
    pod_cgroup = node.pod_cgroup()
    left = [
        str(child)
        for hierarchy in Path("/sys/fs/cgroup").iterdir()
        if (hierarchy / pod_cgroup.lstrip("/")).is_dir()
        for child in (hierarchy / pod_cgroup.lstrip("/")).iterdir()
        if child.is_dir()
    ]
    assert left == [], "container cgroups left"


def test_runtime_default_seccomp_blocks_what_the_profile_denies(make_node: MakeNode) -> None:
    node = make_node()
    # Making a user namespace needs no capability: only seccomp can refuse it.
    script = ["sh", "-c", "unshare -U true && echo allowed || echo denied"]
    confined = pb.LinuxContainerSecurityContext(
        seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.ProfileType.RuntimeDefault)
    )
    cid = node.run(
        "seccomp", command=script, linux=pb.LinuxContainerConfig(security_context=confined)
    )
    node.wait_exit(cid)
    assert node.output(cid) == "denied"
    open_ = pb.LinuxContainerSecurityContext(
        seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.ProfileType.Unconfined)
    )
    cid = node.run(
        "no-seccomp", command=script, linux=pb.LinuxContainerConfig(security_context=open_)
    )
    node.wait_exit(cid)
    assert node.output(cid) == "allowed"


def test_oom_kill_is_reported(make_node: MakeNode) -> None:
    node = make_node()
    limits = pb.LinuxContainerResources(memory_limit_in_bytes=16 * 1024 * 1024)
    # `tail /dev/zero` keeps one ever-growing line in memory.
    cid = node.run(
        "hog", command=["tail", "/dev/zero"], linux=pb.LinuxContainerConfig(resources=limits)
    )
    status = node.wait_exit(cid, timeout=30)
    assert status.reason == "OOMKilled", (status.reason, status.exit_code)
    assert status.exit_code == 137


def test_guaranteed_pod_oom_score_adj_is_clamped(make_node: MakeNode) -> None:
    node = make_node()
    # The kubelet asks -997 for Guaranteed pods; this node refuses negative values.
    resources = pb.LinuxContainerResources(oom_score_adj=-997)
    cid = node.run(
        "guaranteed",
        command=["cat", "/proc/self/oom_score_adj"],
        linux=pb.LinuxContainerConfig(resources=resources),
    )
    node.wait_exit(cid)
    assert (
        int(node.output(cid)) == int(Path("/proc/self/oom_score_adj").read_text())
        or int(node.output(cid)) >= 0
    )
    assert "restrict_oom_score_adj" in node.daemon.logs()


def test_containers_sharing_the_pod_pid_namespace(make_node: MakeNode) -> None:
    node = make_node()
    shared = pb.LinuxContainerSecurityContext(
        namespace_options=pb.NamespaceOption(pid=pb.NamespaceMode.POD)
    )
    linux = pb.LinuxContainerConfig(security_context=shared)
    first = node.run("first", command=["sleep", "1000"], linux=linux)
    second = node.run("second", command=["sleep", "2000"], linux=linux)
    deadline = time.monotonic() + 20
    # Each container's init execs its command just after StartContainer returns.
    while True:
        seen = node.exec(second, "ps", "-o", "pid,args").stdout.decode()
        if ("sleep 1000" in seen and "sleep 2000" in seen) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert "sleep 1000" in seen and "sleep 2000" in seen, seen
    # PID 1 is the pod's own init, not either container.
    assert not any(line.split(None, 1)[0] == "1" and "sleep" in line for line in seen.splitlines())
    info = json.loads(
        node.daemon.runtime()
        .PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=node.pod, verbose=True))
        .info["info"]
    )
    pause_pid = info["pause_pid"]
    assert pause_pid and Path(f"/proc/{pause_pid}").exists()
    # The pod's init is accounted to the pod, in a leaf of the pod cgroup of its own.
    pause_memory = _memory_cgroup_of(pause_pid)
    assert pause_memory == f"{info['cgroup_parent']}/skiff-pause", pause_memory
    assert info["cgroup_parent"].startswith("/skiff/pod-")
    node.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=node.pod), timeout=60)
    assert not Path("/sys/fs/cgroup/memory" + pause_memory).exists()
    for cid in (first, second):
        assert node.status(cid).status.state == pb.ContainerState.CONTAINER_EXITED
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        state = Path(f"/proc/{pause_pid}/stat")
        if not state.exists() or state.read_text().split(") ", 1)[1].startswith("Z"):
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the pod's init survived StopPodSandbox")


def test_conmon_is_accounted_to_the_pod(make_node: MakeNode) -> None:
    node = make_node()
    cid = node.run("watched", command=["sleep", "1000"])
    info = json.loads(node.status(cid, verbose=True).info["info"])
    pod_info = json.loads(
        node.runtime.PodSandboxStatus(
            pb.PodSandboxStatusRequest(pod_sandbox_id=node.pod, verbose=True)
        ).info["info"]
    )
    conmon_pid = int(Path(node.daemon.runroot / "containers" / cid / "conmon.pid").read_text())
    expected = f"{pod_info['cgroup_parent']}/skiff-conmon-{cid[:12]}"
    assert _memory_cgroup_of(conmon_pid) == expected
    # The container itself is in its own cgroup beside conmon's, not in it.
    assert _memory_cgroup_of(info["pid"]) == f"{pod_info['cgroup_parent']}/skiff-{cid[:12]}"
    node.remove(cid)
    assert not Path(f"/sys/fs/cgroup/memory{expected}").exists()
    _assert_no_container_leaks(node)


def _memory_cgroup_of(pid: int) -> str:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return path
    raise AssertionError(f"process {pid} has no memory cgroup")


def test_image_volumes(make_node: MakeNode) -> None:
    node = make_node()
    busybox = node.world.busybox
    image = pb.ImageSpec(image=busybox)
    mounts = [
        pb.Mount(container_path="/vol", image=image, readonly=True),
        pb.Mount(container_path="/etcvol", image=image, image_sub_path="etc", readonly=True),
    ]
    script = "ls /vol/bin/busybox; grep -c app /etcvol/passwd; touch /vol/x 2>/dev/null || echo ro"
    cid = node.run("imgvol", image=node.world.stopper, command=["sh", "-c", script], mounts=mounts)
    node.wait_exit(cid)
    assert node.output(cid).splitlines() == ["/vol/bin/busybox", "1", "ro"]
    # The status names each volume's image and its id (what PullImage returned).
    image_id = node.daemon.images().ImageStatus(pb.ImageStatusRequest(image=image)).image.id
    reported = {m.container_path: m for m in node.status(cid).status.mounts}
    assert reported["/vol"].image.image_ref == image_id
    assert reported["/vol"].image.image == busybox
    assert reported["/etcvol"].image_sub_path == "etc"
    writable = [pb.Mount(container_path="/rw", image=image, readonly=False)]
    error = node.create_error("rwvol", command=["true"], mounts=writable)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "image volume is read-only" in (error.details() or "")
    with pytest.raises(grpc.RpcError) as err:
        node.daemon.images().RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=busybox)))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    node.remove(cid)
    escape = [pb.Mount(container_path="/v", image=image, image_sub_path="../..", readonly=True)]
    error = node.create_error("badvol", command=["true"], mounts=escape)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    _assert_no_container_leaks(node)


def test_mount_propagation_from_the_host(make_node: MakeNode) -> None:
    node = make_node()
    shared = short_tempdir("prop")
    try:
        subprocess.run(["mount", "--bind", str(shared), str(shared)], check=True)
        subprocess.run(["mount", "--make-rshared", str(shared)], check=True)
        mount = pb.Mount(
            container_path="/prop",
            host_path=str(shared),
            propagation=pb.MountPropagation.PROPAGATION_HOST_TO_CONTAINER,
        )
        cid = node.run("prop", command=["sleep", "1000"], mounts=[mount])
        (shared / "late").mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "skiff-prop", str(shared / "late")], check=True)
        (shared / "late" / "seen.txt").write_text("after start\n")
        assert node.exec(cid, "cat", "/prop/late/seen.txt").stdout == b"after start\n"
        node.remove(cid)

        private = short_tempdir("priv")
        try:
            # Its own private mount, whatever the propagation of / on this node.
            subprocess.run(["mount", "--bind", str(private), str(private)], check=True)
            subprocess.run(["mount", "--make-private", str(private)], check=True)
            bad = pb.Mount(
                container_path="/p",
                host_path=str(private),
                propagation=pb.MountPropagation.PROPAGATION_BIDIRECTIONAL,
            )
            error = node.create_error("private", command=["true"], mounts=[bad])
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "shared" in (error.details() or "")
        finally:
            subprocess.run(["umount", "-l", str(private)], check=False)
            shutil.rmtree(private, ignore_errors=True)
    finally:
        subprocess.run(["umount", "-R", "-l", str(shared)], check=False)
        shutil.rmtree(shared, ignore_errors=True)


def test_recursive_read_only_mounts(make_node: MakeNode) -> None:
    node = make_node()
    volume = short_tempdir("rro")
    submount = volume / "tmpfs"
    submount.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "skiff-rro", str(submount)], check=True)
        touch = ["sh", "-c", "touch /v/tmpfs/f && echo wrote || echo refused"]

        def mount(**fields: object) -> pb.Mount:
            return pb.Mount(container_path="/v", host_path=str(volume), **fields)  # type: ignore[arg-type]

        # Plain readonly binds only the top: the tmpfs under it stays writable.
        plain = node.run("plain", command=touch, mounts=[mount(readonly=True)])
        node.wait_exit(plain)
        assert node.output(plain) == "wrote"
        # Recursive read-only reaches the tmpfs too.
        recursive = mount(readonly=True, recursive_read_only=True)
        rro = node.run("rro", command=touch, mounts=[recursive])
        node.wait_exit(rro)
        assert node.output(rro) == "refused"
        (shown,) = node.status(rro).status.mounts
        assert shown.readonly and shown.recursive_read_only

        for name, bad, problem in (
            ("rw", mount(recursive_read_only=True), "must be readonly"),
            (
                "slave",
                mount(
                    readonly=True,
                    recursive_read_only=True,
                    propagation=pb.MountPropagation.PROPAGATION_HOST_TO_CONTAINER,
                ),
                "private propagation",
            ),
        ):
            error = node.create_error(name, command=["true"], mounts=[bad])
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, name
            assert problem in (error.details() or "") and str(volume) in (error.details() or "")
        node.remove(plain)
        node.remove(rro)
        _assert_no_container_leaks(node)
    finally:
        subprocess.run(["umount", "-l", str(submount)], check=False)
        shutil.rmtree(volume, ignore_errors=True)


def test_devices_and_apparmor_requests(make_node: MakeNode) -> None:
    node = make_node()
    devices = [pb.Device(container_path="/dev/mynull", host_path="/dev/null", permissions="rwm")]
    cid = node.run(
        "dev", command=["sh", "-c", "echo x > /dev/mynull && echo wrote"], devices=devices
    )
    node.wait_exit(cid)
    assert node.output(cid) == "wrote"
    missing = [pb.Device(container_path="/dev/nope", host_path="/dev/skiff-no-such-device")]
    error = node.create_error("nodev", command=["true"], devices=missing)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "skiff-no-such-device" in (error.details() or "")
    apparmor = pb.LinuxContainerSecurityContext(
        apparmor=pb.SecurityProfile(
            profile_type=pb.SecurityProfile.ProfileType.Localhost, localhost_ref="my-profile"
        )
    )
    error = node.create_error(
        "aa", command=["true"], linux=pb.LinuxContainerConfig(security_context=apparmor)
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "AppArmor" in (error.details() or "")
    node.remove(cid)
    _assert_no_container_leaks(node)


@pytest.mark.parametrize("program", ["no-such-program", "/no/such/program", "/etc"])
def test_a_program_the_image_does_not_have_is_a_precondition_naming_it(
    make_node: MakeNode, program: str
) -> None:
    """runc finds out at create, after the root filesystem was made: the kubelet is told
    which program (runc's complaint was UNKNOWN), and nothing is left."""
    node = make_node()
    error = node.create_error("lost", command=[program])
    details = error.details() or ""
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, details
    assert f"program {program!r} cannot be run" in details
    assert "'lost'" in details
    _assert_no_container_leaks(node)


def test_the_bundle_config_holding_the_environment_is_for_root_only(make_node: MakeNode) -> None:
    node = make_node()
    cid = node.create("secretive", command=["true"], envs={"TOKEN": "s3cr3t"})
    config = node.daemon.root / "containers" / cid / "bundle" / "config.json"
    assert "s3cr3t" in config.read_text()
    assert config.stat().st_mode & 0o777 == 0o600
    node.remove(cid)
