"""Containers: create, start, stop, remove, list, status, resources, logs, exec-sync."""

from __future__ import annotations

import json
import signal as signals
from collections.abc import AsyncIterator
from dataclasses import asdict

from google.protobuf.json_format import MessageToDict

from api.runtime.v1 import api_pb2 as pb
from cri.container_plan import ContainerRequest, PidMode
from cri.container_record import CREATED, EXITED, RUNNING, Container, CriMount, Propagation
from cri.containers import ContainerManager
from cri.daemon_state import DaemonState
from cri.encoded import EncodedList, as_response
from cri.errors import InvalidArgument, clip
from cri.server.common import Context, batches
from cri.server.convert import known, refuse_user_namespaces, resources
from runtime.container_spec import DeviceSpec, SecuritySpec

_PROPAGATION: dict[pb.MountPropagation.ValueType, Propagation] = {
    pb.MountPropagation.PROPAGATION_PRIVATE: "private",
    pb.MountPropagation.PROPAGATION_HOST_TO_CONTAINER: "slave",
    pb.MountPropagation.PROPAGATION_BIDIRECTIONAL: "shared",
}
_PROPAGATION_BACK = {v: k for k, v in _PROPAGATION.items()}
_STATES = {
    CREATED: pb.ContainerState.CONTAINER_CREATED,
    RUNNING: pb.ContainerState.CONTAINER_RUNNING,
    EXITED: pb.ContainerState.CONTAINER_EXITED,
}
_STATE_NAMES = {v: k for k, v in _STATES.items()}


def _seccomp(ctx: pb.LinuxContainerSecurityContext) -> tuple[str, str]:
    if ctx.HasField("seccomp"):
        kind = ctx.seccomp.profile_type
        if kind == pb.SecurityProfile.ProfileType.Unconfined:
            return "unconfined", ""
        if kind == pb.SecurityProfile.ProfileType.Localhost:
            return "localhost", ctx.seccomp.localhost_ref
        return "runtime/default", ""
    legacy = ctx.seccomp_profile_path
    if legacy == "unconfined":
        return "unconfined", ""
    if legacy.startswith("localhost/"):
        return "localhost", legacy.removeprefix("localhost")
    if legacy in ("runtime/default", "docker/default"):
        return "runtime/default", ""
    # Nothing said means Unconfined, as in the kubelet and the other runtimes.
    return "unconfined", ""


_PID_MODES: dict[int, PidMode] = {
    pb.NamespaceMode.POD: "pod",
    pb.NamespaceMode.CONTAINER: "container",
    pb.NamespaceMode.NODE: "node",
    pb.NamespaceMode.TARGET: "target",
}


def _check_enums(config: pb.ContainerConfig, what: str) -> None:
    """Enum values this CRI version does not define are refused by name, not read as
    their defaults."""
    ctx = config.linux.security_context
    for profile in ("seccomp", "apparmor"):
        if ctx.HasField(profile):
            kind = getattr(ctx, profile).profile_type
            known(pb.SecurityProfile.ProfileType, kind, f"{what}: {profile}.profile_type")
    refuse_user_namespaces(ctx.namespace_options, what)
    known(pb.NamespaceMode, ctx.namespace_options.pid, f"{what}: namespace_options.pid")
    known(pb.Signal, config.stop_signal, f"{what}: stop_signal")
    for mount in config.mounts:
        known(
            pb.MountPropagation,
            mount.propagation,
            f"{what}: mount at {clip(mount.container_path)!r}: propagation",
        )


def _apparmor_localhost(ctx: pb.LinuxContainerSecurityContext) -> str:
    if (
        ctx.HasField("apparmor")
        and ctx.apparmor.profile_type == pb.SecurityProfile.ProfileType.Localhost
    ):
        return ctx.apparmor.localhost_ref or "localhost"
    if ctx.apparmor_profile.startswith("localhost/"):
        return ctx.apparmor_profile
    return ""


def _security(ctx: pb.LinuxContainerSecurityContext) -> SecuritySpec:
    seccomp_kind, seccomp_path = _seccomp(ctx)
    return SecuritySpec(
        privileged=ctx.privileged,
        capabilities_add=tuple(ctx.capabilities.add_capabilities),
        capabilities_drop=tuple(ctx.capabilities.drop_capabilities),
        no_new_privileges=ctx.no_new_privs,
        readonly_rootfs=ctx.readonly_rootfs,
        seccomp=seccomp_kind,  # type: ignore[arg-type]
        seccomp_profile_path=seccomp_path,
        masked_paths=tuple(ctx.masked_paths) or None,
        readonly_paths=tuple(ctx.readonly_paths) or None,
    )


