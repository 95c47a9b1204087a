"""Shared pieces of the benchmarks: the peer runtime, skiffd, the pod network, reports.

- `BenchError`, `tail`, `mounts_under` / `unmount_under`: errors of a benchmark that
  cannot run, log tails for them, mounts left behind.
- The peers: `PeerKind` is one containerd to compare with, ``containerd1`` (Debian's
  1.6, from PATH) or ``containerd2`` (2.x, built from the Go module pinned in
  ``bench/tools/containerd`` by `bench.containerd2`, its runc shim first in its PATH);
  `add_peers_option` / `resolve_peers` are every benchmark's ``--peers`` (default both,
  2.x only when it can be built).
- `containerd_process`: a `PeerKind` started with a config of the caller's,
  everything of its own (root, state, sockets, ``certs.d/<registry>/hosts.toml`` for
  a plain-HTTP registry) under a temp directory, stopped by pid on the way out.
  `containerd_cri` is its variant set up to run pod sandboxes (`containerd_pod_config`,
  version 2, for 1.6; `containerd2_pod_config`, version 3, for 2.x): network namespaces
  of its own under that directory, a sandbox (pause) image of ours, a CNI config
  directory and plugin directory, AppArmor off and ``restrict_oom_score_adj`` on (root
  here lacks CAP_SYS_RESOURCE). On the way out it also ends the shims it left (found by
  the ``-address`` under its temp directory), unmounts what is left there and removes it.
- `skiffd_running`: skiffd (`tests.integration.skiffd.Skiffd`) started, checked for a
  clean stop, killed and unmounted on the way out.
- `pause_image`: a pause-like image built from busybox (``sleep`` forever), since the
  machine has no route to ``registry.k8s.io``.
- `BenchNetwork`: one bridge + host-local + portmap network with a unique bridge name,
  a free /24 and its own IPAM ``dataDir``; what it holds (IPs, veths) for leak checks,
  and the removal of its bridge. `pod_bench`: that network, its config directories and
  a loopback registry for one pod benchmark.
- CRI helpers (`pull_image`, `pod_config`, `pool_map`) and report helpers
  (`percentile`, `ratio`, `table_header`, `table_row`, `value_row`, `percentile_rows`,
  ...: a column for skiff, then one for each peer with skiff's ratio to it);
  `timed_counts` times List-like calls that must each see a given number of items;
  `cpu_seconds` is a process's user + system time.
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc

from api.runtime.v1 import api_pb2 as pb
from api.runtime.v1 import api_pb2_grpc
from tests.integration import images as img
from tests.integration.registry import TestRegistry
from tests.integration.skiffd import Skiffd, pid_alive, short_tempdir

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

T = TypeVar("T")


class BenchError(RuntimeError):
    """The benchmark could not run (not: the numbers are bad)."""


def tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def require_root(why: str) -> None:
    if os.geteuid() != 0:
        raise BenchError(f"run as root: {why}")


def require_containerd(install_hint: str) -> str:
    """containerd's path; a `BenchError` naming ``install_hint`` when it is missing."""
    binary = shutil.which("containerd")
    if binary is None:
        raise BenchError(f"containerd is not installed: {install_hint}")
    return binary


