"""Image-pull benchmark (issue 3): skiff against containerd's CRI on one loopback registry.

An ~100 MB image of incompressible data (busybox layer + one big gzip layer) is pushed to
a real `docker-registry` on 127.0.0.1 as ``bench/big:v1`` and, the same content again, as
``bench/big:v2``. For each run and each runtime, a daemon with a fresh root:

- cold pull: ``PullImage(v1)`` with nothing present; wall time around the RPC, and the
  daemon's peak RSS meanwhile (VmRSS sampled every 20 ms, and VmHWM read right after);
- cached pull: ``PullImage(v2)`` on the same daemon, every layer already present.

The peers (``--peers``) are Debian's containerd (1.6) and containerd 2.x (built from
the Go module in ``bench/tools/containerd``), each started here with its own root,
state, sockets and config (``/run/containerd`` and ``/var/lib/containerd`` are never
touched), reaching the plain-HTTP registry through a ``certs.d``-style ``hosts.toml``.
Medians over ``--runs`` are printed as a table with the ratio skiff/containerd for each,
with the targets: cold pull no slower than containerd's, skiffd's peak RSS under 100 MB.
Exit status 0 whatever the numbers; 1 when the benchmark itself could not run.

Run as root from the repository root: ``make bench`` or
``.venv/bin/python -m bench.pull --runs 3``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import TracebackType

from api.runtime.v1 import api_pb2 as pb
from api.runtime.v1 import api_pb2_grpc
from bench.peer import (
    CRI,
    BenchError,
    PeerKind,
    add_peers_option,
    containerd2_pod_config,
    containerd_config_head,
    containerd_process,
    pull_image,
    ratio,
    require_root,
    resolve_peers,
    run_main,
    skiffd_running,
    table_header,
    temp_base,
    value_row,
)
from tests.integration import images as img
from tests.integration.registry import TestRegistry

REPO = "bench/big"
PULL_TIMEOUT = 600.0
SAMPLE_INTERVAL = 0.02
RSS_TARGET_MB = 100.0
COLD_RATIO_TARGET = 1.0
MB = 1_000_000
INSTALL_HINT = "`make bench` (or apt-get install containerd)"
#: containerd 2.x's config names a sandbox image; the pull benchmark never pulls it.
UNUSED_SANDBOX_IMAGE = "registry.k8s.io/pause:3.10"
LABEL_WIDTH = 22


# --------------------------------------------------------------------------------------
# Memory of a process
# --------------------------------------------------------------------------------------


def status_kib(pid: int, key: str) -> int | None:
    """A ``/proc/<pid>/status`` field in KiB (``VmRSS``, ``VmHWM``); None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


class RssSampler:
    """The largest VmRSS of ``pid`` seen while the ``with`` block runs."""

    def __init__(self, pid: int, interval: float = SAMPLE_INTERVAL) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_kib = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _sample(self) -> None:
        rss = status_kib(self.pid, "VmRSS")
        if rss is not None:
            self.peak_kib = max(self.peak_kib, rss)
            self.samples += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


# --------------------------------------------------------------------------------------
# The two daemons
# --------------------------------------------------------------------------------------


@dataclass
class Daemon:
    """A started runtime as the benchmark sees it: a pid and a CRI ImageService."""

    name: str
    pid: int
    images: api_pb2_grpc.ImageServiceStub
    log_path: Path


@contextmanager
def skiff_daemon(registry_host: str) -> Iterator[Daemon]:
    """skiffd with a fresh root, the registry marked insecure, logging at info."""
    with (
        temp_base("bench") as base,
        skiffd_running(base, {"log_level": "info"}, insecure_registry=registry_host) as daemon,
    ):
        assert daemon.proc is not None
        yield Daemon("skiff", daemon.proc.pid, daemon.images(), daemon.log_path)


def containerd_config(kind: PeerKind, base: Path) -> str:
    """containerd's config, every path of its own under ``base``: 1.6's (version 2) with
    the CRI's image options only; 2.x's (version 3) that of the pod benchmarks (its
    sandbox image is never pulled here)."""
    if kind.major >= 2:
        return containerd2_pod_config(
            base,
            sandbox_image=UNUSED_SANDBOX_IMAGE,
            cni_conf_dir=base / "cni" / "net.d",
            cni_bin_dir=str(base / "cni" / "bin"),
        )
    return (
        containerd_config_head(base)
        + f"""\

  {CRI}.containerd]
    snapshotter = "overlayfs"

  {CRI}.cni]
    bin_dir = "{base}/cni/bin"
    conf_dir = "{base}/cni/net.d"

  {CRI}.registry]
    config_path = "{base}/certs.d"
"""
    )


@contextmanager
def containerd_daemon(kind: PeerKind, registry_host: str) -> Iterator[Daemon]:
    """containerd ``kind`` with a fresh root, state and socket of its own under /tmp."""
    with containerd_process(
        kind,
        registry_host,
        lambda base: containerd_config(kind, base),
        dirs=("root", "state", "opt", "cni/bin", "cni/net.d"),
    ) as peer:
        yield Daemon(kind.name, peer.pid, peer.images(), peer.log_path)


# --------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    cold_s: float
    cached_s: float
    idle_rss_kib: int
    peak_rss_kib: int


def _pull(daemon: Daemon, ref: str, image_id: str) -> float:
    """Wall time of one PullImage, client side; checks the image ID it answers."""
    start = time.perf_counter()
    got = pull_image(daemon.images, ref, daemon.name, daemon.log_path, PULL_TIMEOUT)
    elapsed = time.perf_counter() - start
    if got != image_id:
        raise BenchError(f"{daemon.name}: PullImage({ref}) answered {got}, expected {image_id}")
    return elapsed


