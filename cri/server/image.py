"""ImageService: pull, list, inspect and remove images; image filesystem usage.

Not built yet: each RPC answers UNIMPLEMENTED naming itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from api.runtime.v1 import api_pb2 as pb
from cri.server.common import Context, not_built, not_built_stream


class ImageRPCs:
    async def ListImages(
        self, request: pb.ListImagesRequest, context: Context
    ) -> pb.ListImagesResponse:
        raise not_built("ListImages")

    def StreamImages(
        self, request: pb.StreamImagesRequest, context: Context
    ) -> AsyncIterator[pb.StreamImagesResponse]:
        return not_built_stream("StreamImages")

    async def ImageStatus(
        self, request: pb.ImageStatusRequest, context: Context
    ) -> pb.ImageStatusResponse:
        raise not_built("ImageStatus")

    async def PullImage(
        self, request: pb.PullImageRequest, context: Context
    ) -> pb.PullImageResponse:
        raise not_built("PullImage")

    async def RemoveImage(
        self, request: pb.RemoveImageRequest, context: Context
    ) -> pb.RemoveImageResponse:
        raise not_built("RemoveImage")

    async def ImageFsInfo(
        self, request: pb.ImageFsInfoRequest, context: Context
    ) -> pb.ImageFsInfoResponse:
        raise not_built("ImageFsInfo")
