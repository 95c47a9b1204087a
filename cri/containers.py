"""The container manager: containers from CreateContainer to RemoveContainer.

CreateContainer mounts the image's layers as the container's root filesystem, resolves
its user, writes an OCI bundle and has conmon run `<runtime> create`; any failure takes
back the steps already done. conmon stays with the container, so containers keep
running while skiffd restarts; their exits are read from conmon's exit files whenever
a status is asked for, and on start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import posixpath
import secrets
import signal
import stat
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from base import failpoints
from base.files import write_atomic
from base.trees import remove_tree
from cri import events, pod_cgroups
from cri.creations import Creations
from cri.daemon_state import DaemonState
from cri.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    clip,
)
from cri.request_checks import check_argv, check_metadata_size, check_path_length
from cri.rollback import Rollback, remove_unrecorded
from cri.runtime_status import supports_recursive_read_only
from cri.sandboxes import READY, Sandbox, SandboxManager, make_directory, remove_if_empty
from cri.store import Record
from image.store import ImageRecord
from runtime.cgroups import CgroupError, CgroupResources
from runtime.container_spec import (
    HOST,
    NEW,
    ContainerSpec,
    DeviceSpec,
    MountSpec,
    SecuritySpec,
    UserSpec,
)
from runtime.exit_watch import ExitWatcher, ExitWatchError
from runtime.mounts import propagation_of
from runtime.oci_runtime import ExitStatus, OciRuntime, OciRuntimeError, RuntimeHandlerPaths
from runtime.oci_spec import HostFacts, build_spec, host_facts
from runtime.programs import find_program
from runtime.rootfs import mount_rootfs, unmount_rootfs
from runtime.users import resolve_user

log = logging.getLogger("skiff.container")

CREATED = "created"
RUNNING = "running"
EXITED = "exited"
# How long a removal waits for a dead conmon to leave its cgroup.
_CGROUP_DRAIN_SECONDS = 5.0
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# ExecSync keeps this much of each of stdout and stderr: both together must fit in one
# response of at most 16 MiB (cri.daemon.MAX_MESSAGE_BYTES, the kubelet's limit too).
EXEC_SYNC_MAX_OUTPUT = 8 * 1024 * 1024 - 64 * 1024
# The longest container name taken (Kubernetes allows 63; a DNS name's limit).
MAX_NAME = 253


@dataclass(frozen=True)
class CriMount:
    container_path: str
    host_path: str
    readonly: bool = False
    propagation: str = "private"  # private | slave | shared
    # Read-only all the way down: submounts of the host path too (needs readonly and
    # private propagation).
    recursive_read_only: bool = False
    # An image volume: the image's files (or a directory of them), read-only.
    image: str = ""
    image_sub_path: str = ""
    # Once an image volume is mounted (`image` cleared): the image as the request named
    # it and its id, for ContainerStatus.
    volume_image: str = ""
    volume_image_id: str = ""


@dataclass(frozen=True)
class ContainerRequest:
    """What CreateContainer asks for, as plain data."""

    sandbox_id: str
    name: str
    attempt: int
    image: str
    # The image as the pod names it (the kubelet sends the image id in `image`).
    user_specified_image: str = ""
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    working_dir: str = ""
    envs: tuple[tuple[str, str], ...] = ()
    mounts: tuple[CriMount, ...] = ()
    devices: tuple[DeviceSpec, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    log_path: str = ""
    stdin: bool = False
    stdin_once: bool = False
    tty: bool = False
    resources: CgroupResources | None = None
    oom_score_adj: int | None = None
    security: SecuritySpec = field(default_factory=SecuritySpec)
    run_as_user: int | None = None
    run_as_username: str = ""
    run_as_group: int | None = None
    supplemental_groups: tuple[int, ...] = ()
    strict_supplemental_groups: bool = False
    pid_mode: str = "container"  # container | pod | node | target
    pid_target: str = ""
    apparmor_localhost: str = ""
    stop_signal: int = 0
    config_json: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Container:
    """A container as stored (Record.data) and kept in memory."""

    id: str
    sandbox_id: str
    name: str
    attempt: int
    image: str
    image_id: str
    image_ref: str
    state: str
    created_ns: int
    started_ns: int
    finished_ns: int
    exit_code: int
    reason: str
    message: str
    labels: dict[str, str]
    annotations: dict[str, str]
    log_path: str
    runtime_handler: str
    container_dir: str
    mounts: list[dict[str, Any]]
    uid: int
    gid: int
    groups: list[int]
    resources: dict[str, Any] | None
    stop_signal: int
    pid: int
    tty: bool
    stdin: bool
    config: dict[str, Any]
    # Images mounted as volumes (CRI image volumes), by id.
    volume_image_ids: list[str] = field(default_factory=list)
    # The cgroup of the container's conmon, under the pod's ("" when it has none).
    conmon_cgroup: str = ""
    # The image's name as ContainerStatus shows it: the name the pod used, when it is
    # one of the image's, else the image's first repo tag ("" before this was kept).
    image_name: str = ""

    @property
    def reserved_name(self) -> str:
        return f"{self.sandbox_id}/{self.name}/{self.attempt}"

    @property
    def bundle(self) -> Path:
        return Path(self.container_dir) / "bundle"

    def to_record(self) -> Record:
        return Record("container", self.id, self.reserved_name, self.created_ns, asdict(self))

    @classmethod
    def from_record(cls, record: Record) -> Container:
        return cls(**record.data)


def merge_command(
    command: tuple[str, ...], args: tuple[str, ...], image_config: Mapping[str, Any]
) -> list[str]:
    """The process the kubelet means: command replaces the image's Entrypoint (and then
    its Cmd is dropped), args replace the image's Cmd."""
    entrypoint = list(image_config.get("Entrypoint") or [])
    cmd = list(image_config.get("Cmd") or [])
    if command:
        return [*command, *args]
    return [*entrypoint, *(args or cmd)]


