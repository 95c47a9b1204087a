"""The two CRI services, composed from one mixin per RPC family (as cri-o's server/
keeps one file per family), and their registration on a gRPC server."""

from __future__ import annotations

import grpc.aio

from api.runtime.v1 import api_pb2_grpc
from cri.containers import ContainerManager
from cri.daemon_state import DaemonState
from cri.sandboxes import SandboxManager
from cri.server.checkpoint import CheckpointRPCs
from cri.server.container import ContainerRPCs, container_list
from cri.server.events import EventsRPCs, install_describer
from cri.server.image import ImageRPCs
from cri.server.runtime_info import RuntimeInfoRPCs
from cri.server.sandbox import SandboxRPCs, sandbox_list
from cri.server.stats import StatsRPCs
from cri.server.streaming import StreamingRPCs
from cri.stats import StatsManager
from cri.streaming.server import StreamingServer


class RuntimeService(
    RuntimeInfoRPCs,
    SandboxRPCs,
    ContainerRPCs,
    StreamingRPCs,
    StatsRPCs,
    EventsRPCs,
    CheckpointRPCs,
    api_pb2_grpc.RuntimeServiceServicer,
):
    def __init__(
        self,
        state: DaemonState,
        sandboxes: SandboxManager,
        containers: ContainerManager,
        streaming: StreamingServer,
        stats: StatsManager,
    ) -> None:
        self.state = state
        self.sandboxes = sandboxes
        self.containers = containers
        self.streaming = streaming
        self.stats = stats
        self.sandbox_list = sandbox_list()
        self.container_list = container_list()


class ImageService(ImageRPCs, api_pb2_grpc.ImageServiceServicer):
    def __init__(
        self, state: DaemonState, containers: ContainerManager, stats: StatsManager
    ) -> None:
        self.state = state
        self.images = state.images
        self.containers = containers
        self.writable_layers = stats.layers


def register(
    server: grpc.aio.Server,
    state: DaemonState,
    sandboxes: SandboxManager,
    containers: ContainerManager,
    streaming: StreamingServer,
    stats: StatsManager,
) -> None:
    runtime = RuntimeService(state, sandboxes, containers, streaming, stats)
    install_describer(state.events, sandboxes, containers)
    api_pb2_grpc.add_RuntimeServiceServicer_to_server(runtime, server)
    api_pb2_grpc.add_ImageServiceServicer_to_server(ImageService(state, containers, stats), server)