def run_main(prog: str, run: Callable[[], str]) -> int:
    """Print what ``run`` reports; 1 (and the error on stderr) when it could not run."""
    try:
        print(run())
    except (BenchError, AssertionError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    return 0


@contextmanager
def temp_base(tag: str) -> Iterator[Path]:
    """A short temp directory under /tmp, removed on the way out."""
    base = short_tempdir(tag)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------------------
# Mounts left behind
# --------------------------------------------------------------------------------------


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path``, deepest first."""
    top = str(path.resolve())
    found: list[str] = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == top or point.startswith(top + "/"):
            found.append(point)
    return sorted(found, key=len, reverse=True)


def unmount_under(path: Path) -> list[str]:
    """Unmount whatever is mounted below ``path``; returns what had been left mounted."""
    left = mounts_under(path)
    for point in left:
        done = subprocess.run(["umount", point], capture_output=True, check=False)
        if done.returncode != 0:
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    return left


# --------------------------------------------------------------------------------------
# CRI clients
# --------------------------------------------------------------------------------------


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


def pull_image(
    images: api_pb2_grpc.ImageServiceStub,
    ref: str,
    name: str,
    log_path: Path,
    timeout: float = PULL_TIMEOUT,
) -> str:
    """PullImage through a CRI ImageService; the image ref it answers."""
    try:
        response = images.PullImage(
            pb.PullImageRequest(image=pb.ImageSpec(image=ref)), timeout=timeout
        )
    except grpc.RpcError as exc:
        raise BenchError(
            f"{name}: PullImage({ref}) failed: {exc.code()} {exc.details()}\n{tail(log_path)}"
        ) from None
    image_ref: str = response.image_ref
    return image_ref


def pod_config(tag: str, index: int, log_root: Path, namespace: str) -> pb.PodSandboxConfig:
    """A minimal pod: unique name and uid, ``namespace``, hostname, a log directory, and
    pod-level network/PID/IPC namespaces (the defaults)."""
    name = f"bench-{tag}-{index}"
    log_dir = log_root / name
    log_dir.mkdir(parents=True, exist_ok=True)
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(
            name=name, uid=f"uid-{tag}-{index}", namespace=namespace, attempt=0
        ),
        hostname=name,
        log_directory=str(log_dir),
        linux=pb.LinuxPodSandboxConfig(
            security_context=pb.LinuxSandboxSecurityContext(namespace_options=pb.NamespaceOption())
        ),
    )


def pool_map(fn: Callable[[int], T], count: int, workers: int) -> list[T]:
    """``fn`` over ``range(count)``, ``workers`` at a time (1: one after the other)."""
    if workers == 1:
        return [fn(i) for i in range(count)]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pod") as pool:
        return list(pool.map(fn, range(count)))


# --------------------------------------------------------------------------------------
# skiffd
# --------------------------------------------------------------------------------------


def skiff_pod_settings(cni_conf_dir: Path, log_level: str) -> dict[str, Any]:
    """skiffd's settings for the pod benchmarks: JSON log lines, our CNI directories."""
    return {
        "log_level": log_level,
        "log_format": "json",
        "network": {"cni_config_dir": str(cni_conf_dir), "cni_plugin_dirs": [CNI_BIN]},
    }


@contextmanager
def skiffd_running(
    base: Path,
    settings: dict[str, Any],
    *,
    insecure_registry: str | None = None,
    leftovers: Callable[[Path], list[str]] | None = None,
    mounts_shown: int | None = None,
) -> Iterator[Skiffd]:
    """skiffd with a fresh root under ``base`` (``insecure_registry``: marked insecure in
    its ``registries.conf``); its clean stop checked. On the way out it is killed,
    ``leftovers`` (after a failed run) ended and what is mounted below ``base``
    unmounted (the first ``mounts_shown`` of them named in the warning)."""
    daemon = Skiffd(base, settings)
    if insecure_registry is not None:
        (base / "registries.conf").write_text(
            f'[[registry]]\nlocation = "{insecure_registry}"\ninsecure = true\n'
        )
    try:
        try:
            daemon.start()
        except AssertionError as exc:
            raise BenchError(str(exc)) from None
        yield daemon
        status = daemon.stop()
        if status != 0:
            raise BenchError(f"skiffd exited with {status}:\n{tail(daemon.log_path)}")
    finally:
        daemon.kill()
        if leftovers is not None:
            for what in leftovers(base):
                print(f"warning: skiff left {what}", file=sys.stderr)
        left = unmount_under(base)
        if left:
            print(f"warning: skiffd left mounts behind: {left[:mounts_shown]}", file=sys.stderr)


def add_skiff_log_level(parser: argparse.ArgumentParser, debug_adds: str) -> None:
    parser.add_argument(
        "--skiff-log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help=f"skiffd's log level (default info; debug adds {debug_adds})",
    )


def duration_entries(text: str) -> Iterator[dict[str, Any]]:
    """skiffd's JSON log lines that carry a ``duration_ms``."""
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and "duration_ms" in entry:
            yield entry


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

    def leaks(self) -> list[str]:
        """What pods left in the network: IPs host-local holds, veths on the bridge."""
        found: list[str] = []
        ips = self.allocated()
        if ips:
            found.append(f"{len(ips)} IP(s) left in host-local's dataDir: {ips[:5]}")
        veths = self.veths()
        if veths:
            found.append(f"{len(veths)} veth(s) left on bridge {self.bridge}: {veths[:5]}")
        return found

    def cache_leaks(self) -> list[str]:
        """libcni's cached results of this network still there (containerd's); removed."""
        cached = self.cached_results()
        if not cached:
            return []
        for path in cached:
            path.unlink(missing_ok=True)
        return [f"{len(cached)} cached CNI result(s) left: {[p.name for p in cached[:3]]}"]


@dataclass(frozen=True)
class PodBench:
    """What a pod benchmark runs in: a work directory, the network (a config directory
    of it for each runtime), a directory for pod logs and a loopback registry."""

    work: Path
    network: BenchNetwork
    log_root: Path
    skiff_conf: Path
    ctrd_conf: Path
    registry: TestRegistry


@contextmanager
def pod_bench(tag: str) -> Iterator[PodBench]:
    """Root checked, then the `PodBench`; on the way out the bridge is removed and the
    work directory unmounted and removed. (The peers are checked by `resolve_peers`.)"""
    require_root("network namespaces, bridges and mounts need it")
    work = short_tempdir(tag)
    network = BenchNetwork.create(work / "ipam")
    try:
        skiff_conf = network.write_conf_dir(work / "skiff-net.d")
        ctrd_conf = network.write_conf_dir(work / "ctrd-net.d")
        with TestRegistry("insecure") as registry:
            yield PodBench(work, network, work / "pod-logs", skiff_conf, ctrd_conf, registry)
    finally:
        network.remove()
        unmount_under(work)
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------------------
# The sandbox image for containerd
# --------------------------------------------------------------------------------------


def pause_image() -> img.Image:
    """busybox whose Cmd sleeps forever: what the sandbox container of containerd runs
    (the stand-in for ``registry.k8s.io/pause``, which is out of reach here)."""
    return img.busybox_image(run=img.RunConfig(cmd=("sleep", "2147483647")))


# --------------------------------------------------------------------------------------
# containerd
# --------------------------------------------------------------------------------------

#: The peers a benchmark can compare with (``--peers``): Debian's containerd 1.6 and
#: containerd 2.x built from the Go module in bench/tools/containerd.
PEER_NAMES = ("containerd1", "containerd2")


@dataclass(frozen=True)
class PeerKind:
    """One containerd the benchmarks compare skiff with."""

    name: str  # as in --peers
    binary: Path
    version: str  # as ``containerd --version`` says, e.g. "1.6.20~ds1" or "v2.4.2"
    #: put first in the daemon's PATH (2.x: where its own runc shim is).
    path_dir: Path | None = None

    @property
    def major(self) -> int:
        return int(self.version.lstrip("v").split(".")[0])

    @property
    def label(self) -> str:
        """The column head: ``containerd 1.6``."""
        return "containerd " + ".".join(self.version.lstrip("v").split(".")[:2])

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.path_dir is not None:
            env["PATH"] = f"{self.path_dir}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
        return env

    def pod_config(self, base: Path, *, sandbox_image: str, cni_conf_dir: Path) -> str:
        """Its config (version 2 or 3) for running pods, everything under ``base``."""
        make = containerd_pod_config if self.major < 2 else containerd2_pod_config
        return make(base, sandbox_image=sandbox_image, cni_conf_dir=cni_conf_dir)


def _version_of(binary: Path) -> str:
    """``containerd --version``: ``containerd <package> <version> <revision>``."""
    try:
        out = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.split()
    except (OSError, subprocess.SubprocessError) as exc:
        raise BenchError(f"{binary} --version failed: {exc}") from None
    if len(out) < 3 or not out[2].lstrip("v")[:1].isdigit():
        raise BenchError(f"{binary} --version says {' '.join(out)!r}: no version")
    return out[2]


def containerd1(install_hint: str) -> PeerKind:
    """Debian's containerd (1.6), from PATH."""
    binary = Path(require_containerd(install_hint))
    return PeerKind("containerd1", binary, _version_of(binary))


def containerd2() -> PeerKind:
    """containerd 2.x from the tools cache, built first when missing (minutes)."""
    from bench import containerd2 as module  # noqa: PLC0415 (imports tests.e2e)

    if shutil.which("go") is None and module.built() is None:
        raise BenchError("containerd 2.x needs Go to be built (`make bench-tools`)")
    print("containerd 2.x: building it when not in the cache ...", file=sys.stderr)
    try:
        directory = module.build(lambda line: print(f"containerd 2.x: {line}", file=sys.stderr))
    except RuntimeError as exc:
        raise BenchError(f"cannot build containerd 2.x: {exc}") from None
    binary = directory / module.DAEMON
    return PeerKind("containerd2", binary, _version_of(binary), path_dir=directory)


def add_peers_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--peers",
        default=None,
        help="comma-separated peers among "
        + ", ".join(PEER_NAMES)
        + " (default both; containerd2 only when Go can build it)",
    )