def _check_listed(daemon: Daemon, refs: Sequence[str]) -> None:
    listed = daemon.images.ListImages(pb.ListImagesRequest(), timeout=30).images
    tags = {tag for image in listed for tag in image.repo_tags}
    missing = [r for r in refs if r not in tags]
    if missing:
        raise BenchError(f"{daemon.name}: ListImages lacks {missing} (has {sorted(tags)})")


def measure(daemon: Daemon, cold_ref: str, cached_ref: str, image_id: str) -> Run:
    idle = status_kib(daemon.pid, "VmRSS") or 0
    with RssSampler(daemon.pid) as sampler:
        cold = _pull(daemon, cold_ref, image_id)
    hwm = status_kib(daemon.pid, "VmHWM") or 0
    cached = _pull(daemon, cached_ref, image_id)
    _check_listed(daemon, [cold_ref, cached_ref])
    return Run(cold, cached, idle, max(sampler.peak_kib, hwm))


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    cold_s: float
    cached_s: float
    idle_mb: float
    peak_mb: float

    @classmethod
    def of(cls, runs: Sequence[Run]) -> Summary:
        return cls(
            cold_s=statistics.median(r.cold_s for r in runs),
            cached_s=statistics.median(r.cached_s for r in runs),
            idle_mb=statistics.median(r.idle_rss_kib for r in runs) * 1024 / MB,
            # Memory: the worst run, not the median.
            peak_mb=max(r.peak_rss_kib for r in runs) * 1024 / MB,
        )


def report(skiff: Summary, peers: Sequence[tuple[str, Summary]], runs: int, image_mb: float) -> str:
    theirs = [summary for _, summary in peers]
    rows: list[tuple[str, Callable[[Summary], float], Callable[[float], str]]] = [
        ("cold pull", lambda m: m.cold_s, lambda v: f"{v:.3f} s"),
        ("cached pull", lambda m: m.cached_s, lambda v: f"{v:.3f} s"),
        ("peak RSS (cold pull)", lambda m: m.peak_mb, lambda v: f"{v:.1f} MB"),
        ("RSS before the pull", lambda m: m.idle_mb, lambda v: f"{v:.1f} MB"),
    ]
    lines = [
        f"image pull: {image_mb:.1f} MB image (2 layers, incompressible), loopback registry; "
        f"times: median of {runs} runs, RSS: max over runs",
        "",
        table_header("", LABEL_WIDTH, [label for label, _ in peers]),
    ]
    for label, get, show in rows:
        lines.append(value_row(label, get(skiff), [get(t) for t in theirs], show, LABEL_WIDTH))
    lines += ["", "targets:"]
    for label, summary in peers:
        cold_ratio = ratio(skiff.cold_s, summary.cold_s)
        lines.append(
            f"  {f'cold pull ratio <= {COLD_RATIO_TARGET:.1f} ({label})':<44}{cold_ratio:>9.2f}   "
            + ("PASS" if cold_ratio <= COLD_RATIO_TARGET else "MISS")
        )
    lines.append(
        f"  {f'skiffd peak RSS < {RSS_TARGET_MB:.0f} MB':<44}{skiff.peak_mb:>6.1f} MB   "
        + ("PASS" if skiff.peak_mb < RSS_TARGET_MB else "MISS")
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def bench(runs: int, size_mb: int, peers: str | None) -> str:
    require_root("containerd's overlayfs snapshotter needs it")
    kinds = resolve_peers(peers, INSTALL_HINT)
    with TestRegistry("insecure") as registry:
        with temp_base("bench-img") as workdir:
            print(f"building and pushing a {size_mb} MiB image ...", file=sys.stderr)
            image = img.big_image(workdir, total_mb=size_mb)
            img.push(registry, REPO, "v1", image)
            img.push(registry, REPO, "v2", image)
        cold_ref = f"{registry.host}/{REPO}:v1"
        cached_ref = f"{registry.host}/{REPO}:v2"
        starters: dict[str, Callable[[str], AbstractContextManager[Daemon]]] = {
            "skiff": skiff_daemon
        }
        labels = {"skiff": "skiff"}
        for kind in kinds:
            starters[kind.name] = partial(containerd_daemon, kind)
            labels[kind.name] = kind.label
        results: dict[str, list[Run]] = {name: [] for name in starters}
        for i in range(runs):
            for name, start in starters.items():
                with start(registry.host) as daemon:
                    run = measure(daemon, cold_ref, cached_ref, image.config_digest)
                results[name].append(run)
                print(
                    f"run {i + 1}/{runs} {name:<11} cold {run.cold_s:7.3f} s   "
                    f"cached {run.cached_s:6.3f} s   "
                    f"peak RSS {run.peak_rss_kib * 1024 / MB:6.1f} MB",
                    file=sys.stderr,
                )
    return report(
        Summary.of(results["skiff"]),
        [(labels[k.name], Summary.of(results[k.name])) for k in kinds],
        runs,
        image.size / MB,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pull",
        description="Image pull: skiff against containerd's CRI on one loopback registry.",
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per runtime (default 3)")
    parser.add_argument(
        "--size-mb", type=int, default=100, help="random data in the image, MiB (default 100)"
    )
    add_peers_option(parser)
    args = parser.parse_args(argv)
    if args.runs < 1 or args.size_mb < 1:
        parser.error("--runs and --size-mb must be at least 1")
    return run_main("bench.pull", lambda: bench(args.runs, args.size_mb, args.peers))


if __name__ == "__main__":
    sys.exit(main())
