"""Container lifecycle events for the kubelet's evented PLEG.

Not built yet: each RPC answers UNIMPLEMENTED naming itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from api.runtime.v1 import api_pb2 as pb
from cri.server.common import Context, not_built_stream


class EventsRPCs:
    def GetContainerEvents(
        self, request: pb.GetEventsRequest, context: Context
    ) -> AsyncIterator[pb.ContainerEventResponse]:
        return not_built_stream("GetContainerEvents")
