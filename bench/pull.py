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
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import grpc

from api.runtime.v1 import api_pb2 as pb
from api.runtime.v1 import api_pb2_grpc
from tests.integration import images as img
from tests.integration.registry import TestRegistry
from tests.integration.skiffd import Skiffd, short_tempdir

REPO = "bench/big"
PULL_TIMEOUT = 600.0
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
SAMPLE_INTERVAL = 0.02
RSS_TARGET_MB = 100.0
COLD_RATIO_TARGET = 1.0
MB = 1_000_000


class BenchError(RuntimeError):
    """The benchmark could not run (not: the numbers are bad)."""


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
    base = short_tempdir("bench")
    daemon = Skiffd(base, {"log_level": "info"})
    (base / "registries.conf").write_text(
        f'[[registry]]\nlocation = "{registry_host}"\ninsecure = true\n'
    )
    try:
        daemon.start()
        assert daemon.proc is not None
        yield Daemon("skiff", daemon.proc.pid, daemon.images(), daemon.log_path)
        status = daemon.stop()
        if status != 0:
            raise BenchError(f"skiffd exited with {status}:\n{_tail(daemon.log_path)}")
    finally:
        daemon.kill()
        left = unmount_under(base)
        if left:
            print(f"warning: skiffd left mounts behind: {left}", file=sys.stderr)
        shutil.rmtree(base, ignore_errors=True)


def containerd_config(base: Path) -> str:
    """containerd 1.6 config (version 2): every path of its own under ``base``."""
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

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{base}/cni/bin"
    conf_dir = "{base}/cni/net.d"

  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{base}/certs.d"
"""


def containerd_hosts_toml(registry_host: str) -> str:
    """``certs.d/<host:port>/hosts.toml``: the registry speaks plain HTTP."""
    return f"""\
server = "http://{registry_host}"

[host."http://{registry_host}"]
  capabilities = ["pull", "resolve"]
"""


@contextmanager
def containerd_daemon(registry_host: str) -> Iterator[Daemon]:
    """Debian's containerd with a fresh root, state and socket of its own under /tmp."""
    binary = shutil.which("containerd")
    if binary is None:
        raise BenchError(
            "containerd is not installed: `make bench` (or apt-get install containerd)"
        )
    base = short_tempdir("ctrd")
    for sub in ("root", "state", "opt", "cni/bin", "cni/net.d"):
        (base / sub).mkdir(parents=True)
    hosts_dir = base / "certs.d" / registry_host
    hosts_dir.mkdir(parents=True)
    (hosts_dir / "hosts.toml").write_text(containerd_hosts_toml(registry_host))
    config = base / "config.toml"
    config.write_text(containerd_config(base))
    log_path = base / "containerd.log"
    socket = base / "containerd.sock"
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
        _wait_cri_ready(proc, channel, socket, log_path)
        yield Daemon("containerd", proc.pid, api_pb2_grpc.ImageServiceStub(channel), log_path)
        channel.close()
        channel = None
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise BenchError(
                f"containerd ignored SIGTERM for {STOP_TIMEOUT}s:\n{_tail(log_path)}"
            ) from None
    finally:
        if channel is not None:
            channel.close()
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        left = unmount_under(base)
        if left:
            print(f"warning: containerd left mounts behind: {left}", file=sys.stderr)
        shutil.rmtree(base, ignore_errors=True)


def _wait_cri_ready(
    proc: subprocess.Popen[bytes], channel: grpc.Channel, socket: Path, log_path: Path
) -> None:
    runtime = api_pb2_grpc.RuntimeServiceStub(channel)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(
                f"containerd exited with {proc.returncode} while starting:\n{_tail(log_path)}"
            )
        if socket.exists():
            try:
                runtime.Version(pb.VersionRequest(), timeout=2)
                return
            except grpc.RpcError:
                pass
        time.sleep(0.05)
    raise BenchError(f"containerd's CRI did not answer within {START_TIMEOUT}s:\n{_tail(log_path)}")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


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
    request = pb.PullImageRequest(image=pb.ImageSpec(image=ref))
    start = time.perf_counter()
    try:
        got = daemon.images.PullImage(request, timeout=PULL_TIMEOUT).image_ref
    except grpc.RpcError as exc:
        raise BenchError(
            f"{daemon.name}: PullImage({ref}) failed: {exc.code()} {exc.details()}\n"
            f"{_tail(daemon.log_path)}"
        ) from None
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


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("inf")


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
    cold_ratio = _ratio(skiff.cold_s, peer.cold_s)
    lines = [
        f"image pull: {image_mb:.1f} MB image (2 layers, incompressible), loopback registry; "
        f"times: median of {runs} runs, RSS: max over runs",
        "",
        f"{'':<22}{'skiff':>12}{'containerd':>14}{'ratio':>9}",
    ]
    for label, a, b, x, y in rows:
        lines.append(f"{label:<22}{a:>12}{b:>14}{_ratio(x, y):>9.2f}")
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
    if os.geteuid() != 0:
        raise BenchError("run as root: containerd's overlayfs snapshotter needs it")
    if shutil.which("containerd") is None:
        raise BenchError(
            "containerd is not installed: `make bench` (or apt-get install containerd)"
        )
    with TestRegistry("insecure") as registry:
        workdir = short_tempdir("bench-img")
        try:
            print(f"building and pushing a {size_mb} MiB image ...", file=sys.stderr)
            image = img.big_image(workdir, total_mb=size_mb)
            img.push(registry, REPO, "v1", image)
            img.push(registry, REPO, "v2", image)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
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
    try:
        print(bench(args.runs, args.size_mb))
    except (BenchError, AssertionError) as exc:
        print(f"bench.pull: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
