"""The stats manager: what pods and containers use, for the CRI stats and metrics RPCs.

CPU, memory and process figures are read from the cgroups when asked (a few small
files per cgroup, all of one call's cgroups in one worker-thread hop); network counters
from each pod's network namespace. Writable layers are different: measuring one walks
its tree, so a background task measures them all every ``layer_interval`` seconds and
calls read the last measurement; only a container never measured yet is measured on
the spot, once.

``usage_nano_cores`` is the CPU rate since the previous sample of the same container or
pod. Samples closer together than MIN_RATE_WINDOW_NS keep the previous rate, so two
clients polling at once do not turn it into noise.

As in cri-o and containerd, lists cover running containers and ready pods only; a
container or pod asked for by id is answered whatever its state, with the cgroup
figures left out once it has no cgroup.

Plain dataclasses out; the servicer (cri/server/stats.py) turns them into protobuf.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cri import events, pod_cgroups
from cri.container_record import RUNNING, Container
from cri.containers import ContainerManager
from cri.events import EventBus
from cri.sandboxes import READY, Sandbox, SandboxManager
from network.netstats import (
    InterfaceCounters,
    NetStatsError,
    default_interface,
    read_each_netns_counters,
)
from runtime.cgroup_stats import (
    CgroupStatsReader,
    CgroupUsage,
    CpuUsage,
    MemoryUsage,
    ProcessCounts,
)
from runtime.cgroups import CgroupError, CgroupNotFound
from runtime.rootfs import RootfsError, rootfs_usage

log = logging.getLogger("skiff.stats")

MIN_RATE_WINDOW_NS = 500_000_000
DEFAULT_LAYER_INTERVAL = 10.0
# Writable layers a stats call measures itself at most (those never measured yet).
MEASURED_PER_CALL = 32


@dataclass(frozen=True)
class LayerUsage:
    """A writable layer as last measured."""

    mountpoint: str
    used_bytes: int
    inodes_used: int
    timestamp_ns: int


@dataclass(frozen=True)
class FilesystemCapacity:
    """The filesystem holding the writable layers (statvfs)."""

    mountpoint: str
    capacity_bytes: int
    available_bytes: int
    inodes: int
    inodes_free: int


@dataclass(frozen=True)
class ContainerSample:
    container: Container
    cgroup: CgroupUsage | None
    nano_cores: int | None
    writable_layer: LayerUsage | None
    # Only for metrics (detailed samples).
    processes: ProcessCounts | None = None


@dataclass(frozen=True)
class NetworkSample:
    timestamp_ns: int
    interfaces: tuple[InterfaceCounters, ...]
    default: InterfaceCounters | None


@dataclass(frozen=True)
class PodSample:
    sandbox: Sandbox
    cgroup: CgroupUsage | None
    nano_cores: int | None
    network: NetworkSample | None
    containers: tuple[ContainerSample, ...]


class CpuRates:
    """``usage_nano_cores`` per key from the previous sample of that key."""

    def __init__(self, min_window_ns: int = MIN_RATE_WINDOW_NS) -> None:
        self.min_window_ns = min_window_ns
        # key -> (timestamp ns, usage ns, rate computed at that sample)
        self._last: dict[str, tuple[int, int, int | None]] = {}

    def rate(self, key: str, timestamp_ns: int, usage_ns: int) -> int | None:
        """Nano cores used since the previous sample; None for the first one."""
        previous = self._last.get(key)
        if previous is None:
            self._last[key] = (timestamp_ns, usage_ns, None)
            return None
        then, used_then, last_rate = previous
        elapsed = timestamp_ns - then
        if 0 <= elapsed < self.min_window_ns:
            return last_rate
        if elapsed < 0 or usage_ns < used_then:
            # The clock stepped back, or the cgroup was made anew: start over.
            self._last[key] = (timestamp_ns, usage_ns, None)
            return None
        rate = (usage_ns - used_then) * 1_000_000_000 // elapsed
        self._last[key] = (timestamp_ns, usage_ns, rate)
        return rate

    def keep_only(self, keys: set[str]) -> None:
        for key in [k for k in self._last if k not in keys]:
            del self._last[key]


def sum_usage(usages: list[CgroupUsage]) -> CgroupUsage | None:
    """A pod's totals from its containers' cgroups, when it has no cgroup of its own."""
    if not usages:
        return None
    cpus = [u.cpu for u in usages if u.cpu is not None]
    memories = [u.memory for u in usages if u.memory is not None]
    pids = [u.pids for u in usages if u.pids is not None]
    cpu = None
    if cpus:
        cpu = CpuUsage(
            usage_ns=sum(c.usage_ns for c in cpus),
            user_ns=sum(c.user_ns for c in cpus),
            system_ns=sum(c.system_ns for c in cpus),
            periods=sum(c.periods for c in cpus),
            throttled_periods=sum(c.throttled_periods for c in cpus),
            throttled_ns=sum(c.throttled_ns for c in cpus),
        )
    memory = None
    if memories:
        memory = MemoryUsage(
            usage_bytes=sum(m.usage_bytes for m in memories),
            working_set_bytes=sum(m.working_set_bytes for m in memories),
            rss_bytes=sum(m.rss_bytes for m in memories),
            cache_bytes=sum(m.cache_bytes for m in memories),
            mapped_file_bytes=sum(m.mapped_file_bytes for m in memories),
            kernel_bytes=sum(m.kernel_bytes for m in memories),
            page_faults=sum(m.page_faults for m in memories),
            major_page_faults=sum(m.major_page_faults for m in memories),
            failcnt=sum(m.failcnt for m in memories),
            oom_kills=sum(m.oom_kills for m in memories),
        )
    return CgroupUsage(
        timestamp_ns=max(u.timestamp_ns for u in usages),
        cpu=cpu,
        memory=memory,
        pids=sum(pids) if pids else None,
    )


def filesystem_name(containers_dir: Path, image_dir: Path | None) -> str:
    """The mountpoint the writable layers' filesystem is named by. The kubelet takes
    differing image and container filesystem names for a split disk (and its eviction
    then refuses to work without the separate-disk feature), so when both directories
    are on one device the image filesystem's name serves for both."""
    if image_dir is not None and _device(containers_dir) == _device(image_dir):
        return str(image_dir)
    return str(containers_dir)