def _mount(m: pb.Mount) -> CriMount:
    return CriMount(
        m.container_path,
        m.host_path,
        m.readonly,
        _PROPAGATION.get(m.propagation, "private"),
        m.recursive_read_only,
        m.image.image,
        m.image_sub_path,
    )


def request_from(request: pb.CreateContainerRequest) -> ContainerRequest:
    """The request as plain data; its values are checked by `check_request`."""
    config = request.config
    _check_enums(config, f"container {clip(config.metadata.name)!r}")
    if not config.HasField("metadata"):
        raise InvalidArgument("config.metadata is required")
    ctx = config.linux.security_context
    has_resources = config.linux.HasField("resources")
    return ContainerRequest(
        sandbox_id=request.pod_sandbox_id,
        name=config.metadata.name,
        attempt=config.metadata.attempt,
        image=config.image.image,
        user_specified_image=config.image.user_specified_image,
        command=tuple(config.command),
        args=tuple(config.args),
        working_dir=config.working_dir,
        envs=tuple((e.key, e.value.decode(errors="surrogateescape")) for e in config.envs),
        mounts=tuple(_mount(m) for m in config.mounts),
        devices=tuple(
            DeviceSpec(d.container_path, d.host_path, d.permissions or "rwm")
            for d in config.devices
        ),
        labels=dict(config.labels),
        annotations=dict(config.annotations),
        log_path=config.log_path,
        stdin=config.stdin,
        stdin_once=config.stdin_once,
        tty=config.tty,
        resources=resources(config.linux.resources) if has_resources else None,
        oom_score_adj=config.linux.resources.oom_score_adj if has_resources else None,
        security=_security(ctx),
        run_as_user=ctx.run_as_user.value if ctx.HasField("run_as_user") else None,
        run_as_username=ctx.run_as_username,
        run_as_group=ctx.run_as_group.value if ctx.HasField("run_as_group") else None,
        supplemental_groups=tuple(ctx.supplemental_groups),
        strict_supplemental_groups=ctx.supplemental_groups_policy
        == pb.SupplementalGroupsPolicy.Strict,
        pid_mode=_PID_MODES[ctx.namespace_options.pid],
        pid_target=ctx.namespace_options.target_id,
        apparmor_localhost=_apparmor_localhost(ctx),
        stop_signal=_signal(config.stop_signal),
        config_json=MessageToDict(config, preserving_proto_field_name=True),
    )


def _signal(value: pb.Signal.ValueType) -> int:
    if value == pb.Signal.SIGNAL_RUNTIME_DEFAULT:
        return 0
    name = pb.Signal.Name(value).removeprefix("SIGNAL_")
    if name.startswith("SIGRTMINPLUS"):
        return int(signals.SIGRTMIN) + int(name.removeprefix("SIGRTMINPLUS"))
    if name.startswith("SIGRTMAXMINUS"):
        return int(signals.SIGRTMAX) - int(name.removeprefix("SIGRTMAXMINUS"))
    return int(getattr(signals, name, 0)) if hasattr(signals, name) else 0


def _metadata(c: Container) -> pb.ContainerMetadata:
    return pb.ContainerMetadata(name=c.name, attempt=c.attempt)


def container_to_proto(c: Container) -> pb.Container:
    return pb.Container(
        id=c.id,
        pod_sandbox_id=c.sandbox_id,
        metadata=_metadata(c),
        image=pb.ImageSpec(image=c.image),
        image_ref=c.image_ref,
        image_id=c.image_id,
        state=_STATES[c.state],
        created_at=c.created_ns,
        labels=c.labels,
        annotations=c.annotations,
    )


def _mount_to_proto(m: CriMount) -> pb.Mount:
    return pb.Mount(
        container_path=m.container_path,
        host_path=m.host_path,
        readonly=m.readonly,
        recursive_read_only=m.recursive_read_only,
        propagation=_PROPAGATION_BACK.get(m.propagation, pb.MountPropagation.PROPAGATION_PRIVATE),
        image=pb.ImageSpec(image=m.volume_image, image_ref=m.volume_image_id)
        if m.volume_image_id
        else None,
        image_sub_path=m.image_sub_path,
    )


