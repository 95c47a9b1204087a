"""Image-pull benchmark (issue 3): skiff against containerd's CRI on one loopback registry.

An ~100 MB image of incompressible data (busybox layer + one big gzip layer) is pushed to
a real `docker-registry` on 127.0.0.1 as ``bench/big:v1`` and, the same content again, as
``bench/big:v2``. For each run and each runtime, a daemon with a fresh root:

- cold pull: ``PullImage(v1)`` with nothing present; wall time around the RPC, and the
  daemon's peak RSS meanwhile (VmRSS sampled every 20 ms, and VmHWM read right after);
- cached pull: ``PullImage(v2)`` on the same daemon, every layer already present.

The peer is Debian's containerd (1.6) started here with its own root, state, sockets and
config (``/run/containerd`` and ``/var/lib/containerd`` are never touched), reaching the
plain-HTTP registry through a ``certs.d``-style ``hosts.toml``. Medians over ``--runs``
are printed as a table with the ratio skiff/containerd, with the targets: cold pull no
slower than containerd's, skiffd's peak RSS under 100 MB. Exit status 0 whatever the
numbers; 1 when the benchmark itself could not run.

Run as root from the repository root: ``make bench`` or
``.venv/bin/python -m bench.pull --runs 3``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from api.runtime.v1 import api_pb2 as pb
from api.runtime.v1 import api_pb2_grpc
from bench.peer import (
    CRI,
    BenchError,
    containerd_config_head,
    containerd_process,
    pull_image,
    ratio,
    require_containerd,
    require_root,
    run_main,
    skiffd_running,
    temp_base,
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


def containerd_config(base: Path) -> str:
    """containerd 1.6 config (version 2): every path of its own under ``base``."""
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
def containerd_daemon(registry_host: str) -> Iterator[Daemon]:
    """Debian's containerd with a fresh root, state and socket of its own under /tmp."""
    with containerd_process(
        registry_host,
        containerd_config,
        install_hint=INSTALL_HINT,
        dirs=("root", "state", "opt", "cni/bin", "cni/net.d"),
    ) as peer:
        yield Daemon("containerd", peer.pid, peer.images(), peer.log_path)


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


def report(skiff: Summary, peer: Summary, runs: int, image_mb: float) -> str:
    rows = [
        ("cold pull", f"{skiff.cold_s:.3f} s", f"{peer.cold_s:.3f} s", skiff.cold_s, peer.cold_s),
        (
            "cached pull",
            f"{skiff.cached_s:.3f} s",
            f"{peer.cached_s:.3f} s",
            skiff.cached_s,
            peer.cached_s,
        ),
        (
            "peak RSS (cold pull)",
            f"{skiff.peak_mb:.1f} MB",
            f"{peer.peak_mb:.1f} MB",
            skiff.peak_mb,
            peer.peak_mb,
        ),
        (
            "RSS before the pull",
            f"{skiff.idle_mb:.1f} MB",
            f"{peer.idle_mb:.1f} MB",
            skiff.idle_mb,
            peer.idle_mb,
        ),
    ]
    cold_ratio = ratio(skiff.cold_s, peer.cold_s)
    lines = [
        f"image pull: {image_mb:.1f} MB image (2 layers, incompressible), loopback registry; "
        f"times: median of {runs} runs, RSS: max over runs",
        "",
        f"{'':<22}{'skiff':>12}{'containerd':>14}{'ratio':>9}",
    ]
    for label, a, b, x, y in rows:
        lines.append(f"{label:<22}{a:>12}{b:>14}{ratio(x, y):>9.2f}")
    lines += [
        "",
        "targets:",
        f"  cold pull ratio <= {COLD_RATIO_TARGET:.1f}        {cold_ratio:>9.2f}   "
        + ("PASS" if cold_ratio <= COLD_RATIO_TARGET else "MISS"),
        f"  skiffd peak RSS < {RSS_TARGET_MB:.0f} MB       {skiff.peak_mb:>6.1f} MB   "
        + ("PASS" if skiff.peak_mb < RSS_TARGET_MB else "MISS"),
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def bench(runs: int, size_mb: int) -> str:
    require_root("containerd's overlayfs snapshotter needs it")
    require_containerd(INSTALL_HINT)
    with TestRegistry("insecure") as registry:
        with temp_base("bench-img") as workdir:
            print(f"building and pushing a {size_mb} MiB image ...", file=sys.stderr)
            image = img.big_image(workdir, total_mb=size_mb)
            img.push(registry, REPO, "v1", image)
            img.push(registry, REPO, "v2", image)
        cold_ref = f"{registry.host}/{REPO}:v1"
        cached_ref = f"{registry.host}/{REPO}:v2"
        starters = {"skiff": skiff_daemon, "containerd": containerd_daemon}
        results: dict[str, list[Run]] = {name: [] for name in starters}
        for i in range(runs):
            for name, start in starters.items():
                with start(registry.host) as daemon:
                    run = measure(daemon, cold_ref, cached_ref, image.config_digest)
                results[name].append(run)
                print(
                    f"run {i + 1}/{runs} {name:<10} cold {run.cold_s:7.3f} s   "
                    f"cached {run.cached_s:6.3f} s   "
                    f"peak RSS {run.peak_rss_kib * 1024 / MB:6.1f} MB",
                    file=sys.stderr,
                )
    return report(
        Summary.of(results["skiff"]), Summary.of(results["containerd"]), runs, image.size / MB
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
    args = parser.parse_args(argv)
    if args.runs < 1 or args.size_mb < 1:
        parser.error("--runs and --size-mb must be at least 1")
    return run_main("bench.pull", lambda: bench(args.runs, args.size_mb))


if __name__ == "__main__":
    sys.exit(main())
