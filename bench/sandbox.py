"""Pod sandbox lifecycle benchmark (issue 4): skiff against containerd's CRI on one CNI config.

For each runtime, on one daemon: 50 pods (``--pods``), each RunPodSandbox, then
StopPodSandbox, then RemovePodSandbox, timed client side around each RPC; first one pod
at a time, then 10 workers at once (``--parallel``, a thread pool over the same 50).
Both runtimes get the same conflist (bridge with a unique name, a free 10.2xx.y.0/24 in
host-local with its own ``dataDir``, then portmap), each in a config directory of its
own, plugins from ``/usr/lib/cni``. Every 5th pod's PodSandboxStatus must show an IP of
that subnet (untimed), so both do the real network work.

skiff: skiffd through `tests.integration.skiffd.Skiffd` (namespaces pinned, no infra
container). containerd: Debian's 1.6 and 2.x (``--peers``), one after the other,
through `bench.peer.containerd_cri`, its sandbox image a busybox ``sleep`` image pushed
to a loopback registry and pulled through its CRI before timing (it runs one sandbox
container per pod under runc).

After each runtime: leak checks (pods still listed, IPs left in the ``dataDir``, veths
left on the bridge). Printed: p50/p99 per RPC and per full cycle, and wall time, per
mode, with the ratio skiff/containerd for each, and the target: skiff's full-cycle p50 no
slower than containerd's, sequential and parallel. Exit status 0 whatever the numbers; 1 when
the benchmark could not run.

Run as root from the repository root: ``make bench-sandbox`` or
``.venv/bin/python -m bench.sandbox``.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from api.runtime.v1 import api_pb2 as pb
from api.runtime.v1 import api_pb2_grpc
from bench import peer as shared
from bench.peer import (
    BenchError,
    BenchNetwork,
    add_peers_option,
    add_skiff_log_level,
    containerd_cri,
    duration_entries,
    leaks_line,
    mode_title,
    pause_image,
    percentile,
    percentile_rows,
    pod_bench,
    pool_map,
    print_mode,
    ratio,
    resolve_peers,
    run_main,
    skiff_pod_settings,
    skiffd_running,
    table_header,
    tail,
    temp_base,
    value_row,
)
from tests.integration import images as img

PAUSE_REPO = "bench/pause"
RPC_TIMEOUT = 60.0
CHECK_IP_EVERY = 5
P50_RATIO_TARGET = 1.0
PHASES = ("RunPodSandbox", "StopPodSandbox", "RemovePodSandbox", "full cycle")
#: Width of the row labels of the report's tables.
LABEL_WIDTH = 24


# --------------------------------------------------------------------------------------
# One runtime under test
# --------------------------------------------------------------------------------------


@dataclass
class Target:
    """A started runtime: its CRI RuntimeService and where to look when it fails."""

    name: str
    runtime: api_pb2_grpc.RuntimeServiceStub
    log_path: Path


@contextmanager
def skiff_target(base: Path, cni_conf_dir: Path, log_level: str) -> Iterator[Target]:
    """skiffd with a fresh root, reading ``cni_conf_dir``, logging JSON lines."""
    with skiffd_running(base, skiff_pod_settings(cni_conf_dir, log_level)) as daemon:
        yield Target("skiff", daemon.runtime(), daemon.log_path)


# --------------------------------------------------------------------------------------
# Pods
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cycle:
    """Client-side seconds of one pod's RunPodSandbox, StopPodSandbox, RemovePodSandbox."""

    run_s: float
    stop_s: float
    remove_s: float

    @property
    def total_s(self) -> float:
        return self.run_s + self.stop_s + self.remove_s

    def phase(self, name: str) -> float:
        return {
            "RunPodSandbox": self.run_s,
            "StopPodSandbox": self.stop_s,
            "RemovePodSandbox": self.remove_s,
            "full cycle": self.total_s,
        }[name]


def pod_config(tag: str, index: int, log_root: Path) -> pb.PodSandboxConfig:
    """A minimal pod (`bench.peer.pod_config`) in a namespace of its own."""
    return shared.pod_config(tag, index, log_root, f"ns-{tag}-{index}")


def _call_failed(target: Target, rpc: str, pod: str, exc: grpc.RpcError) -> BenchError:
    return BenchError(
        f"{target.name}: {rpc}({pod}) failed: {exc.code()} {exc.details()}\n{tail(target.log_path)}"
    )


