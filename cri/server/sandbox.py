"""Pod sandboxes: run, stop, remove, status, list."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import AsyncIterator, Mapping

from google.protobuf.json_format import MessageToDict

from api.runtime.v1 import api_pb2 as pb
from cri.containers import ContainerManager
from cri.daemon_state import DaemonState
from cri.encoded import EncodedList, as_response
from cri.errors import InvalidArgument, clip
from cri.sandboxes import READY, Sandbox, SandboxManager, SandboxSpec
from cri.server.common import Context, batches
from cri.server.convert import known, refuse_user_namespaces, resources
from network.cni import PortMapping
from network.pod_files import DnsSettings

INGRESS_BANDWIDTH = "kubernetes.io/ingress-bandwidth"
EGRESS_BANDWIDTH = "kubernetes.io/egress-bandwidth"
# The CNI bandwidth plugin wants a burst; like other runtimes, do not limit bursts.
UNLIMITED_BURST = 2**32 - 1
# The largest rate the kubelet takes (1P bit/s); the plugin's own fields are 64 bits.
MAX_BANDWIDTH = 10**15
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_SUFFIX = {
    None: 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


def bits_per_second(annotation: str, value: str) -> int:
    """A Kubernetes quantity (e.g. "10M") from a bandwidth annotation, in bit/s."""
    match = _QUANTITY.match(value.strip())
    if not match:
        raise InvalidArgument(
            f"annotation {annotation}: {clip(value)!r} is not a quantity (e.g. 10M, 1Gi)"
        )
    exact = float(match.group(1)) * _SUFFIX[match.group(2)]
    if exact > MAX_BANDWIDTH:  # also a number of digits no float holds (inf)
        raise InvalidArgument(
            f"annotation {annotation}: {clip(value)!r} is above 1P bit/s, the kubelet's limit"
        )
    rate = int(exact)
    if rate <= 0:
        raise InvalidArgument(f"annotation {annotation}: the rate must be positive")
    if rate > MAX_BANDWIDTH:
        raise InvalidArgument(
            f"annotation {annotation}: {clip(value)!r} is above 1P bit/s, the kubelet's limit"
        )
    return rate


def bandwidth_from(annotations: Mapping[str, str]) -> dict[str, int] | None:
    limits: dict[str, int] = {}
    if INGRESS_BANDWIDTH in annotations:
        limits["ingressRate"] = bits_per_second(INGRESS_BANDWIDTH, annotations[INGRESS_BANDWIDTH])
        limits["ingressBurst"] = UNLIMITED_BURST
    if EGRESS_BANDWIDTH in annotations:
        limits["egressRate"] = bits_per_second(EGRESS_BANDWIDTH, annotations[EGRESS_BANDWIDTH])
        limits["egressBurst"] = UNLIMITED_BURST
    return limits or None


_PROTOCOLS = {pb.Protocol.TCP: "tcp", pb.Protocol.UDP: "udp", pb.Protocol.SCTP: "sctp"}
_PID_MODES = {pb.NamespaceMode.POD: "pod", pb.NamespaceMode.CONTAINER: "container"}


def port_mappings(config: pb.PodSandboxConfig, what: str) -> tuple[PortMapping, ...]:
    """The mappings with a host port (0 means none: the kubelet lists every container
    port), each checked: ports in range, a known protocol, host_ip an address."""
    out = []
    for p in config.port_mappings:
        mapping = f"{what}: port mapping {p.host_port}->{p.container_port}"
        known(pb.Protocol, p.protocol, f"{mapping}: protocol")
        if not 0 <= p.host_port <= 65535:
            raise InvalidArgument(f"{mapping}: host_port must be 0 (none) or 1 to 65535")
        if not 0 < p.container_port <= 65535:
            raise InvalidArgument(f"{mapping}: container_port must be 1 to 65535")
        if p.host_ip:
            try:
                ipaddress.ip_address(p.host_ip)
            except ValueError:
                raise InvalidArgument(
                    f"{mapping}: host_ip {clip(p.host_ip)!r} is not an IP address"
                ) from None
        if p.host_port:
            out.append(
                PortMapping(p.host_port, p.container_port, _PROTOCOLS[p.protocol], p.host_ip)
            )
    return tuple(out)


def spec_from(request: pb.RunPodSandboxRequest) -> SandboxSpec:
    config = request.config
    meta = config.metadata
    linux = config.linux
    ns = linux.security_context.namespace_options
    what = f"pod {clip(meta.name)!r} in namespace {clip(meta.namespace)!r}"
    refuse_user_namespaces(ns, what)
    for kind in ("network", "pid", "ipc"):
        known(pb.NamespaceMode, getattr(ns, kind), f"{what}: namespace_options.{kind}")
    pod_resources = None
    if linux.HasField("resources"):
        pod_resources = resources(linux.resources)
    return SandboxSpec(
        name=meta.name,
        namespace=meta.namespace,
        uid=meta.uid,
        attempt=meta.attempt,
        hostname=config.hostname,
        log_directory=config.log_directory,
        dns=DnsSettings(
            tuple(config.dns_config.servers),
            tuple(config.dns_config.searches),
            tuple(config.dns_config.options),
        ),
        port_mappings=port_mappings(config, what),
        labels=dict(config.labels),
        annotations=dict(config.annotations),
        runtime_handler=request.runtime_handler,
        host_network=ns.network == pb.NamespaceMode.NODE,
        host_ipc=ns.ipc == pb.NamespaceMode.NODE,
        host_pid=ns.pid == pb.NamespaceMode.NODE,
        pid_mode="node" if ns.pid == pb.NamespaceMode.NODE else _PID_MODES.get(ns.pid, "container"),
        cgroup_parent=linux.cgroup_parent,
        resources=pod_resources,
        sysctls=dict(linux.sysctls),
        bandwidth=bandwidth_from(config.annotations),
        config_json=MessageToDict(config, preserving_proto_field_name=True),
    )


def _metadata(sandbox: Sandbox) -> pb.PodSandboxMetadata:
    return pb.PodSandboxMetadata(
        name=sandbox.name, uid=sandbox.uid, namespace=sandbox.namespace, attempt=sandbox.attempt
    )


def _state(sandbox: Sandbox) -> pb.PodSandboxState.ValueType:
    return (
        pb.PodSandboxState.SANDBOX_READY
        if sandbox.state == READY
        else pb.PodSandboxState.SANDBOX_NOTREADY
    )


def _mode(host: bool, pod_mode: str = "pod") -> pb.NamespaceMode.ValueType:
    if host:
        return pb.NamespaceMode.NODE
    return pb.NamespaceMode.POD if pod_mode == "pod" else pb.NamespaceMode.CONTAINER


def sandbox_to_proto(sandbox: Sandbox) -> pb.PodSandbox:
    return pb.PodSandbox(
        id=sandbox.id,
        metadata=_metadata(sandbox),
        state=_state(sandbox),
        created_at=sandbox.created_ns,
        labels=sandbox.labels,
        annotations=sandbox.annotations,
        runtime_handler=sandbox.runtime_handler,
    )


def status_to_proto(sandbox: Sandbox) -> pb.PodSandboxStatus:
    ips = sandbox.ips
    network = pb.PodSandboxNetworkStatus(
        ip=ips[0] if ips else "", additional_ips=[pb.PodIP(ip=ip) for ip in ips[1:]]
    )
    options = pb.NamespaceOption(
        network=_mode(sandbox.host_network),
        pid=_mode(sandbox.host_pid, sandbox.pid_mode),
        ipc=_mode(sandbox.host_ipc),
    )
    return pb.PodSandboxStatus(
        id=sandbox.id,
        metadata=_metadata(sandbox),
        state=_state(sandbox),
        created_at=sandbox.created_ns,
        network=network,
        linux=pb.LinuxPodSandboxStatus(namespaces=pb.Namespace(options=options)),
        labels=sandbox.labels,
        annotations=sandbox.annotations,
        runtime_handler=sandbox.runtime_handler,
    )


def sandbox_list() -> EncodedList[Sandbox]:
    """ListPodSandbox's answers: what it shows of a pod changes with its state."""
    field = pb.ListPodSandboxResponse.DESCRIPTOR.fields_by_name["items"].number
    return EncodedList(field, sandbox_to_proto, lambda s: s.id, lambda s: s.state)