def resolve_peers(spec: str | None, install_hint: str) -> list[PeerKind]:
    """The peers ``--peers`` names, ready to start. By default both, but containerd 2.x
    only when it can be built (a warning otherwise)."""
    if spec is None:
        peers = [containerd1(install_hint)]
        try:
            peers.append(containerd2())
        except BenchError as exc:
            print(f"warning: comparing with containerd 1.6 only: {exc}", file=sys.stderr)
        return peers
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in PEER_NAMES]
    if not names or unknown or len(set(names)) != len(names):
        raise BenchError(f"--peers {spec!r}: name each of {', '.join(PEER_NAMES)} at most once")
    return [containerd1(install_hint) if n == "containerd1" else containerd2() for n in names]


#: The head of a TOML table of containerd 1.6's CRI plugin: ``f"{CRI}.cni]"``.
CRI = '[plugins."io.containerd.grpc.v1.cri"'
#: containerd 2.x (config version 3) splits its CRI into these plugins.
CRI_IMAGES = "[plugins.'io.containerd.cri.v1.images'"
CRI_RUNTIME = "[plugins.'io.containerd.cri.v1.runtime'"
CRI_GRPC = "[plugins.'io.containerd.grpc.v1.cri'"


def containerd_config_head(base: Path) -> str:
    """containerd 1.6 config (version 2) up to the options of its CRI plugin (its
    table is the last one opened): every path of its own under ``base``."""
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