def merge_env(image_env: list[str], envs: tuple[tuple[str, str], ...]) -> list[str]:
    merged: dict[str, str] = {}
    for item in image_env:
        key, _, value = item.partition("=")
        merged[key] = value
    for key, value in envs:
        merged[key] = value
    return [f"{k}={v}" for k, v in merged.items()]


class ContainerManager:
    def __init__(self, state: DaemonState, sandboxes: SandboxManager) -> None:
        self.state = state
        self.sandboxes = sandboxes
        self.creations = Creations("container")
        self._containers: dict[str, Container] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._host: HostFacts | None = None
        self._runtimes: dict[str, OciRuntime] = {}
        self._runtimes_for: object = None
        self._exits = ExitWatcher(self._on_exit_file, self._check_all)
        self._exit_tasks: set[asyncio.Task[None]] = set()

    # --- wiring ------------------------------------------------------------------------

    def host(self) -> HostFacts:
        if self._host is None:
            self._host = host_facts(self.state.config.runtime.restrict_oom_score_adj)
            if self._host.min_oom_score_adj is not None:
                log.info(
                    "oom_score_adj below skiffd's own is raised to it (restrict_oom_score_adj)",
                    extra={"min_oom_score_adj": self._host.min_oom_score_adj},
                )
        return self._host

    def runtime(self, handler: str) -> OciRuntime:
        config = self.state.config.runtime
        name = handler or config.default_handler
        if self._runtimes_for is not config:
            # A reloaded config may name other programs: look them up again.
            self._runtimes, self._runtimes_for = {}, config
        cached = self._runtimes.get(name)
        if cached is not None:
            return cached
        runtime = self._make_runtime(name)
        self._runtimes[name] = runtime
        return runtime

    def _make_runtime(self, name: str) -> OciRuntime:
        config = self.state.config.runtime
        path = find_program(config.handlers[name].path)
        if path is None:
            raise FailedPrecondition(
                f"OCI runtime {config.handlers[name].path!r} of handler {name!r} is not installed"
            )
        conmon = find_program(config.conmon)
        if conmon is None:
            raise FailedPrecondition(f"conmon ({config.conmon!r}) is not installed")
        runroot = Path(self.state.config.runroot)
        return OciRuntime(
            RuntimeHandlerPaths(name, path, str(runroot / "runtimes" / name)),
            conmon,
            runroot / "containers",
            timeout=config.command_timeout,
            observer=self.state.metrics.observe_runtime,
        )

    def _lock(self, container_id: str) -> asyncio.Lock:
        return self._locks.setdefault(container_id, asyncio.Lock())

    def images_in_use(self) -> set[str]:
        used = {c.image_id for c in self._containers.values()}
        for container in self._containers.values():
            used.update(container.volume_image_ids)
        return used

    # --- start-up ------------------------------------------------------------------------

    async def load(self) -> None:
        for record in self.state.store.records("container"):
            container = Container.from_record(record)
            self._containers[container.id] = container
            if container.state == CREATED and container.started_ns:
                await self._reconcile_start(container)
            await self._refresh(container)
        await self._remove_unrecorded()

    async def _reconcile_start(self, container: Container) -> None:
        """A StartContainer cut short by skiffd's death: the runtime says whether the
        start happened. Running (or run and gone): the container is RUNNING as of the
        recorded start, and an exit conmon recorded meanwhile is taken in next; never
        started: it stays CREATED, for the kubelet's retry."""
        runtime = self.runtime(container.runtime_handler)
        state = await runtime.state(container.id)
        status = str((state or {}).get("status", ""))
        if status == "created":
            container.started_ns = 0
        elif status in ("running", "paused", "stopped"):
            container.state = RUNNING
        else:
            # The runtime lost it: nothing runs, and nothing ever will.
            container.state = EXITED
            container.exit_code = 128
            container.reason = "Error"
            container.message = (
                f"skiffd stopped while starting it; the runtime has {status or 'no such container'}"
            )
            container.finished_ns = time.time_ns()
        await self.state.store.update(container.to_record())
        log.warning(
            "start cut short by skiffd's death reconciled",
            extra={
                "container_id": container.id,
                "runtime_state": status or "none",
                "state": container.state,
            },
        )

    async def _remove_unrecorded(self) -> None:
        """A CreateContainer cut short by skiffd's death (kill -9, a crash) leaves what it
        had made but no record: its overlay, its runtime container and conmon, conmon's
        cgroup, its directory. No client knows the id; it all goes, once, at start."""
        containers_dir = Path(self.state.config.root) / "containers"
        await remove_unrecorded(
            containers_dir, self._containers, self._remove_leftovers, "container_id"
        )

    async def _remove_leftovers(self, container_dir: Path) -> None:
        container_id = container_dir.name
        handlers = self.state.config.runtime.handlers
        for name in sorted(handlers, key=lambda h: h != self.state.config.runtime.default_handler):
            with contextlib.suppress(FailedPrecondition):  # a handler not installed
                await self.runtime(name).delete(container_id)
        for sandbox in self.sandboxes.select():
            # Deleting takes what is there: a conmon cgroup cut short may exist in only
            # some of the v1 hierarchies.
            await self._delete_conmon_cgroup(
                pod_cgroups.conmon(sandbox.cgroup_parent, container_id)
            )
        await asyncio.to_thread(_unmount_volumes, container_dir)
        await asyncio.to_thread(unmount_rootfs, container_dir / "rootfs")
        await asyncio.to_thread(remove_tree, container_dir)

    def start_watching(self) -> None:
        """Notice exits as conmon records them, so List reads memory only."""
        self._exits.start()
        for container in list(self._containers.values()):
            if container.state == RUNNING:
                self._watch_exit(container)

    def stop_watching(self) -> None:
        self._exits.close()
        for task in list(self._exit_tasks):
            task.cancel()

    def _watch_exit(self, container: Container) -> None:
        runtime = self.runtime(container.runtime_handler)
        try:
            self._exits.watch(container.id, runtime.state_path(container.id))
        except ExitWatchError as exc:
            # Its exit is still seen on the next status or stop call.
            log.warning(
                "cannot watch for the container's exit",
                extra={"container_id": container.id, "error": str(exc)},
            )

    def _on_exit_file(self, container_id: str) -> None:
        container = self._containers.get(container_id)
        if container is None:
            return
        task = asyncio.get_running_loop().create_task(self._refresh_quietly(container))
        self._exit_tasks.add(task)
        task.add_done_callback(self._exit_tasks.discard)

    def _check_all(self) -> None:
        for container in list(self._containers.values()):
            if container.state == RUNNING:
                self._on_exit_file(container.id)

    async def _refresh_quietly(self, container: Container) -> None:
        try:
            await self._refresh(container)
        except Exception as exc:
            log.warning(
                "exit check failed", extra={"container_id": container.id, "error": str(exc)}
            )

    async def _refresh(self, container: Container) -> None:
        """Take in an exit conmon recorded (while skiffd was down, or since)."""
        if container.state != RUNNING:
            return
        status = self.runtime(container.runtime_handler).exit_status(container.id)
        if status is not None:
            await self._mark_exited(container, status)

    async def _mark_exited(self, container: Container, status: ExitStatus) -> None:
        """Record the exit once, however it was noticed (exit file, stop, reconcile)."""
        if container.state == EXITED:
            return
        container.state = EXITED
        container.exit_code = status.exit_code
        container.finished_ns = max(status.finished_ns, container.started_ns)
        if status.oom_killed:
            container.reason = "OOMKilled"
            self.state.metrics.record_oom_kill()
        else:
            container.reason = "Completed" if status.exit_code == 0 else "Error"
        self._exits.unwatch(container.id)
        await self.state.store.update(container.to_record())
        self.state.events.publish(events.STOPPED, container.id, container.sandbox_id)
        log.info(
            "container exited",
            extra={
                "container_id": container.id,
                "exit_code": container.exit_code,
                "reason": container.reason,
            },
        )

    # --- reads -----------------------------------------------------------------------

    async def get(self, id_or_prefix: str) -> Container:
        record = self.state.store.resolve("container", id_or_prefix)
        container = self._containers[record.id]
        await self._refresh(container)
        return container

    async def select(
        self,
        id_prefix: str = "",
        state: str | None = None,
        sandbox_prefix: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> list[Container]:
        out = []
        for container in list(self._containers.values()):
            if id_prefix and not container.id.startswith(id_prefix):
                continue
            if sandbox_prefix and not container.sandbox_id.startswith(sandbox_prefix):
                continue
            if labels and any(container.labels.get(k) != v for k, v in labels.items()):
                continue
            if state is not None and container.state != state:
                continue
            out.append(container)
        return sorted(out, key=lambda c: c.created_ns)

    def everything(self) -> list[Container]:
        return list(self._containers.values())

    def of_sandbox(self, sandbox_id: str) -> list[Container]:
        return [c for c in self._containers.values() if c.sandbox_id == sandbox_id]

    # --- create ----------------------------------------------------------------------

    async def create(self, request: ContainerRequest) -> str:
        _validate(request)
        sandbox = self.sandboxes.get(request.sandbox_id)
        self._check_pod_takes_containers(sandbox)
        request = _with_sandbox_id(request, sandbox.id)
        await self._check_recursive_read_only(request, sandbox)
        name = f"{sandbox.id}/{request.name}/{request.attempt}"

        def taken() -> Exception | None:
            existing = self.state.store.get_by_name("container", name)
            if existing is None:
                return None
            return AlreadyExists(
                f"container name {request.name!r} (attempt {request.attempt}) in pod "
                f"{sandbox.id} is reserved by container {existing.id}"
            )

        return await self.creations.run(
            name,
            lambda: self._create(request, sandbox),
            alive=self._containers.__contains__,
            taken=taken,
        )

    async def _check_recursive_read_only(self, request: ContainerRequest, sandbox: Sandbox) -> None:
        for mount in request.mounts:
            if not mount.recursive_read_only:
                continue
            what = f"mount of {mount.host_path!r} at {mount.container_path!r}"
            if not await supports_recursive_read_only(self.state, sandbox.runtime_handler):
                handler = sandbox.runtime_handler or self.state.config.runtime.default_handler
                raise InvalidArgument(
                    f"{what}: runtime handler {handler!r} cannot make recursive read-only "
                    "mounts (its OCI runtime lacks the rro mount option or the kernel "
                    "lacks mount_setattr)"
                )

    def _check_pod_takes_containers(self, sandbox: Sandbox) -> None:
        if sandbox.state != READY or self.sandboxes.is_stopping(sandbox.id):
            raise FailedPrecondition(
                f"pod sandbox {sandbox.id} is not ready; containers cannot be created in it"
            )

    async def _finish_creates(self, sandbox_id: str) -> None:
        """Wait out the creates of the pod's containers in progress: a pod stopping or
        going must see every container made in it (creates that start after the stop
        began are refused)."""
        running = self.creations.running_under(f"{sandbox_id}/")
        if running:
            await asyncio.wait(running)

    async def _create(self, request: ContainerRequest, sandbox: Sandbox) -> str:
        # Again, now that this create is one a stopping pod waits for.
        self._check_pod_takes_containers(sandbox)
        image = self.state.images.find(request.image)
        if image is None:
            raise NotFound(f"image {request.image!r} not found; pull it first")
        container_id = secrets.token_hex(32)
        container_dir = Path(self.state.config.root) / "containers" / container_id
        runtime = self.runtime(sandbox.runtime_handler)
        started = time.monotonic()
        undo = Rollback(container_id=container_id)
        undo.push("directory", lambda: asyncio.to_thread(remove_tree, container_dir))
        try:
            layers = [self.state.images.store.layer_path(c) for c in image.chain_ids]
            rootfs = await asyncio.to_thread(mount_rootfs, layers, container_dir / "rootfs")
            undo.push("rootfs", lambda: asyncio.to_thread(unmount_rootfs, container_dir / "rootfs"))
            container = self._new_container(request, sandbox, image, container_id, container_dir)
            # The kubelet makes <log_directory>/<name>/ itself; crictl and others may not.
            log_dir = Path(container.log_path).parent
            made = await asyncio.to_thread(
                make_directory, log_dir, f"log directory {str(log_dir)!r} of {request.name!r}"
            )
            undo.push("log directory", lambda: asyncio.to_thread(remove_if_empty, made))
            undo.push("volumes", lambda: asyncio.to_thread(_unmount_volumes, container_dir))
            request = await self._mount_image_volumes(request, container, container_dir)
            container.mounts = [asdict(m) for m in request.mounts]
            namespaces = await self._namespaces(request, sandbox)
            spec = await asyncio.to_thread(
                self._spec, request, sandbox, image, container, str(rootfs.merged), namespaces
            )
            oci = await self._build_spec(spec)
            bundle = container.bundle
            await asyncio.to_thread(_write_bundle, bundle, oci)
            if container.conmon_cgroup:
                await asyncio.to_thread(self.sandboxes.cgroups.create, container.conmon_cgroup)
                conmon_cgroup = container.conmon_cgroup
                undo.push("conmon cgroup", lambda: self._delete_conmon_cgroup(conmon_cgroup))
            container.pid = await self._runtime_create(runtime, container, request, oci)
            undo.push("runtime", lambda: runtime.delete(container_id))
            await self.state.store.add(container.to_record())
        except BaseException:
            await undo.run()
            raise
        self._containers[container_id] = container
        self.state.events.publish(events.CREATED, container_id, sandbox.id)
        log.info(
            "container created",
            extra={
                "container_id": container_id,
                "sandbox_id": sandbox.id,
                "image": request.image,
                "duration_ms": round((time.monotonic() - started) * 1000, 1),
            },
        )
        return container_id

    async def _mount_image_volumes(
        self, request: ContainerRequest, container: Container, container_dir: Path
    ) -> ContainerRequest:
        """Mount each image volume's layers (read-only) and point its mount there."""
        mounts: list[CriMount] = []
        for index, mount in enumerate(request.mounts):
            if not mount.image:
                mounts.append(mount)
                continue
            volume_image = self.state.images.find(mount.image)
            if volume_image is None:
                raise NotFound(
                    f"image {mount.image!r} for the volume at {mount.container_path!r} "
                    "not found; pull it first"
                )
            sub_path = mount.image_sub_path.strip("/")
            if sub_path and (".." in sub_path.split("/") or mount.image_sub_path.startswith("/")):
                raise InvalidArgument(
                    f"image volume at {mount.container_path!r}: sub path "
                    f"{mount.image_sub_path!r} must stay inside the image"
                )
            layers = [self.state.images.store.layer_path(c) for c in volume_image.chain_ids]
            volume = await asyncio.to_thread(
                mount_rootfs, layers, container_dir / "volumes" / str(index), True
            )
            source = Path(volume.merged) / sub_path if sub_path else Path(volume.merged)
            if sub_path and not await asyncio.to_thread(source.is_dir):
                raise InvalidArgument(
                    f"image volume at {mount.container_path!r}: {mount.image_sub_path!r} "
                    f"is not a directory in image {mount.image!r}"
                )
            container.volume_image_ids.append(volume_image.id)
            mounts.append(
                replace(
                    mount,
                    host_path=str(source),
                    image="",
                    volume_image=mount.image,
                    volume_image_id=volume_image.id,
                )
            )
        return replace(request, mounts=tuple(mounts))

    def _new_container(
        self,
        request: ContainerRequest,
        sandbox: Sandbox,
        image: ImageRecord,
        container_id: str,
        container_dir: Path,
    ) -> Container:
        log_path = ""
        if request.log_path:
            base = Path(sandbox.log_directory) if sandbox.log_directory else container_dir
            log_path = str(base / request.log_path)
        return Container(
            id=container_id,
            sandbox_id=sandbox.id,
            name=request.name,
            attempt=request.attempt,
            image=request.image,
            image_name=self.state.images.display_name(
                image, request.user_specified_image, request.image
            ),
            image_id=image.id,
            image_ref=image.repo_digests[0] if image.repo_digests else image.id,
            state=CREATED,
            created_ns=time.time_ns(),
            started_ns=0,
            finished_ns=0,
            exit_code=0,
            reason="",
            message="",
            labels=dict(request.labels),
            annotations=dict(request.annotations),
            log_path=log_path or str(container_dir / "container.log"),
            runtime_handler=sandbox.runtime_handler,
            container_dir=str(container_dir),
            mounts=[asdict(m) for m in request.mounts],
            uid=0,
            gid=0,
            groups=[],
            resources=asdict(request.resources) if request.resources else None,
            stop_signal=request.stop_signal,
            pid=0,
            tty=request.tty,
            stdin=request.stdin,
            config=dict(request.config_json),
            conmon_cgroup=pod_cgroups.conmon(sandbox.cgroup_parent, container_id),
        )

    def _spec(
        self,
        request: ContainerRequest,
        sandbox: Sandbox,
        image: ImageRecord,
        container: Container,
        rootfs: str,
        namespaces: dict[str, str],
    ) -> ContainerSpec:
        image_config = image.config.get("config") or {}
        if request.apparmor_localhost:
            raise FailedPrecondition(
                f"container {request.name!r} asks for AppArmor profile "
                f"{request.apparmor_localhost!r}, but AppArmor is not enabled on this node"
            )
        user = resolve_user(
            Path(rootfs),
            image_user=str(image_config.get("User") or ""),
            run_as_user=request.run_as_user,
            run_as_username=request.run_as_username,
            run_as_group=request.run_as_group,
            supplemental_groups=request.supplemental_groups,
            strict_supplemental=request.strict_supplemental_groups,
        )
        container.uid, container.gid = user.uid, user.gid
        # The primary gid leads the groups, as getgroups(2) shows them inside the
        # container and as kubelets expect them in ContainerStatus.
        groups = tuple(dict.fromkeys([user.gid, *user.additional_gids]))
        container.groups = list(groups)
        args = merge_command(request.command, request.args, image_config)
        if not args:
            raise InvalidArgument(
                f"container {request.name!r}: no command given and the image "
                f"{request.image!r} has no Entrypoint or Cmd"
            )
        if not args[0]:
            # runc would refuse it only after the root filesystem was made (UNKNOWN).
            raise InvalidArgument(
                f"container {request.name!r}: the program to run is empty "
                "(command, or args with the image's Entrypoint)"
            )
        env = merge_env(list(image_config.get("Env") or []), request.envs)
        keys = {e.split("=", 1)[0] for e in env}
        if "PATH" not in keys:
            env.append(DEFAULT_PATH)
        if "HOSTNAME" not in keys:
            env.append(f"HOSTNAME={sandbox.hostname}")
        if "HOME" not in keys:
            env.append(f"HOME={user.home}")
        if not container.stop_signal:
            container.stop_signal = _signal_number(str(image_config.get("StopSignal") or ""))
        return ContainerSpec(
            id=container.id,
            rootfs=rootfs,
            args=tuple(args),
            env=tuple(env),
            cwd=request.working_dir or str(image_config.get("WorkingDir") or "/"),
            user=UserSpec(user.uid, user.gid, groups),
            terminal=request.tty,
            hostname=sandbox.hostname,
            mounts=self._mounts(request, sandbox, rootfs),
            devices=request.devices,
            namespaces=namespaces,
            cgroups_path=pod_cgroups.container(sandbox.cgroup_parent, container.id),
            resources=request.resources,
            oom_score_adj=request.oom_score_adj,
            security=request.security,
            annotations=dict(request.annotations),
            rootfs_propagation=_rootfs_propagation(request.mounts),
            name=request.name,
        )

    def _mounts(
        self, request: ContainerRequest, sandbox: Sandbox, rootfs: str
    ) -> tuple[MountSpec, ...]:
        wanted = {m.container_path for m in request.mounts}
        files = Path(sandbox.files_dir)
        mounts: list[MountSpec] = []
        for name in ("hosts", "resolv.conf", "hostname"):
            if f"/etc/{name}" not in wanted:
                mounts.append(
                    MountSpec(f"/etc/{name}", str(files / name), "bind", ("rbind", "rprivate"))
                )
        if "/dev/shm" not in wanted:
            source = sandbox.shm_path or "/dev/shm"
            mounts.append(MountSpec("/dev/shm", source, "bind", ("rbind", "rprivate")))
        for mount in request.mounts:
            what = (
                f"container {clip(request.name)!r}: mount of {clip(mount.host_path)!r} "
                f"at {clip(mount.container_path)!r}"
            )
            if not Path(mount.host_path).exists():
                raise InvalidArgument(f"{what}: the host path does not exist")
            _check_mount_kind(mount, rootfs, what)
            if mount.propagation != "private":
                source = propagation_of(Path(mount.host_path))
                allowed = ("shared",) if mount.propagation == "shared" else ("shared", "slave")
                if source not in allowed:
                    raise FailedPrecondition(
                        f"{what} asks for {mount.propagation} propagation, but the host mount "
                        f"holding it is {source}; make it shared (mount --make-rshared)"
                    )
            options = ["rbind", "r" + mount.propagation]
            options.append("ro" if mount.readonly else "rw")
            if mount.recursive_read_only:
                options.append("rro")
            mounts.append(MountSpec(mount.container_path, mount.host_path, "bind", tuple(options)))
        return tuple(mounts)

    async def _namespaces(self, request: ContainerRequest, sandbox: Sandbox) -> dict[str, str]:
        namespaces = {
            "network": sandbox.netns or HOST,
            "ipc": sandbox.ipcns or HOST,
            "uts": sandbox.utsns or HOST,
            "mount": NEW,
        }
        if request.pid_mode == "node":
            namespaces["pid"] = HOST
        elif request.pid_mode == "pod":
            namespaces["pid"] = await self.sandboxes.shared_pid_namespace(sandbox)
        elif request.pid_mode == "target":
            target = self._containers.get(request.pid_target)
            if target is None or target.state != RUNNING or not target.pid:
                raise NotFound(
                    f"target container {request.pid_target!r} for the PID namespace is not running"
                )
            namespaces["pid"] = f"/proc/{target.pid}/ns/pid"
        else:
            namespaces["pid"] = NEW
        return namespaces

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self, id_or_prefix: str) -> None:
        container = await self.get(id_or_prefix)
        async with self._lock(container.id):
            if container.state != CREATED:
                raise FailedPrecondition(
                    f"container {container.id} is {container.state}; only a created "
                    "container can be started"
                )
            runtime = self.runtime(container.runtime_handler)
            # Taken before the start: a process can exit before `start` returns. Kept
            # before the runtime is asked, as the intent to start: a skiffd that dies
            # while `start` runs asks the runtime, when it starts again, what became of
            # it (`_reconcile_start`).
            container.started_ns = time.time_ns()
            await self.state.store.update(container.to_record())
            try:
                await runtime.start(container.id)
            except Exception as exc:
                container.state = EXITED
                container.started_ns = 0
                container.reason = "Error"
                container.message = str(exc)
                container.exit_code = 128
                container.finished_ns = time.time_ns()
                await self.state.store.update(container.to_record())
                self.state.events.publish(events.STOPPED, container.id, container.sandbox_id)
                raise
            container.state = RUNNING
            await self.state.store.update(container.to_record())
            self.state.events.publish(events.STARTED, container.id, container.sandbox_id)
            self._watch_exit(container)
        log.info("container started", extra={"container_id": container.id})

    async def stop(self, id_or_prefix: str, grace: float) -> None:
        try:
            container = await self.get(id_or_prefix)
        except NotFound:
            return  # CRI: stopping what is not there is fine
        async with self._lock(container.id):
            await self._stop_locked(container, grace)

    async def _stop_locked(self, container: Container, grace: float) -> None:
        await self._refresh(container)
        if container.state == EXITED:
            return
        runtime = self.runtime(container.runtime_handler)
        if container.state == CREATED:
            # Never started: there is no process to signal; it is simply done.
            await runtime.kill(container.id, signal.SIGKILL)
            status = await runtime.wait_exit(container.id, 5) or ExitStatus(
                137, time.time_ns(), False
            )
        else:
            stop_signal = container.stop_signal or signal.SIGTERM
            status = await runtime.stop(container.id, stop_signal, max(grace, 0))
        await self._mark_exited(container, status)

    async def remove(self, id_or_prefix: str) -> None:
        try:
            container = await self.get(id_or_prefix)
        except NotFound:
            return
        async with self._lock(container.id):
            await self._stop_locked(container, 0)
            runtime = self.runtime(container.runtime_handler)
            await runtime.delete(container.id)
            await self._delete_conmon_cgroup(container.conmon_cgroup)
            container_dir = Path(container.container_dir)
            await asyncio.to_thread(_unmount_volumes, container_dir)
            await asyncio.to_thread(unmount_rootfs, container_dir / "rootfs")
            await asyncio.to_thread(remove_tree, container_dir)
            await self.state.store.remove("container", container.id)
            self._containers.pop(container.id, None)
            self.state.events.publish(events.DELETED, container.id, container.sandbox_id)
        self._locks.pop(container.id, None)
        self.creations.forget(container.id)
        log.info("container removed", extra={"container_id": container.id})

    async def _delete_conmon_cgroup(self, path: str) -> None:
        if not path:
            return
        # conmon is gone by now, but a killed one may still be leaving its cgroup.
        deadline = time.monotonic() + _CGROUP_DRAIN_SECONDS
        while True:
            try:
                await asyncio.to_thread(self.sandboxes.cgroups.delete, path)
                return
            except CgroupError:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.05)

    async def stop_all(self, sandbox_id: str) -> None:
        await self._finish_creates(sandbox_id)
        for container in self.of_sandbox(sandbox_id):
            async with self._lock(container.id):
                await self._stop_locked(container, 0)

    async def remove_all(self, sandbox_id: str) -> None:
        await self._finish_creates(sandbox_id)
        for container in self.of_sandbox(sandbox_id):
            await self.remove(container.id)

    # --- in a running container ---------------------------------------------------------

    async def exec_sync(
        self, id_or_prefix: str, command: list[str], time_limit: float | None
    ) -> tuple[int, bytes, bytes]:
        check_command(command)
        container = await self.get(id_or_prefix)
        if container.state != RUNNING:
            raise FailedPrecondition(f"container {container.id} is {container.state}, not running")
        runtime = self.runtime(container.runtime_handler)
        try:
            result = await runtime.exec_sync(
                container.id, command, time_limit, max_output=EXEC_SYNC_MAX_OUTPUT
            )
        except OciRuntimeError as exc:
            # The runtime could not start the command (no such program, not executable):
            # the client's cmd, unless the container stopped meanwhile.
            state = await runtime.state(container.id)
            if state is None or state.get("status") != "running":
                raise FailedPrecondition(
                    f"container {container.id} stopped before {command[0]!r} could be run"
                ) from None
            raise FailedPrecondition(
                f"cmd {clip(command[0])!r} cannot be run in container {container.id}: {exc}"
            ) from None
        if result.timed_out:
            raise DeadlineExceeded(
                f"command {command[0]!r} in container {container.id} timed out after "
                f"{time_limit:g}s and was killed"
            )
        return result.exit_code, result.stdout, result.stderr

    async def _runtime_create(
        self,
        runtime: OciRuntime,
        container: Container,
        request: ContainerRequest,
        oci: Mapping[str, Any],
    ) -> int:
        try:
            return await runtime.create(
                container.id,
                container.bundle,
                container.log_path,
                terminal=request.tty,
                stdin=request.stdin,
                stdin_once=request.stdin_once,
                conmon_cgroup=container.conmon_cgroup or None,
            )
        except OciRuntimeError as exc:
            program = str(oci["process"]["args"][0])
            if not _program_unrunnable(str(exc), program):
                raise
            # The image lacks it, or it is no program: known only once runc looked.
            raise FailedPrecondition(
                f"container {request.name!r}: its program {clip(program)!r} cannot be run "
                f"in image {request.image!r}: {exc}"
            ) from None

    async def _build_spec(self, spec: ContainerSpec) -> dict[str, Any]:
        """On a worker thread: building a spec reads what the request names (device
        nodes and directories, a seccomp profile), which must not stall other calls."""
        return await asyncio.to_thread(lambda: build_spec(spec, self.host()))

    async def update_resources(self, id_or_prefix: str, resources: CgroupResources) -> None:
        container = await self.get(id_or_prefix)
        if container.state not in (CREATED, RUNNING):
            raise FailedPrecondition(f"container {container.id} is {container.state}")
        # A limit the update leaves out stays as it is.
        memory_now = (container.resources or {}).get("memory_limit")
        _check_swap(resources, resources.memory_limit or memory_now, f"container {container.id}")
        oci = await self._build_spec(
            ContainerSpec(id=container.id, rootfs="/", args=("true",), resources=resources)
        )
        runtime = self.runtime(container.runtime_handler)
        try:
            await runtime.update(container.id, oci["linux"].get("resources", {}))
        except OciRuntimeError:
            # A container that stopped meanwhile (the kubelet resizes while it stops one)
            # is the caller's precondition, not a runtime failure.
            state = await runtime.state(container.id)
            if state is None or state.get("status") not in ("created", "running"):
                raise FailedPrecondition(
                    f"container {container.id} stopped before its resources could be updated"
                ) from None
            raise
        container.resources = asdict(resources)
        await self.state.store.update(container.to_record())

    async def reopen_log(self, id_or_prefix: str) -> None:
        container = await self.get(id_or_prefix)
        if container.state != RUNNING:
            raise FailedPrecondition(
                f"container {container.id} is {container.state}; only a running container's "
                "log can be reopened"
            )
        await self.runtime(container.runtime_handler).reopen_log(container.id)


