"""Kubelet-shaped scale benchmark (issue 14): a full node's pods, and the kubelet's rhythm.

For skiff, then each peer (``--peers``: containerd 1.6 and/or 2.x), one daemon at a
time with a fresh root, the CNI conflist of `bench.sandbox` and busybox from a loopback
registry (pulled through each CRI, untimed):

1. ``--pods`` (110, the kubelet's default max-pods) pods with ``--containers`` (3)
   running busybox containers each, made untimed, 10 at a time. Pods and containers
   carry what the kubelet sets (pkg/kubelet/kuberuntime/labels.go): pod labels
   ``io.kubernetes.pod.name/.namespace/.uid`` beside the pod's own (``app``,
   ``pod-template-hash``), the pod's annotations (``kubernetes.io/config.seen``,
   ``.config.source``); container labels ``io.kubernetes.container.name`` and the pod's
   three, container annotations ``io.kubernetes.container.hash``,
   ``.hashWithoutResources``, ``.restartCount``, ``.terminationMessagePath``,
   ``.terminationMessagePolicy``, ``.ports`` (on the first container), ``.type`` and
   ``io.kubernetes.pod.terminationGracePeriod``. Log paths as the kubelet's:
   ``<name>/<restart>.log`` in ``<ns>_<pod>_<uid>``.
2. For ``--seconds`` (60), the kubelet's rhythm: every second the PLEG relist,
   ListPodSandbox then ListContainers, both unfiltered (as the kubelet's generic PLEG
   does); every 10 s, on a thread of its own (the kubelet's stats provider is not the
   PLEG), ListContainerStats then ListPodSandboxStats. Each call is timed client side
   and must see every pod / container (stats: every running one).
3. Over that window: the daemon's CPU (utime + stime from ``/proc/<pid>/stat``), and
   that of its helpers (skiff's conmons; containerd's shims, which answer its stats),
   as seconds per minute. Then memory: PSS of the daemon and of all its helpers
   (`bench.lifecycle.measure_memory`).
4. Every pod is removed, then leak checks (`bench.lifecycle.leaks`).

Printed: a table, skiff against each peer with the ratio. Exit status 0 whatever the
numbers; 1 when the benchmark could not run.

Run as root from the repository root: ``make bench-scale`` or
``.venv/bin/python -m bench.scale --pods 20 --containers 2 --seconds 20`` (quick).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from api.runtime.v1 import api_pb2 as pb
from bench import lifecycle
from bench.lifecycle import (
    CONTAINER_COMMAND,
    RPC_TIMEOUT,
    SETUP_WORKERS,
    Calls,
    Memory,
    Target,
    containerd_target,
    push_images,
    skiff_target,
)
from bench.peer import (
    BenchError,
    BenchNetwork,
    Cell,
    add_peers_option,
    add_skiff_log_level,
    cpu_seconds,
    leaks_line,
    mounts_under,
    percentile,
    pod_bench,
    pool_map,
    ratio,
    resolve_peers,
    run_main,
    table_header,
    table_row,
    temp_base,
    value_row,
)

INSTALL_HINT = "`make bench-scale` installs it"
NAMESPACE = "bench-scale"
TERMINATION_GRACE_S = 30
RELIST_INTERVAL_S = 1.0
STATS_INTERVAL_S = 10.0
SETTLE_S = 2.0
MB = 1_000_000
LABEL_WIDTH = 28
RELIST = ("ListPodSandbox", "ListContainers")
STATS = ("ListContainerStats", "ListPodSandboxStats")


# --------------------------------------------------------------------------------------
# Pods and containers as the kubelet makes them
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PodNames:
    """One pod's identity: what the kubelet puts into its labels and paths."""

    name: str
    uid: str

    @classmethod
    def of(cls, tag: str, index: int) -> PodNames:
        # A Deployment's pod: <deployment>-<template hash>-<5 chars>; a UUID for uid.
        digest = hashlib.sha256(f"{tag}/{index}".encode()).hexdigest()
        uid = f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"
        return cls(f"web-{tag}-{digest[32:37]}-{index:03d}", uid)

    def labels(self) -> dict[str, str]:
        """The kubelet's three pod labels."""
        return {
            "io.kubernetes.pod.name": self.name,
            "io.kubernetes.pod.namespace": NAMESPACE,
            "io.kubernetes.pod.uid": self.uid,
        }


