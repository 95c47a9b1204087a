"""Pod + container lifecycle benchmark (issue 5): skiff against containerd's CRI.

For each runtime, one daemon, the same CNI conflist (bridge + host-local + portmap, as in
`bench.sandbox`) and the same busybox image, pushed to a loopback registry and pulled
through each runtime's CRI ImageService before anything is timed:

1. **idle memory**: the daemon plus its per-container helpers, with no pod yet.
2. **lifecycle**: ``--pods`` (50) pods, each RunPodSandbox, CreateContainer (one busybox
   container configured as the kubelet would: log path, its own PID namespace, seccomp
   unconfined), StartContainer, StopContainer (timeout 10 s; once its log says "ready",
   untimed, the container has trapped SIGTERM and exits on it), RemoveContainer,
   StopPodSandbox, RemovePodSandbox, each RPC timed client side; one pod at a time,
   then ``--parallel`` (10) workers over as many.
3. **list latency**: ``--list-pods`` (100) pods with 2 running containers each (made
   untimed, 10 at a time), then ``--list-calls`` (200) ListContainers calls in a row,
   then as many ListPodSandbox calls, each timed.
4. **memory with those pods**: PSS (``/proc/<pid>/smaps_rollup``; RSS beside it) summed
   over skiffd + every conmon whose command line names skiffd's base directory + skiff
   pause processes of its pods (none here: the containers have PID namespaces of their
   own), against containerd + every ``containerd-shim-*`` whose ``-address`` lies in its
   directory. Container processes (and containerd's sandbox ``sleep``) are workloads and
   are not counted.
5. Every pod is removed, then leak checks: pods/containers still listed, IPs left in
   host-local's ``dataDir``, veths on the bridge, helpers still running, mounts left
   below the runtime's directory (containerd: cached CNI results); what is found is
   reported and removed.

skiff: skiffd through `tests.integration.skiffd.Skiffd`, the registry marked insecure in
its ``registries.conf``. containerd: Debian's 1.6 and 2.x (``--peers``), one after the
other, through `bench.peer.containerd_cri` (its sandbox image a busybox ``sleep`` image
from the same registry). Printed: p50/p99 per RPC and per cycle, list p50/p99, memory,
with the ratio skiff/containerd for each, and the targets: lifecycle p50 no slower
than containerd's, List p99 ≤ 5 ms with 200 containers, memory with the pods no more
than containerd's. Exit status 0 whatever the numbers; 1 when the benchmark could not
run.

Run as root from the repository root: ``make bench-lifecycle`` or
``.venv/bin/python -m bench.lifecycle``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from api.runtime.v1 import api_pb2 as pb
from api.runtime.v1 import api_pb2_grpc
from bench import peer as shared
from bench.peer import (
    BenchError,
    BenchNetwork,
    PeerKind,
    add_peers_option,
    add_skiff_log_level,
    containerd_cri,
    delete_containers,
    duration_entries,
    leaks_line,
    mode_title,
    mounts_under,
    pause_image,
    percentile,
    percentile_rows,
    pod_bench,
    pool_map,
    print_mode,
    pull_image,
    ratio,
    resolve_peers,
    run_main,
    shims_under,
    skiff_pod_settings,
    skiffd_running,
    table_header,
    table_row,
    tail,
    temp_base,
    timed_counts,
    value_row,
)
from runtime.pause_process import PAUSE_MARKER
from tests.integration import images as img
from tests.integration.registry import TestRegistry

BUSYBOX_REPO = "bench/busybox"
PAUSE_REPO = "bench/pause"
RPC_TIMEOUT = 60.0
PULL_TIMEOUT = 120.0
STOP_TIMEOUT_S = 10
#: PID 1 of the container: exits 0 on SIGTERM at once, idle otherwise (no busy loop
#: to disturb the list and memory measurements with 200 of them). It says "ready" once
#: the trap is set: PID 1 of a PID namespace ignores a SIGTERM it has no handler for, so
#: a stop before that would wait out the whole timeout.
CONTAINER_COMMAND = ("sh", "-c", "trap 'exit 0' TERM; echo ready; sleep 3600 & wait")
READY_LINE = " stdout F ready"
READY_TIMEOUT = 20.0
SETUP_WORKERS = 10
SETTLE_S = 2.0
MEMORY_SAMPLES = 3
RATIO_TARGET = 1.0
LIST_P99_TARGET_MS = 5.0
MB = 1_000_000
PHASES = (
    "RunPodSandbox",
    "CreateContainer",
    "StartContainer",
    "StopContainer",
    "RemoveContainer",
    "StopPodSandbox",
    "RemovePodSandbox",
)
MODES = ("sequential", "parallel")
#: The container RPCs whose steps skiffd logs at debug level ("<rpc> steps").
STEP_CALLS = ("CreateContainer", "StartContainer", "StopContainer", "RemoveContainer")
LISTS = ("ListContainers", "ListPodSandbox")
#: Width of the row labels of the report's tables.
LABEL_WIDTH = 28


# --------------------------------------------------------------------------------------
# Processes and their memory
# --------------------------------------------------------------------------------------


def argv_of(pid: int) -> list[str]:
    """The command line of ``pid``; empty once it is gone (or for a kernel thread)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").split("\0")[:-1] if raw else []