def check_command(command: Sequence[str]) -> None:
    """An exec's command: a program to run, and arguments exec(2) can take."""
    if not command or not command[0]:
        raise InvalidArgument("cmd must not be empty: name the program to run")
    check_argv(command, "cmd")


def _validate(request: ContainerRequest) -> None:
    """What a request must be before anything is looked up or made."""
    if not request.name:
        raise InvalidArgument("config.metadata.name must not be empty")
    what = f"container {clip(request.name)!r}"
    if len(request.name) > MAX_NAME or any(c == "/" or not c.isprintable() for c in request.name):
        raise InvalidArgument(
            f"{what}: config.metadata.name must be at most {MAX_NAME} characters, without "
            "'/' or control characters"
        )
    log_path = request.log_path
    if log_path and (log_path.startswith("/") or "\0" in log_path or ".." in log_path.split("/")):
        raise InvalidArgument(
            f"{what}: log_path {clip(log_path)!r} must be a path relative to the pod's "
            "log_directory, without '..' (and without NUL bytes)"
        )
    if ":" in log_path:
        # conmon takes the log as <driver>:<path>.
        raise InvalidArgument(f"{what}: log_path {clip(log_path)!r} must not contain ':'")
    check_path_length(log_path, f"{what}: log_path")
    check_metadata_size(request.labels, request.annotations, what)
    if request.resources is not None:
        _check_swap(request.resources, request.resources.memory_limit, what)
    check_argv([*request.command, *request.args], f"{what}: command and args")
    check_path_length(request.working_dir, f"{what}: working_dir")
    for device in request.devices:
        if "\0" in device.host_path or "\0" in device.container_path:
            raise InvalidArgument(f"{what}: device {clip(device.host_path)!r} has a NUL byte")
    for mount in request.mounts:
        where = f"{what}: mount at {clip(mount.container_path)!r}"
        if not mount.container_path.startswith("/") or "\0" in mount.container_path:
            raise InvalidArgument(f"{where}: the container path must be absolute (no NUL bytes)")
        if posixpath.normpath(mount.container_path) == "/":
            raise InvalidArgument(f"{where}: a mount cannot replace the container's root")
        if mount.image and not mount.readonly:
            raise InvalidArgument(f"{where}: an image volume is read-only; set readonly")
        if not mount.image and (not mount.host_path.startswith("/") or "\0" in mount.host_path):
            raise InvalidArgument(
                f"{where}: host path {clip(mount.host_path)!r} must be an absolute path "
                "(no NUL bytes)"
            )
        if mount.recursive_read_only:
            rro = f"mount of {mount.host_path!r} at {mount.container_path!r}"
            if not mount.readonly:
                raise InvalidArgument(f"{rro}: a recursive read-only mount must be readonly")
            if mount.propagation != "private":
                raise InvalidArgument(
                    f"{rro}: a recursive read-only mount needs private propagation, "
                    f"not {mount.propagation}"
                )