def cycle(
    target: Target, config: pb.PodSandboxConfig, network: BenchNetwork, check_ip: bool
) -> Cycle:
    """Run, (check the IP), stop and remove one pod; each RPC timed on its own."""
    rt = target.runtime
    pod = config.metadata.name
    rpc = "RunPodSandbox"
    try:
        start = time.perf_counter()
        sandbox_id = rt.RunPodSandbox(
            pb.RunPodSandboxRequest(config=config), timeout=RPC_TIMEOUT
        ).pod_sandbox_id
        run_s = time.perf_counter() - start
        if check_ip:
            rpc = "PodSandboxStatus"
            status = rt.PodSandboxStatus(
                pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id), timeout=RPC_TIMEOUT
            ).status
            if not network.contains(status.network.ip):
                raise BenchError(
                    f"{target.name}: pod {pod} has IP {status.network.ip!r}, "
                    f"not one of {network.subnet}"
                )
        rpc = "StopPodSandbox"
        start = time.perf_counter()
        rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=RPC_TIMEOUT)
        stop_s = time.perf_counter() - start
        rpc = "RemovePodSandbox"
        start = time.perf_counter()
        rt.RemovePodSandbox(
            pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=RPC_TIMEOUT
        )
        remove_s = time.perf_counter() - start
    except grpc.RpcError as exc:
        raise _call_failed(target, rpc, pod, exc) from None
    return Cycle(run_s, stop_s, remove_s)


@dataclass(frozen=True)
class ModeResult:
    cycles: list[Cycle]
    wall_s: float
    ips_checked: int


def run_pods(
    target: Target, network: BenchNetwork, log_root: Path, tag: str, pods: int, workers: int
) -> ModeResult:
    """``pods`` full cycles, ``workers`` at a time (1: one after the other)."""

    def one(index: int) -> Cycle:
        config = pod_config(tag, index, log_root)
        return cycle(target, config, network, check_ip=index % CHECK_IP_EVERY == 0)

    start = time.perf_counter()
    cycles = pool_map(one, pods, workers)
    wall = time.perf_counter() - start
    return ModeResult(cycles, wall, len(range(0, pods, CHECK_IP_EVERY)))


# --------------------------------------------------------------------------------------
# Leaks
# --------------------------------------------------------------------------------------


def remove_all(target: Target) -> list[str]:
    """Stop and remove every pod the runtime lists; what it found (and failed at)."""
    found: list[str] = []
    rt = target.runtime
    listed = rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=RPC_TIMEOUT).items
    if listed:
        found.append(f"{len(listed)} pod(s) still listed")
    for pod in listed:
        try:
            rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=RPC_TIMEOUT)
            rt.RemovePodSandbox(
                pb.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=RPC_TIMEOUT
            )
        except grpc.RpcError as exc:
            found.append(f"cannot remove pod {pod.id[:12]}: {exc.details()}")
    return found


def leaks(target: Target, network: BenchNetwork, cni_cache: bool) -> list[str]:
    """What the runtime still holds after every pod was removed (``cni_cache``: and
    libcni's result cache in /var/lib/cni, containerd's); cleans up what it finds."""
    found = remove_all(target) + network.leaks()
    if cni_cache:
        found += network.cache_leaks()
    return found


# --------------------------------------------------------------------------------------
# skiffd's own view, from its log
# --------------------------------------------------------------------------------------


def skiff_log_summary(log_path: Path) -> list[str]:
    """p50 of skiffd's own "sandbox ready" duration and of each CNI plugin run."""
    ready: list[float] = []
    plugins: dict[str, list[float]] = {}
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return []
    for entry in duration_entries(text):
        if entry.get("msg") == "sandbox ready":
            ready.append(float(entry["duration_ms"]))
        elif entry.get("msg") == "CNI plugin ran":
            key = f"{entry.get('plugin')} {entry.get('command')}"
            plugins.setdefault(key, []).append(float(entry["duration_ms"]))
    if not ready:
        return []
    parts = [f"{k} {statistics.median(v):.1f}" for k, v in sorted(plugins.items())]
    return [
        f"skiffd log (all pods, both modes): 'sandbox ready' p50 "
        f"{statistics.median(ready):.1f} ms, p99 {percentile(ready, 99):.1f} ms",
        "  CNI plugin runs p50 (ms): " + (", ".join(parts) if parts else "(none logged)"),
    ]


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


@dataclass
class RuntimeResult:
    label: str
    modes: dict[str, ModeResult] = field(default_factory=dict)
    leaks: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


MODES = ("sequential", "parallel")


