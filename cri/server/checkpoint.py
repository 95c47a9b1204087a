"""Checkpoint and restore of containers and pods.

Not built yet: each RPC answers UNIMPLEMENTED naming itself.
"""

from __future__ import annotations

from api.runtime.v1 import api_pb2 as pb
from cri.server.common import Context, not_built


class CheckpointRPCs:
    async def CheckpointContainer(
        self, request: pb.CheckpointContainerRequest, context: Context
    ) -> pb.CheckpointContainerResponse:
        raise not_built("CheckpointContainer")

    async def CheckpointPod(
        self, request: pb.CheckpointPodRequest, context: Context
    ) -> pb.CheckpointPodResponse:
        raise not_built("CheckpointPod")

    async def RestorePod(
        self, request: pb.RestorePodRequest, context: Context
    ) -> pb.RestorePodResponse:
        raise not_built("RestorePod")