def all_pids() -> Iterator[int]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            yield int(entry.name)


def conmons_under(base: Path) -> list[int]:
    """conmon processes whose command line names a path below ``base``."""
    top = str(base) + "/"
    return [
        pid
        for pid in all_pids()
        if (argv := argv_of(pid))
        and os.path.basename(argv[0]).startswith("conmon")
        and any(top in arg for arg in argv)
    ]


def pauses_of(sandbox_ids: Iterable[str]) -> list[int]:
    """skiff pause processes (``... skiff-pause <sandbox id>``) of these sandboxes."""
    wanted = set(sandbox_ids)
    found: list[int] = []
    for pid in all_pids():
        argv = argv_of(pid)
        if PAUSE_MARKER in argv[:-1] and argv[argv.index(PAUSE_MARKER) + 1] in wanted:
            found.append(pid)
    return found


@dataclass(frozen=True)
class Memory:
    """Summed PSS and RSS (bytes) of a runtime's processes, and how many there were."""

    pss: int
    rss: int
    daemon_pss: int
    helpers: int


def rollup_kib(pid: int) -> tuple[int, int] | None:
    """(Pss, Rss) of ``pid`` in KiB from ``/proc/<pid>/smaps_rollup``; None once gone."""
    pss = rss = -1
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                elif line.startswith("Rss:"):
                    rss = int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return (pss, rss) if pss >= 0 and rss >= 0 else None


