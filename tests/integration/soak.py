"""A kubelet-shaped load on one skiffd, what skiffd's process looks like under it, and
the judgement whether it grew (tests/integration/test_soak.py runs it).

The load: pods of 2-3 containers (a shell loop writing log lines, sleepers), a relist
(ListPodSandbox + ListContainers) every second, stats every 10 s, exec probes on a share
of the containers, log rotation (rename, then ReopenContainerLog, as the kubelet's log
manager does) and a few pods stopped, removed and replaced every cycle. Each runs in a
thread of its own with the sync stubs on one channel: the client stays light.
"""

from __future__ import annotations

import math
import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from api.runtime.v1 import api_pb2 as pb
from tests.integration.nodes import Node, sandbox_config
from tests.integration.test_metrics import scrape_url, value

RELIST_SECONDS = 1.0
STATS_SECONDS = 10.0
PROBE_SECONDS = 2.0
ROTATE_SECONDS = 3.0
CHURN_SECONDS = 5.0
# The kubelet's StopContainer grace; the containers leave on SIGTERM at once.
STOP_GRACE = 10
RPC_TIMEOUT = 60

# Each container's init traps SIGTERM and waits on a child, so a stop takes no grace.
WRITER = (
    "trap 'exit 0' TERM; i=0; while true; do i=$((i+1)); echo \"line $i\"; sleep 0.5 & wait; done"
)
SLEEPER = "trap 'exit 0' TERM; sleep 1000000 & wait"
READER = "trap 'exit 0' TERM; while true; do cat /etc/hostname >/dev/null; sleep 5 & wait; done"


@dataclass
class SoakPod:
    name: str
    id: str
    slot: int
    log_dir: Path
    containers: dict[str, str]  # name -> id
    # Held while a probe or a rotation acts on the pod, and by its removal: the load
    # never races the churn, so every error is skiffd's.
    lock: threading.Lock = field(default_factory=threading.Lock)
    retired: bool = False


@dataclass
class Sample:
    at: float  # seconds since the load started
    rss_kib: int
    fds: int
    threads: int
    tasks: int


def process_sample(pid: int, tasks: int, at: float) -> Sample:
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return Sample(
        at=at,
        rss_kib=int(status["VmRSS"].split()[0]),
        fds=len(list(Path(f"/proc/{pid}/fd").iterdir())),
        threads=int(status["Threads"]),
        tasks=tasks,
    )


def open_files(pid: int) -> dict[str, int]:
    """What a process's descriptors point at, by kind (socket, pipe, anon_inode:..., or
    the file's path), most first: what a failure message shows of a grown fd count."""
    kinds: dict[str, int] = {}
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        kind = target.split(":[", 1)[0] if target.startswith(("socket:", "pipe:")) else target
        kinds[kind] = kinds.get(kind, 0) + 1
    return dict(sorted(kinds.items(), key=lambda item: -item[1]))