def status_to_proto(c: Container) -> pb.ContainerStatus:
    status = pb.ContainerStatus(
        id=c.id,
        metadata=_metadata(c),
        state=_STATES[c.state],
        created_at=c.created_ns,
        started_at=c.started_ns,
        finished_at=c.finished_ns,
        exit_code=c.exit_code,
        image=pb.ImageSpec(image=c.image_name or c.image),
        image_ref=c.image_ref,
        image_id=c.image_id,
        reason=c.reason,
        message=c.message,
        labels=c.labels,
        annotations=c.annotations,
        mounts=[_mount_to_proto(m) for m in c.mounts],
        log_path=c.log_path,
        user=pb.ContainerUser(
            linux=pb.LinuxContainerUser(uid=c.uid, gid=c.gid, supplemental_groups=c.groups)
        ),
    )
    if c.resources:
        r = c.resources
        status.resources.linux.CopyFrom(
            pb.LinuxContainerResources(
                cpu_period=r.cpu_period or 0,
                cpu_quota=r.cpu_quota or 0,
                cpu_shares=r.cpu_shares or 0,
                memory_limit_in_bytes=r.memory_limit or 0,
                cpuset_cpus=r.cpuset_cpus,
                cpuset_mems=r.cpuset_mems,
                memory_swap_limit_in_bytes=r.memory_swap or 0,
                unified=r.unified,
            )
        )
    return status


def container_list() -> EncodedList[Container]:
    """ListContainers' answers: what it shows of a container changes with its state."""
    field = pb.ListContainersResponse.DESCRIPTOR.fields_by_name["containers"].number
    return EncodedList(field, container_to_proto, lambda c: c.id, lambda c: c.state)


class ContainerRPCs:
    state: DaemonState
    containers: ContainerManager
    container_list: EncodedList[Container]

    async def CreateContainer(
        self, request: pb.CreateContainerRequest, context: Context
    ) -> pb.CreateContainerResponse:
        container_id = await self.containers.create(request_from(request))
        return pb.CreateContainerResponse(container_id=container_id)

    async def StartContainer(
        self, request: pb.StartContainerRequest, context: Context
    ) -> pb.StartContainerResponse:
        await self.containers.start(request.container_id)
        return pb.StartContainerResponse()

    async def StopContainer(
        self, request: pb.StopContainerRequest, context: Context
    ) -> pb.StopContainerResponse:
        timeout = float(request.timeout) if request.timeout > 0 else 0.0
        await self.containers.stop(request.container_id, timeout)
        return pb.StopContainerResponse()

    async def RemoveContainer(
        self, request: pb.RemoveContainerRequest, context: Context
    ) -> pb.RemoveContainerResponse:
        await self.containers.remove(request.container_id)
        return pb.RemoveContainerResponse()

    async def _found_containers(self, f: pb.ContainerFilter) -> list[Container]:
        state = _STATE_NAMES.get(f.state.state) if f.HasField("state") else None
        if f.HasField("state") and state is None:
            return []  # CONTAINER_UNKNOWN: skiff always knows
        return await self.containers.select(f.id, state, f.pod_sandbox_id, dict(f.label_selector))

    async def ListContainers(
        self, request: pb.ListContainersRequest, context: Context
    ) -> pb.ListContainersResponse:
        if request.filter.ByteSize() == 0:  # the kubelet's relist, every second
            answer = self.container_list.everything(
                self.state.store.generation("container"),
                lambda: sorted(self.containers.everything(), key=lambda c: c.created_ns),
            )
        else:
            found = await self._found_containers(request.filter)
            answer = self.container_list.response(found, everything=False)
        return as_response(answer, pb.ListContainersResponse)

    async def StreamContainers(
        self, request: pb.StreamContainersRequest, context: Context
    ) -> AsyncIterator[pb.StreamContainersResponse]:
        items = [container_to_proto(c) for c in await self._found_containers(request.filter)]
        for batch in batches(items):
            yield pb.StreamContainersResponse(containers=batch)

    async def ContainerStatus(
        self, request: pb.ContainerStatusRequest, context: Context
    ) -> pb.ContainerStatusResponse:
        container = await self.containers.get(request.container_id)
        info = {}
        if request.verbose:
            info["info"] = json.dumps(asdict(container), sort_keys=True)
        return pb.ContainerStatusResponse(status=status_to_proto(container), info=info)

    async def UpdateContainerResources(
        self, request: pb.UpdateContainerResourcesRequest, context: Context
    ) -> pb.UpdateContainerResourcesResponse:
        if not request.HasField("linux"):
            raise InvalidArgument("linux resources are required")
        await self.containers.update_resources(request.container_id, resources(request.linux))
        return pb.UpdateContainerResourcesResponse()

    async def ReopenContainerLog(
        self, request: pb.ReopenContainerLogRequest, context: Context
    ) -> pb.ReopenContainerLogResponse:
        await self.containers.reopen_log(request.container_id)
        return pb.ReopenContainerLogResponse()

    async def ExecSync(self, request: pb.ExecSyncRequest, context: Context) -> pb.ExecSyncResponse:
        timeout = float(request.timeout) if request.timeout > 0 else None
        code, out, err = await self.containers.exec_sync(
            request.container_id, list(request.cmd), timeout
        )
        return pb.ExecSyncResponse(stdout=out, stderr=err, exit_code=code)
