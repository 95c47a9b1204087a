"""Streaming: the Exec, Attach and PortForward URLs on skiff's streaming server."""

from __future__ import annotations

from api.runtime.v1 import api_pb2 as pb
from cri.container_record import RUNNING
from cri.containers import ContainerManager
from cri.errors import FailedPrecondition, InvalidArgument
from cri.request_checks import check_command
from cri.sandboxes import READY, SandboxManager
from cri.server.common import Context
from cri.streaming.server import PendingRequest, StreamingServer

HOST_NETNS = "/proc/self/ns/net"


class StreamingRPCs:
    containers: ContainerManager
    sandboxes: SandboxManager
    streaming: StreamingServer

    async def _running(self, container_id: str) -> tuple[str, str]:
        container = await self.containers.get(container_id)
        if container.state != RUNNING:
            raise FailedPrecondition(f"container {container.id} is {container.state}, not running")
        return container.id, container.runtime_handler

    async def Exec(self, request: pb.ExecRequest, context: Context) -> pb.ExecResponse:
        check_command(request.cmd)
        if not (request.stdin or request.stdout or request.stderr):
            raise InvalidArgument("one of stdin, stdout and stderr must be true")
        if request.tty and request.stderr:
            raise InvalidArgument("tty and stderr cannot both be true (a terminal has one stream)")
        container_id, handler = await self._running(request.container_id)
        url = self.streaming.register(
            PendingRequest(
                "exec",
                runtime=self.containers.runtime(handler),
                container_id=container_id,
                command=tuple(request.cmd),
                tty=request.tty,
                stdin=request.stdin,
                stdout=request.stdout,
                stderr=request.stderr,
            )
        )
        return pb.ExecResponse(url=url)

    async def Attach(self, request: pb.AttachRequest, context: Context) -> pb.AttachResponse:
        if not (request.stdin or request.stdout or request.stderr):
            raise InvalidArgument("one of stdin, stdout and stderr must be true")
        container_id, handler = await self._running(request.container_id)
        url = self.streaming.register(
            PendingRequest(
                "attach",
                runtime=self.containers.runtime(handler),
                container_id=container_id,
                tty=request.tty,
                stdin=request.stdin,
                stdout=request.stdout,
                stderr=request.stderr,
            )
        )
        return pb.AttachResponse(url=url)

    async def PortForward(
        self, request: pb.PortForwardRequest, context: Context
    ) -> pb.PortForwardResponse:
        sandbox = self.sandboxes.get(request.pod_sandbox_id)
        if sandbox.state != READY:
            raise FailedPrecondition(f"pod sandbox {sandbox.id} is not ready")
        for port in request.port:
            if not 0 < port < 65536:
                raise InvalidArgument(f"port {port} is not a TCP port")
        # A host-network pod's ports are the node's: connect in skiffd's own namespace.
        netns = HOST_NETNS if sandbox.host_network else sandbox.netns
        url = self.streaming.register(
            PendingRequest("portforward", netns=netns, ports=tuple(request.port))
        )
        return pb.PortForwardResponse(url=url)
