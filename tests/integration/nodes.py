"""Nodes for container tests: a real skiffd with a registry's busybox images pulled,
a CNI bridge of the test run's own, and a ready pod."""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from api.runtime.v1 import api_pb2 as pb
from api.runtime.v1 import api_pb2_grpc
from base.trees import remove_tree
from tests.integration import images as img
from tests.integration.netns import links_with_master
from tests.integration.registry import TestRegistry
from tests.integration.skiffd import (
    Skiffd,
    mounts_below,
    processes_mentioning,
    release_leftovers,
    short_tempdir,
    unmount_below,
)

CNI_BIN = "/usr/lib/cni"


@dataclass
class World:
    registry: TestRegistry
    busybox: str  # the image reference of a busybox image with USER app
    stopper: str  # an image whose StopSignal is SIGUSR1
    bridge: str
    subnet_prefix: str
    ipam_dir: Path

    def conflist(self) -> dict[str, Any]:
        return {
            "cniVersion": "1.0.0",
            "name": f"net-{self.bridge}",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": True,
                    "ipMasq": False,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": self.subnet_prefix + "0/24"}]],
                        "dataDir": str(self.ipam_dir),
                    },
                }
            ],
        }


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    tag = secrets.token_hex(3)
    ipam = short_tempdir("ipam")
    # Removed even when the registry does not start (it was left then).
    try:
        with TestRegistry("insecure") as registry:
            busybox = img.busybox_image(
                run=img.RunConfig(
                    cmd=("sh",), env=(img.DEFAULT_PATH_ENV, "FROM_IMAGE=yes", "SHARED=image")
                )
            )
            img.push(registry, "library/busybox", "1.35", busybox)
            stopper = img.busybox_image(
                run=img.RunConfig(
                    entrypoint=("sh", "-c"),
                    cmd=(
                        "trap 'echo got usr1; exit 0' USR1; echo ready; "
                        "while true; do sleep 0.1; done",
                    ),
                    stop_signal="SIGUSR1",
                    user="app",
                )
            )
            img.push(registry, "test/stopper", "v1", stopper)
            yield World(
                registry=registry,
                busybox=f"{registry.host}/library/busybox:1.35",
                stopper=f"{registry.host}/test/stopper:v1",
                bridge=f"skc{tag}",
                subnet_prefix=f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(250)}.",
                ipam_dir=ipam,
            )
    finally:
        subprocess.run(["ip", "link", "del", f"skc{tag}"], capture_output=True, check=False)
        shutil.rmtree(ipam, ignore_errors=True)


