"""kill -9 storms: client threads run pods and containers through their lives (run,
create, start, exec, stop, remove) while skiffd is killed at a random moment, then
started again; round after round.

After every restart what skiffd says must hold against what its clients were told and
against what really runs: every id a client was given and did not remove is there,
every removal that was answered stays done, no name is held twice, a running container
has a live process (the one it had) and an exited one none, and a ready pod holds an IP
while a stopped one does not. At the end everything goes and nothing is left.

SKIFF_STORM_ROUNDS sets the number of rounds (default 5); SKIFF_STORM_SEED replays one.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc
import pytest

from api.runtime.v1 import api_pb2 as pb
from tests.integration.node_state import (
    Kept,
    changes,
    ids_in,
    remove_cgroups,
    remove_pods,
    snapshot,
)
from tests.integration.nodes import MakeNode, Node, container_config, sandbox_config
from tests.integration.skiffd import pid_alive

pytestmark = pytest.mark.integration

T = TypeVar("T")

ROUNDS = int(os.environ.get("SKIFF_STORM_ROUNDS", "5"))
WORKERS = 3


@dataclass(frozen=True)
class Process:
    """A process by pid and start time: with pods churning, pids come round again."""

    pid: int
    start_time: str

    @classmethod
    def of(cls, pid: int) -> Process:
        return cls(pid, _start_time(pid))

    def alive(self) -> bool:
        return _start_time(self.pid) == self.start_time


def _start_time(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


@dataclass
class Told:
    """What skiffd answered its clients, and what was in flight when it died."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    pods: set[str] = field(default_factory=set)
    containers: set[str] = field(default_factory=set)
    removed: set[str] = field(default_factory=set)
    processes: dict[str, Process] = field(default_factory=dict)  # container -> its process
    removing: set[str] = field(default_factory=set)  # a removal was sent
    stopped_pods: set[str] = field(default_factory=set)  # answered: NOTREADY for good

    def gave(self, kind: set[str], object_id: str) -> None:
        with self.lock:
            kind.add(object_id)


class Died(Exception):
    """skiffd went away under the call."""


def _call(method: Callable[..., T], request: object, timeout: float = 30) -> T:
    try:
        return method(request, timeout=timeout)
    except grpc.RpcError as err:
        if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
            raise Died from None
        raise
    except ValueError as err:  # the test closed the channel of the skiffd it killed
        raise Died from err


class Worker(threading.Thread):
    """Runs one pod at a time through its life, with a container or two in it."""

    def __init__(self, node: Node, told: Told, name: str, rng: random.Random, top: str) -> None:
        super().__init__(name=name, daemon=True)
        self.node, self.told, self.rng, self.top = node, told, rng, top
        self.halt = threading.Event()
        self.error: BaseException | None = None
        self.serial = 0

    def run(self) -> None:
        try:
            while not self.halt.is_set():
                try:
                    self._one_pod()
                except Died:
                    return
        except BaseException as exc:
            self.error = exc

    def _fresh(self, kind: str) -> str:
        self.serial += 1
        return f"{self.name}-{kind}-{self.serial}-{secrets.token_hex(2)}"

    def _one_pod(self) -> None:
        runtime, told = self.node.runtime, self.told
        name = self._fresh("pod")
        config = sandbox_config(name, self.node.log_dir.parent / name)
        config.linux.cgroup_parent = f"{self.top}/{name}"
        pod_id = _call(runtime.RunPodSandbox, pb.RunPodSandboxRequest(config=config)).pod_sandbox_id
        told.gave(told.pods, pod_id)
        containers = []
        for _ in range(self.rng.randint(1, 2)):
            cname = self._fresh("ctr")
            request = pb.CreateContainerRequest(
                pod_sandbox_id=pod_id,
                config=container_config(cname, self.node.world.busybox, command=["sleep", "1000"]),
                sandbox_config=config,
            )
            cid = _call(runtime.CreateContainer, request).container_id
            told.gave(told.containers, cid)
            containers.append(cid)
            if self.rng.random() < 0.8:
                _call(runtime.StartContainer, pb.StartContainerRequest(container_id=cid))
                status = _call(
                    runtime.ContainerStatus,
                    pb.ContainerStatusRequest(container_id=cid, verbose=True),
                )
                with told.lock:
                    told.processes[cid] = Process.of(json.loads(status.info["info"])["pid"])
                _call(
                    runtime.ExecSync, pb.ExecSyncRequest(container_id=cid, cmd=["true"], timeout=5)
                )
        for cid in containers:
            if self.rng.random() < 0.5:
                _call(runtime.StopContainer, pb.StopContainerRequest(container_id=cid, timeout=0))
                if self.rng.random() < 0.5:
                    told.gave(told.removing, cid)
                    _call(runtime.RemoveContainer, pb.RemoveContainerRequest(container_id=cid))
                    told.gave(told.removed, cid)
        _call(runtime.StopPodSandbox, pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), 60)
        told.gave(told.stopped_pods, pod_id)
        if self.rng.random() < 0.7:
            with told.lock:
                told.removing.add(pod_id)
                told.removing.update(containers)
            _call(runtime.RemovePodSandbox, pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), 60)
            with told.lock:
                told.removed.add(pod_id)
                told.removed.update(containers)


