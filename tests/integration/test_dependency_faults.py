"""The programs skiffd drives misbehaving: runc and conmon that fail, hang past
skiffd's timeout or die halfway, CNI plugins that fail or hang, a full disk.

Each fault must give a clear gRPC error naming the object and the problem, leave
nothing half made, keep the daemon healthy, and the next call must work. The faulty
programs are wrapper scripts in a directory of the test's own that run the real
program except for the faulting sub-command; which fault is on is a file there, so one
daemon sees a fault come and go.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from api.runtime.v1 import api_pb2 as pb
from tests.integration import images as img
from tests.integration.nodes import (
    CNI_BIN,
    MakeNode,
    Node,
    _assert_no_container_leaks,
    assert_only_the_node_pod,
    sandbox_config,
)
from tests.integration.skiffd import processes_mentioning

# The wrapper: FAULT is "<sub-command> <how>"; the sub-command is matched as a whole
# argument (runc's verbs; container ids are hex and paths hold slashes).
WRAPPER = """#!/bin/sh
fault=$(cat {fault} 2>/dev/null)
verb=${{fault%% *}}
how=${{fault#* }}
if [ -n "$fault" ]; then
  for arg in "$@"; do
    [ "$arg" = "$verb" ] || continue
    echo "$$ $verb $how" >> {hits}
    case "$how" in
      fail) echo "injected failure of $verb" >&2; exit 1 ;;
      hang) exec sleep {hang_seconds} ;;
      die) "{real}" "$@"; kill -KILL $$ ;;
      kill-parent) kill -KILL $PPID; exec "{real}" "$@" ;;
    esac
  done