def cgroup_top(tag: str) -> str:
    """The run's own stand-in for the kubelet's ``/kubepods`` (cgroupfs driver)."""
    return f"skbench-{tag}"


def sandbox_config(names: PodNames, tag: str, log_root: Path) -> pb.PodSandboxConfig:
    """RunPodSandbox's config as the kubelet sends it for a Deployment's pod (a
    BestEffort one: its cgroup parent ``<top>/kubepods/besteffort/pod<uid>``)."""
    log_dir = log_root / f"{NAMESPACE}_{names.name}_{names.uid}"
    log_dir.mkdir(parents=True, exist_ok=True)
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(
            name=names.name, uid=names.uid, namespace=NAMESPACE, attempt=0
        ),
        hostname=names.name,
        log_directory=str(log_dir),
        labels={"app": f"web-{tag}", "pod-template-hash": tag, **names.labels()},
        annotations={
            "kubernetes.io/config.seen": "2026-12-08T04:00:00.000000000Z",
            "kubernetes.io/config.source": "api",
        },
        linux=pb.LinuxPodSandboxConfig(
            cgroup_parent=f"/{cgroup_top(tag)}/kubepods/besteffort/pod{names.uid}",
            security_context=pb.LinuxSandboxSecurityContext(namespace_options=pb.NamespaceOption()),
        ),
    )


def cgroup_dirs(top: str) -> list[Path]:
    """``top`` in every cgroup hierarchy (v1: one per controller; v2: the one)."""
    root = Path("/sys/fs/cgroup")
    if (root / "cgroup.controllers").exists():
        return [root / top]
    return [h / top for h in root.iterdir() if h.is_dir() and not h.is_symlink()]


def remove_cgroups(top: str) -> list[str]:
    """Remove the cgroups below ``top`` (deepest first) that the runtime left: the
    pod cgroups the kubelet would own, which runc does not remove. Returns the ones
    that could not be removed (something still in them)."""
    left: list[str] = []
    for directory in cgroup_dirs(top):
        if not directory.is_dir():
            continue
        found = [d for d in directory.rglob("*") if d.is_dir()]
        for d in [*sorted(found, key=lambda d: len(d.parts), reverse=True), directory]:
            try:
                d.rmdir()
            except OSError:
                left.append(str(d))
    return left


def container_config(
    names: PodNames, index: int, image: str, restart_count: int = 0
) -> pb.ContainerConfig:
    """CreateContainer's config as the kubelet sends it: labels, annotations, log path."""
    name = f"c{index}"
    digest = hashlib.sha256(f"{names.uid}/{name}".encode()).hexdigest()
    annotations = {
        "io.kubernetes.container.hash": digest[:8],
        "io.kubernetes.container.hashWithoutResources": digest[8:16],
        "io.kubernetes.container.restartCount": str(restart_count),
        "io.kubernetes.container.terminationMessagePath": "/dev/termination-log",
        "io.kubernetes.container.terminationMessagePolicy": "File",
        "io.kubernetes.container.type": "container",
        "io.kubernetes.pod.terminationGracePeriod": str(TERMINATION_GRACE_S),
    }
    if index == 0:
        annotations["io.kubernetes.container.ports"] = json.dumps(
            [{"name": "http", "containerPort": 8080, "protocol": "TCP"}], separators=(",", ":")
        )
    return pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=name, attempt=restart_count),
        image=pb.ImageSpec(image=image),
        command=list(CONTAINER_COMMAND),
        log_path=f"{name}/{restart_count}.log",
        labels={**names.labels(), "io.kubernetes.container.name": name},
        annotations=annotations,
        linux=pb.LinuxContainerConfig(
            security_context=pb.LinuxContainerSecurityContext(
                namespace_options=pb.NamespaceOption(pid=pb.NamespaceMode.CONTAINER),
                seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.ProfileType.Unconfined),
            )
        ),
    )