def measure_memory(daemon_pid: int, helpers: Callable[[], list[int]]) -> Memory:
    """The median over a few samples of the daemon + helpers' summed PSS."""
    samples: list[Memory] = []
    for i in range(MEMORY_SAMPLES):
        if i:
            time.sleep(0.5)
        daemon = rollup_kib(daemon_pid)
        if daemon is None:
            raise BenchError(f"daemon pid {daemon_pid} is gone")
        pss, rss = daemon
        pids = helpers()
        for pid in pids:
            got = rollup_kib(pid)
            if got is not None:
                pss += got[0]
                rss += got[1]
        samples.append(Memory(pss * 1024, rss * 1024, daemon[0] * 1024, len(pids)))
    samples.sort(key=lambda m: m.pss)
    return samples[len(samples) // 2]


# --------------------------------------------------------------------------------------
# One runtime under test
# --------------------------------------------------------------------------------------


@dataclass
class Target:
    """A started runtime: its CRI, its pid, how to find its helpers, its log."""

    name: str
    pid: int
    base: Path
    runtime: api_pb2_grpc.RuntimeServiceStub
    images: api_pb2_grpc.ImageServiceStub
    log_path: Path
    #: pids of its per-pod/per-container helpers, given the sandboxes that run.
    helpers: Callable[[Iterable[str]], list[int]]

    def pull(self, ref: str) -> str:
        return pull_image(self.images, ref, self.name, self.log_path, PULL_TIMEOUT)

    def memory(self, sandbox_ids: Iterable[str] = ()) -> Memory:
        ids = list(sandbox_ids)
        return measure_memory(self.pid, lambda: self.helpers(ids))


def end_skiff_leftovers(base: Path) -> list[str]:
    """After a failed run: containers still in skiff's runc state, conmons; by pid."""
    found: list[str] = []
    for runc_root in sorted((base / "run" / "runtimes").glob("*")):
        ids = delete_containers(runc_root)
        if ids:
            found.append(f"{len(ids)} container(s) deleted with runc")
    for pid in conmons_under(base):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            found.append(f"conmon {pid} killed")
    return found


@dataclass(frozen=True)
class BenchImages:
    """busybox for the containers and the pause image a containerd peer's sandboxes
    run, pushed to the bench's registry."""

    busybox: img.Image
    image: str
    pause: img.Image
    sandbox_image: str

    @property
    def pulled(self) -> tuple[tuple[str, str], ...]:
        """What a containerd peer pulls first (`containerd_target`)."""
        return (
            (self.sandbox_image, self.pause.config_digest),
            (self.image, self.busybox.config_digest),
        )


def push_images(registry: TestRegistry) -> BenchImages:
    print("building and pushing the images ...", file=sys.stderr)
    busybox = img.busybox_image()
    pause = pause_image()
    return BenchImages(
        busybox,
        img.push(registry, BUSYBOX_REPO, "bench", busybox).reference,
        pause,
        img.push(registry, PAUSE_REPO, "bench", pause).reference,
    )


@contextmanager
def skiff_target(
    base: Path, cni_conf_dir: Path, registry_host: str, log_level: str
) -> Iterator[Target]:
    """skiffd with a fresh root, the registry insecure, reading ``cni_conf_dir``."""

    def helpers(sandbox_ids: Iterable[str]) -> list[int]:
        return conmons_under(base) + pauses_of(sandbox_ids)

    with skiffd_running(
        base,
        skiff_pod_settings(cni_conf_dir, log_level),
        insecure_registry=registry_host,
        leftovers=end_skiff_leftovers,
        mounts_shown=5,
    ) as daemon:
        assert daemon.proc is not None
        yield Target(
            "skiff",
            daemon.proc.pid,
            base,
            daemon.runtime(),
            daemon.images(),
            daemon.log_path,
            helpers,
        )


@contextmanager
def containerd_target(
    kind: PeerKind,
    registry_host: str,
    sandbox_image: str,
    cni_conf_dir: Path,
    pulled: Sequence[tuple[str, str]] = (),
) -> Iterator[Target]:
    """`bench.peer.containerd_cri` as a Target; its helpers are its shims. ``pulled``:
    (reference, config digest) of images it pulls first, untimed, and must get."""
    with containerd_cri(kind, registry_host, sandbox_image, cni_conf_dir) as peer:

        def helpers(sandbox_ids: Iterable[str]) -> list[int]:
            return [shim.pid for shim in shims_under(peer.base)]

        target = Target(
            kind.name,
            peer.pid,
            peer.base,
            peer.runtime(),
            peer.images(),
            peer.log_path,
            helpers,
        )
        for ref, digest in pulled:
            if target.pull(ref) != digest:
                raise BenchError(f"{kind.name} pulled {ref} as another image")
        yield target


# --------------------------------------------------------------------------------------
# Pods and containers, as the kubelet sends them
# --------------------------------------------------------------------------------------


def pod_config(tag: str, index: int, log_root: Path) -> pb.PodSandboxConfig:
    """A minimal pod (`bench.peer.pod_config`); the pods of a ``tag`` share a namespace."""
    return shared.pod_config(tag, index, log_root, f"ns-{tag}")


def container_config(name: str, image: str) -> pb.ContainerConfig:
    return pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=name, attempt=0),
        image=pb.ImageSpec(image=image),
        command=list(CONTAINER_COMMAND),
        log_path=f"{name}_0.log",
        linux=pb.LinuxContainerConfig(
            security_context=pb.LinuxContainerSecurityContext(
                namespace_options=pb.NamespaceOption(pid=pb.NamespaceMode.CONTAINER),
                seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.ProfileType.Unconfined),
            )
        ),
    )


class Calls:
    """RPCs on one target, each timed; failures name the runtime, RPC and pod."""

    def __init__(self, target: Target, pod: str) -> None:
        self.target = target
        self.pod = pod
        self.times: dict[str, float] = {}

    def __call__(self, rpc: str, request: Any) -> Any:
        method = getattr(self.target.runtime, rpc)
        start = time.perf_counter()
        try:
            response = method(request, timeout=RPC_TIMEOUT)
        except grpc.RpcError as exc:
            raise BenchError(
                f"{self.target.name}: {rpc}({self.pod}) failed: {exc.code()} {exc.details()}\n"
                f"{tail(self.target.log_path)}"
            ) from None
        self.times[rpc] = time.perf_counter() - start
        return response