def report(
    skiff: RuntimeResult,
    peers: Sequence[RuntimeResult],
    pods: int,
    workers: int,
    network: BenchNetwork,
) -> str:
    lines = [
        f"pod sandbox lifecycle: {pods} pods per mode; CNI bridge + host-local "
        f"({network.subnet}) + portmap; client-side latency of each RPC",
    ]
    verdicts: list[str] = []
    for mode in MODES:
        lines += [
            "",
            table_header(mode_title(mode, workers), LABEL_WIDTH, [p.label for p in peers]),
        ]
        a_mode, b_modes = skiff.modes[mode], [p.modes[mode] for p in peers]
        for phase in PHASES:
            a = [c.phase(phase) for c in a_mode.cycles]
            b = [[c.phase(phase) for c in m.cycles] for m in b_modes]
            lines += percentile_rows(phase, a, b, (50, 99), pad=19, width=LABEL_WIDTH)
        lines.append(
            value_row(
                f"wall time, {pods} pods",
                a_mode.wall_s,
                [m.wall_s for m in b_modes],
                lambda v: f"{v:.2f} s",
                LABEL_WIDTH,
            )
        )
        for peer, b_mode in zip(peers, b_modes, strict=True):
            p50 = ratio(
                percentile([c.total_s for c in a_mode.cycles], 50),
                percentile([c.total_s for c in b_mode.cycles], 50),
            )
            verdicts.append(
                f"  {mode:<10} full-cycle p50 ratio <= {P50_RATIO_TARGET:.1f}"
                f" ({peer.label})  {p50:>6.2f}   " + ("PASS" if p50 <= P50_RATIO_TARGET else "MISS")
            )
    results = [(r.label, r) for r in (skiff, *peers)]
    lines += [
        "",
        "pod IPs checked (PodSandboxStatus.network.ip in the subnet): "
        + ", ".join(f"{n} {sum(m.ips_checked for m in r.modes.values())} ok" for n, r in results),
        leaks_line((n, r.leaks) for n, r in results),
        *skiff.notes,
        "",
        "target (issue 4): skiff's full-cycle p50 no slower than each containerd's",
        *verdicts,
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def measure(
    target: Target,
    label: str,
    network: BenchNetwork,
    log_root: Path,
    pods: int,
    workers: int,
    warmup: int,
    cni_cache: bool = False,
) -> RuntimeResult:
    result = RuntimeResult(label)
    tag = secrets.token_hex(3)
    try:
        if warmup:
            run_pods(target, network, log_root, f"{tag}w", warmup, 1)
        for mode, n in (("sequential", 1), ("parallel", workers)):
            res = run_pods(target, network, log_root, f"{tag}{mode[0]}", pods, n)
            result.modes[mode] = res
            print_mode(target.name, mode, [c.total_s * 1000 for c in res.cycles], res.wall_s)
    except BaseException:
        with suppress(grpc.RpcError):
            remove_all(target)  # best effort: leave nothing running behind the error
        raise
    result.leaks = leaks(target, network, cni_cache)
    return result


def bench(pods: int, workers: int, warmup: int, log_level: str, peers: str | None) -> str:
    kinds = resolve_peers(peers, "`make bench-sandbox` installs it")
    with pod_bench("sbx") as env:
        network, log_root = env.network, env.log_root
        print("building and pushing the sandbox image for containerd ...", file=sys.stderr)
        pause = pause_image()
        sandbox_image = img.push(env.registry, PAUSE_REPO, "bench", pause).reference

        with temp_base("sbxd") as skiff_base:
            with skiff_target(skiff_base, env.skiff_conf, log_level) as target:
                skiff = measure(target, "skiff", network, log_root, pods, workers, warmup)
            skiff.notes = skiff_log_summary(target.log_path)

        results: list[RuntimeResult] = []
        for kind in kinds:
            with containerd_cri(kind, env.registry.host, sandbox_image, env.ctrd_conf) as peer:
                image_id = peer.pull(sandbox_image)
                if image_id != pause.config_digest:
                    raise BenchError(f"{kind.name} pulled {sandbox_image} as {image_id!r}")
                target = Target(kind.name, peer.runtime(), peer.log_path)
                results.append(
                    measure(
                        target, kind.label, network, log_root, pods, workers, warmup, cni_cache=True
                    )
                )
    return report(skiff, results, pods, workers, network)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.sandbox",
        description="Pod sandbox run/stop/remove: skiff against containerd's CRI, same CNI.",
    )
    parser.add_argument("--pods", type=int, default=50, help="pods per mode (default 50)")
    parser.add_argument(
        "--parallel", type=int, default=10, help="workers in the parallel mode (default 10)"
    )
    parser.add_argument(
        "--warmup", type=int, default=3, help="untimed pods per runtime first (default 3)"
    )
    add_peers_option(parser)
    add_skiff_log_level(parser, "CNI detail")
    args = parser.parse_args(argv)
    if args.pods < 2 or args.parallel < 1 or args.warmup < 0:
        parser.error("--pods must be at least 2, --parallel at least 1, --warmup at least 0")
    return run_main(
        "bench.sandbox",
        lambda: bench(args.pods, args.parallel, args.warmup, args.skiff_log_level, args.peers),
    )


if __name__ == "__main__":
    sys.exit(main())