def _device(path: Path) -> int | None:
    """st_dev of ``path``, or of its nearest existing ancestor."""
    for candidate in (path, *path.parents):
        try:
            return os.stat(candidate).st_dev
        except OSError:
            continue
    return None


class WritableLayers:
    """Containers' writable-layer usage, measured in the background."""

    def __init__(
        self,
        containers_dir: Path,
        containers: Callable[[], Awaitable[list[Container]]],
        interval: float = DEFAULT_LAYER_INTERVAL,
        image_dir: Path | None = None,
    ) -> None:
        self.mountpoint = filesystem_name(containers_dir, image_dir)
        self._containers = containers
        self.interval = interval
        self._usage: dict[str, LayerUsage] = {}
        self._task: asyncio.Task[None] | None = None

    def get(self, container_id: str) -> LayerUsage | None:
        """The last measurement, None when there is none."""
        return self._usage.get(container_id)

    async def measure_new(self, containers: list[Container]) -> None:
        """Measure now up to MEASURED_PER_CALL containers never measured yet (a new
        container's layer is small); the background refresh keeps them current from
        then on, and measures the others (after a restart, say) on its next round."""
        new = {c.id: c.container_dir for c in containers if c.id not in self._usage}
        if new:
            first = dict(list(new.items())[:MEASURED_PER_CALL])
            self._usage.update(await asyncio.to_thread(self._measure, first))

    def total(self) -> LayerUsage:
        """All writable layers together, for ImageFsInfo's container filesystem."""
        usages = list(self._usage.values())
        return LayerUsage(
            self.mountpoint,
            sum(u.used_bytes for u in usages),
            sum(u.inodes_used for u in usages),
            max((u.timestamp_ns for u in usages), default=time.time_ns()),
        )

    def capacity(self) -> FilesystemCapacity | None:
        try:
            st = os.statvfs(self.mountpoint)
        except OSError:
            return None
        return FilesystemCapacity(
            self.mountpoint,
            st.f_blocks * st.f_frsize,
            st.f_bavail * st.f_frsize,
            st.f_files,
            st.f_ffree,
        )

    async def refresh(self) -> float:
        """Measure every container's writable layer now (on a worker thread); returns
        how long that took, in seconds."""
        started = time.monotonic()
        containers = {c.id: c.container_dir for c in await self._containers()}
        measured = await asyncio.to_thread(self._measure, containers)
        self._usage = measured
        took = time.monotonic() - started
        log.debug(
            "writable layers measured",
            extra={"containers": len(measured), "duration_ms": round(took * 1000, 1)},
        )
        return took

    def _measure(self, containers: Mapping[str, str]) -> dict[str, LayerUsage]:
        out: dict[str, LayerUsage] = {}
        for container_id, container_dir in containers.items():
            try:
                used, inodes = rootfs_usage(Path(container_dir) / "rootfs")
            except (OSError, RootfsError) as exc:
                log.warning(
                    "writable layer not measured",
                    extra={"container_id": container_id, "error": str(exc)},
                )
                continue
            out[container_id] = LayerUsage(self.mountpoint, used, inodes, time.time_ns())
        return out

    def start(self) -> None:
        async def loop() -> None:
            while True:
                took = 0.0
                try:
                    took = await self.refresh()
                except Exception as exc:
                    log.error("writable layer refresh failed", extra={"error": str(exc)})
                # Big layers take long to walk, and the walk holds the GIL much of the
                # time: keep it to a tenth of the time at most.
                await asyncio.sleep(max(self.interval, took * 9))

        self._task = asyncio.get_running_loop().create_task(loop())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