{CRI}]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"""


def containerd_pod_config(
    base: Path, *, sandbox_image: str, cni_conf_dir: Path, cni_bin_dir: str = CNI_BIN
) -> str:
    """containerd 1.6 config (version 2) for running pod sandboxes on this host."""
    return (
        containerd_config_head(base)
        + f"""\
  sandbox_image = "{sandbox_image}"
  disable_apparmor = true
  # Root here lacks CAP_SYS_RESOURCE: no negative oom_score_adj.
  restrict_oom_score_adj = true
  # Pod network namespaces under {base}/state, not /var/run/netns.
  netns_mounts_under_state_dir = true

  {CRI}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    {CRI}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      {CRI}.containerd.runtimes.runc.options]
        SystemdCgroup = false
        # runc's state (default /run/containerd/runc) under {base} as well.
        Root = "{base}/runc"

  {CRI}.cni]
    bin_dir = "{cni_bin_dir}"
    conf_dir = "{cni_conf_dir}"
    max_conf_num = 1

  {CRI}.registry]
    config_path = "{base}/certs.d"
"""
    )


def containerd2_pod_config(
    base: Path, *, sandbox_image: str, cni_conf_dir: Path, cni_bin_dir: str = CNI_BIN
) -> str:
    """containerd 2.x config (version 3) for running pod sandboxes on this host: the
    settings of `containerd_pod_config` in their 2.x places, and its shim sockets under
    ``base`` too (2.x can be told; 1.6 always uses /run/containerd/s). NRI is off: it
    would listen on /var/run/nri."""
    return f"""\
version = 3
root = "{base}/root"
state = "{base}/state"
disabled_plugins = [
  "io.containerd.snapshotter.v1.blockfile",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.erofs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.nri.v1.nri",
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

[plugins.'io.containerd.internal.v1.opt']
  path = "{base}/opt"

[plugins.'io.containerd.shim.v1.manager']
  socket_dir = "{base}/s"

{CRI_GRPC}]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

{CRI_IMAGES}]
  snapshotter = "overlayfs"

  {CRI_IMAGES}.pinned_images]
    sandbox = "{sandbox_image}"

  {CRI_IMAGES}.registry]
    config_path = "{base}/certs.d"