def start_pod(
    target: Target, config: pb.PodSandboxConfig, image: str, containers: int, calls: Calls
) -> str:
    """RunPodSandbox, then create and start ``containers`` containers in it."""
    sandbox_id: str = calls("RunPodSandbox", pb.RunPodSandboxRequest(config=config)).pod_sandbox_id
    for i in range(containers):
        container_id = calls(
            "CreateContainer",
            pb.CreateContainerRequest(
                pod_sandbox_id=sandbox_id,
                config=container_config(f"c{i}", image),
                sandbox_config=config,
            ),
        ).container_id
        calls("StartContainer", pb.StartContainerRequest(container_id=container_id))
    return sandbox_id


def wait_ready(target: Target, log_file: Path) -> None:
    """Until the container's CRI log shows its "ready" line (untimed)."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        with suppress(FileNotFoundError):
            if READY_LINE in log_file.read_text(errors="replace"):
                return
        time.sleep(0.002)
    raise BenchError(f"{target.name}: no 'ready' line in {log_file} after {READY_TIMEOUT}s")


def cycle(target: Target, config: pb.PodSandboxConfig, image: str) -> dict[str, float]:
    """One pod's full lifecycle with one container; seconds per RPC."""
    calls = Calls(target, config.metadata.name)
    sandbox_id = calls("RunPodSandbox", pb.RunPodSandboxRequest(config=config)).pod_sandbox_id
    container_id = calls(
        "CreateContainer",
        pb.CreateContainerRequest(
            pod_sandbox_id=sandbox_id, config=container_config("c0", image), sandbox_config=config
        ),
    ).container_id
    calls("StartContainer", pb.StartContainerRequest(container_id=container_id))
    wait_ready(target, Path(config.log_directory) / "c0_0.log")
    calls(
        "StopContainer", pb.StopContainerRequest(container_id=container_id, timeout=STOP_TIMEOUT_S)
    )
    calls("RemoveContainer", pb.RemoveContainerRequest(container_id=container_id))
    calls("StopPodSandbox", pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))
    calls("RemovePodSandbox", pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))
    return calls.times


@dataclass(frozen=True)
class ModeResult:
    cycles: list[dict[str, float]]
    wall_s: float

    def phase(self, name: str) -> list[float]:
        if name == "full cycle":
            return [sum(c.values()) for c in self.cycles]
        return [c[name] for c in self.cycles]


def run_cycles(
    target: Target, image: str, log_root: Path, tag: str, pods: int, workers: int
) -> ModeResult:
    start = time.perf_counter()
    cycles = pool_map(lambda i: cycle(target, pod_config(tag, i, log_root), image), pods, workers)
    return ModeResult(cycles, time.perf_counter() - start)


def time_lists(target: Target, calls: int, pods: int, containers: int) -> dict[str, list[float]]:
    """``calls`` of one List RPC after the other, then of the next (each RPC's own
    latency: interleaved, a slow ListContainers also slows the call after it);
    unfiltered, each must see every pod and container."""
    rt = target.runtime

    def list_containers() -> int:
        return len(rt.ListContainers(pb.ListContainersRequest(), timeout=RPC_TIMEOUT).containers)

    def list_pods() -> int:
        return len(rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=RPC_TIMEOUT).items)

    rpcs: dict[str, tuple[Callable[[], int], int]] = {
        "ListContainers": (list_containers, containers),
        "ListPodSandbox": (list_pods, pods),
    }
    return {
        name: timed_counts(rpcs[name][0], calls, rpcs[name][1], f"{target.name}: {name}")
        for name in LISTS
    }


# --------------------------------------------------------------------------------------
# Clean-up and leaks
# --------------------------------------------------------------------------------------


def remove_all(target: Target) -> int:
    """Stop and remove every pod the runtime lists (its containers go with it)."""
    rt = target.runtime
    listed = rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=RPC_TIMEOUT).items

    def remove(pod: pb.PodSandbox) -> None:
        rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=RPC_TIMEOUT)
        rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=RPC_TIMEOUT)

    with ThreadPoolExecutor(max_workers=SETUP_WORKERS, thread_name_prefix="rm") as pool:
        list(pool.map(remove, listed))
    return len(listed)