def start_pod(target: Target, names: PodNames, tag: str, log_root: Path, image: str, n: int) -> str:
    """RunPodSandbox, then CreateContainer + StartContainer ``n`` times (untimed)."""
    config = sandbox_config(names, tag, log_root)
    calls = Calls(target, names.name)
    sandbox_id: str = calls("RunPodSandbox", pb.RunPodSandboxRequest(config=config)).pod_sandbox_id
    for i in range(n):
        (Path(config.log_directory) / f"c{i}").mkdir(exist_ok=True)
        container_id = calls(
            "CreateContainer",
            pb.CreateContainerRequest(
                pod_sandbox_id=sandbox_id,
                config=container_config(names, i, image),
                sandbox_config=config,
            ),
        ).container_id
        calls("StartContainer", pb.StartContainerRequest(container_id=container_id))
    return sandbox_id


# --------------------------------------------------------------------------------------
# The kubelet's rhythm
# --------------------------------------------------------------------------------------


@dataclass
class Window:
    """What one runtime did in the measured window."""

    seconds: float = 0.0
    calls: dict[str, list[float]] = field(default_factory=dict)
    daemon_cpu_s: float = 0.0
    helpers_cpu_s: float = 0.0

    def per_minute(self, cpu_s: float) -> float:
        return cpu_s * 60.0 / self.seconds if self.seconds > 0 else 0.0


def _helpers_cpu(pids: Sequence[int]) -> dict[int, float]:
    found: dict[int, float] = {}
    for pid in pids:
        with suppress(BenchError):
            found[pid] = cpu_seconds(pid)
    return found


