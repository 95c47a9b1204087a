"""A container's mounts where the plan cannot see: its bind mounts checked against the
host and the image's root filesystem, and its image volumes mounted. Blocking: these
run on worker threads."""

from __future__ import annotations

import posixpath
import stat
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from cri.container_record import CriMount
from cri.errors import FailedPrecondition, InvalidArgument, NotFound, clip
from cri.images import ImageManager
from runtime.mounts import propagation_of
from runtime.rootfs import mount_rootfs, unmount_rootfs


def _what(name: str, mount: CriMount) -> str:
    return (
        f"container {clip(name)!r}: mount of {clip(mount.host_path)!r} "
        f"at {clip(mount.container_path)!r}"
    )


def check_host_sources(name: str, mounts: Sequence[CriMount]) -> None:
    """Each bind mount's host path exists, and the host mount holding it propagates as
    the mount asks."""
    for mount in mounts:
        if mount.image:
            continue
        what = _what(name, mount)
        if not Path(mount.host_path).exists():
            raise InvalidArgument(f"{what}: the host path does not exist")
        if mount.propagation == "private":
            continue
        source = propagation_of(Path(mount.host_path))
        allowed = ("shared",) if mount.propagation == "shared" else ("shared", "slave")
        if source not in allowed:
            raise FailedPrecondition(
                f"{what} asks for {mount.propagation} propagation, but the host mount "
                f"holding it is {source}; make it shared (mount --make-rshared)"
            )


def check_against_rootfs(name: str, mounts: Sequence[CriMount], rootfs: Path) -> None:
    """A directory cannot be bind-mounted onto a file the image has, nor a file onto a
    directory: refuse it now, naming both, rather than have runc fail at create. A
    path through a symlink in the image is left to the runtime (it resolves it inside
    the root)."""
    for mount in mounts:
        mode = _image_mode(rootfs, mount.container_path)
        source_is_dir = Path(mount.host_path).is_dir()
        if mode and stat.S_ISDIR(mode) != source_is_dir:
            kinds = ("a directory", "a file") if source_is_dir else ("a file", "a directory")
            raise InvalidArgument(
                f"{_what(name, mount)}: the host path is {kinds[0]} but "
                f"{clip(mount.container_path)!r} is {kinds[1]} in the image"
            )


def _image_mode(rootfs: Path, container_path: str) -> int:
    """The mode of `container_path` in the image; 0 when it is not there or lies
    through a symlink."""
    target, mode = rootfs, 0
    for part in posixpath.normpath(container_path).split("/")[1:]:
        target = target / part
        try:
            mode = target.lstat().st_mode
        except OSError:
            return 0
        if stat.S_ISLNK(mode):
            return 0
    return mode


def mount_image_volumes(
    mounts: Sequence[CriMount], images: ImageManager, volumes_dir: Path
) -> list[CriMount]:
    """Mount each image volume's layers (read-only) under `volumes_dir` and point its
    mount there; other mounts are returned as they are."""
    out: list[CriMount] = []
    for index, mount in enumerate(mounts):
        if not mount.image:
            out.append(mount)
            continue
        image = images.find(mount.image)
        if image is None:
            raise NotFound(
                f"image {mount.image!r} for the volume at {mount.container_path!r} "
                "not found; pull it first"
            )
        layers = [images.store.layer_path(c) for c in image.chain_ids]
        volume = mount_rootfs(layers, volumes_dir / str(index), True)
        sub_path = mount.image_sub_path.strip("/")
        source = Path(volume.merged) / sub_path if sub_path else Path(volume.merged)
        if sub_path and not source.is_dir():
            raise InvalidArgument(
                f"image volume at {mount.container_path!r}: {mount.image_sub_path!r} "
                f"is not a directory in image {mount.image!r}"
            )
        out.append(
            replace(
                mount,
                host_path=str(source),
                image="",
                volume_image=mount.image,
                volume_image_id=image.id,
            )
        )
    return out


def unmount_image_volumes(volumes_dir: Path) -> None:
    if volumes_dir.is_dir():
        for volume in volumes_dir.iterdir():
            unmount_rootfs(volume)
