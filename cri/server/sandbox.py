"""Pod sandboxes: shared namespaces, CNI networking, DNS (issue "Pod sandboxes").

Not built yet: each RPC answers UNIMPLEMENTED naming itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from api.runtime.v1 import api_pb2 as pb
from cri.server.common import Context, not_built, not_built_stream


class SandboxRPCs:
    async def RunPodSandbox(
        self, request: pb.RunPodSandboxRequest, context: Context
    ) -> pb.RunPodSandboxResponse:
        raise not_built("RunPodSandbox")

    async def StopPodSandbox(
        self, request: pb.StopPodSandboxRequest, context: Context
    ) -> pb.StopPodSandboxResponse:
        raise not_built("StopPodSandbox")

    async def RemovePodSandbox(
        self, request: pb.RemovePodSandboxRequest, context: Context
    ) -> pb.RemovePodSandboxResponse:
        raise not_built("RemovePodSandbox")

    async def PodSandboxStatus(
        self, request: pb.PodSandboxStatusRequest, context: Context
    ) -> pb.PodSandboxStatusResponse:
        raise not_built("PodSandboxStatus")

    async def ListPodSandbox(
        self, request: pb.ListPodSandboxRequest, context: Context
    ) -> pb.ListPodSandboxResponse:
        raise not_built("ListPodSandbox")

    def StreamPodSandboxes(
        self, request: pb.StreamPodSandboxesRequest, context: Context
    ) -> AsyncIterator[pb.StreamPodSandboxesResponse]:
        return not_built_stream("StreamPodSandboxes")

    async def UpdatePodSandboxResources(
        self, request: pb.UpdatePodSandboxResourcesRequest, context: Context
    ) -> pb.UpdatePodSandboxResourcesResponse:
        raise not_built("UpdatePodSandboxResources")