def _with_sandbox_id(request: ContainerRequest, sandbox_id: str) -> ContainerRequest:
    return replace(request, sandbox_id=sandbox_id)


def _check_mount_kind(mount: CriMount, rootfs: str, what: str) -> None:
    """A directory cannot be bind-mounted onto a file the image has, nor a file onto a
    directory: refuse it now, naming both, rather than have runc fail at create. A
    path through a symlink in the image is left to the runtime (it resolves it inside
    the root)."""
    target, mode = Path(rootfs), 0
    for part in posixpath.normpath(mount.container_path).split("/")[1:]:
        target = target / part
        try:
            mode = target.lstat().st_mode
        except OSError:
            return  # not in the image: the runtime makes it
        if stat.S_ISLNK(mode):
            return
    source_is_dir = Path(mount.host_path).is_dir()
    if mode and stat.S_ISDIR(mode) != source_is_dir:
        kinds = ("a directory", "a file") if source_is_dir else ("a file", "a directory")
        raise InvalidArgument(
            f"{what}: the host path is {kinds[0]} but {clip(mount.container_path)!r} is "
            f"{kinds[1]} in the image"
        )


def _rootfs_propagation(mounts: tuple[CriMount, ...]) -> str:
    """A mount propagating into (or out of) the container needs the root's mount to
    propagate likewise, or runc cannot make it so."""
    kinds = {m.propagation for m in mounts}
    if "shared" in kinds:
        return "rshared"
    if "slave" in kinds:
        return "rslave"
    return ""