@dataclass
class Node:
    """A started skiffd with the test images pulled and one ready pod."""

    daemon: Skiffd
    world: World
    pod: str
    log_dir: Path

    @property
    def runtime(self) -> api_pb2_grpc.RuntimeServiceStub:
        return self.daemon.runtime()

    def create(
        self,
        name: str,
        image: str | pb.ImageSpec | None = None,
        pod: str | None = None,
        **config: Any,
    ) -> str:
        return self.runtime.CreateContainer(
            pb.CreateContainerRequest(
                pod_sandbox_id=pod or self.pod,
                config=container_config(name, image or self.world.busybox, **config),
            ),
            timeout=30,
        ).container_id

    def create_error(
        self, name: str, image: str | None = None, pod: str | None = None, **config: Any
    ) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as err:
            self.create(name, image, pod, **config)
        return err.value

    def start(self, container_id: str) -> None:
        self.runtime.StartContainer(pb.StartContainerRequest(container_id=container_id), timeout=30)

    def run(self, name: str, **config: Any) -> str:
        container_id = self.create(name, **config)
        self.start(container_id)
        return container_id

    def status(self, container_id: str, verbose: bool = False) -> pb.ContainerStatusResponse:
        return self.runtime.ContainerStatus(
            pb.ContainerStatusRequest(container_id=container_id, verbose=verbose)
        )

    def wait_exit(self, container_id: str, timeout: float = 20) -> pb.ContainerStatus:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status(container_id).status
            if status.state == pb.ContainerState.CONTAINER_EXITED:
                return status
            time.sleep(0.05)
        raise AssertionError(f"container {container_id} did not exit in {timeout}s")

    def pod_cgroup(self, pod: str | None = None) -> str:
        """The pod's cgroup path, as its verbose status gives it."""
        info = self.runtime.PodSandboxStatus(
            pb.PodSandboxStatusRequest(pod_sandbox_id=pod or self.pod, verbose=True)
        ).info["info"]
        return str(json.loads(info)["cgroup_parent"])

    def logs(self, container_id: str) -> str:
        path = Path(self.status(container_id).status.log_path)
        return path.read_text() if path.exists() else ""

    def wait_output(self, container_id: str, line: str, timeout: float = 20) -> None:
        """Waits until the container has written `line` to its stdout."""
        deadline = time.monotonic() + timeout
        while line not in self.output(container_id).splitlines():
            if time.monotonic() > deadline:
                raise AssertionError(f"container {container_id} did not print {line!r}")
            time.sleep(0.05)

    def output(self, container_id: str) -> str:
        """The container's stdout as text, from its CRI log lines."""
        lines = []
        for line in self.logs(container_id).splitlines():
            parts = line.split(" ", 3)
            if len(parts) == 4 and parts[1] == "stdout":
                lines.append(parts[3])
        return "\n".join(lines)

    def exec(self, container_id: str, *cmd: str, timeout: int = 10) -> pb.ExecSyncResponse:
        return self.runtime.ExecSync(
            pb.ExecSyncRequest(container_id=container_id, cmd=list(cmd), timeout=timeout),
            timeout=30,
        )

    def remove(self, container_id: str) -> None:
        self.runtime.RemoveContainer(
            pb.RemoveContainerRequest(container_id=container_id), timeout=30
        )


def container_config(name: str, image: str | pb.ImageSpec, **extra: Any) -> pb.ContainerConfig:
    config = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=name, attempt=extra.pop("attempt", 0)),
        image=pb.ImageSpec(image=image) if isinstance(image, str) else image,
        log_path=f"{name}.log",
    )
    envs = extra.pop("envs", {})
    for key, value in envs.items():
        config.envs.append(pb.KeyValue(key=key, value=value.encode()))
    linux = extra.pop("linux", None)
    if linux is not None:
        config.linux.CopyFrom(linux)
    if not config.linux.security_context.HasField("namespace_options"):
        # What the kubelet sends; crictl's zero value (POD) is tested on its own.
        config.linux.security_context.namespace_options.pid = pb.NamespaceMode.CONTAINER
    for key, value in extra.items():
        if isinstance(value, list):
            getattr(config, key).extend(value)
        elif isinstance(value, dict):
            getattr(config, key).update(value)
        elif isinstance(value, str | bool | int):
            setattr(config, key, value)
        else:
            getattr(config, key).CopyFrom(value)
    return config


def sandbox_config(name: str, log_dir: Path, handler_ns: str = "default") -> pb.PodSandboxConfig:
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(
            name=name, namespace=handler_ns, uid=f"uid-{name}", attempt=0
        ),
        hostname=name,
        log_directory=str(log_dir),
    )