def _check_against_what_was_told(node: Node, told: Told) -> None:
    runtime = node.runtime
    pods = {p.id: p for p in runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items}
    containers = {c.id: c for c in runtime.ListContainers(pb.ListContainersRequest()).containers}
    with told.lock:
        assert told.removed.isdisjoint(pods) and told.removed.isdisjoint(containers), (
            "a removal that was answered came undone"
        )
        missing = (told.pods | told.containers) - told.removed - set(pods) - set(containers)
        # Only a removal in flight when skiffd died may have taken an object with it.
        missing -= told.removing
        assert not missing, f"objects the clients were given are gone: {sorted(missing)}"
        pod_names = [p.metadata.name for p in pods.values()]
        container_names = [(c.pod_sandbox_id, c.metadata.name) for c in containers.values()]
        assert len(pod_names) == len(set(pod_names)), "a pod name is held twice"
        assert len(container_names) == len(set(container_names)), "a container name twice"
        for pod_id in told.stopped_pods & set(pods):
            assert pods[pod_id].state == pb.PodSandboxState.SANDBOX_NOTREADY, pod_id
        processes = dict(told.processes)
    for cid, container in containers.items():
        info = json.loads(
            runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid, verbose=True)).info[
                "info"
            ]
        )
        pid = info.get("pid") or 0
        if container.state == pb.ContainerState.CONTAINER_RUNNING:
            assert pid and pid_alive(pid), f"container {cid} is RUNNING with no process"
            if cid in processes:
                assert Process.of(pid) == processes[cid], f"container {cid} changed its process"
        elif container.state == pb.ContainerState.CONTAINER_EXITED and cid in processes:
            assert not processes[cid].alive(), f"container {cid} is EXITED but its process runs"
    for pod_id, pod in pods.items():
        status = runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id))
        if pod.state == pb.PodSandboxState.SANDBOX_READY:
            assert status.status.network.ip, f"ready pod {pod_id} has no IP"
        else:
            assert status.status.network.ip == "", f"stopped pod {pod_id} still has an IP"


def _log_of(node: Node, ids: set[str]) -> str:
    """skiffd's log lines (of every run) that name one of `ids`: what happened to them."""
    lines = [line for line in node.daemon.logs().splitlines() if any(i in line for i in ids)]
    return "skiffd's log of them:\n" + "\n".join(lines[-60:])


@pytest.fixture
def storm_node(make_node: MakeNode) -> Iterator[tuple[Node, str]]:
    node = make_node()
    top = f"/skiff-storm-{secrets.token_hex(3)}"
    yield node, top
    remove_pods(node)
    left = remove_cgroups(top)
    assert left == [], f"processes left in the test's cgroups: {left}"


def test_kill_storms_lose_no_answer_and_leak_nothing(storm_node: tuple[Node, str]) -> None:
    node, top = storm_node
    seed = int(os.environ.get("SKIFF_STORM_SEED", secrets.randbelow(2**32)))
    rng = random.Random(seed)
    bystander = node.run("bystander", command=["sleep", "1000"])
    pid = json.loads(node.status(bystander, verbose=True).info["info"])["pid"]
    keep = Kept.now(node)
    baseline = snapshot(node, top)
    told = Told()
    for round_ in range(ROUNDS):
        workers = [
            Worker(node, told, f"r{round_}w{i}", random.Random(rng.random()), top)
            for i in range(WORKERS)
        ]
        for worker in workers:
            worker.start()
        time.sleep(rng.uniform(0.5, 3.0))
        node.daemon.kill()
        for worker in workers:
            worker.halt.set()
            worker.join(60)
            assert not worker.is_alive(), f"seed {seed}: {worker.name} is stuck"
            if worker.error is not None:
                raise AssertionError(f"seed {seed}, round {round_}: {worker.name}") from (
                    worker.error
                )
        node.daemon.start()
        try:
            _check_against_what_was_told(node, told)
            assert json.loads(node.status(bystander, verbose=True).info["info"])["pid"] == pid
        except AssertionError as exc:
            story = _log_of(node, ids_in(str(exc)))
            raise AssertionError(f"seed {seed}, after kill {round_ + 1}: {exc}\n{story}") from exc
    keep.remove_the_rest(node)
    left = changes(baseline, snapshot(node, top))
    assert not left, f"seed {seed}: left behind after the storm: {left}"