fi
exec "{real}" "$@"
"""

#: skiffd's runtime command timeout in these tests: a hang is past it in a second.
COMMAND_TIMEOUT = 2.0


def hang_seconds() -> int:
    """How long a hung wrapper sleeps: a number of the test's own, to find the ones it
    left behind (tests on the other pytest worker hang theirs at the same time)."""
    return 100_000 + secrets.randbelow(900_000)


@dataclass
class Faulty:
    """Wrapper scripts for runc and conmon, and the switch of their fault."""

    directory: Path
    hang_seconds: int

    @property
    def runc(self) -> Path:
        return self.directory / "runc"

    @property
    def conmon(self) -> Path:
        return self.directory / "conmon"

    def set(self, program: str, verb: str, how: str) -> None:
        (self.directory / f"{program}.fault").write_text(f"{verb} {how}")

    def clear(self) -> None:
        for program in ("runc", "conmon"):
            (self.directory / f"{program}.fault").unlink(missing_ok=True)

    def hits(self, program: str) -> list[str]:
        path = self.directory / f"{program}.hits"
        return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def faulty() -> Iterator[Faulty]:
    directory = Path(tempfile.mkdtemp(prefix="skiff-faulty-", dir="/tmp"))
    hang = hang_seconds()
    try:
        for program in ("runc", "conmon"):
            real = shutil.which(program)
            if real is None:
                pytest.skip(f"{program} is not installed")
            script = WRAPPER.format(
                fault=directory / f"{program}.fault",
                hits=directory / f"{program}.hits",
                real=real,
                hang_seconds=hang,
            )
            (directory / program).write_text(script)
            (directory / program).chmod(0o755)
        yield Faulty(directory, hang)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _node(make_node: MakeNode, faulty: Faulty) -> Node:
    runtime = {
        "handlers": {"runc": {"path": str(faulty.runc)}},
        "conmon": str(faulty.conmon),
        "command_timeout": COMMAND_TIMEOUT,
    }
    return make_node(config={"runtime": runtime})


def _no_wrapped_processes(node: Node, faulty: Faulty) -> list[int]:
    """Wrappers of a failed call still running, or hung ones (their sleep)."""
    daemon_pid = node.daemon.proc.pid if node.daemon.proc else 0
    wrappers = processes_mentioning(f"sh {faulty.directory}/")
    hung = processes_mentioning(f"sleep {faulty.hang_seconds}")
    return [p for p in wrappers + hung if p != daemon_pid]


def _refused_naming(error: grpc.RpcError, *words: str) -> str:
    """A failure the client can read: a real code (not INTERNAL, not OK) and a message
    with every one of `words`. Returns the message."""
    details = error.details() or ""
    assert error.code() not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.OK), details
    assert all(word in details for word in words), details
    return details


def _healthy(node: Node) -> None:
    node.runtime.Version(pb.VersionRequest(), timeout=5)
    assert node.runtime.Status(pb.StatusRequest(), timeout=5).status.conditions


@pytest.mark.parametrize(
    ("program", "verb", "how", "said"),
    [
        ("runc", "create", "fail", "injected failure of create"),
        ("runc", "create", "hang", "within"),
        ("runc", "create", "die", ""),
        ("runc", "create", "kill-parent", ""),
        ("conmon", "--cid", "fail", ""),
        ("conmon", "--cid", "hang", "conmon"),
    ],
    ids=["runc-fails", "runc-hangs", "runc-dies", "conmon-dies", "conmon-fails", "conmon-hangs"],
)
def test_create_container_with_a_faulty_runtime(
    faulty: Faulty, make_node: MakeNode, program: str, verb: str, how: str, said: str
) -> None:
    node = _node(make_node, faulty)
    faulty.set(program, verb, how)
    started = time.monotonic()
    error = node.create_error("victim")
    elapsed = time.monotonic() - started
    faulty.clear()
    assert faulty.hits(program), f"the {program} fault was never reached"
    _refused_naming(error, "creating container", said)
    assert elapsed < COMMAND_TIMEOUT * 4, f"CreateContainer took {elapsed:.1f} s"
    _assert_no_container_leaks(node)
    assert _no_wrapped_processes(node, faulty) == []
    _healthy(node)
    container = node.run("after", command=["sleep", "3600"])
    assert node.status(container).status.state == pb.ContainerState.CONTAINER_RUNNING


@pytest.mark.parametrize("how", ["fail", "hang"])
def test_start_container_with_a_faulty_runtime(
    faulty: Faulty, make_node: MakeNode, how: str
) -> None:
    node = _node(make_node, faulty)
    container = node.create("victim", command=["sleep", "3600"])
    faulty.set("runc", "start", how)
    with pytest.raises(grpc.RpcError) as err:
        node.start(container)
    faulty.clear()
    _refused_naming(err.value, container, "start")
    assert _no_wrapped_processes(node, faulty) == []
    _healthy(node)
    # Whatever state the failed start left, the container can be removed and made anew.
    node.remove(container)
    _assert_no_container_leaks(node)
    again = node.run("victim", command=["sleep", "3600"])
    assert node.status(again).status.state == pb.ContainerState.CONTAINER_RUNNING


def test_stop_container_when_runc_kill_hangs(faulty: Faulty, make_node: MakeNode) -> None:
    node = _node(make_node, faulty)
    container = node.run("victim", command=["sleep", "3600"])
    faulty.set("runc", "kill", "hang")
    stop = pb.StopContainerRequest(container_id=container, timeout=1)
    with pytest.raises(grpc.RpcError) as err:
        node.runtime.StopContainer(stop, timeout=30)
    _refused_naming(err.value, container, "kill")
    assert _no_wrapped_processes(node, faulty) == []
    _healthy(node)
    faulty.clear()
    node.runtime.StopContainer(stop, timeout=30)
    assert node.status(container).status.state == pb.ContainerState.CONTAINER_EXITED
    node.remove(container)
    _assert_no_container_leaks(node)


@pytest.mark.parametrize("how", ["fail", "hang"])
def test_remove_container_when_runc_delete_fails(
    faulty: Faulty, make_node: MakeNode, how: str
) -> None:
    node = _node(make_node, faulty)
    container = node.run("victim", command=["sleep", "3600"])
    node.runtime.StopContainer(pb.StopContainerRequest(container_id=container, timeout=1))
    faulty.set("runc", "delete", how)
    with pytest.raises(grpc.RpcError) as err:
        node.remove(container)
    _refused_naming(err.value, container, "delete")
    assert _no_wrapped_processes(node, faulty) == []
    _healthy(node)
    # Still listed: the kubelet retries a remove that failed.
    assert [c.id for c in node.runtime.ListContainers(pb.ListContainersRequest()).containers] == [
        container
    ]
    faulty.clear()
    node.remove(container)
    _assert_no_container_leaks(node)


# --- CNI plugins ------------------------------------------------------------------------

#: A chained CNI plugin that passes ADD's result on, unless the file its config names
#: says to fail ADD, hang in ADD, or fail DEL.
FAULTY_PLUGIN = """#!/bin/sh
config=$(cat)
fault=$(echo "$config" | sed -n 's/.*"fault": *"\\([^"]*\\)".*/\\1/p')
how=$(cat "$fault" 2>/dev/null)
case "$CNI_COMMAND" in
ADD)
  case "$how" in
  add-fail) echo '{"cniVersion":"1.0.0","code":11,"msg":"injected ADD failure"}'; exit 1 ;;
  add-hang) exec sleep HANG_SECONDS ;;
  esac
  echo "$config" | sed -n 's/.*"prevResult": *\\({.*}\\)}$/\\1/p' ;;