def _ticks(start: float, interval: float, end: float, stop: threading.Event) -> Iterator[None]:
    """At ``start``, ``start + interval``, ... before ``end``; a tick missed while the
    last call ran is skipped (as a ticker drops ticks)."""
    k = 0
    while not stop.is_set():
        due = start + k * interval
        if due >= end:
            return
        wait = due - time.monotonic()
        if wait > 0 and stop.wait(wait):
            return
        yield
        k = max(k + 1, int((time.monotonic() - start) // interval) + 1)


class Caller:
    """Timed, checked List calls on one target."""

    def __init__(self, target: Target, pods: int, containers: int) -> None:
        self.target = target
        self.want = {
            "ListPodSandbox": pods,
            "ListContainers": containers,
            "ListContainerStats": containers,
            "ListPodSandboxStats": pods,
        }
        self.unimplemented: set[str] = set()
        rt = target.runtime
        self.rpcs: dict[str, Callable[[], int]] = {
            "ListPodSandbox": lambda: len(
                rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=RPC_TIMEOUT).items
            ),
            "ListContainers": lambda: len(
                rt.ListContainers(pb.ListContainersRequest(), timeout=RPC_TIMEOUT).containers
            ),
            "ListContainerStats": lambda: len(
                rt.ListContainerStats(pb.ListContainerStatsRequest(), timeout=RPC_TIMEOUT).stats
            ),
            "ListPodSandboxStats": lambda: len(
                rt.ListPodSandboxStats(pb.ListPodSandboxStatsRequest(), timeout=RPC_TIMEOUT).stats
            ),
        }

    def __call__(self, rpc: str) -> float | None:
        """Seconds the call took; None when the runtime does not implement it."""
        if rpc in self.unimplemented:
            return None
        start = time.perf_counter()
        try:
            got = self.rpcs[rpc]()
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                self.unimplemented.add(rpc)
                return None
            raise BenchError(
                f"{self.target.name}: {rpc} failed: {exc.code()} {exc.details()}"
            ) from None
        elapsed = time.perf_counter() - start
        if got != self.want[rpc]:
            raise BenchError(
                f"{self.target.name}: {rpc} answered {got} items, expected {self.want[rpc]}"
            )
        return elapsed


def kubelet_window(
    target: Target, sandbox_ids: Sequence[str], caller: Caller, opts: Options
) -> Window:
    """``opts.seconds`` of relists every second and stats lists every 10 s."""
    window = Window(calls={name: [] for name in (*RELIST, "relist", *STATS)})
    helpers = target.helpers(sandbox_ids)
    stop = threading.Event()
    failure: list[BaseException] = []

    def stats_loop(start: float, end: float) -> None:
        try:
            for _ in _ticks(start, STATS_INTERVAL_S, end, stop):
                for rpc in STATS:
                    took = caller(rpc)
                    if took is not None:
                        window.calls[rpc].append(took)
        except BaseException as exc:  # handed to the main thread
            failure.append(exc)
            stop.set()

    daemon_before = cpu_seconds(target.pid)
    helpers_before = _helpers_cpu(helpers)
    start = time.monotonic()
    end = start + opts.seconds
    stats = threading.Thread(target=stats_loop, args=(start, end), name="stats", daemon=True)
    stats.start()
    try:
        for _ in _ticks(start, RELIST_INTERVAL_S, end, stop):
            pair = 0.0
            for rpc in RELIST:
                took = caller(rpc)
                if took is None:
                    raise BenchError(f"{target.name}: {rpc} is not implemented")
                window.calls[rpc].append(took)
                pair += took
            window.calls["relist"].append(pair)
        stop.wait(max(0.0, end - time.monotonic()))  # the window's last second
    finally:
        stop.set()
        stats.join()
    window.seconds = time.monotonic() - start
    if failure:
        raise failure[0]
    window.daemon_cpu_s = cpu_seconds(target.pid) - daemon_before
    after = _helpers_cpu(helpers)
    window.helpers_cpu_s = sum(after[p] - helpers_before[p] for p in after if p in helpers_before)
    return window


# --------------------------------------------------------------------------------------
# Removal
# --------------------------------------------------------------------------------------


def internal_error_details(log_path: Path, message: str) -> str:
    """skiffd's log entry for the error id an "internal error <id>" message names: its
    exception's last line (skiff only; "" otherwise)."""
    match = re.search(r"internal error ([0-9a-f]+)", message)
    if match is None:
        return ""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return ""
    for line in text.splitlines():
        with suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and entry.get("error_id") == match.group(1):
                trace = str(entry.get("error") or "").strip().splitlines()
                if not trace:
                    return str(entry)[:300]
                frames = [t.strip() for t in trace if t.strip().startswith("File ")]
                where = f" at {frames[-1]}" if frames else ""
                return f"{trace[-1]}{where}"[:400]
    return ""


def remove_pods(target: Target) -> list[str]:
    """Stop and remove every pod the runtime lists (their containers go with them), 10
    at a time, each pod tried twice; what still failed (with the daemon's own word on
    an internal error), for the leak report."""
    rt = target.runtime
    failed: list[str] = []

    def remove(pod: pb.PodSandbox) -> None:
        why = ""
        for _ in range(2):
            try:
                rt.StopPodSandbox(
                    pb.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=RPC_TIMEOUT
                )
                rt.RemovePodSandbox(
                    pb.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=RPC_TIMEOUT
                )
                if why:
                    failed.append(f"pod {pod.id[:12]} removed on a second try after: {why}")
                return
            except grpc.RpcError as exc:
                details = exc.details() or str(exc.code())
                why = details
                more = internal_error_details(target.log_path, details)
                if more:
                    why += f" [{more}]"
        failed.append(f"cannot remove pod {pod.id[:12]}: {why}")

    try:
        listed = rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=RPC_TIMEOUT).items
    except grpc.RpcError as exc:
        return [f"cannot list the pods to remove them: {exc.details()}"]
    with ThreadPoolExecutor(max_workers=SETUP_WORKERS, thread_name_prefix="rm") as pool:
        list(pool.map(remove, listed))
    return failed


