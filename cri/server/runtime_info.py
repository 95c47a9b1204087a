"""Version, Status, RuntimeConfig and UpdateRuntimeConfig."""

from __future__ import annotations

import ipaddress
import logging

from api.runtime.v1 import api_pb2 as pb
from cri import runtime_status
from cri.daemon_state import DaemonState
from cri.errors import InvalidArgument, clip
from cri.runtime_status import POD_CIDR_SETTING
from cri.server.common import Context

log = logging.getLogger("skiff.runtime")


class RuntimeInfoRPCs:
    state: DaemonState

    async def Version(self, request: pb.VersionRequest, context: Context) -> pb.VersionResponse:
        report = runtime_status.version()
        return pb.VersionResponse(
            version=report.version,
            runtime_name=report.runtime_name,
            runtime_version=report.runtime_version,
            runtime_api_version=report.runtime_api_version,
        )

    async def Status(self, request: pb.StatusRequest, context: Context) -> pb.StatusResponse:
        report = await runtime_status.status(self.state, request.verbose)
        return pb.StatusResponse(
            status=pb.RuntimeStatus(
                conditions=[
                    pb.RuntimeCondition(
                        type=c.type, status=c.ready, reason=c.reason, message=c.message
                    )
                    for c in report.conditions
                ]
            ),
            info=report.info,
            runtime_handlers=[
                pb.RuntimeHandler(
                    name=h.name,
                    features=pb.RuntimeHandlerFeatures(
                        recursive_read_only_mounts=h.recursive_read_only_mounts,
                        user_namespaces=h.user_namespaces,
                    ),
                )
                for h in report.handlers
            ],
            features=pb.RuntimeFeatures(
                supplemental_groups_policy=report.supplemental_groups_policy,
                user_namespaces_host_network=report.user_namespaces_host_network,
                mount_options=report.mount_options,
            ),
        )

    async def RuntimeConfig(
        self, request: pb.RuntimeConfigRequest, context: Context
    ) -> pb.RuntimeConfigResponse:
        # The enum's zero value means systemd, so cgroupfs must always be sent explicitly.
        driver = (
            pb.CgroupDriver.SYSTEMD
            if self.state.config.runtime.cgroup_driver == "systemd"
            else pb.CgroupDriver.CGROUPFS
        )
        return pb.RuntimeConfigResponse(linux=pb.LinuxRuntimeConfiguration(cgroup_driver=driver))

    async def UpdateRuntimeConfig(
        self, request: pb.UpdateRuntimeConfigRequest, context: Context
    ) -> pb.UpdateRuntimeConfigResponse:
        cidr = request.runtime_config.network_config.pod_cidr
        if cidr:
            for part in cidr.split(","):
                try:
                    ipaddress.ip_network(part.strip(), strict=False)
                except ValueError:
                    raise InvalidArgument(
                        f"runtime_config.network_config.pod_cidr: {clip(part.strip())!r} "
                        "is not a CIDR (want e.g. 10.244.0.0/24, or two joined by a comma)"
                    ) from None
            if self.state.store.setting(POD_CIDR_SETTING) != cidr:
                await self.state.store.set_setting(POD_CIDR_SETTING, cidr)
                log.info("pod CIDR updated", extra={"pod_cidr": cidr})
        return pb.UpdateRuntimeConfigResponse()
