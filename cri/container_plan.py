"""What CreateContainer will make, decided before anything is made.

Pure: no filesystem, no processes. `check_request` refuses a bad request before a
lookup; `plan` merges it with its pod and image (command, environment, mounts,
namespaces, cgroups) into a `ContainerPlan`. What needs the container's root
filesystem (its user, HOME) is filled in by `ContainerPlan.spec` once it is mounted.
"""

from __future__ import annotations

import posixpath
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cri import pod_cgroups
from cri.container_record import CREATED, Container, CriMount
from cri.errors import FailedPrecondition, InvalidArgument, NotFound, clip
from cri.request_checks import check_argv, check_metadata_size, check_path_length
from cri.sandboxes import Sandbox
from image.store import ImageRecord
from runtime.cgroups import CgroupResources
from runtime.container_spec import (
    HOST,
    NEW,
    ContainerSpec,
    DeviceSpec,
    MountSpec,
    SecuritySpec,
    UserSpec,
)
from runtime.users import ResolvedUser

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The longest container name taken (Kubernetes allows 63; a DNS name's limit).
MAX_NAME = 253
# The pod's shared PID namespace: its init (the pause process) is started on demand,
# so the plan names it and the executor joins it.
POD_PID = "pod"
_POD_FILES = ("hosts", "resolv.conf", "hostname")

PidMode = Literal["container", "pod", "node", "target"]


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
    pid_mode: PidMode = "container"
    pid_target: str = ""
    apparmor_localhost: str = ""
    stop_signal: int = 0
    config_json: Mapping[str, Any] = field(default_factory=dict)


# --- checks ------------------------------------------------------------------------------


def check_request(request: ContainerRequest) -> None:
    """Every check a request can be given without looking anything up: what is refused
    here is refused before anything is made."""
    if not request.name:
        raise InvalidArgument("config.metadata.name must not be empty")
    what = f"container {clip(request.name)!r}"
    if len(request.name) > MAX_NAME or any(c == "/" or not c.isprintable() for c in request.name):
        raise InvalidArgument(
            f"{what}: config.metadata.name must be at most {MAX_NAME} characters, without "
            "'/' or control characters"
        )
    _check_log_path(request.log_path, what)
    check_metadata_size(request.labels, request.annotations, what)
    if request.resources is not None:
        check_swap(request.resources, request.resources.memory_limit, what)
    _check_process(request, what)
    _check_security(request, what)
    for device in request.devices:
        if "\0" in device.host_path or "\0" in device.container_path:
            raise InvalidArgument(f"{what}: device {clip(device.host_path)!r} has a NUL byte")
    for mount in request.mounts:
        _check_mount(mount, what)


def check_swap(resources: CgroupResources, memory_limit: int | None, what: str) -> None:
    """Memory plus swap is taken only with a memory limit to add it to: runc refuses it
    otherwise, after the fact (UNKNOWN; found by generated requests)."""
    swap = resources.memory_swap
    if swap is not None and swap != -1 and memory_limit in (None, -1):
        raise InvalidArgument(
            f"{what}: memory_swap_limit_in_bytes {swap} needs a memory limit "
            "(memory_limit_in_bytes), and there is none"
        )


def _check_log_path(log_path: str, what: str) -> None:
    if log_path and (log_path.startswith("/") or "\0" in log_path or ".." in log_path.split("/")):
        raise InvalidArgument(
            f"{what}: log_path {clip(log_path)!r} must be a path relative to the pod's "
            "log_directory, without '..' (and without NUL bytes)"
        )
    if ":" in log_path:
        # conmon takes the log as <driver>:<path>.
        raise InvalidArgument(f"{what}: log_path {clip(log_path)!r} must not contain ':'")
    check_path_length(log_path, f"{what}: log_path")


def _check_process(request: ContainerRequest, what: str) -> None:
    """What becomes an exec argument, an environment entry or the working directory
    cannot hold a NUL byte (runc would fail late, after the rootfs was made); an
    environment key is one name, without '='."""
    for field_name, values in (
        ("command", request.command),
        ("args", request.args),
        ("working_dir", (request.working_dir,)),
    ):
        for value in values:
            if "\0" in value:
                raise InvalidArgument(f"{what}: {field_name} {clip(value)!r} contains a NUL byte")
    for key, value in request.envs:
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise InvalidArgument(
                f"{what}: environment variable {clip(key)!r} must have a name without "
                "'=' and no NUL byte in its name or value"
            )
    check_argv([*request.command, *request.args], f"{what}: command and args")
    check_path_length(request.working_dir, f"{what}: working_dir")


def _check_security(request: ContainerRequest, what: str) -> None:
    if request.apparmor_localhost:
        raise FailedPrecondition(
            f"container {request.name!r} asks for AppArmor profile "
            f"{request.apparmor_localhost!r}, but AppArmor is not enabled on this node"
        )
    security = request.security
    for field_name, paths in (
        ("masked_paths", security.masked_paths or ()),
        ("readonly_paths", security.readonly_paths or ()),
    ):
        for path in paths:
            if not path.startswith("/") or "\0" in path:
                raise InvalidArgument(
                    f"{what}: {field_name} entry {clip(path)!r} must be an absolute path"
                )
            if posixpath.normpath(path) in ("/", "/proc"):
                # Hiding the root or /proc takes away what the runtime itself needs.
                raise InvalidArgument(f"{what}: {field_name} cannot cover {path!r}")


def _check_mount(mount: CriMount, what: str) -> None:
    where = f"{what}: mount at {clip(mount.container_path)!r}"
    if not mount.container_path.startswith("/") or "\0" in mount.container_path:
        raise InvalidArgument(f"{where}: the container path must be absolute (no NUL bytes)")
    if posixpath.normpath(mount.container_path) == "/":
        raise InvalidArgument(f"{where}: a mount cannot replace the container's root")
    if mount.image:
        if not mount.readonly:
            raise InvalidArgument(f"{where}: an image volume is read-only; set readonly")
        sub_path = mount.image_sub_path
        if sub_path.startswith("/") or ".." in sub_path.split("/") or "\0" in sub_path:
            raise InvalidArgument(
                f"image volume at {mount.container_path!r}: sub path "
                f"{mount.image_sub_path!r} must stay inside the image"
            )
    elif not mount.host_path.startswith("/") or "\0" in mount.host_path:
        raise InvalidArgument(
            f"{where}: host path {clip(mount.host_path)!r} must be an absolute path (no NUL bytes)"
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


# --- merging with the image ----------------------------------------------------------------


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


def signal_number(name: str) -> int:
    """An image's StopSignal ("SIGQUIT", "QUIT", "3") as a number; 0 when unknown."""
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


def bind_mount(mount: CriMount) -> MountSpec:
    options = ["rbind", "r" + mount.propagation, "ro" if mount.readonly else "rw"]
    if mount.recursive_read_only:
        options.append("rro")
    return MountSpec(mount.container_path, mount.host_path, "bind", tuple(options))


def rootfs_propagation(mounts: Sequence[CriMount]) -> str:
    """A mount propagating into (or out of) the container needs the root's mount to
    propagate likewise, or runc cannot make it so."""
    kinds = {m.propagation for m in mounts}
    if "shared" in kinds:
        return "rshared"
    if "slave" in kinds:
        return "rslave"
    return ""


# --- the plan ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ContainerPlan:
    """A container to be made: everything but what its root filesystem decides."""

    request: ContainerRequest
    id: str
    directory: Path
    sandbox_id: str
    runtime_handler: str
    image_id: str
    image_ref: str
    image_name: str
    image_chain_ids: tuple[str, ...]
    image_user: str
    args: tuple[str, ...]
    # Without HOME when neither the image nor the request sets it: it comes from the
    # user's passwd entry.
    env: tuple[str, ...]
    cwd: str
    hostname: str
    stop_signal: int
    log_path: str
    # The pod's /etc files and /dev/shm, where the request mounts nothing of its own.
    pod_mounts: tuple[MountSpec, ...]
    # kind -> NEW, HOST, a path to join, or POD_PID for the pod's shared PID namespace.
    namespaces: Mapping[str, str]
    cgroups_path: str
    conmon_cgroup: str

    @property
    def rootfs_dir(self) -> Path:
        return self.directory / "rootfs"

    def spec(
        self, rootfs: str, user: ResolvedUser, mounts: Sequence[CriMount], pid_namespace: str
    ) -> ContainerSpec:
        """The runtime's view, once the root filesystem is mounted, the user resolved,
        image volumes mounted (`mounts`) and the PID namespace known."""
        env = self.env
        if not any(item.startswith("HOME=") for item in env):
            env = (*env, f"HOME={user.home}")
        namespaces = dict(self.namespaces)
        namespaces["pid"] = pid_namespace
        request = self.request
        return ContainerSpec(
            id=self.id,
            rootfs=rootfs,
            args=self.args,
            env=env,
            cwd=self.cwd,
            user=UserSpec(user.uid, user.gid, groups_of(user)),
            terminal=request.tty,
            hostname=self.hostname,
            mounts=(*self.pod_mounts, *(bind_mount(m) for m in mounts)),
            devices=request.devices,
            namespaces=namespaces,
            cgroups_path=self.cgroups_path,
            resources=request.resources,
            oom_score_adj=request.oom_score_adj,
            security=request.security,
            annotations=dict(request.annotations),
            rootfs_propagation=rootfs_propagation(request.mounts),
            name=request.name,
        )

    def record(self, user: ResolvedUser, mounts: Sequence[CriMount], pid: int) -> Container:
        request = self.request
        return Container(
            id=self.id,
            sandbox_id=self.sandbox_id,
            name=request.name,
            attempt=request.attempt,
            image=request.image,
            image_name=self.image_name,
            image_id=self.image_id,
            image_ref=self.image_ref,
            state=CREATED,
            created_ns=time.time_ns(),
            started_ns=0,
            finished_ns=0,
            exit_code=0,
            reason="",
            message="",
            labels=dict(request.labels),
            annotations=dict(request.annotations),
            log_path=self.log_path,
            runtime_handler=self.runtime_handler,
            container_dir=str(self.directory),
            mounts=list(mounts),
            uid=user.uid,
            gid=user.gid,
            groups=list(groups_of(user)),
            resources=request.resources,
            stop_signal=self.stop_signal,
            pid=pid,
            tty=request.tty,
            stdin=request.stdin,
            config=dict(request.config_json),
            volume_image_ids=[m.volume_image_id for m in mounts if m.volume_image_id],
            conmon_cgroup=self.conmon_cgroup,
        )


def groups_of(user: ResolvedUser) -> tuple[int, ...]:
    """The primary gid leads the groups, as getgroups(2) shows them inside the
    container and as kubelets expect them in ContainerStatus."""
    return tuple(dict.fromkeys([user.gid, *user.additional_gids]))


def plan(
    request: ContainerRequest,
    sandbox: Sandbox,
    image: ImageRecord,
    *,
    container_id: str,
    containers_dir: Path,
    image_name: str,
    pid_target: Container | None = None,
) -> ContainerPlan:
    """The container `request` asks for in `sandbox` from `image`. `pid_target` is the
    container named by a target PID namespace mode, if it exists."""
    image_config: Mapping[str, Any] = image.config.get("config") or {}
    what = f"container {request.name!r}"
    args = merge_command(request.command, request.args, image_config)
    if not args:
        raise InvalidArgument(
            f"{what}: no command given and the image {request.image!r} has no Entrypoint or Cmd"
        )
    if not args[0]:
        # runc would refuse it only after the root filesystem was made (UNKNOWN).
        raise InvalidArgument(
            f"{what}: the program to run is empty (command, or args with the image's Entrypoint)"
        )
    directory = containers_dir / container_id
    return ContainerPlan(
        request=request,
        id=container_id,
        directory=directory,
        sandbox_id=sandbox.id,
        runtime_handler=sandbox.runtime_handler,
        image_id=image.id,
        image_ref=image.repo_digests[0] if image.repo_digests else image.id,
        image_name=image_name,
        image_chain_ids=tuple(image.chain_ids),
        image_user=str(image_config.get("User") or ""),
        args=tuple(args),
        env=_environment(request, sandbox, image_config),
        cwd=request.working_dir or str(image_config.get("WorkingDir") or "/"),
        hostname=sandbox.hostname,
        stop_signal=request.stop_signal or signal_number(str(image_config.get("StopSignal") or "")),
        log_path=_log_path(request, sandbox, directory),
        pod_mounts=_pod_mounts(request, sandbox),
        namespaces=_namespaces(request, sandbox, pid_target),
        cgroups_path=pod_cgroups.container(sandbox.cgroup_parent, container_id),
        conmon_cgroup=pod_cgroups.conmon(sandbox.cgroup_parent, container_id),
    )


def _environment(
    request: ContainerRequest, sandbox: Sandbox, image_config: Mapping[str, Any]
) -> tuple[str, ...]:
    env = merge_env(list(image_config.get("Env") or []), request.envs)
    keys = {e.split("=", 1)[0] for e in env}
    if "PATH" not in keys:
        env.append(DEFAULT_PATH)
    if "HOSTNAME" not in keys:
        env.append(f"HOSTNAME={sandbox.hostname}")
    return tuple(env)


def _log_path(request: ContainerRequest, sandbox: Sandbox, directory: Path) -> str:
    if not request.log_path:
        return str(directory / "container.log")
    base = Path(sandbox.log_directory) if sandbox.log_directory else directory
    return str(base / request.log_path)


def _pod_mounts(request: ContainerRequest, sandbox: Sandbox) -> tuple[MountSpec, ...]:
    wanted = {m.container_path for m in request.mounts}
    files = Path(sandbox.files_dir)
    mounts = [
        MountSpec(f"/etc/{name}", str(files / name), "bind", ("rbind", "rprivate"))
        for name in _POD_FILES
        if f"/etc/{name}" not in wanted
    ]
    if "/dev/shm" not in wanted:
        source = sandbox.shm_path or "/dev/shm"
        mounts.append(MountSpec("/dev/shm", source, "bind", ("rbind", "rprivate")))
    return tuple(mounts)


def _namespaces(
    request: ContainerRequest, sandbox: Sandbox, pid_target: Container | None
) -> dict[str, str]:
    namespaces = {
        "network": sandbox.netns or HOST,
        "ipc": sandbox.ipcns or HOST,
        "uts": sandbox.utsns or HOST,
        "mount": NEW,
        "pid": NEW,
    }
    if request.pid_mode == "node":
        namespaces["pid"] = HOST
    elif request.pid_mode == "pod":
        namespaces["pid"] = POD_PID
    elif request.pid_mode == "target":
        if pid_target is None or pid_target.state != "running" or not pid_target.pid:
            raise NotFound(
                f"target container {request.pid_target!r} for the PID namespace is not running"
            )
        namespaces["pid"] = f"/proc/{pid_target.pid}/ns/pid"
    return namespaces