def leaks(
    target: Target, network: BenchNetwork, idle_mounts: set[str], cni_cache: bool
) -> list[str]:
    """What the runtime still holds once every pod is gone; cleans up what it can."""
    rt = target.runtime
    found: list[str] = []
    pods = rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=RPC_TIMEOUT).items
    containers = rt.ListContainers(pb.ListContainersRequest(), timeout=RPC_TIMEOUT).containers
    if pods or containers:
        found.append(f"{len(pods)} pod(s), {len(containers)} container(s) still listed")
        try:
            remove_all(target)
        except grpc.RpcError as exc:
            found.append(f"cannot remove them: {exc.details()}")
    helpers = target.helpers(p.id for p in pods)
    if helpers:
        found.append(f"{len(helpers)} helper process(es) still running")
    found += network.leaks()
    mounts = [m for m in mounts_under(target.base) if m not in idle_mounts]
    if mounts:
        found.append(f"{len(mounts)} mount(s) left below {target.base}: {mounts[:3]}")
    if cni_cache:
        found += network.cache_leaks()
    return found


# --------------------------------------------------------------------------------------
# Measuring one runtime
# --------------------------------------------------------------------------------------


@dataclass
class RuntimeResult:
    label: str
    modes: dict[str, ModeResult] = field(default_factory=dict)
    lists: dict[str, list[float]] = field(default_factory=dict)
    idle: Memory | None = None
    loaded: Memory | None = None
    leaks: list[str] = field(default_factory=list)
    #: byte ranges of the daemon's log per mode, for skiffd's own view.
    log_spans: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class Options:
    pods: int
    parallel: int
    list_pods: int
    list_calls: int
    warmup: int
    log_level: str
    skiff_only: bool = False
    peers: str | None = None


def _log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def measure(
    target: Target,
    label: str,
    image: str,
    network: BenchNetwork,
    log_root: Path,
    opts: Options,
    cni_cache: bool = False,
) -> RuntimeResult:
    result = RuntimeResult(label)
    tag = secrets.token_hex(3)
    name = target.name
    try:
        idle_mounts = set(mounts_under(target.base))
        time.sleep(SETTLE_S)
        result.idle = target.memory()
        if opts.warmup:
            run_cycles(target, image, log_root, f"{tag}w", opts.warmup, 1)
        for mode, workers in (("sequential", 1), ("parallel", opts.parallel)):
            before = _log_size(target.log_path)
            res = run_cycles(target, image, log_root, f"{tag}{mode[0]}", opts.pods, workers)
            result.log_spans[mode] = (before, _log_size(target.log_path))
            result.modes[mode] = res
            print_mode(name, mode, [t * 1000 for t in res.phase("full cycle")], res.wall_s)

        print(f"{name:<10} starting {opts.list_pods} pods x 2 containers ...", file=sys.stderr)

        def setup(i: int) -> str:
            config = pod_config(f"{tag}l", i, log_root)
            return start_pod(target, config, image, 2, Calls(target, config.metadata.name))

        sandbox_ids = pool_map(setup, opts.list_pods, SETUP_WORKERS)
        time.sleep(SETTLE_S)
        result.loaded = target.memory(sandbox_ids)
        result.lists = time_lists(target, opts.list_calls, opts.list_pods, 2 * opts.list_pods)
        print(
            f"{name:<10} List p99: "
            + ", ".join(f"{k} {percentile(v, 99) * 1000:.2f} ms" for k, v in result.lists.items()),
            file=sys.stderr,
        )
        remove_all(target)
    except BaseException:
        with suppress(grpc.RpcError):
            remove_all(target)  # best effort: leave nothing running behind the error
        raise
    result.leaks = leaks(target, network, idle_mounts, cni_cache)
    return result


# --------------------------------------------------------------------------------------
# skiffd's own view, from its log
# --------------------------------------------------------------------------------------


