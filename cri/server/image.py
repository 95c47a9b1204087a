"""ImageService: pull, list, inspect and remove images; image filesystem usage."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from api.runtime.v1 import api_pb2 as pb
from cri.containers import ContainerManager
from cri.images import ImageManager
from cri.server.common import Context, batches
from cri.stats import WritableLayers
from image import auth
from image.store import ImageRecord


def image_to_proto(record: ImageRecord) -> pb.Image:
    user = record.user.split(":", 1)[0]
    image = pb.Image(
        id=record.id,
        repo_tags=record.repo_tags,
        repo_digests=record.repo_digests,
        size=record.size,
        spec=pb.ImageSpec(image=record.id),
        pinned=record.pinned,
    )
    if user.isdigit():
        image.uid.CopyFrom(pb.Int64Value(value=int(user)))
    elif user:
        image.username = user
    return image


class ImageRPCs:
    images: ImageManager
    containers: ContainerManager
    writable_layers: WritableLayers

    async def ListImages(
        self, request: pb.ListImagesRequest, context: Context
    ) -> pb.ListImagesResponse:
        records = self.images.list(request.filter.image.image)
        return pb.ListImagesResponse(images=[image_to_proto(r) for r in records])

    async def StreamImages(
        self, request: pb.StreamImagesRequest, context: Context
    ) -> AsyncIterator[pb.StreamImagesResponse]:
        records = self.images.list(request.filter.image.image)
        for batch in batches(records):
            yield pb.StreamImagesResponse(images=[image_to_proto(r) for r in batch])

    async def ImageStatus(
        self, request: pb.ImageStatusRequest, context: Context
    ) -> pb.ImageStatusResponse:
        record = self.images.find(request.image.image)
        if record is None:
            # CRI: an image that is not present is an empty response, not an error.
            return pb.ImageStatusResponse()
        info = {}
        if request.verbose:
            info["info"] = json.dumps(
                {
                    "imageSpec": record.config,
                    "chainIDs": record.chain_ids,
                    "manifestDigest": record.manifest_digest,
                },
                sort_keys=True,
            )
        return pb.ImageStatusResponse(image=image_to_proto(record), info=info)

    async def PullImage(
        self, request: pb.PullImageRequest, context: Context
    ) -> pb.PullImageResponse:
        a = request.auth
        credentials = None
        if request.HasField("auth"):
            credentials = auth.from_request(
                a.username, a.password, a.auth, a.identity_token, a.registry_token
            )
        record = await self.images.pull(request.image.image, credentials, context.time_remaining())
        return pb.PullImageResponse(image_ref=record.id)

    async def RemoveImage(
        self, request: pb.RemoveImageRequest, context: Context
    ) -> pb.RemoveImageResponse:
        await self.images.remove(request.image.image, self.containers.images_in_use())
        return pb.RemoveImageResponse()

    async def ImageFsInfo(
        self, request: pb.ImageFsInfoRequest, context: Context
    ) -> pb.ImageFsInfoResponse:
        usage = await self.images.fs_usage()
        fs = pb.FilesystemUsage(
            timestamp=usage.timestamp_ns,
            fs_id=pb.FilesystemIdentifier(mountpoint=usage.mountpoint),
        )
        fs.used_bytes.value = usage.used_bytes
        fs.inodes_used.value = usage.inodes_used
        # Containers' writable layers, as last measured in the background.
        layers = self.writable_layers.total()
        containers = pb.FilesystemUsage(
            timestamp=layers.timestamp_ns,
            fs_id=pb.FilesystemIdentifier(mountpoint=layers.mountpoint),
        )
        containers.used_bytes.value = layers.used_bytes
        containers.inodes_used.value = layers.inodes_used
        return pb.ImageFsInfoResponse(image_filesystems=[fs], container_filesystems=[containers])