# --------------------------------------------------------------------------------------
# One runtime
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    pods: int
    containers: int
    seconds: float
    log_level: str
    peers: str | None


@dataclass
class Result:
    label: str
    window: Window
    memory: Memory
    leaks: list[str]


def measure(
    target: Target,
    label: str,
    image: str,
    network: BenchNetwork,
    log_root: Path,
    opts: Options,
    cni_cache: bool = False,
) -> Result:
    tag = secrets.token_hex(3)
    total = opts.pods * opts.containers
    try:
        idle_mounts = set(mounts_under(target.base))
        print(
            f"{label:<15} starting {opts.pods} pods x {opts.containers} containers ...",
            file=sys.stderr,
        )
        started = time.perf_counter()
        sandbox_ids = pool_map(
            lambda i: start_pod(target, PodNames.of(tag, i), tag, log_root, image, opts.containers),
            opts.pods,
            SETUP_WORKERS,
        )
        print(
            f"{label:<15} {total} containers running after {time.perf_counter() - started:.1f} s;"
            f" {opts.seconds:g} s of relists ...",
            file=sys.stderr,
        )
        time.sleep(SETTLE_S)
        caller = Caller(target, opts.pods, total)
        window = kubelet_window(target, sandbox_ids, caller, opts)
        memory = target.memory(sandbox_ids)
        pair = window.calls["relist"]
        print(
            f"{label:<15} relist p50 {percentile(pair, 50) * 1000:.2f} ms"
            f"  p99 {percentile(pair, 99) * 1000:.2f} ms,"
            f" CPU {window.per_minute(window.daemon_cpu_s):.2f} s/min",
            file=sys.stderr,
        )
    except BaseException:
        remove_pods(target)  # best effort: leave nothing running behind the error
        remove_cgroups(cgroup_top(tag))
        raise
    found = remove_pods(target)
    found += lifecycle.leaks(target, network, idle_mounts, cni_cache)
    cgroups = remove_cgroups(cgroup_top(tag))
    if cgroups:
        found.append(f"{len(cgroups)} cgroup(s) still in use: {cgroups[:3]}")
    return Result(label, window, memory, found)


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def _mb(value: float) -> str:
    return f"{value / MB:.1f} MB"


