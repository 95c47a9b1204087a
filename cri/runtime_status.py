"""The runtime's answers to Version, Status and RuntimeConfig, as plain data.

RuntimeReady needs the default handler's OCI runtime and conmon to run; NetworkReady
needs a usable CNI network config. Features are reported as skiff really supports
them today, never ahead of the code: recursive read-only mounts where the handler's OCI
runtime and the kernel can make them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

from cri import VERSION
from cri.daemon_state import DaemonState
from runtime.mounts import kernel_has_mount_setattr

RUNTIME_NAME = "skiff"
RUNTIME_API_VERSION = "v1"
# The version field of VersionResponse: the kubelet runtime API version, fixed by CRI.
KUBELET_API_VERSION = "0.1.0"
RUNTIME_READY = "RuntimeReady"
NETWORK_READY = "NetworkReady"
# Where UpdateRuntimeConfig keeps the node's pod CIDR (state store setting).
POD_CIDR_SETTING = "pod_cidr"


@dataclass(frozen=True)
class Condition:
    type: str
    ready: bool
    reason: str = ""
    message: str = ""


@dataclass(frozen=True)
class HandlerFeatures:
    name: str
    recursive_read_only_mounts: bool
    user_namespaces: bool


@dataclass(frozen=True)
class RuntimeReport:
    conditions: tuple[Condition, ...]
    handlers: tuple[HandlerFeatures, ...]
    supplemental_groups_policy: bool
    user_namespaces_host_network: bool
    mount_options: bool
    info: dict[str, str]


@dataclass(frozen=True)
class VersionReport:
    version: str
    runtime_name: str
    runtime_version: str
    runtime_api_version: str


def version() -> VersionReport:
    return VersionReport(KUBELET_API_VERSION, RUNTIME_NAME, VERSION, RUNTIME_API_VERSION)


async def runtime_condition(state: DaemonState) -> tuple[Condition, dict[str, object]]:
    runtime = state.config.runtime
    handler = runtime.handlers[runtime.default_handler]
    oci = await state.programs.probe(handler.path)
    conmon = await state.programs.probe(runtime.conmon)
    programs: dict[str, object] = {
        f"handler {runtime.default_handler}": asdict(oci),
        "conmon": asdict(conmon),
    }
    if not oci.usable:
        message = f"OCI runtime of default handler {runtime.default_handler!r}: {oci.problem}"
        return Condition(RUNTIME_READY, False, "OCIRuntimeNotReady", message), programs
    if not conmon.usable:
        return Condition(RUNTIME_READY, False, "ConmonNotReady", conmon.problem), programs
    return Condition(RUNTIME_READY, True), programs


def network_condition(state: DaemonState) -> tuple[Condition, dict[str, object]]:
    readiness = state.cni.readiness()
    detail: dict[str, object] = {"problems": list(readiness.skipped)}
    if readiness.network is None:
        return Condition(NETWORK_READY, False, "NetworkPluginNotReady", readiness.message), detail
    detail["network"] = readiness.network.name
    detail["config_file"] = str(readiness.network.source)
    return Condition(NETWORK_READY, True), detail


async def status(state: DaemonState, verbose: bool) -> RuntimeReport:
    runtime_ready, programs = await runtime_condition(state)
    network_ready, network = network_condition(state)
    config = state.config
    # User namespaces are not supported by skiff's runner yet: reported false.
    handler_names = [config.runtime.default_handler, *sorted(config.runtime.handlers)]
    handlers = [
        HandlerFeatures(name, await supports_recursive_read_only(state, name), False)
        for name in handler_names
    ]
    # The empty name is the default handler, as RunPodSandbox takes it.
    handlers.insert(0, replace(handlers[0], name=""))
    info: dict[str, str] = {}
    if verbose:
        info["config"] = config.to_json()
        info["programs"] = json.dumps(programs, sort_keys=True)
        info["network"] = json.dumps(network, sort_keys=True)
        pod_cidr = state.store.setting(POD_CIDR_SETTING)
        if pod_cidr:
            info["pod_cidr"] = pod_cidr
    return RuntimeReport(
        conditions=(runtime_ready, network_ready),
        handlers=tuple(_unique(handlers)),
        # Merge and Strict are both honoured when containers' users are resolved.
        supplemental_groups_policy=True,
        user_namespaces_host_network=False,
        mount_options=False,
        info=info,
    )


async def supports_recursive_read_only(state: DaemonState, handler: str) -> bool:
    """A handler supports recursive read-only mounts when its OCI runtime knows the
    ``rro`` mount option and the kernel can apply it."""
    runtime = state.config.runtime
    known = runtime.handlers.get(handler or runtime.default_handler)
    if known is None or not kernel_has_mount_setattr():
        return False
    return "rro" in await state.programs.mount_options(known.path)


def _unique(handlers: list[HandlerFeatures]) -> list[HandlerFeatures]:
    seen: set[str] = set()
    out = []
    for h in handlers:
        if h.name not in seen:
            seen.add(h.name)
            out.append(h)
    return out