DEL)
  case "$how" in
  del-fail) echo '{"cniVersion":"1.0.0","code":11,"msg":"injected DEL failure"}'; exit 1 ;;
  esac ;;
VERSION) echo '{"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0"]}' ;;
esac
"""

CNI_TIMEOUT = 2.0


@dataclass
class FaultyNetwork:
    node: Node
    fault: Path
    hang_seconds: int

    def set(self, how: str) -> None:
        self.fault.write_text(how)

    def clear(self) -> None:
        self.fault.unlink(missing_ok=True)


@pytest.fixture
def cni_plugins_dir() -> Iterator[Path]:
    """The faulty plugin's directory; it outlives the node (whose pods need it to go)."""
    plugins = Path(tempfile.mkdtemp(prefix="skiff-cni-faulty-", dir="/tmp"))
    try:
        hang = hang_seconds()
        (plugins / "hang-seconds").write_text(str(hang))
        (plugins / "faultcni").write_text(FAULTY_PLUGIN.replace("HANG_SECONDS", str(hang)))
        (plugins / "faultcni").chmod(0o755)
        yield plugins
    finally:
        shutil.rmtree(plugins, ignore_errors=True)


@pytest.fixture
def faulty_network(cni_plugins_dir: Path, make_node: MakeNode) -> FaultyNetwork:
    network = {
        "cni_plugin_dirs": [CNI_BIN, str(cni_plugins_dir)],
        "cni_plugin_timeout": CNI_TIMEOUT,
    }
    node = make_node(config={"network": network})
    fault = cni_plugins_dir / "fault"
    conflist = node.world.conflist()
    conflist["plugins"].append({"type": "faultcni", "fault": str(fault)})
    (node.daemon.cni_dir / "10-test.conflist").write_text(json.dumps(conflist))
    node.daemon.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "config reloaded" not in node.daemon.logs() and time.monotonic() < deadline:
        time.sleep(0.05)
    return FaultyNetwork(node, fault, int((cni_plugins_dir / "hang-seconds").read_text()))


def _run_pod(node: Node, name: str) -> str:
    config = sandbox_config(name, node.log_dir.parent / name)
    request = pb.RunPodSandboxRequest(config=config)
    return node.runtime.RunPodSandbox(request, timeout=30).pod_sandbox_id


def _hung_plugins(network: FaultyNetwork) -> list[int]:
    return processes_mentioning(f"sleep {network.hang_seconds}")


@pytest.mark.parametrize(
    ("how", "said"), [("add-fail", "injected ADD failure"), ("add-hang", "timed out on ADD")]
)
def test_run_pod_sandbox_when_the_cni_add_fails_or_hangs(
    faulty_network: FaultyNetwork, how: str, said: str
) -> None:
    node = faulty_network.node
    faulty_network.set(how)
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        _run_pod(node, "victim")
    elapsed = time.monotonic() - started
    faulty_network.clear()
    _refused_naming(err.value, "faultcni", said, "pod default/victim")
    assert elapsed < CNI_TIMEOUT * 4, f"RunPodSandbox took {elapsed:.1f} s"
    assert_only_the_node_pod(node)
    assert _hung_plugins(faulty_network) == []
    pod = _run_pod(node, "victim")
    node.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=30)
    node.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=30)
    assert_only_the_node_pod(node)


