"""Stats and metrics of containers and pod sandboxes.

Not built yet: each RPC answers UNIMPLEMENTED naming itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from api.runtime.v1 import api_pb2 as pb
from cri.server.common import Context, not_built, not_built_stream


class StatsRPCs:
    async def ContainerStats(
        self, request: pb.ContainerStatsRequest, context: Context
    ) -> pb.ContainerStatsResponse:
        raise not_built("ContainerStats")

    async def ListContainerStats(
        self, request: pb.ListContainerStatsRequest, context: Context
    ) -> pb.ListContainerStatsResponse:
        raise not_built("ListContainerStats")

    def StreamContainerStats(
        self, request: pb.StreamContainerStatsRequest, context: Context
    ) -> AsyncIterator[pb.StreamContainerStatsResponse]:
        return not_built_stream("StreamContainerStats")

    async def PodSandboxStats(
        self, request: pb.PodSandboxStatsRequest, context: Context
    ) -> pb.PodSandboxStatsResponse:
        raise not_built("PodSandboxStats")

    async def ListPodSandboxStats(
        self, request: pb.ListPodSandboxStatsRequest, context: Context
    ) -> pb.ListPodSandboxStatsResponse:
        raise not_built("ListPodSandboxStats")

    def StreamPodSandboxStats(
        self, request: pb.StreamPodSandboxStatsRequest, context: Context
    ) -> AsyncIterator[pb.StreamPodSandboxStatsResponse]:
        return not_built_stream("StreamPodSandboxStats")

    async def ListMetricDescriptors(
        self, request: pb.ListMetricDescriptorsRequest, context: Context
    ) -> pb.ListMetricDescriptorsResponse:
        raise not_built("ListMetricDescriptors")

    async def ListPodSandboxMetrics(
        self, request: pb.ListPodSandboxMetricsRequest, context: Context
    ) -> pb.ListPodSandboxMetricsResponse:
        raise not_built("ListPodSandboxMetrics")

    def StreamPodSandboxMetrics(
        self, request: pb.StreamPodSandboxMetricsRequest, context: Context
    ) -> AsyncIterator[pb.StreamPodSandboxMetricsResponse]:
        return not_built_stream("StreamPodSandboxMetrics")
