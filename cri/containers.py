"""The container manager: containers from CreateContainer to RemoveContainer.

CreateContainer checks the request, plans the container (`cri.container_plan`), then
carries the plan out inside one rollback: the image's layers mounted as its root
filesystem, its user resolved, an OCI bundle written, and conmon running `<runtime>
create`. conmon stays with the container, so containers keep running while skiffd
restarts; their exits are taken in by `cri.container_exits`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import signal
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from base import directories, failpoints, steps
from base.files import write_atomic
from base.trees import remove_tree
from cri import container_mounts, container_plan, events
from cri.container_exits import ContainerExits
from cri.container_plan import POD_PID, ContainerPlan, ContainerRequest, check_request, check_swap
from cri.container_record import CREATED, EXITED, RUNNING, Container, ContainerState
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
from cri.request_checks import check_command
from cri.rollback import Rollback, remove_unrecorded
from cri.runtime_status import supports_recursive_read_only
from cri.sandboxes import READY, Sandbox, SandboxManager, make_directory
from image.store import ImageRecord
from runtime.cgroups import CgroupResources
from runtime.container_spec import ContainerSpec
from runtime.oci_runtime import ExitStatus, OciRuntime, OciRuntimeError, RuntimeHandlerPaths
from runtime.oci_spec import HostFacts, build_spec, host_facts
from runtime.programs import find_program
from runtime.rootfs import mount_rootfs, unmount_rootfs
from runtime.users import ResolvedUser, resolve_user

log = logging.getLogger("skiff.container")

# ExecSync keeps this much of each of stdout and stderr: both together must fit in one
# response of at most 16 MiB (cri.daemon.MAX_MESSAGE_BYTES, the kubelet's limit too).
EXEC_SYNC_MAX_OUTPUT = 8 * 1024 * 1024 - 64 * 1024


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
        self.exits = ContainerExits(
            state, self._containers, lambda c: self.runtime(c.runtime_handler), self._lock
        )

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
            cgroups=self.sandboxes.cgroups,
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
            await self.exits.refresh(container)
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
        await asyncio.to_thread(_remove_container_dir, container_dir)

    def start_watching(self) -> None:
        """Notice exits as conmon records them, so List reads memory only."""
        self.exits.start()

    def stop_watching(self) -> None:
        self.exits.close()

    # --- reads -----------------------------------------------------------------------

    async def get(self, id_or_prefix: str) -> Container:
        record = self.state.store.resolve("container", id_or_prefix)
        container = self._containers[record.id]
        await self.exits.refresh(container)
        return container

    async def select(
        self,
        id_prefix: str = "",
        state: ContainerState | None = None,
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
        with steps.timed(log, "CreateContainer"):
            return await self._create_checked(request)

    async def _create_checked(self, request: ContainerRequest) -> str:
        check_request(request)
        sandbox = self.sandboxes.get(request.sandbox_id)
        self._check_pod_takes_containers(sandbox)
        request = replace(request, sandbox_id=sandbox.id)
        await self._check_recursive_read_only(request, sandbox)
        name = f"{sandbox.id}/{request.name}/{request.attempt}"
        steps.lap("checks")

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

    def _image(self, request: ContainerRequest) -> ImageRecord:
        """The container's image, once each image it names (volumes too) is here."""
        for mount in request.mounts:
            if mount.image and self.state.images.find(mount.image) is None:
                raise NotFound(
                    f"image {mount.image!r} for the volume at {mount.container_path!r} "
                    "not found; pull it first"
                )
        image = self.state.images.find(request.image)
        if image is None:
            raise NotFound(f"image {request.image!r} not found; pull it first")
        return image

    def _plan(self, request: ContainerRequest, sandbox: Sandbox) -> ContainerPlan:
        image = self._image(request)
        return container_plan.plan(
            request,
            sandbox,
            image,
            container_id=secrets.token_hex(32),
            containers_dir=Path(self.state.config.root) / "containers",
            image_name=self.state.images.display_name(
                image, request.user_specified_image, request.image
            ),
            pid_target=self._containers.get(request.pid_target) if request.pid_target else None,
        )

    async def _create(self, request: ContainerRequest, sandbox: Sandbox) -> str:
        # Again, now that this create is one a stopping pod waits for.
        self._check_pod_takes_containers(sandbox)
        plan = self._plan(request, sandbox)
        steps.note(container_id=plan.id)
        steps.lap("plan")
        await asyncio.to_thread(container_mounts.check_host_sources, request.name, request.mounts)
        steps.lap("host sources")
        started = time.monotonic()
        undo = Rollback(container_id=plan.id)
        try:
            container = await self._carry_out(plan, sandbox, undo)
            await self.state.store.add(container.to_record())
            steps.lap("record")
        except BaseException:
            await undo.run()
            raise
        self._containers[container.id] = container
        self.state.events.publish(events.CREATED, container.id, sandbox.id)
        log.info(
            "container created",
            extra={
                "container_id": container.id,
                "sandbox_id": sandbox.id,
                "image": request.image,
                "duration_ms": round((time.monotonic() - started) * 1000, 1),
            },
        )
        return container.id

    async def _carry_out(self, plan: ContainerPlan, sandbox: Sandbox, undo: Rollback) -> Container:
        """Make what `plan` describes, each step pushed on `undo`: root filesystem,
        user, mounts, bundle, conmon and the runtime's container."""
        directory = plan.directory
        undo.push("directory", lambda: asyncio.to_thread(remove_tree, directory))
        layers = [self.state.images.store.layer_path(c) for c in plan.image_chain_ids]
        rootfs = await asyncio.to_thread(mount_rootfs, layers, plan.rootfs_dir)
        undo.push("rootfs", lambda: asyncio.to_thread(unmount_rootfs, plan.rootfs_dir))
        steps.lap("rootfs mount")
        user = await asyncio.to_thread(self._resolve_user, plan, Path(rootfs.merged))
        steps.lap("user")
        await self._make_log_directory(plan, undo)
        steps.lap("log directory")
        volumes = directory / "volumes"
        undo.push(
            "volumes", lambda: asyncio.to_thread(container_mounts.unmount_image_volumes, volumes)
        )
        mounts = await asyncio.to_thread(
            container_mounts.mount_image_volumes, plan.request.mounts, self.state.images, volumes
        )
        await asyncio.to_thread(
            container_mounts.check_against_rootfs, plan.request.name, mounts, Path(rootfs.merged)
        )
        steps.lap("volumes")
        pid_namespace = plan.namespaces["pid"]
        if pid_namespace == POD_PID:
            pid_namespace = await self.sandboxes.shared_pid_namespace(sandbox)
            steps.lap("pod pid namespace")
        oci = await self._build_spec(plan.spec(str(rootfs.merged), user, mounts, pid_namespace))
        steps.lap("spec")
        await asyncio.to_thread(_write_bundle, directory / "bundle", oci)
        steps.lap("bundle")
        runtime = self.runtime(plan.runtime_handler)
        pid = await self._runtime_create(runtime, plan, oci)
        undo.push("runtime", lambda: runtime.delete(plan.id))
        return plan.record(user, mounts, pid)

    @staticmethod
    def _resolve_user(plan: ContainerPlan, rootfs: Path) -> ResolvedUser:
        request = plan.request
        return resolve_user(
            rootfs,
            image_user=plan.image_user,
            run_as_user=request.run_as_user,
            run_as_username=request.run_as_username,
            run_as_group=request.run_as_group,
            supplemental_groups=request.supplemental_groups,
            strict_supplemental=request.strict_supplemental_groups,
        )

    async def _make_log_directory(self, plan: ContainerPlan, undo: Rollback) -> None:
        # The kubelet makes <log_directory>/<name>/ itself; crictl and others may not.
        log_dir = Path(plan.log_path).parent
        made = await asyncio.to_thread(
            make_directory, log_dir, f"log directory {str(log_dir)!r} of {plan.request.name!r}"
        )
        undo.push("log directory", lambda: asyncio.to_thread(directories.remove_made, made))

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self, id_or_prefix: str) -> None:
        with steps.timed(log, "StartContainer"):
            await self._start(id_or_prefix)

    async def _start(self, id_or_prefix: str) -> None:
        container = await self.get(id_or_prefix)
        steps.note(container_id=container.id)
        steps.lap("lookup")
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
            steps.lap("record intent")
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
            # No fsync: skiffd's death loses nothing of it, and after a power loss
            # the container is gone anyway; were the write lost, the start intent
            # recorded above makes skiffd ask the runtime (`_reconcile_start`).
            await self.state.store.update(container.to_record(), durable=False)
            steps.lap("record running")
            self.state.events.publish(events.STARTED, container.id, container.sandbox_id)
            self.exits.watch(container)
            steps.lap("watch exit")
        log.info("container started", extra={"container_id": container.id})

    async def stop(self, id_or_prefix: str, grace: float) -> None:
        with steps.timed(log, "StopContainer"):
            try:
                container = await self.get(id_or_prefix)
            except NotFound:
                return  # CRI: stopping what is not there is fine
            steps.note(container_id=container.id)
            steps.lap("lookup")
            async with self._lock(container.id):
                await self._stop_locked(container, grace)

    async def _stop_locked(self, container: Container, grace: float) -> None:
        await self.exits.refresh(container)
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
        await self.exits.record(container, status)
        steps.lap("record exit")

    async def remove(self, id_or_prefix: str) -> None:
        with steps.timed(log, "RemoveContainer"):
            await self._remove(id_or_prefix)

    async def _remove(self, id_or_prefix: str) -> None:
        try:
            container = await self.get(id_or_prefix)
        except NotFound:
            return
        steps.note(container_id=container.id)
        steps.lap("lookup")
        async with self._lock(container.id):
            await self._stop_locked(container, 0)
            steps.lap("stopped")
            runtime = self.runtime(container.runtime_handler)
            await runtime.delete(container.id)
            await asyncio.to_thread(_remove_container_dir, Path(container.container_dir))
            steps.lap("unmounted, directory removed")
            await self.state.store.remove("container", container.id)
            steps.lap("record removed")
            self._containers.pop(container.id, None)
            self.state.events.publish(events.DELETED, container.id, container.sandbox_id)
        self._locks.pop(container.id, None)
        self.creations.forget(container.id)
        log.info("container removed", extra={"container_id": container.id})

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
        self, runtime: OciRuntime, plan: ContainerPlan, oci: Mapping[str, Any]
    ) -> int:
        request = plan.request
        try:
            return await runtime.create(
                plan.id,
                plan.directory / "bundle",
                plan.log_path,
                terminal=request.tty,
                stdin=request.stdin,
                stdin_once=request.stdin_once,
                conmon_cgroup=plan.conmon_cgroup or None,
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
        memory_now = container.resources.memory_limit if container.resources else None
        check_swap(resources, resources.memory_limit or memory_now, f"container {container.id}")
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
        container.resources = resources
        await self.state.store.update(container.to_record())

    async def reopen_log(self, id_or_prefix: str) -> None:
        container = await self.get(id_or_prefix)
        if container.state != RUNNING:
            raise FailedPrecondition(
                f"container {container.id} is {container.state}; only a running container's "
                "log can be reopened"
            )
        await self.runtime(container.runtime_handler).reopen_log(container.id)


def _program_unrunnable(message: str, program: str) -> bool:
    """Whether the OCI runtime's complaint is that it could not start `program`: runc
    says exec: "<program>": ... (quoted again in its log format), crun executable file
    `<program>` ..."""
    shapes = (f'exec: "{program}"', f'exec: \\"{program}\\"', f"executable file `{program}`")
    return any(shape in message for shape in shapes)


def _remove_container_dir(container_dir: Path) -> None:
    """Image volumes and the root filesystem unmounted, then the directory removed: in
    this order, so nothing mounted is ever removed through."""
    container_mounts.unmount_image_volumes(container_dir / "volumes")
    unmount_rootfs(container_dir / "rootfs")
    remove_tree(container_dir)


def _write_bundle(bundle: Path, oci: Mapping[str, Any]) -> None:
    bundle.mkdir(parents=True, exist_ok=True)
    # Under /run: no fsync. Private: it holds the environment, credentials and all.
    write_atomic(bundle / "config.json", json.dumps(oci).encode(), mode=0o600, durable=False)
    failpoints.step("file-write")