def skiff_log_summary(log_path: Path, spans: dict[str, tuple[int, int]]) -> list[str]:
    """p50/p99 of skiffd's own durations ("sandbox ready", "container created", and the
    per-RPC ``rpc`` lines at debug level) in each lifecycle mode."""
    try:
        data = log_path.read_bytes()
    except OSError:
        return []
    lines: list[str] = []
    for mode, (start, end) in spans.items():
        durations: dict[str, list[float]] = {}
        for entry in duration_entries(data[start:end].decode(errors="replace")):
            msg = entry.get("msg")
            key = f"rpc {entry.get('rpc')}" if msg == "rpc" else str(msg)
            durations.setdefault(key, []).append(float(entry["duration_ms"]))
        parts = [
            f"{k} {percentile(v, 50):.1f}/{percentile(v, 99):.1f}"
            for k, v in sorted(durations.items())
        ]
        if parts:
            lines.append(f"  {mode:<10} " + ", ".join(parts))
    if lines:
        lines.insert(0, "skiffd's own durations from its log, p50/p99 ms:")
    return lines


def step_entries(text: str) -> Iterator[dict[str, Any]]:
    """skiffd's ``"<rpc> steps"`` debug lines (`base.steps`)."""
    for line in text.splitlines():
        if '"steps_ms"' not in line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("steps_ms"), dict):
            yield entry


@dataclass
class CallSteps:
    """One RPC's steps over the calls of a mode: ms per call, in the order first seen
    (a step a call skipped counts 0 in it, so the means add up to the total's)."""

    totals: list[float] = field(default_factory=list)
    steps: dict[str, list[float]] = field(default_factory=dict)

    def add(self, total: float, laps: dict[str, float]) -> None:
        for name in laps:
            self.steps.setdefault(name, [0.0] * len(self.totals))
        self.totals.append(total)
        for name, values in self.steps.items():
            values.append(float(laps.get(name, 0.0)))


def skiff_steps(
    log_path: Path, spans: dict[str, tuple[int, int]]
) -> dict[str, dict[str, CallSteps]]:
    """mode -> RPC -> its steps, from skiffd's log (empty below debug level)."""
    try:
        data = log_path.read_bytes()
    except OSError:
        return {}
    found: dict[str, dict[str, CallSteps]] = {}
    for mode, (start, end) in spans.items():
        calls: dict[str, CallSteps] = {}
        for entry in step_entries(data[start:end].decode(errors="replace")):
            call = str(entry.get("call"))
            if call in STEP_CALLS:
                calls.setdefault(call, CallSteps()).add(
                    float(entry.get("total_ms", 0.0)), entry["steps_ms"]
                )
        if calls:
            found[mode] = calls
    return found


def steps_report(
    steps: dict[str, dict[str, CallSteps]], client: dict[str, ModeResult] | None = None
) -> list[str]:
    """Per RPC and step, mean and p50 ms in each mode; with ``client``, the client-side
    mean beside skiffd's total (the difference is gRPC, the servicer and the wire)."""
    if not steps:
        return []
    modes = [m for m in MODES if m in steps]
    head = "".join(f"{m + ' mean/p50':>24}" for m in modes)
    lines = [
        "skiffd's steps per container RPC (debug log), ms:",
        f"  {'':<36}{head}",
    ]

    def cell(values: list[float]) -> str:
        if not values:
            return f"{'-':>24}"
        return f"{statistics.fmean(values):>15.2f}{percentile(values, 50):>9.2f}"

    for call in STEP_CALLS:
        order: list[str] = []
        for mode in modes:
            if call in steps[mode]:
                order += [n for n in steps[mode][call].steps if n not in order]
        if not order:
            continue
        if client is not None:
            row = "".join(
                cell([t * 1000 for t in client[m].phase(call)]) if m in client else cell([])
                for m in modes
            )
            lines.append(f"  {call + ', client side':<36}{row}")
        row = "".join(cell(steps[m][call].totals if call in steps[m] else []) for m in modes)
        lines.append(f"  {call + ', in skiffd':<36}{row}")
        for name in order:
            row = "".join(
                cell(steps[m][call].steps.get(name, []) if call in steps[m] else []) for m in modes
            )
            lines.append(f"    {name:<34}{row}")
    return lines


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def _verdict(label: str, value: str, ok: bool) -> str:
    return f"  {label:<56}{value:>10}   " + ("PASS" if ok else "MISS")


def _mb(value: float) -> str:
    return f"{value / MB:.1f} MB"