def start_node(
    world: World,
    pod_name: str = "pod",
    runtime_handler: str = "",
    config: dict[str, Any] | None = None,
    short_names_to_registry: bool = False,
) -> Node:
    """A started skiffd with the world's images pulled and a ready pod; `stop_node` ends
    it. `short_names_to_registry` sends short image names to the test registry (never to
    docker.io), for tests that send arbitrary names."""
    base = short_tempdir("ctr")
    daemon = Skiffd(base, {"network": {"cni_plugin_dirs": [CNI_BIN]}, **(config or {})})
    search = f'unqualified-search-registries = ["{world.registry.host}"]\n'
    (base / "registries.conf").write_text(
        (search if short_names_to_registry else "")
        + f'[[registry]]\nlocation = "{world.registry.host}"\ninsecure = true\n'
    )
    (daemon.cni_dir / "10-test.conflist").write_text(json.dumps(world.conflist()))
    node = Node(daemon, world, "", base / "logs" / pod_name)
    try:
        daemon.start()
        for image in (world.busybox, world.stopper):
            daemon.images().PullImage(
                pb.PullImageRequest(image=pb.ImageSpec(image=image)), timeout=60
            )
        node.pod = (
            daemon.runtime()
            .RunPodSandbox(
                pb.RunPodSandboxRequest(
                    config=sandbox_config(pod_name, node.log_dir), runtime_handler=runtime_handler
                ),
                timeout=30,
            )
            .pod_sandbox_id
        )
    except BaseException:
        stop_node(node)
        raise
    return node


def stop_node(node: Node) -> None:
    """Remove the node's pods, stop its skiffd (which must exit 0) and take away whatever
    a failed test left."""
    daemon = node.daemon
    try:
        if daemon.proc is not None and daemon.proc.poll() is None:
            for pod in daemon.runtime().ListPodSandbox(pb.ListPodSandboxRequest()).items:
                daemon.runtime().RemovePodSandbox(
                    pb.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=60
                )
            assert daemon.stop() == 0, daemon.logs()
    finally:
        daemon.kill()
        release_leftovers(daemon)
        unmount_below(daemon.base)
        with contextlib.suppress(OSError):
            remove_tree(daemon.base)  # a failed test may leave a tree of any depth


MakeNode = Callable[..., Node]


@pytest.fixture
def make_node(world: World) -> Iterator[MakeNode]:
    made: list[Node] = []

    def make(
        pod_name: str = "pod", runtime_handler: str = "", config: dict[str, Any] | None = None
    ) -> Node:
        node = start_node(world, pod_name, runtime_handler, config)
        made.append(node)
        return node

    yield make
    for node in made:
        stop_node(node)


def assert_only_the_node_pod(node: Node) -> None:
    """Nothing of a refused or removed pod is left: record, files, pins, mounts, IP, veth."""
    runroot = node.daemon.runroot
    assert [p.id for p in node.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items] == [
        node.pod
    ]
    assert sorted(p.name for p in (runroot / "sandboxes").iterdir()) == [node.pod]
    for kind in ("net", "ipc", "uts"):
        assert sorted(p.name for p in (runroot / "ns" / kind).iterdir()) == [node.pod], kind
    assert [m for m in mounts_below(node.daemon.base) if node.pod not in m] == []
    prefix = node.world.subnet_prefix
    allocated = [p for p in node.world.ipam_dir.rglob(prefix + "*") if p.is_file()]
    assert len(allocated) == 1, allocated
    veths = links_with_master(node.world.bridge)
    assert len(veths) == 1, veths


def _assert_no_container_leaks(node: Node) -> None:
    runtime = node.runtime
    assert list(runtime.ListContainers(pb.ListContainersRequest()).containers) == []
    containers_dir = node.daemon.root / "containers"
    assert not containers_dir.exists() or list(containers_dir.iterdir()) == [], (
        "container dirs left"
    )
    rootfs_mounts = [m for m in mounts_below(node.daemon.root) if "/containers/" in m]
    assert rootfs_mounts == [], "rootfs mounts left"
    assert [
        p
        for p in processes_mentioning(str(node.daemon.base))
        if p != (node.daemon.proc.pid if node.daemon.proc else 0)
    ] == [], "conmon/runc processes left"
    # Neither the containers' cgroups nor their conmons' remain under any pod's.
    for pod in runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items:
        parent = Path("/sys/fs/cgroup/memory") / node.pod_cgroup(pod.id).lstrip("/")
        children = sorted(c.name for c in parent.iterdir() if c.is_dir()) if parent.is_dir() else []
        assert [c for c in children if c != "skiff-pause"] == [], f"cgroups left in {parent}"
