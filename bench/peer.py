"""Shared pieces of the benchmarks that run pods: the peer runtime and the pod network.

- `containerd_cri`: Debian's containerd (1.6) with its CRI plugin set up to run pod
  sandboxes: a root, state, sockets and network namespaces of its own under a temp
  directory, a sandbox (pause) image of ours, a CNI config directory and plugin
  directory, AppArmor off and ``restrict_oom_score_adj`` on (root here lacks
  CAP_SYS_RESOURCE). On the way out it stops containerd by pid, ends the shims it left
  (found by the ``-address`` under its temp directory), unmounts what is left there and
  removes it.
- `pause_image`: a pause-like image built from busybox (``sleep`` forever), since the
  machine has no route to ``registry.k8s.io``.
- `BenchNetwork`: one bridge + host-local + portmap network with a unique bridge name,
  a free /24 and its own IPAM ``dataDir``; what it holds (IPs, veths) for leak checks,
  and the removal of its bridge.

`bench/pull.py` has the image-pull variant of the containerd set-up; its helpers
(`BenchError`, `unmount_under`, `containerd_hosts_toml`) are reused here.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from api.runtime.v1 import api_pb2 as pb
from api.runtime.v1 import api_pb2_grpc
from bench.pull import BenchError, containerd_hosts_toml, unmount_under
from tests.integration import images as img
from tests.integration.skiffd import short_tempdir

CNI_BIN = "/usr/lib/cni"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
PULL_TIMEOUT = 120.0
#: containerd 1.6 puts shim sockets here whatever its state directory is.
SHIM_SOCKET_DIR = Path("/run/containerd/s")
#: Its CRI's libcni caches each pod's CNI result here (not configurable in 1.6).
CNI_CACHE_DIR = Path("/var/lib/cni")
#: Host directories containerd may create outside its own: removed again when they
#: were not there before and are empty after (children first).
HOST_DIRS = (SHIM_SOCKET_DIR.parent, SHIM_SOCKET_DIR, CNI_CACHE_DIR, CNI_CACHE_DIR / "results")
K8S_NAMESPACE = "k8s.io"


def tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_cri_ready(
    proc: subprocess.Popen[bytes],
    channel: grpc.Channel,
    socket: Path,
    log_path: Path,
    name: str,
    timeout: float = START_TIMEOUT,
) -> None:
    """Wait until the CRI on ``channel`` answers Version; fail if ``proc`` exits first."""
    runtime = api_pb2_grpc.RuntimeServiceStub(channel)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(
                f"{name} exited with {proc.returncode} while starting:\n{tail(log_path)}"
            )
        if socket.exists():
            try:
                runtime.Version(pb.VersionRequest(), timeout=2)
                return
            except grpc.RpcError:
                pass
        time.sleep(0.05)
    raise BenchError(f"{name}'s CRI did not answer within {timeout}s:\n{tail(log_path)}")


# --------------------------------------------------------------------------------------
# The pod network
# --------------------------------------------------------------------------------------


def _free_subnet() -> ipaddress.IPv4Network:
    """A 10.2xx.y.0/24 that no address or route of this machine mentions yet."""
    used = subprocess.run(
        ["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True, check=False
    ).stdout
    used += subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True, check=False).stdout
    for _ in range(200):
        prefix = f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(250)}."
        if prefix not in used:
            return ipaddress.IPv4Network(prefix + "0/24")
    raise BenchError("no free 10.2xx.y.0/24 for the pod network")


@dataclass(frozen=True)
class BenchNetwork:
    """A bridge network of one benchmark run: bridge, subnet and IPAM store its own."""

    bridge: str
    subnet: ipaddress.IPv4Network
    data_dir: Path

    @classmethod
    def create(cls, data_dir: Path) -> BenchNetwork:
        """A fresh name (``skbn`` + 6 hex, ≤ 15 chars) and a free /24; nothing is made
        on the host until a runtime runs the bridge plugin."""
        data_dir.mkdir(parents=True, exist_ok=True)
        return cls(f"skbn{secrets.token_hex(3)}", _free_subnet(), data_dir)

    @property
    def name(self) -> str:
        return f"bench-{self.bridge}"

    def conflist(self) -> dict[str, Any]:
        return {
            "cniVersion": "1.0.0",
            "name": self.name,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": True,
                    "ipMasq": False,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": str(self.subnet)}]],
                        "dataDir": str(self.data_dir),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }

    def write_conf_dir(self, conf_dir: Path) -> Path:
        """``conf_dir`` holding this network as its only ``.conflist``."""
        conf_dir.mkdir(parents=True, exist_ok=True)
        path = conf_dir / "10-bench.conflist"
        path.write_text(json.dumps(self.conflist(), indent=2) + "\n")
        return conf_dir

    def allocated(self) -> list[str]:
        """Addresses host-local still holds (its files named after them)."""
        found: list[str] = []
        for path in self.data_dir.rglob("*"):
            try:
                address = ipaddress.ip_address(path.name)
            except ValueError:
                continue
            if path.is_file() and address in self.subnet:
                found.append(path.name)
        return sorted(found)

    def veths(self) -> list[str]:
        """Interfaces enslaved to the bridge (pod veths' host ends)."""
        out = subprocess.run(
            ["ip", "-o", "link", "show", "master", self.bridge],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if line]

    def cached_results(self, cache_dir: Path = CNI_CACHE_DIR) -> list[Path]:
        """libcni's cached results of this network (``results/<network>-<id>-<ifname>``)."""
        return sorted((cache_dir / "results").glob(f"{self.name}-*"))

    def contains(self, address: str) -> bool:
        try:
            return ipaddress.ip_address(address) in self.subnet
        except ValueError:
            return False

    def remove(self) -> None:
        """Delete what is on the bridge (only ours: it is a bridge of this run), then it."""
        for veth in self.veths():
            subprocess.run(["ip", "link", "del", veth], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)


# --------------------------------------------------------------------------------------
# The sandbox image for containerd
# --------------------------------------------------------------------------------------


def pause_image() -> img.Image:
    """busybox whose Cmd sleeps forever: what the sandbox container of containerd runs
    (the stand-in for ``registry.k8s.io/pause``, which is out of reach here)."""
    return img.busybox_image(run=img.RunConfig(cmd=("sleep", "2147483647")))


# --------------------------------------------------------------------------------------
# containerd with its CRI set up for pods
# --------------------------------------------------------------------------------------


def containerd_pod_config(
    base: Path, *, sandbox_image: str, cni_conf_dir: Path, cni_bin_dir: str = CNI_BIN
) -> str:
    """containerd 1.6 config (version 2) for running pod sandboxes on this host."""
    cri = '[plugins."io.containerd.grpc.v1.cri"'
    return f"""\
version = 2
root = "{base}/root"
state = "{base}/state"
plugin_dir = ""
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = "{base}/containerd.sock"

[ttrpc]
  address = "{base}/containerd.sock.ttrpc"

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{base}/opt"

{cri}]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  sandbox_image = "{sandbox_image}"
  disable_apparmor = true
  # Root here lacks CAP_SYS_RESOURCE: no negative oom_score_adj.
  restrict_oom_score_adj = true
  # Pod network namespaces under {base}/state, not /var/run/netns.
  netns_mounts_under_state_dir = true

  {cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    {cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      {cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
        # runc's state (default /run/containerd/runc) under {base} as well.
        Root = "{base}/runc"

  {cri}.cni]
    bin_dir = "{cni_bin_dir}"
    conf_dir = "{cni_conf_dir}"
    max_conf_num = 1

  {cri}.registry]
    config_path = "{base}/certs.d"
"""


@dataclass(frozen=True)
class Shim:
    """A ``containerd-shim-*`` process and what identifies its socket."""

    pid: int
    address: str
    namespace: str
    id: str

    @property
    def socket(self) -> Path:
        """Where containerd 1.6 puts this shim's socket (sha256 of address/ns/id)."""
        key = os.path.join(self.address, self.namespace, self.id)
        return SHIM_SOCKET_DIR / hashlib.sha256(key.encode()).hexdigest()


def _arg(argv: list[str], flag: str) -> str:
    for i, arg in enumerate(argv[:-1]):
        if arg in (flag, "-" + flag):
            return argv[i + 1]
    return ""


def shims_under(base: Path) -> list[Shim]:
    """Running shims whose ``-address`` (containerd's socket) lies below ``base``."""
    top = str(base) + "/"
    found: list[Shim] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if not argv or not os.path.basename(argv[0]).startswith("containerd-shim"):
            continue
        address = _arg(argv, "-address")
        if address.startswith(top):
            found.append(
                Shim(int(entry.name), address, _arg(argv, "-namespace"), _arg(argv, "-id"))
            )
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def end_shims(base: Path, grace: float = 5.0) -> list[Shim]:
    """SIGTERM, then SIGKILL, the shims of the containerd under ``base``; remove their
    sockets. Returns the shims that were still running."""
    shims = shims_under(base)
    for shim in shims:
        with suppress(ProcessLookupError):
            os.kill(shim.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(_alive(s.pid) for s in shims) and time.monotonic() < deadline:
        time.sleep(0.05)
    for shim in shims:
        with suppress(ProcessLookupError):
            os.kill(shim.pid, signal.SIGKILL)
        shim.socket.unlink(missing_ok=True)
    return shims


def delete_containers(runc_root: Path) -> list[str]:
    """``runc delete --force`` every container in ``runc_root`` (a namespace's state
    directory of the shims): what a failed run left running. Returns their ids."""
    if not runc_root.is_dir():
        return []
    ids = [d.name for d in runc_root.iterdir() if d.is_dir()]
    for cid in ids:
        subprocess.run(
            ["runc", "--root", str(runc_root), "delete", "--force", cid],
            capture_output=True,
            check=False,
            timeout=30,
        )
    return ids


@dataclass
class Peer:
    """A started containerd as a benchmark sees it."""

    name: str
    pid: int
    base: Path
    channel: grpc.Channel
    log_path: Path

    def runtime(self) -> api_pb2_grpc.RuntimeServiceStub:
        return api_pb2_grpc.RuntimeServiceStub(self.channel)

    def images(self) -> api_pb2_grpc.ImageServiceStub:
        return api_pb2_grpc.ImageServiceStub(self.channel)

    def pull(self, ref: str) -> str:
        """PullImage through its CRI; the image ref it answers."""
        try:
            response = self.images().PullImage(
                pb.PullImageRequest(image=pb.ImageSpec(image=ref)), timeout=PULL_TIMEOUT
            )
        except grpc.RpcError as exc:
            raise BenchError(
                f"{self.name}: PullImage({ref}) failed: {exc.code()} {exc.details()}\n"
                f"{tail(self.log_path)}"
            ) from None
        image_ref: str = response.image_ref
        return image_ref


@contextmanager
def containerd_cri(registry_host: str, sandbox_image: str, cni_conf_dir: Path) -> Iterator[Peer]:
    """Debian's containerd, set up to run pods, with everything of its own under /tmp.

    The registry at ``registry_host`` speaks plain HTTP (``certs.d/<host>/hosts.toml``).
    On exit: SIGTERM by pid, then its leftover shims are ended, whatever is mounted
    below its directory is unmounted and the directory removed.
    """
    binary = shutil.which("containerd")
    if binary is None:
        raise BenchError("containerd is not installed: `make bench-sandbox` installs it")
    base = short_tempdir("ctrd")
    for sub in ("root", "state", "opt"):
        (base / sub).mkdir()
    hosts_dir = base / "certs.d" / registry_host
    hosts_dir.mkdir(parents=True)
    (hosts_dir / "hosts.toml").write_text(containerd_hosts_toml(registry_host))
    config = base / "config.toml"
    config.write_text(
        containerd_pod_config(base, sandbox_image=sandbox_image, cni_conf_dir=cni_conf_dir)
    )
    log_path = base / "containerd.log"
    socket = base / "containerd.sock"
    new_host_dirs = [d for d in HOST_DIRS if not d.exists()]
    proc: subprocess.Popen[bytes] | None = None
    channel: grpc.Channel | None = None
    try:
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [binary, "--config", str(config)],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        channel = grpc.insecure_channel(f"unix://{socket}")
        wait_cri_ready(proc, channel, socket, log_path, "containerd")
        yield Peer("containerd", proc.pid, base, channel, log_path)
        channel.close()
        channel = None
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise BenchError(
                f"containerd ignored SIGTERM for {STOP_TIMEOUT}s:\n{tail(log_path)}"
            ) from None
    finally:
        if channel is not None:
            channel.close()
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        containers = delete_containers(base / "runc" / K8S_NAMESPACE)
        if containers:
            print(
                f"warning: containerd left {len(containers)} container(s), deleted: "
                f"{[c[:12] for c in containers]}",
                file=sys.stderr,
            )
        shims = end_shims(base)
        if shims:
            print(
                f"warning: containerd left {len(shims)} shim(s) running, ended: "
                f"{[s.pid for s in shims]}",
                file=sys.stderr,
            )
        left = unmount_under(base)
        if left:
            print(f"warning: containerd left mounts behind: {left}", file=sys.stderr)
        shutil.rmtree(base, ignore_errors=True)
        for directory in reversed(new_host_dirs):
            with suppress(OSError):
                directory.rmdir()  # only when empty: nothing of anyone else's
