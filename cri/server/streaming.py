"""Streaming: the Exec, Attach and PortForward URLs on skiff's streaming server.

Not built yet: each RPC answers UNIMPLEMENTED naming itself.
"""

from __future__ import annotations

from api.runtime.v1 import api_pb2 as pb
from cri.server.common import Context, not_built


class StreamingRPCs:
    async def Exec(self, request: pb.ExecRequest, context: Context) -> pb.ExecResponse:
        raise not_built("Exec")

    async def Attach(self, request: pb.AttachRequest, context: Context) -> pb.AttachResponse:
        raise not_built("Attach")

    async def PortForward(
        self, request: pb.PortForwardRequest, context: Context
    ) -> pb.PortForwardResponse:
        raise not_built("PortForward")