class SoakLoad:
    """The load's threads; `start`, then `finish` joins them and says what went wrong."""

    def __init__(self, node: Node, pods: int, metrics_url: str) -> None:
        self.node = node
        self.runtime = node.runtime
        self.pod_count = pods
        self.metrics_url = metrics_url
        assert node.daemon.proc is not None
        self.pid = node.daemon.proc.pid
        self.pods: list[SoakPod] = []
        self.pods_lock = threading.Lock()
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.started = 0.0
        self.generation = 0
        self.list_latencies: list[tuple[float, float]] = []  # (at, ms)
        self.removed_ids: list[str] = []
        self.samples: list[Sample] = []
        self.between_cycles: list[Sample] = []  # right after each churn cycle
        self.counts = {"relists": 0, "stats": 0, "execs": 0, "rotations": 0, "replaced": 0}
        self._threads: list[threading.Thread] = []

    # --- pods --------------------------------------------------------------------------

    def run_pod(self, slot: int) -> SoakPod:
        """A pod in `slot`: its replacements keep its shape, so between churn cycles
        the node holds the same containers."""
        self.generation += 1
        name = f"soak-{self.generation}"
        log_dir = self.node.log_dir.parent / name
        pod_id = self.runtime.RunPodSandbox(
            pb.RunPodSandboxRequest(config=sandbox_config(name, log_dir)), timeout=RPC_TIMEOUT
        ).pod_sandbox_id
        self.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id))
        commands = {"writer": WRITER, "sleeper": SLEEPER}
        if slot % 2:
            commands["reader"] = READER
        containers = {}
        for cname, script in commands.items():
            containers[cname] = self.node.create(cname, pod=pod_id, command=["sh", "-c", script])
            self.node.start(containers[cname])
        return SoakPod(name, pod_id, slot, log_dir, containers)

    def remove_pod(self, pod: SoakPod) -> None:
        """As the kubelet takes a pod away: stop and remove each container, then stop
        and remove the sandbox."""
        with pod.lock:
            pod.retired = True
            for cid in pod.containers.values():
                self.runtime.StopContainer(
                    pb.StopContainerRequest(container_id=cid, timeout=STOP_GRACE),
                    timeout=RPC_TIMEOUT,
                )
                self.node.remove(cid)
            self.runtime.StopPodSandbox(
                pb.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=RPC_TIMEOUT
            )
            self.runtime.RemovePodSandbox(
                pb.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=RPC_TIMEOUT
            )
            self.removed_ids.append(pod.id)

    def fill(self) -> None:
        while len(self.pods) < self.pod_count:
            self.pods.append(self.run_pod(len(self.pods)))

    def remove_all(self) -> None:
        for pod in list(self.pods):
            self.remove_pod(pod)
            self.pods.remove(pod)

    def live_pods(self) -> list[SoakPod]:
        with self.pods_lock:
            return [p for p in self.pods if not p.retired]

    # --- the load ----------------------------------------------------------------------

    def start(self) -> None:
        self.started = time.monotonic()
        for loop in (self._relist, self._stats, self._probes, self._rotations, self._churn):
            thread = threading.Thread(target=self._guarded, args=(loop,), name=loop.__name__)
            thread.start()
            self._threads.append(thread)

    def now(self) -> float:
        return time.monotonic() - self.started

    def sample(self) -> Sample:
        tasks = int(value(scrape_url(self.metrics_url), "skiff_asyncio_tasks"))
        assert tasks > 0, f"no skiff_asyncio_tasks at {self.metrics_url}"
        return process_sample(self.pid, tasks, self.now())

    def finish(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(RPC_TIMEOUT * 3)
            if thread.is_alive():
                self.errors.append(f"{thread.name} did not end")

    def _guarded(self, loop: Callable[[], None]) -> None:
        try:
            loop()
        except Exception as exc:
            detail = exc.details() if isinstance(exc, grpc.RpcError) else ""
            self.errors.append(f"{loop.__name__} at {self.now():.0f}s: {exc!r} {detail}")
            self.stop.set()

    def _every(self, seconds: float, action: Callable[[], None]) -> None:
        next_at = time.monotonic()
        while not self.stop.is_set():
            action()
            next_at += seconds
            self.stop.wait(max(0.0, next_at - time.monotonic()))

    def _relist(self) -> None:
        def relist() -> None:
            begun = time.monotonic()
            self.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=RPC_TIMEOUT)
            self.runtime.ListContainers(pb.ListContainersRequest(), timeout=RPC_TIMEOUT)
            self.list_latencies.append((self.now(), (time.monotonic() - begun) * 1000))
            self.counts["relists"] += 1

        self._every(RELIST_SECONDS, relist)

    def stats(self) -> None:
        """The kubelet's stats round; skiffd closes the cgroup files it kept open for
        the stats of removed containers and pods at such an unfiltered list."""
        self.runtime.ListContainerStats(pb.ListContainerStatsRequest(), timeout=RPC_TIMEOUT)
        self.runtime.ListPodSandboxStats(pb.ListPodSandboxStatsRequest(), timeout=RPC_TIMEOUT)
        self.counts["stats"] += 1

    def _stats(self) -> None:
        self._every(STATS_SECONDS, self.stats)

    def _probes(self) -> None:
        turn = 0

        def probe() -> None:
            # A quarter of the pods each round, in turn: a liveness `true` on the
            # sleeper, a readiness `cat` of the pod's hostname on the writer.
            nonlocal turn
            pods = self.live_pods()
            share = max(1, len(pods) // 4)
            for pod in pods[turn % max(1, len(pods)) :][:share]:
                with pod.lock:
                    if pod.retired or self.stop.is_set():
                        continue
                    alive = self.node.exec(pod.containers["sleeper"], "true", timeout=10)
                    ready = self.node.exec(pod.containers["writer"], "cat", "/etc/hostname")
                self.counts["execs"] += 2
                if alive.exit_code != 0 or ready.stdout.decode().strip() != pod.name:
                    raise AssertionError(f"probes of pod {pod.name}: {alive!r} {ready!r}")
            turn += share

        self._every(PROBE_SECONDS, probe)

    def _rotations(self) -> None:
        turn = 0

        def rotate() -> None:
            # The log manager's rotation: rename the file aside, have the runtime reopen
            # it, drop the old one (the kubelet compresses and prunes it).
            nonlocal turn
            pods = self.live_pods()
            pod = pods[turn % len(pods)] if pods else None
            turn += 1
            if pod is None:
                return
            with pod.lock:
                if pod.retired:
                    return
                log = pod.log_dir / "writer.log"
                rotated = log.with_name(f"writer.log.{turn}")
                log.rename(rotated)
                self.runtime.ReopenContainerLog(
                    pb.ReopenContainerLogRequest(container_id=pod.containers["writer"]),
                    timeout=RPC_TIMEOUT,
                )
                if not log.exists():
                    raise AssertionError(f"no new {log} after ReopenContainerLog")
                rotated.unlink()
            self.counts["rotations"] += 1

        self._every(ROTATE_SECONDS, rotate)

    def _churn(self) -> None:
        per_cycle = max(2, self.pod_count // 8)

        def cycle() -> None:
            with self.pods_lock:
                doomed = self.pods[:per_cycle]
                self.pods = self.pods[per_cycle:]
            for pod in doomed:
                self.remove_pod(pod)
            for gone in doomed:
                if self.stop.is_set():
                    return
                pod = self.run_pod(gone.slot)
                with self.pods_lock:
                    self.pods.append(pod)
            self.counts["replaced"] += len(doomed)
            # skiffd keeps the cgroup files of what a stats call read open: after one,
            # the same pods and containers hold the same descriptors, cycle after cycle.
            self.stats()
            self.between_cycles.append(self.sample())

        self._every(CHURN_SECONDS, cycle)


# --- judgement ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Margin:
    """How far a figure of the last third of a run may go above the middle third's:
    `absolute` plus `relative` times the middle third's."""

    absolute: float
    relative: float = 0.0

    def allows(self, reference: float, value: float) -> bool:
        return value <= reference + self.absolute + self.relative * reference


@dataclass(frozen=True)
class Limits:
    """A series' peak moves with the work in flight when it is sampled; its floor is
    the steady state the load comes back to, and takes the tighter margin."""

    peak: Margin
    floor: Margin


def growth(name: str, values: Sequence[float], limits: Limits, unit: str = "") -> list[str]:
    """Problems when a series grew after its warm-up (the first third): the last third's
    peak above the middle third's, or its floor above the middle third's floor, beyond
    `limits`. Steady noise passes; whatever rises with time fails once the run is long
    enough for it to outgrow the margin within a third of the run."""
    if len(values) < 6:
        return [f"{name}: {len(values)} samples are too few to judge (6 at least)"]
    third = len(values) // 3
    middle, last = values[third : 2 * third], values[2 * third :]
    problems = []
    for what, pick, margin in (("peak", max, limits.peak), ("floor", min, limits.floor)):
        if not margin.allows(pick(middle), pick(last)):
            problems.append(
                f"{name}: {what} grew from {pick(middle):g}{unit} (middle third) to "
                f"{pick(last):g}{unit} (last third), beyond +{margin.absolute:g}{unit}"
                f" +{margin.relative:.0%}"
            )
    return problems


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)]


