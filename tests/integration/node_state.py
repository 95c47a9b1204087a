"""What a test node holds, as one comparable snapshot: the files and directories under
skiffd's roots, mounts, IP allocations, veths, cgroups, conmon and pause processes, and
the pods, containers and images skiffd lists. Two snapshots equal means nothing was
left behind in between."""

from __future__ import annotations

import contextlib
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path

import grpc

from api.runtime.v1 import api_pb2 as pb
from tests.integration.netns import links_with_master
from tests.integration.nodes import Node
from tests.integration.skiffd import mounts_below, processes_mentioning, rmdir_when_empty

CGROUP_ROOT = Path("/sys/fs/cgroup")
# Files that change with every start of skiffd, not with what it holds.
VOLATILE = re.compile(r"(^|/)(state\.db-(wal|shm)|skiff\.pid|skiff\.lock)$")


def cgroup_dirs(top: str) -> list[str]:
    """`top` and every cgroup below it, in every hierarchy."""
    found = []
    for hierarchy in CGROUP_ROOT.iterdir():
        tree = hierarchy / top.lstrip("/")
        if tree.is_dir():
            found += [str(d) for d in [tree, *tree.rglob("*")] if d.is_dir()]
    return sorted(found)


def remove_pods(node: Node) -> None:
    """Test clean-up, before the test's cgroups go: every pod the node's skiffd (if it
    still runs) has, with their containers and pause processes."""
    daemon = node.daemon
    if daemon.proc is None or daemon.proc.poll() is not None:
        return
    runtime = node.runtime
    for pod in runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items:
        with contextlib.suppress(grpc.RpcError):
            runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=60)


def remove_cgroups(top: str) -> list[str]:
    """Test clean-up: remove `top` and its cgroups in every hierarchy, killing what still
    runs in them first. Returns those processes' command lines (a leak to report)."""
    found: dict[int, str] = {}
    for directory in cgroup_dirs(top):
        procs = Path(directory) / "cgroup.procs"
        for text in procs.read_text().split() if procs.exists() else []:
            try:
                cmdline = Path(f"/proc/{text}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            found[int(text)] = f"{text} {cmdline.decode(errors='replace').strip()} in {directory}"
    for pid in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for directory in reversed(cgroup_dirs(top)):
        rmdir_when_empty(Path(directory))
    return sorted(found.values())


def _files_under(root: Path, depth: int = 4) -> list[str]:
    found = []
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if len(relative.parts) <= depth and not VOLATILE.search(str(relative)):
            found.append(str(relative))
    return sorted(found)


def ids_in(text: str) -> set[str]:
    """The 64-hex ids in `text` (skiffd's log names every pod it made, even one cut
    short before anyone was told its id)."""
    return set(re.findall(r"\b[0-9a-f]{64}\b", text))


def snapshot(node: Node, cgroup_top: str) -> dict[str, list[str]]:
    """The node now; pods of the test get their cgroups under `cgroup_top`. Pause
    processes are looked for by every pod id skiffd's log names."""
    daemon = node.daemon
    own_pid = daemon.proc.pid if daemon.proc else 0
    helpers = [p for p in processes_mentioning(str(daemon.base)) if p != own_pid]
    pods = ids_in(daemon.logs())
    pauses = [p for pod in sorted(pods) for p in processes_mentioning(f"skiff-pause {pod}")]
    runtime, images = node.runtime, node.daemon.images()
    return {
        "root": _files_under(daemon.root),
        "runroot": _files_under(daemon.runroot),
        "mounts": sorted(mounts_below(daemon.base)),
        "ip allocations": sorted(
            f.name for f in node.world.ipam_dir.rglob("*") if f.is_file() and f.name[0].isdigit()
        ),
        "veths": sorted(links_with_master(node.world.bridge)),
        "cgroups": cgroup_dirs(cgroup_top) + cgroup_dirs(node.pod_cgroup()),
        "processes": sorted(str(p) for p in helpers + pauses),
        "pods": sorted(p.id for p in runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items),
        "containers": sorted(
            c.id for c in runtime.ListContainers(pb.ListContainersRequest()).containers
        ),
        "images": sorted(i.id for i in images.ListImages(pb.ListImagesRequest()).images),
    }


def changes(before: dict[str, list[str]], after: dict[str, list[str]]) -> dict[str, str]:
    """What is new in `after`, and what went, by kind: empty when nothing changed."""
    found = {}
    for kind, was in before.items():
        new = sorted(set(after[kind]) - set(was))
        gone = sorted(set(was) - set(after[kind]))
        if new or gone:
            found[kind] = f"new {new}, gone {gone}"
    return found


@dataclass(frozen=True)
class Kept:
    """What a test keeps while it removes everything else it made."""

    pods: frozenset[str]
    containers: frozenset[str]
    images: frozenset[str]

    @classmethod
    def now(cls, node: Node) -> Kept:
        runtime, images = node.runtime, node.daemon.images()
        return cls(
            frozenset(p.id for p in runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items),
            frozenset(c.id for c in runtime.ListContainers(pb.ListContainersRequest()).containers),
            frozenset(i.id for i in images.ListImages(pb.ListImagesRequest()).images),
        )

    def remove_the_rest(self, node: Node) -> None:
        runtime, images = node.runtime, node.daemon.images()
        for container in runtime.ListContainers(pb.ListContainersRequest()).containers:
            if container.id not in self.containers:
                runtime.RemoveContainer(
                    pb.RemoveContainerRequest(container_id=container.id), timeout=60
                )
        for pod in runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items:
            if pod.id not in self.pods:
                runtime.RemovePodSandbox(
                    pb.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=60
                )
        for image in images.ListImages(pb.ListImagesRequest()).images:
            if image.id not in self.images:
                images.RemoveImage(
                    pb.RemoveImageRequest(image=pb.ImageSpec(image=image.id)), timeout=30
                )