class StatsManager:
    def __init__(
        self,
        sandboxes: SandboxManager,
        containers: ContainerManager,
        root: Path,
        layer_interval: float = DEFAULT_LAYER_INTERVAL,
        image_dir: Path | None = None,
    ) -> None:
        self.sandboxes = sandboxes
        self.containers = containers
        self.reader = CgroupStatsReader(sandboxes.cgroups)
        self.rates = CpuRates()
        self.layers = WritableLayers(
            root / "containers", containers.select, layer_interval, image_dir
        )
        self._forget_scheduled = False

    def start(self) -> None:
        self.layers.start()

    def watch_events(self, bus: EventBus) -> None:
        """Let go of a container's or a pod's cgroup files as soon as it stops or goes:
        held, skiffd would keep descriptors of removed cgroups (and the kernel its
        objects behind them) until some later unfiltered stats list, if one comes."""
        bus.listen(self._on_event)

    def _on_event(self, kind: str, object_id: str, sandbox_id: str) -> None:
        # Once per turn of the loop however many stop at once; by then the change that
        # published the event is recorded in the managers.
        if kind in (events.STOPPED, events.DELETED) and not self._forget_scheduled:
            self._forget_scheduled = True
            asyncio.get_running_loop().call_soon(self._forget_gone)

    def stop(self) -> None:
        self.layers.stop()
        self.reader.files.close()

    # --- containers ------------------------------------------------------------------

    def cgroup_path(self, container: Container) -> str | None:
        """The container's cgroup as the container manager names it; None without a
        pod, or for a path cgroupfs does not take (a systemd slice name)."""
        sandbox = self.sandboxes.by_id(container.sandbox_id)
        if sandbox is None:
            return None
        path = pod_cgroups.container(sandbox.cgroup_parent, container.id)
        return path if path.startswith("/") else None

    async def container(self, container_id: str) -> ContainerSample:
        """One container's sample; NotFound naming it when skiff does not know it."""
        found = await self.containers.get(container_id)
        return (await self._container_samples([found]))[0]

    async def list_containers(
        self, id_prefix: str = "", pod_prefix: str = "", labels: Mapping[str, str] | None = None
    ) -> list[ContainerSample]:
        found = await self.containers.select(id_prefix, RUNNING, pod_prefix, labels)
        samples = await self._container_samples(found)
        if not id_prefix and not pod_prefix and not labels:
            self._forget_gone()
        return samples

    async def _container_samples(
        self, found: list[Container], detailed: bool = False
    ) -> list[ContainerSample]:
        paths = {
            c.id: path
            for c in found
            if c.state == RUNNING and (path := self.cgroup_path(c)) is not None
        }
        init_pids = {c.id: c.pid for c in found if c.id in paths} if detailed else {}
        usages = await asyncio.to_thread(self._read_cgroups, paths, detailed, init_pids)
        await self.layers.measure_new(found)
        samples = []
        for c in found:
            usage, counts = usages.get(c.id, (None, None))
            rate = None
            if usage is not None and usage.cpu is not None:
                rate = self.rates.rate(f"container/{c.id}", usage.timestamp_ns, usage.cpu.usage_ns)
            samples.append(ContainerSample(c, usage, rate, self.layers.get(c.id), counts))
        return samples

    def _read_cgroups(
        self,
        paths: Mapping[str, str],
        detailed: bool,
        init_pids: Mapping[str, int] | None = None,
    ) -> dict[str, tuple[CgroupUsage | None, ProcessCounts | None]]:
        """On a worker thread: each cgroup's usage (None when it is gone or unreadable),
        and with ``detailed`` (metrics) its process counts, with the ulimits of the
        process ``init_pids`` names for it."""
        out: dict[str, tuple[CgroupUsage | None, ProcessCounts | None]] = {}
        for key, path in paths.items():
            try:
                usage = self.reader.read(path, detailed)
                init_pid = (init_pids or {}).get(key, 0)
                counts = self.reader.processes(path, init_pid=init_pid) if detailed else None
            except CgroupNotFound:
                out[key] = (None, None)
                continue
            except CgroupError as exc:
                log.warning("cgroup stats not read", extra={"cgroup": path, "error": str(exc)})
                out[key] = (None, None)
                continue
            out[key] = (usage, counts)
        return out

    def _forget_gone(self) -> None:
        """Drop what is kept for containers and pods that are gone or stopped (after an
        unfiltered list, which sees them all, and when one stops or goes)."""
        self._forget_scheduled = False
        containers = self.containers.everything()
        pods = self.sandboxes.select()
        keys = {f"container/{c.id}" for c in containers}
        keys.update(f"pod/{s.id}" for s in pods)
        self.rates.keep_only(keys)
        # The cgroup files kept open: only those of running containers and ready pods.
        live = {
            p.cgroup_parent for p in pods if p.state == READY and p.cgroup_parent.startswith("/")
        }
        for c in containers:
            path = self.cgroup_path(c) if c.state == RUNNING else None
            if path is not None:
                live.add(path)
        self.reader.keep_only(live)

    # --- pods ------------------------------------------------------------------------

    async def pod(self, sandbox_id: str, detailed: bool = False) -> PodSample:
        """One pod's sample; NotFound naming it when skiff does not know it."""
        return (await self._pod_samples([self.sandboxes.get(sandbox_id)], detailed))[0]

    async def list_pods(
        self, id_prefix: str = "", labels: Mapping[str, str] | None = None, detailed: bool = False
    ) -> list[PodSample]:
        found = self.sandboxes.select(id_prefix, READY, labels)
        samples = await self._pod_samples(found, detailed)
        if not id_prefix and not labels:
            self._forget_gone()
        return samples

    async def _pod_samples(self, pods: list[Sandbox], detailed: bool) -> list[PodSample]:
        members = {
            pod.id: [c for c in self.containers.of_sandbox(pod.id) if c.state == RUNNING]
            for pod in pods
        }
        everyone = [c for group in members.values() for c in group]
        pod_paths = {p.id: p.cgroup_parent for p in pods if p.cgroup_parent.startswith("/")}
        # Three reads on three threads at once: one after the other, a call waited for
        # each in turn.
        members_read, pod_usages, networks = await asyncio.gather(
            self._container_samples(everyone, detailed),
            asyncio.to_thread(self._read_cgroups, pod_paths, False),
            self._networks(pods),
        )
        container_samples = {s.container.id: s for s in members_read}
        samples = []
        for pod, network in zip(pods, networks, strict=True):
            inside = tuple(
                sorted(
                    (container_samples[c.id] for c in members[pod.id]),
                    key=lambda s: s.container.created_ns,
                )
            )
            usage = pod_usages.get(pod.id, (None, None))[0]
            if usage is None and pod.id not in pod_paths:
                usage = sum_usage([s.cgroup for s in inside if s.cgroup is not None])
            rate = None
            if usage is not None and usage.cpu is not None:
                rate = self.rates.rate(f"pod/{pod.id}", usage.timestamp_ns, usage.cpu.usage_ns)
            samples.append(PodSample(pod, usage, rate, network, inside))
        return samples

    async def _networks(self, pods: list[Sandbox]) -> list[NetworkSample | None]:
        """Each pod's interface counters (None: no namespace of its own, or unreadable)."""
        readable = [p for p in pods if p.state == READY and p.netns]
        results = await read_each_netns_counters([p.netns for p in readable if p.netns])
        now = time.time_ns()
        found: dict[str, NetworkSample] = {}
        for pod, result in zip(readable, results, strict=True):
            if isinstance(result, NetStatsError):
                log.warning(
                    "network stats not read", extra={"sandbox_id": pod.id, "error": str(result)}
                )
                continue
            found[pod.id] = NetworkSample(now, tuple(result), default_interface(result))
        return [found.get(p.id) for p in pods]