{CRI_RUNTIME}]
  disable_apparmor = true
  # Root here lacks CAP_SYS_RESOURCE: no negative oom_score_adj.
  restrict_oom_score_adj = true
  # Pod network namespaces under {base}/state, not /var/run/netns.
  netns_mounts_under_state_dir = true

  {CRI_RUNTIME}.containerd]
    default_runtime_name = "runc"

    {CRI_RUNTIME}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      {CRI_RUNTIME}.containerd.runtimes.runc.options]
        SystemdCgroup = false
        # runc's state (default /run/containerd/runc) under {base} as well.
        Root = "{base}/runc"

  {CRI_RUNTIME}.cni]
    bin_dirs = ["{cni_bin_dir}"]
    conf_dir = "{cni_conf_dir}"
    max_conf_num = 1
"""


def containerd_hosts_toml(registry_host: str) -> str:
    """``certs.d/<host:port>/hosts.toml``: the registry speaks plain HTTP."""
    return f"""\
server = "http://{registry_host}"

[host."http://{registry_host}"]
  capabilities = ["pull", "resolve"]
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


def end_shims(base: Path, grace: float = 5.0) -> list[Shim]:
    """SIGTERM, then SIGKILL, the shims of the containerd under ``base``; remove their
    sockets. Returns the shims that were still running."""
    shims = shims_under(base)
    for shim in shims:
        with suppress(ProcessLookupError):
            os.kill(shim.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(pid_alive(s.pid) for s in shims) and time.monotonic() < deadline:
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
    kind: PeerKind

    def runtime(self) -> api_pb2_grpc.RuntimeServiceStub:
        return api_pb2_grpc.RuntimeServiceStub(self.channel)

    def images(self) -> api_pb2_grpc.ImageServiceStub:
        return api_pb2_grpc.ImageServiceStub(self.channel)

    def pull(self, ref: str) -> str:
        """PullImage through its CRI; the image ref it answers."""
        return pull_image(self.images(), ref, self.name, self.log_path)


def _end_pods(base: Path) -> None:
    """What containerd's pods left behind under ``base``: containers, then shims."""
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


@contextmanager
def containerd_process(
    kind: PeerKind,
    registry_host: str,
    config: Callable[[Path], str],
    *,
    dirs: Iterable[str] = ("root", "state", "opt"),
    pods: bool = False,
) -> Iterator[Peer]:
    """containerd ``kind`` with ``config(base)``, everything of its own under a fresh
    ``base`` in /tmp (``dirs`` made there first).

    The registry at ``registry_host`` speaks plain HTTP (``certs.d/<host>/hosts.toml``).
    On exit: SIGTERM by pid; with ``pods``, its leftover containers and shims are ended
    and the host directories it made removed again when empty; whatever is mounted below
    its directory is unmounted and the directory removed.
    """
    base = short_tempdir("ctrd")
    for sub in dirs:
        (base / sub).mkdir(parents=True)
    hosts_dir = base / "certs.d" / registry_host
    hosts_dir.mkdir(parents=True)
    (hosts_dir / "hosts.toml").write_text(containerd_hosts_toml(registry_host))
    config_path = base / "config.toml"
    config_path.write_text(config(base))
    log_path = base / "containerd.log"
    socket = base / "containerd.sock"
    new_host_dirs = [d for d in HOST_DIRS if not d.exists()] if pods else []
    proc: subprocess.Popen[bytes] | None = None
    channel: grpc.Channel | None = None
    try:
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [str(kind.binary), "--config", str(config_path)],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env=kind.env(),
            )
        channel = grpc.insecure_channel(f"unix://{socket}")
        wait_cri_ready(proc, channel, socket, log_path, kind.name)
        yield Peer(kind.name, proc.pid, base, channel, log_path, kind)
        channel.close()
        channel = None
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise BenchError(
                f"{kind.name} ignored SIGTERM for {STOP_TIMEOUT}s:\n{tail(log_path)}"
            ) from None
    finally:
        if channel is not None:
            channel.close()
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if pods:
            _end_pods(base)
        left = unmount_under(base)
        if left:
            print(f"warning: {kind.name} left mounts behind: {left}", file=sys.stderr)
        shutil.rmtree(base, ignore_errors=True)
        for directory in reversed(new_host_dirs):
            with suppress(OSError):
                directory.rmdir()  # only when empty: nothing of anyone else's