def _check_swap(resources: CgroupResources, memory_limit: int | None, what: str) -> None:
    """Memory plus swap is taken only with a memory limit to add it to: runc refuses it
    otherwise, after the fact (UNKNOWN; found by generated requests)."""
    swap = resources.memory_swap
    if swap is not None and swap != -1 and memory_limit in (None, -1):
        raise InvalidArgument(
            f"{what}: memory_swap_limit_in_bytes {swap} needs a memory limit "
            "(memory_limit_in_bytes), and there is none"
        )


def _program_unrunnable(message: str, program: str) -> bool:
    """Whether the OCI runtime's complaint is that it could not start `program`: runc
    says exec: "<program>": ... (quoted again in its log format), crun executable file
    `<program>` ..."""
    shapes = (f'exec: "{program}"', f'exec: \\"{program}\\"', f"executable file `{program}`")
    return any(shape in message for shape in shapes)


def _unmount_volumes(container_dir: Path) -> None:
    volumes = container_dir / "volumes"
    if volumes.is_dir():
        for volume in volumes.iterdir():
            unmount_rootfs(volume)


def _write_bundle(bundle: Path, oci: Mapping[str, Any]) -> None:
    bundle.mkdir(parents=True, exist_ok=True)
    # Under /run: no fsync. Mode 0644, as the plain write before it made it.
    # Private: it holds the environment, credentials and all.
    write_atomic(bundle / "config.json", json.dumps(oci).encode(), mode=0o600, durable=False)
    failpoints.step("file-write")


def _signal_number(name: str) -> int:
    if not name:
        return 0
    text = name.upper()
    if text.isdigit():
        return int(text)
    if not text.startswith("SIG"):
        text = "SIG" + text
    try:
        return int(signal.Signals[text])
    except KeyError:
        return 0