def report(
    skiff: RuntimeResult, peers: Sequence[RuntimeResult], opts: Options, network: BenchNetwork
) -> str:
    head = [p.label for p in peers]
    lines = [
        f"pod lifecycle: {opts.pods} pods per mode, 1 busybox container each; CNI bridge + "
        f"host-local ({network.subnet}) + portmap; client-side latency of each RPC",
    ]
    verdicts: list[str] = []
    for mode in MODES:
        lines += ["", table_header(mode_title(mode, opts.parallel), LABEL_WIDTH, head)]
        a_mode, b_modes = skiff.modes[mode], [p.modes[mode] for p in peers]
        for phase in (*PHASES, "full cycle"):
            qs = (50, 99) if phase == "full cycle" else (50,)
            lines += percentile_rows(
                phase,
                a_mode.phase(phase),
                [m.phase(phase) for m in b_modes],
                qs,
                pad=22,
                width=LABEL_WIDTH,
            )
        lines.append(
            value_row(
                f"wall time, {opts.pods} pods",
                a_mode.wall_s,
                [m.wall_s for m in b_modes],
                lambda v: f"{v:.2f} s",
                LABEL_WIDTH,
            )
        )
        for peer, b_mode in zip(peers, b_modes, strict=True):
            p50 = ratio(
                percentile(a_mode.phase("full cycle"), 50),
                percentile(b_mode.phase("full cycle"), 50),
            )
            verdicts.append(
                _verdict(
                    f"{mode} lifecycle p50 ratio <= {RATIO_TARGET:.1f} ({peer.label})",
                    f"{p50:.2f}",
                    p50 <= RATIO_TARGET,
                )
            )

    n_containers = 2 * opts.list_pods
    lines += ["", table_header(f"list, {opts.list_pods} pods x 2 ctrs", LABEL_WIDTH, head)]
    for name in LISTS:
        lines += percentile_rows(
            name,
            skiff.lists[name],
            [p.lists[name] for p in peers],
            (50, 99),
            pad=22,
            width=LABEL_WIDTH,
            digits=2,
        )
        p99 = percentile(skiff.lists[name], 99) * 1000
        verdicts.append(
            _verdict(
                f"skiff {name} p99 <= {LIST_P99_TARGET_MS:g} ms ({n_containers} ctrs)",
                f"{p99:.2f} ms",
                p99 <= LIST_P99_TARGET_MS,
            )
        )

    assert skiff.idle and skiff.loaded
    lines += ["", table_header("memory (PSS, daemon + helpers)", LABEL_WIDTH, head)]
    moments: list[tuple[str, Callable[[RuntimeResult], Memory | None]]] = [
        ("idle, no pod", lambda r: r.idle),
        (f"{opts.list_pods} pods, {n_containers} ctrs", lambda r: r.loaded),
    ]
    for label, when in moments:
        measured = [when(r) for r in (skiff, *peers)]
        assert all(measured)
        ours, *theirs = [m for m in measured if m is not None]
        lines.append(value_row(label, ours.pss, [m.pss for m in theirs], _mb, LABEL_WIDTH))
        lines.append(
            value_row(
                "  of which the daemon",
                ours.daemon_pss,
                [m.daemon_pss for m in theirs],
                _mb,
                LABEL_WIDTH,
            )
        )
        lines.append(
            table_row(
                "  helpers (conmon / shim)",
                str(ours.helpers),
                [(str(m.helpers), None) for m in theirs],
                LABEL_WIDTH,
            )
        )
        lines.append(
            value_row(
                "  RSS sum, for reference", ours.rss, [m.rss for m in theirs], _mb, LABEL_WIDTH
            )
        )
    for peer in peers:
        assert peer.loaded
        mem = ratio(skiff.loaded.pss, peer.loaded.pss)
        verdicts.append(
            _verdict(
                f"memory with {opts.list_pods} pods ratio <= {RATIO_TARGET:.1f} ({peer.label})",
                f"{mem:.2f}",
                mem <= RATIO_TARGET,
            )
        )

    lines += [
        "",
        leaks_line((r.label, r.leaks) for r in (skiff, *peers)),
        "",
        "targets (issue 5):",
        *verdicts,
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def report_skiff_only(skiff: RuntimeResult, opts: Options) -> str:
    """The lifecycle and List rows of skiff alone (``--skiff-only``)."""
    lines = [f"pod lifecycle, skiff only: {opts.pods} pods per mode; client-side ms"]
    for mode in MODES:
        res = skiff.modes[mode]
        lines += [
            "",
            f"{mode_title(mode, opts.parallel):<{LABEL_WIDTH + 2}}{'mean':>9}{'p50':>9}{'p99':>9}",
        ]
        for phase in (*PHASES, "full cycle"):
            ms = [t * 1000 for t in res.phase(phase)]
            lines.append(
                f"  {phase:<{LABEL_WIDTH}}{statistics.fmean(ms):>9.1f}"
                f"{percentile(ms, 50):>9.1f}{percentile(ms, 99):>9.1f}"
            )
        container = [sum(c[p] for p in PHASES if "Container" in p) * 1000 for c in res.cycles]
        lines.append(
            f"  {'container RPCs (4 of them)':<{LABEL_WIDTH}}{statistics.fmean(container):>9.1f}"
            f"{percentile(container, 50):>9.1f}{percentile(container, 99):>9.1f}"
        )
        lines.append(f"  {f'wall time, {opts.pods} pods':<{LABEL_WIDTH}}{res.wall_s:>8.2f}s")
    lines += ["", f"list, {opts.list_pods} pods x 2 ctrs, p50/p99 ms"]
    for name in LISTS:
        p50, p99 = (percentile(skiff.lists[name], q) * 1000 for q in (50, 99))
        lines.append(f"  {name:<{LABEL_WIDTH}}{p50:>9.2f}{p99:>9.2f}")
    lines += ["", leaks_line([("skiff", skiff.leaks)])]
    return "\n".join(lines)


def bench(opts: Options) -> str:
    kinds = (
        [] if opts.skiff_only else resolve_peers(opts.peers, "`make bench-lifecycle` installs it")
    )
    with pod_bench("lcy") as env:
        network, log_root, registry = env.network, env.log_root, env.registry
        images = push_images(registry)
        busybox, image, sandbox_image = images.busybox, images.image, images.sandbox_image

        with temp_base("lcyd") as skiff_base:
            with skiff_target(skiff_base, env.skiff_conf, registry.host, opts.log_level) as target:
                if target.pull(image) != busybox.config_digest:
                    raise BenchError(f"skiff pulled {image} as another image")
                skiff = measure(target, "skiff", image, network, log_root, opts)
            notes = skiff_log_summary(target.log_path, skiff.log_spans)
            breakdown = steps_report(skiff_steps(target.log_path, skiff.log_spans), skiff.modes)
        if breakdown:
            notes += ["", *breakdown]
        if opts.skiff_only:
            return report_skiff_only(skiff, opts) + "\n\n" + "\n".join(notes)

        peers: list[RuntimeResult] = []
        pulled = images.pulled
        for kind in kinds:
            with containerd_target(
                kind, registry.host, sandbox_image, env.ctrd_conf, pulled
            ) as target:
                peers.append(
                    measure(target, kind.label, image, network, log_root, opts, cni_cache=True)
                )
    return report(skiff, peers, opts, network) + ("\n\n" + "\n".join(notes) if notes else "")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.lifecycle",
        description="Pod + container lifecycle, List latency and memory: skiff against "
        "containerd's CRI.",
    )
    parser.add_argument("--pods", type=int, default=50, help="pods per lifecycle mode (50)")
    parser.add_argument(
        "--parallel", type=int, default=10, help="workers in the parallel mode (10)"
    )
    parser.add_argument(
        "--list-pods", type=int, default=100, help="pods x 2 containers for List/memory (100)"
    )
    parser.add_argument("--list-calls", type=int, default=200, help="calls of each List (200)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed cycles first (3)")
    add_peers_option(parser)
    add_skiff_log_level(parser, "its per-RPC durations and each container RPC's steps")
    parser.add_argument(
        "--skiff-only",
        action="store_true",
        help="measure skiff alone, no containerd (to compare skiff with itself)",
    )
    args = parser.parse_args(argv)
    if args.pods < 2 or args.parallel < 1 or args.list_pods < 1 or args.list_calls < 2:
        parser.error("--pods >= 2, --parallel >= 1, --list-pods >= 1, --list-calls >= 2")
    if args.warmup < 0:
        parser.error("--warmup must be at least 0")
    opts = Options(
        args.pods,
        args.parallel,
        args.list_pods,
        args.list_calls,
        args.warmup,
        args.skiff_log_level,
        args.skiff_only,
        args.peers,
    )
    return run_main("bench.lifecycle", lambda: bench(opts))


if __name__ == "__main__":
    sys.exit(main())