class SandboxRPCs:
    state: DaemonState
    sandboxes: SandboxManager
    containers: ContainerManager
    sandbox_list: EncodedList[Sandbox]

    async def RunPodSandbox(
        self, request: pb.RunPodSandboxRequest, context: Context
    ) -> pb.RunPodSandboxResponse:
        sandbox_id = await self.sandboxes.run(spec_from(request))
        return pb.RunPodSandboxResponse(pod_sandbox_id=sandbox_id)

    async def StopPodSandbox(
        self, request: pb.StopPodSandboxRequest, context: Context
    ) -> pb.StopPodSandboxResponse:
        await self.sandboxes.stop(request.pod_sandbox_id, self.containers)
        return pb.StopPodSandboxResponse()

    async def RemovePodSandbox(
        self, request: pb.RemovePodSandboxRequest, context: Context
    ) -> pb.RemovePodSandboxResponse:
        await self.sandboxes.remove(request.pod_sandbox_id, self.containers)
        return pb.RemovePodSandboxResponse()

    async def PodSandboxStatus(
        self, request: pb.PodSandboxStatusRequest, context: Context
    ) -> pb.PodSandboxStatusResponse:
        sandbox = self.sandboxes.get(request.pod_sandbox_id)
        info = {"info": sandbox.info_json()} if request.verbose else {}
        return pb.PodSandboxStatusResponse(status=status_to_proto(sandbox), info=info)

    def _found_sandboxes(self, f: pb.PodSandboxFilter) -> list[Sandbox]:
        state = None
        if f.HasField("state"):
            if f.state.state not in pb.PodSandboxState.values():
                return []  # no pod is in a state the CRI does not name
            state = "ready" if f.state.state == pb.PodSandboxState.SANDBOX_READY else "notready"
        return self.sandboxes.select(f.id, state, dict(f.label_selector))

    async def ListPodSandbox(
        self, request: pb.ListPodSandboxRequest, context: Context
    ) -> pb.ListPodSandboxResponse:
        if request.filter.ByteSize() == 0:  # the kubelet's relist, every second
            answer = self.sandbox_list.everything(
                self.state.store.generation("sandbox"), self.sandboxes.select
            )
        else:
            answer = self.sandbox_list.response(
                self._found_sandboxes(request.filter), everything=False
            )
        return as_response(answer, pb.ListPodSandboxResponse)

    async def StreamPodSandboxes(
        self, request: pb.StreamPodSandboxesRequest, context: Context
    ) -> AsyncIterator[pb.StreamPodSandboxesResponse]:
        items = [sandbox_to_proto(s) for s in self._found_sandboxes(request.filter)]
        for batch in batches(items):
            yield pb.StreamPodSandboxesResponse(pod_sandboxes=batch)

    async def UpdatePodSandboxResources(
        self, request: pb.UpdatePodSandboxResourcesRequest, context: Context
    ) -> pb.UpdatePodSandboxResourcesResponse:
        def as_dict(message: pb.LinuxContainerResources, given: bool) -> dict[str, object] | None:
            return MessageToDict(message, preserving_proto_field_name=True) if given else None

        await self.sandboxes.update_resources(
            request.pod_sandbox_id,
            as_dict(request.resources, request.HasField("resources")),
            as_dict(request.overhead, request.HasField("overhead")),
        )
        return pb.UpdatePodSandboxResourcesResponse()