def table(
    samples: Sequence[Sample], latencies: Sequence[tuple[float, float]], window: float
) -> str:
    """One row per `window` seconds: skiffd's RSS, fds, threads and asyncio tasks (the
    window's range) and the relist's latency."""
    rows = [
        f"{'window s':>11} {'RSS MiB':>13} {'fds':>9} {'threads':>9} {'tasks':>9}"
        f" {'List p50 ms':>11} {'p99 ms':>8}"
    ]
    end = max([s.at for s in samples] + [at for at, _ in latencies] + [0.0])
    start = 0.0
    while start < end:
        stop = start + window
        here = [s for s in samples if start <= s.at < stop]
        ms = [m for at, m in latencies if start <= at < stop]
        rows.append(
            f"{f'{start:.0f}-{stop:.0f}':>11}"
            f" {span([s.rss_kib / 1024 for s in here], '.1f'):>13}"
            f" {span([s.fds for s in here], 'd'):>9}"
            f" {span([s.threads for s in here], 'd'):>9}"
            f" {span([s.tasks for s in here], 'd'):>9}"
            f" {(f'{statistics.median(ms):.1f}' if ms else '-'):>11}"
            f" {(f'{percentile(ms, 0.99):.1f}' if ms else '-'):>8}"
        )
        start = stop
    return "\n".join(rows)


def span(values: Sequence[float], spec: str) -> str:
    """ "low-high" of the values in `spec` format, one figure when they are all one."""
    if not values:
        return "-"
    low, high = min(values), max(values)
    return format(low, spec) if low == high else f"{format(low, spec)}-{format(high, spec)}"
