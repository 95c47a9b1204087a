"""The sandbox manager: pod sandboxes from RunPodSandbox to RemovePodSandbox.

A sandbox is a set of pinned namespaces (network, IPC, UTS), the pod's files
(resolv.conf, hosts, hostname), its /dev/shm, its place in the CNI network and
possibly a cgroup under the kubelet's cgroup parent. RunPodSandbox builds them in
order and, on any failure, takes back every step already done. Records live in the
state store; List and Status read memory only.

The kubelet gives up on a slow RunPodSandbox after its deadline and retries with the
same name: creation runs detached from the call that started it, a retry joins the
creation still running, and a result the first caller never received is handed to
the retry instead of answering "name is reserved".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import socket
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from base import directories, failpoints
from base.trees import remove_tree
from cri import events, pod_cgroups
from cri.creations import Creations
from cri.daemon_state import DaemonState
from cri.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, clip
from cri.request_checks import check_cgroup_parent, check_metadata_size, check_path_length
from cri.rollback import Rollback, remove_unrecorded
from cri.store import Record
from network.cni import CniError, CniPlugins, PodNetworkRequest, PortMapping
from network.cni_config import CniNetwork
from network.namespaces import (
    PinnedNamespaces,
    PinRequest,
    namespace_alive,
    pin_namespaces,
    unpin_namespaces,
    validate_sysctls,
)
from network.pod_files import DnsSettings, hosts_file, resolv_conf, write_file
from runtime.cgroups import CgroupError, Cgroupfs, CgroupResources
from runtime.mounts import mount_tmpfs, unmount
from runtime.pause import (
    PauseProcess,
    is_running,
    kill_pauses,
    kill_strays,
    running_pauses,
    start_pause,
    stop_pause,
)

log = logging.getLogger("skiff.sandbox")

READY = "ready"
NOTREADY = "notready"
#: In a pod's files directory: the cgroups RunPodSandbox is about to make (its own and
#: the missing ancestors, outermost first), one per line.
CGROUP_INTENT_FILE = "cgroup-made"


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


MAX_NAME = 253
# The kernel's limit (a utsname nodename). The kubelet sends an RFC 1123 label of up
# to 63, or with setHostnameAsFQDN the pod's FQDN, which it lets be 64 long.
MAX_HOSTNAME = 64
# The hostname is written into the pod's /etc/hosts and /etc/hostname: letters, digits,
# '-', '.' and '_' only, so no line break or blank can add an entry of its own.
_HOSTNAME = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?$")


def check_metadata_value(value: str, what: str, pod: str) -> None:
    """A pod's name, namespace or uid goes into CNI_ARGS (';'-separated key=value
    pairs) and into logs and events: no separators there, no control characters."""
    if any(c in ";=" or not c.isprintable() for c in value):
        raise InvalidArgument(
            f"pod {pod}: config.metadata.{what} {clip(value)!r} must not contain ';', '=' "
            "or control characters"
        )


def make_directory(path: Path, what: str) -> list[Path]:
    """Make ``path`` (and its parents); the directories made, for `remove_made`. A
    symlink to a directory is taken (log directories are moved to other disks so)."""
    if path.is_dir():
        return []
    try:
        return directories.make_directories(path)
    except NotADirectoryError:
        raise InvalidArgument(f"{what} exists and is not a directory") from None
    except OSError as exc:
        raise InvalidArgument(f"{what} cannot be made: {exc.strerror}") from None


@dataclass(frozen=True)
class SandboxSpec:
    """What RunPodSandbox asks for, as plain data."""

    name: str
    namespace: str
    uid: str
    attempt: int
    hostname: str = ""
    log_directory: str = ""
    dns: DnsSettings = field(default_factory=DnsSettings)
    port_mappings: tuple[PortMapping, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    runtime_handler: str = ""
    host_network: bool = False
    host_ipc: bool = False
    host_pid: bool = False
    pid_mode: str = "container"  # pod | container | node
    cgroup_parent: str = ""
    resources: CgroupResources | None = None
    sysctls: Mapping[str, str] = field(default_factory=dict)
    bandwidth: Mapping[str, int] | None = None
    config_json: Mapping[str, Any] = field(default_factory=dict)

    @property
    def reserved_name(self) -> str:
        """Unique per pod incarnation, as the kubelet builds sandbox names."""
        return f"{self.name}_{self.namespace}_{self.uid}_{self.attempt}"


@dataclass
class Sandbox:
    """A sandbox as stored (Record.data) and kept in memory."""

    id: str
    name: str
    namespace: str
    uid: str
    attempt: int
    state: str
    created_ns: int
    runtime_handler: str
    hostname: str
    log_directory: str
    labels: dict[str, str]
    annotations: dict[str, str]
    host_network: bool
    host_ipc: bool
    host_pid: bool
    pid_mode: str
    cgroup_parent: str
    cgroup_created: bool
    netns: str | None
    ipcns: str | None
    utsns: str | None
    ips: list[str]
    network_name: str
    files_dir: str
    shm_path: str | None
    port_mappings: list[dict[str, Any]]
    config: dict[str, Any]
    bandwidth: dict[str, int] | None = None
    # The init of the pod's shared PID namespace, when its containers share one.
    pause_pid: int = 0
    pause_start_time: int = 0
    # The ancestors of cgroup_parent this pod's creation made (outermost first): they go
    # with the pod when nothing else uses them.
    cgroup_ancestors: list[str] = field(default_factory=list)

    @property
    def pause(self) -> PauseProcess | None:
        return PauseProcess(self.pause_pid, self.pause_start_time) if self.pause_pid else None

    @property
    def reserved_name(self) -> str:
        return f"{self.name}_{self.namespace}_{self.uid}_{self.attempt}"

    @property
    def namespaces(self) -> PinnedNamespaces:
        return PinnedNamespaces(self.netns, self.ipcns, self.utsns)

    def to_record(self) -> Record:
        return Record("sandbox", self.id, self.reserved_name, self.created_ns, asdict(self))

    @classmethod
    def from_record(cls, record: Record) -> Sandbox:
        return cls(**record.data)

    def info_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


class PodMembers(Protocol):
    """What a pod's stop and removal do to the containers in it. Each call names it
    (the container manager is built on this one, so cannot be given to it first)."""

    async def stop_all(self, sandbox_id: str) -> None: ...

    async def remove_all(self, sandbox_id: str) -> None: ...


class SandboxManager:
    def __init__(self, state: DaemonState) -> None:
        self.state = state
        self.cgroups = Cgroupfs()
        self._locks: dict[str, asyncio.Lock] = {}
        self.creations = Creations("sandbox")
        self._sandboxes: dict[str, Sandbox] = {}
        self._releases: dict[str, asyncio.Task[None]] = {}
        # Pods a stop or removal is working on: no container may be created in them.
        self._stopping: set[str] = set()
        self._pause_locks: dict[str, asyncio.Lock] = {}
        # Pods' cgroups are made and deleted one pod at a time: the ancestors skiff
        # makes are shared, and the last pod using one removes it (or hands it to the
        # pods still below it).
        self._cgroup_tree = asyncio.Lock()
        # Ancestors made for pods (every pod's cgroup_ancestors, and those of pods
        # still being made, not yet listed), until one is removed.
        self._parents_made: set[str] = set()
        # Pods whose cgroups are deleted: their removal is under way.
        self._cgroups_deleted: set[str] = set()

    @property
    def config(self) -> Any:
        return self.state.config

    @property
    def runroot(self) -> Path:
        return Path(self.state.config.runroot)

    def cni(self) -> CniPlugins:
        net = self.state.config.network
        return CniPlugins(
            net.cni_plugin_dirs,
            Path(self.state.config.root) / "cni-cache",
            timeout=net.cni_plugin_timeout,
            observer=self.state.metrics.observe_cni,
        )

    def _lock(self, sandbox_id: str) -> asyncio.Lock:
        return self._locks.setdefault(sandbox_id, asyncio.Lock())

    # --- start-up reconciliation ---------------------------------------------------

    async def load(self) -> None:
        """Take the stored records; a pod whose network namespace vanished while
        skiffd was down (a reboot, someone's cleanup) is not ready any more."""
        pauses = await asyncio.to_thread(running_pauses)
        for record in self.state.store.records("sandbox"):
            sandbox = Sandbox.from_record(record)
            self._sandboxes[sandbox.id] = sandbox
            self._parents_made.update(sandbox.cgroup_ancestors)
            strays = [p for p in pauses.get(sandbox.id, []) if p != sandbox.pause]
            if strays:
                # Started by a CreateContainer cut short before it recorded the pause:
                # no recorded container uses its PID namespace.
                killed = await kill_pauses(sandbox.id, strays)
                log.warning(
                    "killed a pause process the record does not know",
                    extra={"sandbox_id": sandbox.id, "pids": killed},
                )
            if sandbox.state == READY and sandbox.netns and not namespace_alive(sandbox.netns):
                log.warning(
                    "sandbox lost its network namespace while skiffd was down",
                    extra={"sandbox_id": sandbox.id},
                )
                sandbox.state = NOTREADY
                await self.state.store.update(sandbox.to_record())
            if sandbox.state == NOTREADY and sandbox.network_name:
                # A StopPodSandbox cut short by skiffd's death: finish its CNI DEL.
                log.warning(
                    "finishing the network teardown of a stop cut short",
                    extra={"sandbox_id": sandbox.id},
                )
                await self._release_network(sandbox)
        unfinished = await asyncio.to_thread(self.cni().remove_unfinished_writes)
        if unfinished:
            log.warning("removed unfinished CNI cache writes", extra={"files": unfinished})
        await self._remove_unrecorded()

    async def _remove_unrecorded(self) -> None:
        """A RunPodSandbox cut short by skiffd's death (kill -9, a crash) leaves what it
        had made but no record: its pod files and /dev/shm, namespace pins, the CNI
        attachment (an IP, a veth, port mappings), a cgroup of ours. No client knows the
        id; it all goes, once, at start. The pod's files directory, made first, marks it."""
        await remove_unrecorded(
            self.runroot / "sandboxes", self._sandboxes, self._remove_leftovers, "sandbox_id"
        )

    async def _remove_leftovers(self, files_dir: Path) -> None:
        sandbox_id = files_dir.name
        pins = [self.runroot / "ns" / kind / sandbox_id for kind in ("net", "ipc", "uts")]
        net, ipc, uts = (str(pin) if pin.exists() else None for pin in pins)
        # The CNI cache holds what ADD set up, so DEL needs no more than the id.
        request = PodNetworkRequest(
            container_id=sandbox_id,
            netns=net if net and namespace_alive(net) else "",
            pod_namespace="",
            pod_name="",
            pod_uid="",
        )
        await self.cni().delete(None, request)
        await unpin_namespaces(PinnedNamespaces(net, ipc, uts))
        await kill_strays(sandbox_id)
        await asyncio.to_thread(unmount, files_dir / "shm")
        # Only cgroups of skiff's own making (named before they were made): one that was
        # there already is the kubelet's.
        intent = await asyncio.to_thread(_read_text, files_dir / CGROUP_INTENT_FILE)
        made = intent.split() if intent else [pod_cgroups.default_parent(sandbox_id)]
        await asyncio.to_thread(remove_tree, files_dir)
        await self._delete_cgroups(made[-1], made[:-1], sandbox_id)

    # --- reads -----------------------------------------------------------------------

    def get(self, id_or_prefix: str) -> Sandbox:
        record = self.state.store.resolve("sandbox", id_or_prefix)
        return self._sandboxes[record.id]

    def by_id(self, sandbox_id: str) -> Sandbox | None:
        """Exact id, from memory only: also during removal, after the record is gone."""
        return self._sandboxes.get(sandbox_id)

    def find(self, id_or_prefix: str) -> Sandbox | None:
        try:
            return self.get(id_or_prefix)
        except NotFound:
            return None

    def select(
        self, id_prefix: str = "", state: str | None = None, labels: Mapping[str, str] | None = None
    ) -> list[Sandbox]:
        out = []
        for sandbox in self._sandboxes.values():
            if id_prefix and not sandbox.id.startswith(id_prefix):
                continue
            if state is not None and sandbox.state != state:
                continue
            if labels and any(sandbox.labels.get(k) != v for k, v in labels.items()):
                continue
            out.append(sandbox)
        return sorted(out, key=lambda s: s.created_ns)

    # --- run -------------------------------------------------------------------------

    def validate(self, spec: SandboxSpec) -> None:
        if not spec.name:
            raise InvalidArgument("config.metadata.name must not be empty")
        if not spec.namespace:
            raise InvalidArgument(f"pod {spec.name!r}: config.metadata.namespace must not be empty")
        if not spec.uid:
            raise InvalidArgument(f"pod {spec.name!r}: config.metadata.uid must not be empty")
        if len(spec.reserved_name) > MAX_NAME * 2:
            raise InvalidArgument(f"pod {clip(spec.name)!r}: name, namespace and uid are too long")
        pod = f"{spec.name!r} in namespace {spec.namespace!r}"
        check_metadata_value(spec.name, "name", pod)
        check_metadata_value(spec.namespace, "namespace", pod)
        check_metadata_value(spec.uid, "uid", pod)
        check_metadata_size(spec.labels, spec.annotations, f"pod {pod}")
        handler = spec.runtime_handler or self.config.runtime.default_handler
        if handler not in self.config.runtime.handlers:
            raise InvalidArgument(
                f"pod {spec.name!r}: runtime handler {handler!r} is not configured "
                f"(configured: {', '.join(sorted(self.config.runtime.handlers))})"
            )
        if len(spec.hostname.encode()) > MAX_HOSTNAME:
            raise InvalidArgument(
                f"pod {pod}: hostname {spec.hostname[:20]!r}... is longer than {MAX_HOSTNAME} bytes"
            )
        if spec.hostname and not _HOSTNAME.match(spec.hostname):
            raise InvalidArgument(
                f"pod {pod}: hostname {spec.hostname!r} may hold only letters, digits, "
                "'-', '.' and '_' (and must not start or end with '-' or '.')"
            )
        if spec.log_directory and (
            not spec.log_directory.startswith("/")
            or "\0" in spec.log_directory
            or ":" in spec.log_directory
        ):
            raise InvalidArgument(
                f"pod {pod}: log_directory {clip(spec.log_directory)!r} must be an absolute "
                "path (without NUL bytes or ':')"
            )
        check_path_length(spec.log_directory, f"pod {pod}: log_directory")
        check_cgroup_parent(spec.cgroup_parent, f"pod {pod}")
        validate_sysctls(spec.sysctls, spec.host_network, spec.host_ipc)

    async def run(self, spec: SandboxSpec) -> str:
        self.validate(spec)
        name = spec.reserved_name

        def taken() -> Exception | None:
            existing = self.state.store.get_by_name("sandbox", name)
            if existing is None:
                return None
            return AlreadyExists(
                f"pod sandbox name {name!r} is reserved by sandbox {existing.id}; "
                "remove it first or use a new attempt number"
            )

        return await self.creations.run(
            name, lambda: self._create(spec), alive=self._sandboxes.__contains__, taken=taken
        )

    async def _create(self, spec: SandboxSpec) -> str:
        sandbox_id = secrets.token_hex(32)
        started = time.monotonic()
        undo = Rollback(sandbox_id=sandbox_id)
        files_dir = self.runroot / "sandboxes" / sandbox_id
        sandbox = Sandbox(
            id=sandbox_id,
            name=spec.name,
            namespace=spec.namespace,
            uid=spec.uid,
            attempt=spec.attempt,
            state=READY,
            created_ns=time.time_ns(),
            runtime_handler=spec.runtime_handler,
            hostname=spec.hostname
            or (socket.gethostname() if spec.host_network else sandbox_id[:12]),
            log_directory=spec.log_directory,
            labels=dict(spec.labels),
            annotations=dict(spec.annotations),
            host_network=spec.host_network,
            host_ipc=spec.host_ipc,
            host_pid=spec.host_pid,
            pid_mode=spec.pid_mode,
            cgroup_parent=spec.cgroup_parent,
            cgroup_created=False,
            netns=None,
            ipcns=None,
            utsns=None,
            ips=[],
            network_name="",
            files_dir=str(files_dir),
            shm_path=None,
            port_mappings=[asdict(p) for p in spec.port_mappings],
            config=dict(spec.config_json),
            bandwidth=dict(spec.bandwidth) if spec.bandwidth else None,
        )
        try:
            await self._build(spec, sandbox, undo)
            await self.state.store.add(sandbox.to_record())
        except BaseException:
            await undo.run()
            self._cgroups_deleted.discard(sandbox_id)
            raise
        self._sandboxes[sandbox_id] = sandbox
        # As for a pod's infra container: the kubelet's evented PLEG keys on these.
        self.state.events.publish(events.CREATED, sandbox_id, sandbox_id)
        self.state.events.publish(events.STARTED, sandbox_id, sandbox_id)
        log.info(
            "sandbox ready",
            extra={
                "sandbox_id": sandbox_id,
                "pod": spec.reserved_name,
                "ips": sandbox.ips,
                "duration_ms": round((time.monotonic() - started) * 1000, 1),
            },
        )
        return sandbox_id

    async def _build(self, spec: SandboxSpec, sandbox: Sandbox, undo: Rollback) -> None:
        """Make the pod, each step pushed on `undo`."""
        network = None if spec.host_network else self._ready_network()
        if spec.log_directory:
            # The kubelet normally made it already; containers' logs go there.
            await self._make_log_directory(spec, undo)
        files_dir = Path(sandbox.files_dir)
        await asyncio.to_thread(files_dir.mkdir, 0o755, True)
        failpoints.step("directory-make")
        undo.push("files", lambda: asyncio.to_thread(remove_tree, files_dir))
        await self._make_cgroup(spec, sandbox, undo)
        pinned = await pin_namespaces(
            PinRequest(
                sandbox_id=sandbox.id,
                pin_dir=self.runroot / "ns",
                net=not spec.host_network,
                ipc=not spec.host_ipc,
                uts=not spec.host_network,
                hostname=sandbox.hostname,
                sysctls=spec.sysctls,
            )
        )
        sandbox.netns, sandbox.ipcns, sandbox.utsns = pinned.net, pinned.ipc, pinned.uts
        undo.push("namespaces", lambda: unpin_namespaces(pinned))
        if not spec.host_ipc:
            shm = files_dir / "shm"
            await asyncio.to_thread(mount_tmpfs, shm, self.config.runtime.pod_shm_size)
            sandbox.shm_path = str(shm)
            undo.push("shm", lambda: asyncio.to_thread(unmount, shm))
        await asyncio.to_thread(write_file, files_dir / "resolv.conf", resolv_conf(spec.dns))
        await asyncio.to_thread(write_file, files_dir / "hostname", sandbox.hostname + "\n")
        if network is not None and pinned.net is not None:
            await self._add_network(network, sandbox, undo)
        hosts = hosts_file(sandbox.hostname, sandbox.ips, spec.host_network)
        await asyncio.to_thread(write_file, files_dir / "hosts", hosts)

    def _ready_network(self) -> CniNetwork:
        readiness = self.state.cni.readiness()
        if readiness.network is None:
            raise FailedPrecondition(f"the pod network is not ready: {readiness.message}")
        return readiness.network

    async def _make_cgroup(self, spec: SandboxSpec, sandbox: Sandbox, undo: Rollback) -> None:
        """Every pod gets a cgroup: the kubelet's, or one of ours under
        pod_cgroups.DEFAULT_ROOT."""
        sandbox.cgroup_parent = spec.cgroup_parent or pod_cgroups.default_parent(sandbox.id)
        async with self._cgroup_tree:
            missing = await asyncio.to_thread(self._missing_cgroups, sandbox.cgroup_parent)
            if missing:
                # Named before they are made: a skiffd that dies before the record is
                # written removes them at start (`_remove_leftovers`), wherever they are.
                intent = "".join(f"{p}\n" for p in missing)
                await asyncio.to_thread(
                    write_file, Path(sandbox.files_dir) / CGROUP_INTENT_FILE, intent
                )
            created = await asyncio.to_thread(
                self.cgroups.create, sandbox.cgroup_parent, spec.resources
            )
            sandbox.cgroup_created = created
            sandbox.cgroup_ancestors = self._ancestors_of_ours(sandbox.cgroup_parent, missing)
            self._parents_made.update(sandbox.cgroup_ancestors)
        if created:
            undo.push("cgroup", lambda: self._delete_cgroup(sandbox))

    async def _add_network(self, network: CniNetwork, sandbox: Sandbox, undo: Rollback) -> None:
        request = self._network_request(sandbox)
        cni = self.cni()
        try:
            result = await cni.add(network, request)
        except CniError as exc:
            raise exc.naming(_pod_named(sandbox)) from None
        sandbox.ips = list(result.ips)
        sandbox.network_name = network.name
        undo.push("network", lambda: cni.delete(network, request))

    async def _make_log_directory(self, spec: SandboxSpec, undo: Rollback) -> None:
        """The pod's log directory, made if missing; a failed run takes back the
        directories it made (if they are still empty)."""
        what = f"pod {spec.name!r}: log_directory {clip(spec.log_directory)!r}"
        made = await asyncio.to_thread(make_directory, Path(spec.log_directory), what)
        undo.push("log directory", lambda: asyncio.to_thread(directories.remove_made, made))

    def _network_request(self, sandbox: Sandbox) -> PodNetworkRequest:
        pod_cidr = self.state.store.setting("pod_cidr") or ""
        ranges = tuple((c.strip(),) for c in pod_cidr.split(",") if c.strip())
        return PodNetworkRequest(
            container_id=sandbox.id,
            netns=sandbox.netns or "",
            pod_namespace=sandbox.namespace,
            pod_name=sandbox.name,
            pod_uid=sandbox.uid,
            port_mappings=tuple(PortMapping(**p) for p in sandbox.port_mappings),
            ip_ranges=ranges,
            bandwidth=sandbox.bandwidth,
        )

    async def shared_pid_namespace(self, sandbox: Sandbox) -> str:
        """The pod's PID namespace, for containers that share it; its init (a pause
        process of ours) starts with the first such container. Not under the pod's
        lock: a stopping pod holds that while it waits for the creates in progress."""
        async with self._pause_locks.setdefault(sandbox.id, asyncio.Lock()):
            pause = sandbox.pause
            if pause is not None and is_running(pause):
                return pause.pid_namespace
            if sandbox.state != READY:
                raise FailedPrecondition(f"pod sandbox {sandbox.id} is not ready")
            pause = await start_pause(sandbox.id)
            sandbox.pause_pid, sandbox.pause_start_time = pause.pid, pause.start_time
            pause_cgroup = pod_cgroups.pause(sandbox.cgroup_parent)
            try:
                await asyncio.to_thread(self.cgroups.create, pause_cgroup)
                await asyncio.to_thread(self.cgroups.attach, pause_cgroup, pause.pid)
                await self.state.store.update(sandbox.to_record())
            except BaseException:
                await stop_pause(pause)
                sandbox.pause_pid = sandbox.pause_start_time = 0
                with contextlib.suppress(CgroupError):
                    await asyncio.to_thread(self.cgroups.delete, pause_cgroup)
                raise
            log.info(
                "pod PID namespace started", extra={"sandbox_id": sandbox.id, "pid": pause.pid}
            )
            return pause.pid_namespace

    def _missing_cgroups(self, path: str) -> list[str]:
        """`path` and those of its ancestors that are not there yet, outermost first."""
        return [cgroup for cgroup in pod_cgroups.chain(path) if not self.cgroups.exists(cgroup)]

    def _ancestors_of_ours(self, path: str, missing: list[str]) -> list[str]:
        """The ancestors of `path` that skiff made: now, or for a pod still here (the
        last pod to go takes an ancestor its pods share)."""
        ours = set(missing) | self._parents_made
        return [a for a in pod_cgroups.chain(path)[:-1] if a in ours]

    async def _delete_cgroup(self, sandbox: Sandbox) -> None:
        async with self._cgroup_tree:
            await self._delete_cgroups(sandbox.cgroup_parent, sandbox.cgroup_ancestors, sandbox.id)
            self._cgroups_deleted.add(sandbox.id)

    async def _delete_cgroups(self, cgroup: str, ancestors: list[str], sandbox_id: str) -> None:
        """The pod's cgroup, then the ancestors made for it that nothing else uses now."""
        await asyncio.to_thread(self.cgroups.delete, cgroup)
        if cgroup == pod_cgroups.default_parent(sandbox_id):
            ancestors = [pod_cgroups.DEFAULT_ROOT]  # shared by pods: it goes with the last one
        for depth in range(len(ancestors) - 1, -1, -1):
            removed = await asyncio.to_thread(self.cgroups.remove_if_unused, ancestors[depth])
            if removed:
                self._parents_made.discard(ancestors[depth])
            else:
                # Another pod's cgroup keeps it, and so every one above it: the pods
                # below take them over, to go with the last of them (a pod cut short by
                # skiffd's death made them, and no record said so).
                await self._hand_over(ancestors[: depth + 1], sandbox_id)
                break

    async def _hand_over(self, kept: list[str], leaving: str) -> None:
        # A snapshot: pods come and go while a record update is awaited. A pod whose
        # cgroups are gone already is going too (its record may be gone next).
        for pod in list(self._sandboxes.values()):
            if pod.id in self._cgroups_deleted:
                continue
            chain = pod_cgroups.chain(pod.cgroup_parent)[:-1]
            owned = set(pod.cgroup_ancestors) | {a for a in kept if a in chain}
            if pod.id != leaving and owned != set(pod.cgroup_ancestors):
                pod.cgroup_ancestors = [a for a in chain if a in owned]
                self._parents_made.update(pod.cgroup_ancestors)
                await self.state.store.update(pod.to_record())

    async def update_resources(
        self,
        id_or_prefix: str,
        resources: Mapping[str, Any] | None,
        overhead: Mapping[str, Any] | None,
    ) -> None:
        """Records the pod-level resources the kubelet resized the pod to. The kubelet
        has already changed the pod cgroup itself; the runtime keeps its copy of the
        pod's config current (verbose status shows it)."""
        sandbox = self.get(id_or_prefix)
        async with self._lock(sandbox.id):
            linux = dict(sandbox.config.get("linux") or {})
            for key, value in (("resources", resources), ("overhead", overhead)):
                if value is None:
                    linux.pop(key, None)
                else:
                    linux[key] = dict(value)
            sandbox.config = {**sandbox.config, "linux": linux}
            await self.state.store.update(sandbox.to_record())
        log.info("sandbox resources updated", extra={"sandbox_id": sandbox.id})

    # --- stop and remove ---------------------------------------------------------

    def is_stopping(self, sandbox_id: str) -> bool:
        return sandbox_id in self._stopping

    async def stop(self, id_or_prefix: str, members: PodMembers) -> None:
        sandbox = self.find(id_or_prefix)
        if sandbox is None:
            return  # CRI: stopping what is not there is fine
        async with self._lock(sandbox.id):
            await self._stop_locked(sandbox, members)

    async def _stop_locked(self, sandbox: Sandbox, members: PodMembers) -> None:
        self._stopping.add(sandbox.id)
        try:
            await members.stop_all(sandbox.id)
            await self._stop_pod(sandbox)
        finally:
            self._stopping.discard(sandbox.id)

    async def _stop_pod(self, sandbox: Sandbox) -> None:
        pause = sandbox.pause
        if pause is not None:
            await stop_pause(pause)
            await asyncio.to_thread(self.cgroups.delete, pod_cgroups.pause(sandbox.cgroup_parent))
            sandbox.pause_pid = sandbox.pause_start_time = 0
            await self.state.store.update(sandbox.to_record())
        # NOTREADY is recorded before the network goes: a skiffd that dies during the
        # DEL comes back to a pod that is not ready, and finishes the DEL (`load`).
        await self._mark_not_ready(sandbox)
        if sandbox.network_name:
            await self._release_network(sandbox)

    async def _mark_not_ready(self, sandbox: Sandbox) -> None:
        if sandbox.state == NOTREADY:
            return
        sandbox.state = NOTREADY
        await self.state.store.update(sandbox.to_record())
        self.state.events.publish(events.STOPPED, sandbox.id, sandbox.id)
        log.info("sandbox stopped", extra={"sandbox_id": sandbox.id})

    async def _release_network(self, sandbox: Sandbox) -> None:
        """The CNI DEL of a stopping pod, run to its end whatever its caller does: a
        deadline or a client that goes away does not kill the plugin halfway (which
        left the pod's iptables rules), and a retry waits for the same DEL."""
        task = self._releases.get(sandbox.id)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._del_network(sandbox))
            self._releases[sandbox.id] = task
            task.add_done_callback(lambda done: self._released(sandbox.id, done))
        await asyncio.shield(task)

    def _released(self, sandbox_id: str, task: asyncio.Task[None]) -> None:
        self._releases.pop(sandbox_id, None)
        if not task.cancelled() and task.exception() is not None:
            # Its caller has the error, or had gone: then the next stop tries again.
            log.warning(
                "pod network teardown failed",
                extra={"sandbox_id": sandbox_id, "error": str(task.exception())},
            )

    async def _del_network(self, sandbox: Sandbox) -> None:
        request = self._network_request(sandbox)
        if sandbox.netns and not namespace_alive(sandbox.netns):
            request = replace(request, netns="")
        try:
            await self.cni().delete(None, request)
        except CniError as exc:
            raise exc.naming(_pod_named(sandbox)) from None
        sandbox.network_name = ""
        sandbox.ips = []
        await self.state.store.update(sandbox.to_record())

    async def remove(self, id_or_prefix: str, members: PodMembers) -> None:
        sandbox = self.find(id_or_prefix)
        if sandbox is None:
            return
        async with self._lock(sandbox.id):
            await self._stop_locked(sandbox, members)
            # NOTREADY now: no container can be created in it any more.
            await members.remove_all(sandbox.id)
            if sandbox.shm_path:
                await asyncio.to_thread(unmount, Path(sandbox.shm_path))
            await unpin_namespaces(sandbox.namespaces)
            await asyncio.to_thread(remove_tree, sandbox.files_dir)
            if sandbox.cgroup_created and sandbox.cgroup_parent:
                await self._delete_cgroup(sandbox)
            await self.state.store.remove("sandbox", sandbox.id)
            # Published while the sandbox is still known, so the event can describe it.
            self.state.events.publish(events.DELETED, sandbox.id, sandbox.id)
            self._sandboxes.pop(sandbox.id, None)
        self._locks.pop(sandbox.id, None)
        self._pause_locks.pop(sandbox.id, None)
        self._cgroups_deleted.discard(sandbox.id)
        self.creations.forget(sandbox.id)
        log.info("sandbox removed", extra={"sandbox_id": sandbox.id})


def _pod_named(sandbox: Sandbox) -> str:
    return f"pod {sandbox.namespace}/{sandbox.name} (sandbox {sandbox.id})"