def test_a_pod_whose_cni_del_fails_is_reported_then_removable(
    faulty_network: FaultyNetwork,
) -> None:
    node = faulty_network.node
    pod = _run_pod(node, "victim")
    faulty_network.set("del-fail")
    stop = pb.StopPodSandboxRequest(pod_sandbox_id=pod)
    with pytest.raises(grpc.RpcError) as err:
        node.runtime.StopPodSandbox(stop, timeout=30)
    _refused_naming(err.value, pod, "injected DEL failure")
    node.runtime.Version(pb.VersionRequest(), timeout=5)
    faulty_network.clear()
    node.runtime.StopPodSandbox(stop, timeout=30)
    node.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=30)
    assert_only_the_node_pod(node)


# --- a full disk ------------------------------------------------------------------------


@pytest.fixture
def small_root() -> Iterator[Path]:
    """A 48 MiB tmpfs of the test's own, for skiffd's root."""
    mount_dir = Path(tempfile.mkdtemp(prefix="skiff-full-", dir="/tmp"))
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48m", "skiff-test-full", str(mount_dir)], check=True
    )
    try:
        yield mount_dir
    finally:
        subprocess.run(["umount", "-l", str(mount_dir)], check=False)
        shutil.rmtree(mount_dir, ignore_errors=True)


def _fill(directory: Path) -> Path:
    """A file taking every free byte of the filesystem `directory` is on."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return filler


def test_create_container_on_a_full_disk(small_root: Path, make_node: MakeNode) -> None:
    node = make_node(config={"root": str(small_root / "root")})
    filler = _fill(small_root)
    try:
        error = node.create_error("victim", command=["sleep", "3600"])
    finally:
        filler.unlink()
    details = error.details() or ""
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, node.daemon.logs()[-4000:]
    assert "CreateContainer pod_sandbox_id=" + node.pod in details, details
    assert "no space left" in details, details
    _assert_no_container_leaks(node)
    _healthy(node)
    container = node.run("victim", command=["sleep", "3600"])
    assert node.status(container).status.state == pb.ContainerState.CONTAINER_RUNNING


def _store_files(node: Node) -> list[str]:
    """Blobs, layers, image records and work files of skiffd's image store."""
    root = node.daemon.root
    return sorted(
        str(p.relative_to(root))
        for part in ("blobs", "layers", "images", "tmp")
        if (root / part).exists()
        for p in (root / part).rglob("*")
    )


@pytest.mark.parametrize("new_layer", [False, True], ids=["blobs-only", "layer"])
def test_pull_image_on_a_full_disk(small_root: Path, make_node: MakeNode, new_layer: bool) -> None:
    """Full during the blob writes (the layer is there already), or during the unpack
    of a new layer: RESOURCE_EXHAUSTED naming the image, nothing of it kept, and the
    same pull works once there is room."""
    node = make_node(config={"root": str(small_root / "root")})
    marker = img.regular_file("full-disk", os.urandom(65536))
    extra = [img.build_layer([marker])] if new_layer else []
    image = img.busybox_image(labels={"full": str(new_layer)}, extra_layers=extra)
    img.push(node.world.registry, "full/disk", "v1", image)
    ref = f"{node.world.registry.host}/full/disk:v1"
    before = _store_files(node)
    filler = _fill(small_root)
    try:
        with pytest.raises(grpc.RpcError) as err:
            node.daemon.images().PullImage(
                pb.PullImageRequest(image=pb.ImageSpec(image=ref)), timeout=30
            )
    finally:
        filler.unlink()
    details = err.value.details() or ""
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, details
    assert "full/disk" in details and "no space left" in details, details
    deadline = time.monotonic() + 5
    while _store_files(node) != before and time.monotonic() < deadline:
        time.sleep(0.1)  # a failed pull's garbage collection runs after the answer
    assert _store_files(node) == before
    _healthy(node)
    pulled = node.daemon.images().PullImage(
        pb.PullImageRequest(image=pb.ImageSpec(image=ref)), timeout=30
    )
    assert pulled.image_ref == image.config_digest
