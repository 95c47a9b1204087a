"""skiffd's Prometheus metrics: every name, its help text and labels, and the calls
that move them.

One :class:`Metrics` per daemon, with its own registry rather than prometheus_client's
global one: two daemons in one process (tests) then never share or clash over a series,
and the endpoint shows exactly skiff's metrics plus the standard ``process_*`` ones.

Counters and histograms move when something happens (an RPC ends, a pull ends, a CNI
plugin or the OCI runtime returns, a container is OOM-killed). Object counts (images,
layers, pods and containers by state) are gauges read from the daemon's in-memory
indexes when Prometheus scrapes, so they cannot drift from what the daemon knows.
Collection runs on the event loop (see cri/metrics_server.py), the thread that changes
those indexes.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterable, Sequence
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from cri.errors import status_of
from image.store import ImageStore

PREFIX = "skiff"

# Without this every counter and histogram also gets a `<name>_created` gauge holding
# its creation time: twice the series in the text format, and nothing a dashboard uses.
# (A process-wide switch of prometheus_client; skiffd is its only user.)
disable_created_metrics()  # type: ignore[no-untyped-call]

# Most RPCs take milliseconds; PullImage and a slow stop take minutes.
RPC_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
)  # fmt: skip
# CNI plugins and OCI runtime calls: a few ms up to their timeouts (60 s and 30 s).
PROGRAM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
PULL_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)

# The states the managers use (cri/sandboxes.py, cri/containers.py): each gets a series,
# a zero included, so a dashboard's query has something to show. Any other state a
# manager reports shows up as well.
SANDBOX_STATES = ("ready", "notready")
CONTAINER_STATES = ("created", "running", "exited")


class _HasState(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def state(self) -> str: ...


class SandboxIndex(Protocol):
    """What the collector needs of cri.sandboxes.SandboxManager."""

    def select(self) -> Sequence[_HasState]: ...


class ContainerIndex(Protocol):
    """What the collector needs of cri.containers.ContainerManager."""

    def everything(self) -> Sequence[_HasState]: ...


def _name(short: str) -> str:
    return f"{PREFIX}_{short}"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        # skiffd's own CPU, memory and file descriptors (process_*, the usual names).
        ProcessCollector(registry=registry)
        self._rpcs = Counter(
            _name("grpc_requests_total"),
            "CRI calls handled, by method and gRPC status code.",
            ["method", "code"],
            registry=registry,
        )
        self._rpc_seconds = Histogram(
            _name("grpc_request_duration_seconds"),
            "Time to handle a CRI call, by method and gRPC status code.",
            ["method", "code"],
            buckets=RPC_BUCKETS,
            registry=registry,
        )
        self._pulls = Counter(
            _name("image_pulls_total"),
            "Image pulls finished, successful or not (a joined pull counts per call).",
            registry=registry,
        )
        self._pull_failures = Counter(
            _name("image_pull_failures_total"),
            "Image pulls that failed, by the gRPC status code the caller got.",
            ["code"],
            registry=registry,
        )
        self._pull_seconds = Histogram(
            _name("image_pull_duration_seconds"),
            "Time a successful image pull took.",
            buckets=PULL_BUCKETS,
            registry=registry,
        )
        self._pull_bytes = Counter(
            _name("image_pull_bytes_total"),
            "Bytes of image layers downloaded from registries (failed pulls' too; layers "
            "already stored are not downloaded again).",
            registry=registry,
        )
        self._oom_kills = Counter(
            _name("container_oom_kills_total"),
            "Containers that exited because the kernel's OOM killer ended them.",
            registry=registry,
        )
        self._cni_seconds = Histogram(
            _name("cni_plugin_duration_seconds"),
            "Time a CNI plugin ran, by plugin type and command (ADD, DEL, CHECK).",
            ["plugin", "command"],
            buckets=PROGRAM_BUCKETS,
            registry=registry,
        )
        self._cni_failures = Counter(
            _name("cni_plugin_failures_total"),
            "CNI plugin runs that failed or timed out, by plugin type and command.",
            ["plugin", "command"],
            registry=registry,
        )
        self._runtime_seconds = Histogram(
            _name("oci_runtime_duration_seconds"),
            "Time an OCI runtime call took, by runtime handler and verb (create is conmon "
            "starting the container, exec is the whole ExecSync command, exec_start a "
            "streaming Exec's command getting started).",
            ["handler", "verb"],
            buckets=PROGRAM_BUCKETS,
            registry=registry,
        )
        self._runtime_failures = Counter(
            _name("oci_runtime_failures_total"),
            "OCI runtime calls that failed (non-zero exit, timeout, could not run).",
            ["handler", "verb"],
            registry=registry,
        )

    # --- events ----------------------------------------------------------------------

    def record_rpc(self, method: str, code: str, seconds: float) -> None:
        self._rpcs.labels(method, code).inc()
        self._rpc_seconds.labels(method, code).observe(seconds)

    def record_pull(self, seconds: float) -> None:
        self._pulls.inc()
        self._pull_seconds.observe(seconds)

    def count_download(self, size_bytes: int) -> None:
        """image.pull's download observer; called from the download threads."""
        self._pull_bytes.inc(size_bytes)

    def record_pull_failure(self, error: BaseException) -> None:
        self._pulls.inc()
        self._pull_failures.labels(failure_code(error)).inc()

    def record_oom_kill(self) -> None:
        """A container exited OOMKilled; call once per container exit."""
        self._oom_kills.inc()

    def observe_cni(self, plugin: str, command: str, seconds: float, ok: bool) -> None:
        """network.cni.PluginObserver: one plugin run."""
        self._cni_seconds.labels(plugin, command).observe(seconds)
        if not ok:
            self._cni_failures.labels(plugin, command).inc()

    def observe_runtime(self, handler: str, verb: str, seconds: float, ok: bool) -> None:
        """runtime.oci_runtime.CallObserver: one runtime (or conmon) call."""
        self._runtime_seconds.labels(handler, verb).observe(seconds)
        if not ok:
            self._runtime_failures.labels(handler, verb).inc()

    # --- object counts, read at scrape time ----------------------------------------

    def watch(
        self, images: ImageStore, sandboxes: SandboxIndex, containers: ContainerIndex
    ) -> None:
        self.registry.register(ImageStoreCollector(images))
        self.registry.register(ObjectStateCollector(sandboxes, containers))

    def watch_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Count the daemon loop's asyncio tasks at each scrape: a count that keeps
        growing under a steady load is a task leak."""
        self.registry.register(EventLoopCollector(loop))


def failure_code(error: BaseException) -> str:
    """The gRPC status code name a failed call ends with (INTERNAL for a bug)."""
    if isinstance(error, asyncio.CancelledError):
        return "CANCELLED"
    code = status_of(error)
    return code.name if code is not None else "INTERNAL"


class ImageStoreCollector(Collector):
    def __init__(self, store: ImageStore) -> None:
        self.store = store

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return self._families()

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(_name("images_stored"), "Images in the image store."),
            GaugeMetricFamily(
                _name("layers_stored"),
                "Unpacked layers the stored images use (a shared layer counts once).",
            ),
            GaugeMetricFamily(
                _name("layers_stored_bytes"), "Bytes of the unpacked layers in the image store."
            ),
        )

    def collect(self) -> Iterable[GaugeMetricFamily]:
        images = self.store.images()
        layer_bytes, _ = self.store.usage()
        count, layers, size = self._families()
        count.add_metric([], len(images))
        layers.add_metric([], len({chain for image in images for chain in image.chain_ids}))
        size.add_metric([], layer_bytes)
        return (count, layers, size)


class ObjectStateCollector(Collector):
    """Pod sandboxes and containers by state, from the managers' in-memory indexes."""

    def __init__(self, sandboxes: SandboxIndex, containers: ContainerIndex) -> None:
        self.sandboxes = sandboxes
        self.containers = containers

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return self._families()

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                _name("pod_sandboxes"), "Pod sandboxes skiffd knows, by state.", labels=["state"]
            ),
            GaugeMetricFamily(
                _name("containers"), "Containers skiffd knows, by state.", labels=["state"]
            ),
        )

    def collect(self) -> Iterable[GaugeMetricFamily]:
        sandboxes = self.sandboxes.select()
        containers = self.containers.everything()
        pods, ctrs = self._families()
        _add_by_state(pods, SANDBOX_STATES, sandboxes)
        _add_by_state(ctrs, CONTAINER_STATES, containers)
        return (pods, ctrs)


class EventLoopCollector(Collector):
    """The tasks alive on the daemon's event loop (RPCs in flight, watchers, sessions)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return (self._family(),)

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            _name("asyncio_tasks"), "Tasks alive on skiffd's event loop, finished ones not."
        )

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = self._family()
        family.add_metric([], len(asyncio.all_tasks(self.loop)))
        return (family,)


def _add_by_state(
    family: GaugeMetricFamily, known: Sequence[str], objects: Iterable[_HasState]
) -> None:
    counts = collections.Counter({state: 0 for state in known})
    counts.update(o.state for o in objects)
    for state, count in sorted(counts.items()):
        family.add_metric([state], count)
