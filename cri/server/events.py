"""Container lifecycle events for the kubelet's evented PLEG (GetContainerEvents).

Each event carries the pod sandbox's status and the statuses of the pod's containers
as they were when the event happened. Pod sandbox changes are sent too, with the
sandbox id as the container id, as for the infra container of other runtimes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from api.runtime.v1 import api_pb2 as pb
from cri import events
from cri.containers import ContainerManager
from cri.daemon_state import DaemonState
from cri.events import EventBus
from cri.sandboxes import SandboxManager
from cri.server.common import Context
from cri.server.container import status_to_proto as container_status
from cri.server.sandbox import status_to_proto as sandbox_status

_TYPES = {
    events.CREATED: pb.ContainerEventType.CONTAINER_CREATED_EVENT,
    events.STARTED: pb.ContainerEventType.CONTAINER_STARTED_EVENT,
    events.STOPPED: pb.ContainerEventType.CONTAINER_STOPPED_EVENT,
    events.DELETED: pb.ContainerEventType.CONTAINER_DELETED_EVENT,
}


def install_describer(
    bus: EventBus, sandboxes: SandboxManager, containers: ContainerManager
) -> None:
    def describe(
        kind: str, object_id: str, sandbox_id: str, at_ns: int
    ) -> pb.ContainerEventResponse:
        event = pb.ContainerEventResponse(
            container_id=object_id, container_event_type=_TYPES[kind], created_at=at_ns
        )
        sandbox = sandboxes.by_id(sandbox_id)
        if sandbox is not None:
            event.pod_sandbox_status.CopyFrom(sandbox_status(sandbox))
        event.containers_statuses.extend(
            container_status(c)
            for c in sorted(containers.of_sandbox(sandbox_id), key=lambda c: c.created_ns)
        )
        return event

    bus.describe = describe


class EventsRPCs:
    state: DaemonState

    async def GetContainerEvents(
        self, request: pb.GetEventsRequest, context: Context
    ) -> AsyncIterator[pb.ContainerEventResponse]:
        subscription = self.state.events.subscribe()
        try:
            while True:
                yield await subscription.next()
        finally:
            subscription.close()
