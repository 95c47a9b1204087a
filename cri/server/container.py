"""Containers: create, start, stop, remove, list, status, resources, logs, exec-sync.

Not built yet: each RPC answers UNIMPLEMENTED naming itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from api.runtime.v1 import api_pb2 as pb
from cri.server.common import Context, not_built, not_built_stream


class ContainerRPCs:
    async def CreateContainer(
        self, request: pb.CreateContainerRequest, context: Context
    ) -> pb.CreateContainerResponse:
        raise not_built("CreateContainer")

    async def StartContainer(
        self, request: pb.StartContainerRequest, context: Context
    ) -> pb.StartContainerResponse:
        raise not_built("StartContainer")

    async def StopContainer(
        self, request: pb.StopContainerRequest, context: Context
    ) -> pb.StopContainerResponse:
        raise not_built("StopContainer")

    async def RemoveContainer(
        self, request: pb.RemoveContainerRequest, context: Context
    ) -> pb.RemoveContainerResponse:
        raise not_built("RemoveContainer")

    async def ListContainers(
        self, request: pb.ListContainersRequest, context: Context
    ) -> pb.ListContainersResponse:
        raise not_built("ListContainers")

    def StreamContainers(
        self, request: pb.StreamContainersRequest, context: Context
    ) -> AsyncIterator[pb.StreamContainersResponse]:
        return not_built_stream("StreamContainers")

    async def ContainerStatus(
        self, request: pb.ContainerStatusRequest, context: Context
    ) -> pb.ContainerStatusResponse:
        raise not_built("ContainerStatus")

    async def UpdateContainerResources(
        self, request: pb.UpdateContainerResourcesRequest, context: Context
    ) -> pb.UpdateContainerResourcesResponse:
        raise not_built("UpdateContainerResources")

    async def ReopenContainerLog(
        self, request: pb.ReopenContainerLogRequest, context: Context
    ) -> pb.ReopenContainerLogResponse:
        raise not_built("ReopenContainerLog")

    async def ExecSync(self, request: pb.ExecSyncRequest, context: Context) -> pb.ExecSyncResponse:
        raise not_built("ExecSync")