def report(skiff: Result, peers: Sequence[Result], opts: Options, network: BenchNetwork) -> str:
    total = opts.pods * opts.containers
    w = skiff.window
    head = [p.label for p in peers]
    lines = [
        f"kubelet-shaped scale: {opts.pods} pods x {opts.containers} running containers "
        f"({total}), kubelet labels and annotations; {w.seconds:.0f} s of a relist "
        f"(ListPodSandbox + ListContainers, unfiltered) every {RELIST_INTERVAL_S:g} s and "
        f"the stats lists every {STATS_INTERVAL_S:g} s; CNI bridge ({network.subnet})",
        "",
        table_header(f"relist, {len(w.calls['relist'])} calls", LABEL_WIDTH, head),
    ]

    def rows(name: str, key: str) -> list[str]:
        """p50 and p99 rows of one call; "n/a" where a runtime has no such call."""
        ours = skiff.window.calls[key]
        found: list[str] = []
        for q in (50, 99):
            x = percentile(ours, q) * 1000 if ours else None
            cells: list[Cell] = []
            for p in peers:
                theirs = p.window.calls[key]
                y = percentile(theirs, q) * 1000 if theirs else None
                cells.append(
                    ("n/a", None)
                    if y is None
                    else (f"{y:.2f} ms", None if x is None else ratio(x, y))
                )
            label = f"{name if q == 50 else '':<22}p{q}"
            found.append(
                table_row(label, "n/a" if x is None else f"{x:.2f} ms", cells, LABEL_WIDTH)
            )
        return found

    for rpc in RELIST:
        lines += rows(rpc, rpc)
    lines += rows("the pair", "relist")
    lines += ["", table_header(f"stats lists, {len(w.calls[STATS[0]])} calls", LABEL_WIDTH, head)]
    for rpc in STATS:
        lines += rows(rpc, rpc)
    lines += ["", table_header("CPU, seconds per minute", LABEL_WIDTH, head)]
    cpu: list[tuple[str, Callable[[Window], float]]] = [
        ("the daemon", lambda w: w.per_minute(w.daemon_cpu_s)),
        ("its helpers (conmon/shim)", lambda w: w.per_minute(w.helpers_cpu_s)),
        ("daemon + helpers", lambda w: w.per_minute(w.daemon_cpu_s + w.helpers_cpu_s)),
    ]
    for name, of in cpu:
        lines.append(
            value_row(
                name,
                of(skiff.window),
                [of(p.window) for p in peers],
                lambda v: f"{v:.2f} s",
                LABEL_WIDTH,
            )
        )
    lines += ["", table_header("memory (PSS), at scale", LABEL_WIDTH, head)]
    memory: list[tuple[str, Callable[[Memory], float]]] = [
        ("daemon + helpers", lambda m: m.pss),
        ("the daemon", lambda m: m.daemon_pss),
        ("the helpers", lambda m: m.pss - m.daemon_pss),
        ("RSS sum, for reference", lambda m: m.rss),
    ]
    for name, get in memory:
        lines.append(
            value_row(name, get(skiff.memory), [get(p.memory) for p in peers], _mb, LABEL_WIDTH)
        )
    lines.append(
        table_row(
            "helper processes",
            str(skiff.memory.helpers),
            [(str(p.memory.helpers), None) for p in peers],
            LABEL_WIDTH,
        )
    )
    lines += ["", leaks_line((r.label, r.leaks) for r in (skiff, *peers))]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def bench(opts: Options) -> str:
    kinds = resolve_peers(opts.peers, INSTALL_HINT)
    with pod_bench("scl") as env:
        network, log_root, registry = env.network, env.log_root, env.registry
        images = push_images(registry)
        busybox, image, sandbox_image = images.busybox, images.image, images.sandbox_image

        with (
            temp_base("scld") as skiff_base,
            skiff_target(skiff_base, env.skiff_conf, registry.host, opts.log_level) as target,
        ):
            if target.pull(image) != busybox.config_digest:
                raise BenchError(f"skiff pulled {image} as another image")
            skiff = measure(target, "skiff", image, network, log_root, opts)

        peers: list[Result] = []
        pulled = images.pulled
        for kind in kinds:
            with containerd_target(
                kind, registry.host, sandbox_image, env.ctrd_conf, pulled
            ) as target:
                peers.append(
                    measure(target, kind.label, image, network, log_root, opts, cni_cache=True)
                )
    return report(skiff, peers, opts, network)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scale",
        description="A node's pods and the kubelet's relists and stats lists: skiff against "
        "containerd's CRI.",
    )
    parser.add_argument("--pods", type=int, default=110, help="pods (110)")
    parser.add_argument("--containers", type=int, default=3, help="running containers per pod (3)")
    parser.add_argument(
        "--seconds", type=float, default=60.0, help="length of the measured window (60)"
    )
    add_peers_option(parser)
    add_skiff_log_level(parser, "its per-RPC durations")
    args = parser.parse_args(argv)
    if args.pods < 1 or args.containers < 1 or args.seconds < 2:
        parser.error("--pods >= 1, --containers >= 1, --seconds >= 2")
    opts = Options(args.pods, args.containers, args.seconds, args.skiff_log_level, args.peers)
    return run_main("bench.scale", lambda: bench(opts))


if __name__ == "__main__":
    sys.exit(main())