@contextmanager
def containerd_cri(
    kind: PeerKind, registry_host: str, sandbox_image: str, cni_conf_dir: Path
) -> Iterator[Peer]:
    """`containerd_process` set up to run pods, with everything of its own under /tmp."""

    def config(base: Path) -> str:
        return kind.pod_config(base, sandbox_image=sandbox_image, cni_conf_dir=cni_conf_dir)

    with containerd_process(kind, registry_host, config, pods=True) as peer:
        yield peer


# --------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (all its threads)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError as exc:
        raise BenchError(f"the daemon (pid {pid}) is gone: {exc.strerror}") from None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def timed_counts(call: Callable[[], int], calls: int, want: int, name: str) -> list[float]:
    """Seconds each of ``calls`` calls of ``call`` took, one after the other; each must
    answer ``want`` items (a List that sees too little is no result)."""
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        got = call()
        times.append(time.perf_counter() - start)
        if got != want:
            raise BenchError(f"{name} answered {got} items, expected {want}")
    return times


def percentile(values: Sequence[float], q: int) -> float:
    """The ``q``-th percentile, linear between the closest ranks."""
    if len(values) == 1:
        return values[0]
    if q == 50:
        return statistics.median(values)
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("inf")


#: Widths of skiff's column, of each peer's and of the ratio after each peer's.
SKIFF_WIDTH = 11
PEER_WIDTH = 16
RATIO_WIDTH = 7

#: One peer's cell of a row: the value shown and skiff's ratio to it (None: not one).
Cell = tuple[str, float | None]


def table_header(title: str, width: int, peers: Sequence[str]) -> str:
    """The head of a table whose labels are ``width`` wide: skiff, then each of
    ``peers`` (their column heads) followed by skiff's ratio to it."""
    head = f"{title:<{width + 2}}{'skiff':>{SKIFF_WIDTH}}"
    for name in peers:
        head += f"{name:>{PEER_WIDTH}}{'ratio':>{RATIO_WIDTH}}"
    return head


def table_row(label: str, skiff: str, peers: Sequence[Cell], width: int) -> str:
    row = f"  {label:<{width}}{skiff:>{SKIFF_WIDTH}}"
    for value, r in peers:
        shown = "-" if r is None else f"{r:.2f}"
        row += f"{value:>{PEER_WIDTH}}{shown:>{RATIO_WIDTH}}"
    return row


def value_row(
    label: str, skiff: float, peers: Sequence[float], show: Callable[[float], str], width: int
) -> str:
    """A row of numbers, each peer's with skiff's ratio to it."""
    return table_row(label, show(skiff), [(show(p), ratio(skiff, p)) for p in peers], width)


def percentile_rows(
    name: str,
    skiff: Sequence[float],
    peers: Sequence[Sequence[float]],
    qs: Sequence[int],
    *,
    pad: int,
    width: int,
    digits: int = 1,
) -> list[str]:
    """One row per percentile in ``qs`` of samples of seconds (skiff's, then each
    peer's), shown in ms; the p50 row carries ``name`` (``pad`` wide)."""
    rows: list[str] = []
    for q in qs:
        label = f"{name if q == 50 else '':<{pad}}p{q}"
        rows.append(
            value_row(
                label,
                percentile(skiff, q) * 1000,
                [percentile(p, q) * 1000 for p in peers],
                lambda ms: f"{ms:.{digits}f} ms",
                width,
            )
        )
    return rows


def mode_title(mode: str, workers: int) -> str:
    return "sequential (1 at a time)" if mode == "sequential" else f"parallel ({workers} workers)"


def print_mode(name: str, mode: str, totals_ms: Sequence[float], wall_s: float) -> None:
    """The progress line of one mode of a runtime, on stderr."""
    print(
        f"{name:<10} {mode:<10} full cycle p50 {percentile(totals_ms, 50):7.1f} ms"
        f"   p99 {percentile(totals_ms, 99):7.1f} ms   wall {wall_s:6.2f} s",
        file=sys.stderr,
    )


def leaks_line(leaks: Iterable[tuple[str, Sequence[str]]]) -> str:
    """``leaks after each runtime: skiff none; containerd ...``."""
    return "leaks after each runtime: " + "; ".join(
        f"{n} {', '.join(found) if found else 'none'}" for n, found in leaks
    )
