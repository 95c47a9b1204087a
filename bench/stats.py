"""Stats latency benchmark (issue 7): what one stats call costs with many containers.

One skiffd with a fresh root, a bridge network and a loopback registry of this run's
own, the busybox image pulled; ``--pods`` (100) pods with 2 running containers each
(made untimed, 10 at a time, as `bench.lifecycle` makes them: idle shells), 2 s to
settle. Then, for each of ListContainerStats, ListPodSandboxStats and
ListPodSandboxMetrics, 3 untimed calls (the first measures every new writable layer)
and ``--calls`` (100) calls in a row, timed client side; each answer must cover every
container or pod. Every pod is removed at the end.

The target is absolute, not relative to a peer: ListContainerStats p99 under 50 ms with
200 containers (no subprocess per container, no per-call tree walks). Exit status 0
whatever the numbers; 1 when the benchmark could not run.

Run as root from the repository root: ``.venv/bin/python -m bench.stats``.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass

import grpc

from api.runtime.v1 import api_pb2 as pb
from api.runtime.v1 import api_pb2_grpc
from bench.lifecycle import (
    BUSYBOX_REPO,
    RPC_TIMEOUT,
    SETUP_WORKERS,
    Calls,
    pod_config,
    remove_all,
    skiff_target,
    start_pod,
)
from bench.peer import (
    BenchError,
    BenchNetwork,
    add_skiff_log_level,
    percentile,
    pool_map,
    require_root,
    run_main,
    temp_base,
    timed_counts,
    unmount_under,
)
from tests.integration import images as img
from tests.integration.registry import TestRegistry

TARGET_P99_MS = 50.0
CONTAINERS_PER_POD = 2
WARMUP_CALLS = 3
SETTLE_S = 2.0


@dataclass(frozen=True)
class Options:
    pods: int
    calls: int
    log_level: str


def _timed(call: Callable[[], int], calls: int, want: int, name: str) -> list[float]:
    # Untimed first calls: the first one measures every new writable layer once (later
    # ones read the background measurements) and opens the cgroup files it keeps.
    for _ in range(WARMUP_CALLS):
        call()
    return timed_counts(call, calls, want, name)


def measure(rt: api_pb2_grpc.RuntimeServiceStub, opts: Options) -> dict[str, list[float]]:
    containers = CONTAINERS_PER_POD * opts.pods

    def container_stats() -> int:
        request = pb.ListContainerStatsRequest()
        return len(rt.ListContainerStats(request, timeout=RPC_TIMEOUT).stats)

    def pod_stats() -> int:
        request = pb.ListPodSandboxStatsRequest()
        return len(rt.ListPodSandboxStats(request, timeout=RPC_TIMEOUT).stats)

    def pod_metrics() -> int:
        request = pb.ListPodSandboxMetricsRequest()
        return len(rt.ListPodSandboxMetrics(request, timeout=RPC_TIMEOUT).pod_metrics)

    return {
        "ListContainerStats": _timed(container_stats, opts.calls, containers, "ListContainerStats"),
        "ListPodSandboxStats": _timed(pod_stats, opts.calls, opts.pods, "ListPodSandboxStats"),
        "ListPodSandboxMetrics": _timed(
            pod_metrics, opts.calls, opts.pods, "ListPodSandboxMetrics"
        ),
    }


def report(results: dict[str, list[float]], opts: Options) -> str:
    containers = CONTAINERS_PER_POD * opts.pods
    lines = [
        f"stats latency, {opts.pods} pods x {CONTAINERS_PER_POD} containers "
        f"({containers}), {opts.calls} calls each",
        f"{'RPC':<24}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}",
    ]
    for name, times in results.items():
        lines.append(
            f"{name:<24}{percentile(times, 50) * 1000:>10.1f}"
            f"{percentile(times, 99) * 1000:>10.1f}{max(times) * 1000:>10.1f}"
        )
    p99 = percentile(results["ListContainerStats"], 99) * 1000
    verdict = "ok" if p99 < TARGET_P99_MS else "MISSED"
    lines.append(
        f"target: ListContainerStats p99 < {TARGET_P99_MS:.0f} ms with {containers} "
        f"containers: {p99:.1f} ms, {verdict}"
    )
    return "\n".join(lines)


def bench(opts: Options) -> str:
    require_root("network namespaces, bridges, cgroups and mounts need it")
    with temp_base("sts") as work:
        network = BenchNetwork.create(work / "ipam")
        try:
            conf = network.write_conf_dir(work / "net.d")
            with TestRegistry("insecure") as registry:
                print("building and pushing the image ...", file=sys.stderr)
                busybox = img.busybox_image()
                image = img.push(registry, BUSYBOX_REPO, "bench", busybox).reference
                with (
                    temp_base("stsd") as base,
                    skiff_target(base, conf, registry.host, opts.log_level) as target,
                ):
                    if target.pull(image) != busybox.config_digest:
                        raise BenchError(f"skiff pulled {image} as another image")
                    tag = secrets.token_hex(3)
                    print(
                        f"starting {opts.pods} pods x {CONTAINERS_PER_POD} containers ...",
                        file=sys.stderr,
                    )

                    def setup(i: int) -> str:
                        config = pod_config(tag, i, work / "pod-logs")
                        calls = Calls(target, config.metadata.name)
                        return start_pod(target, config, image, CONTAINERS_PER_POD, calls)

                    try:
                        pool_map(setup, opts.pods, SETUP_WORKERS)
                        time.sleep(SETTLE_S)  # let the containers' start-up work end
                        results = measure(target.runtime, opts)
                    finally:
                        with suppress(grpc.RpcError):
                            remove_all(target)
        finally:
            network.remove()
            unmount_under(work)
    return report(results, opts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.stats",
        description="ListContainerStats / ListPodSandboxStats / ListPodSandboxMetrics "
        "latency with many running containers.",
    )
    parser.add_argument("--pods", type=int, default=100, help="pods x 2 containers (100)")
    parser.add_argument("--calls", type=int, default=100, help="calls of each RPC (100)")
    add_skiff_log_level(parser, "its per-RPC durations")
    args = parser.parse_args(argv)
    if args.pods < 1 or args.calls < 2:
        parser.error("--pods >= 1, --calls >= 2")
    return run_main(
        "bench.stats", lambda: bench(Options(args.pods, args.calls, args.skiff_log_level))
    )


if __name__ == "__main__":
    sys.exit(main())
