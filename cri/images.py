"""The image manager: the daemon's side of image/ — registries config (reloaded on
SIGHUP), deadlines, name resolution for status/list/remove, and the rule that an image
a container uses cannot be removed."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cri.config import Config
from cri.errors import DeadlineExceeded, InvalidArgument
from cri.metrics import Metrics
from image.reference import ReferenceError, looks_like_image_id, parse
from image.registries import RegistriesConfError, load_conf
from image.store import ImageNotFound, ImageRecord, ImageStore

if TYPE_CHECKING:
    from image.auth import Credentials
    from image.pull import ImagePuller

log = logging.getLogger("skiff.images")


def deadline_margin(deadline_in: float) -> float:
    """How long before the call's deadline skiff answers DEADLINE_EXCEEDED itself, so
    that its own message reaches the client. gRPC sends a long deadline in coarser
    units and rounds it up (up to a second at 120 s): the server's deadline is then
    later than the client's, and a fixed 0.2 s came after the client had given up."""
    return min(0.2 + deadline_in * 0.01, 1.5)


@dataclass(frozen=True)
class FsUsage:
    mountpoint: str
    used_bytes: int
    inodes_used: int
    timestamp_ns: int


class ImageManager:
    def __init__(self, config: Config, metrics: Metrics) -> None:
        self.root = Path(config.root)
        self.store = ImageStore(self.root)
        self.metrics = metrics
        self._config = config
        self._registries = load_conf(Path(config.image.registries_conf))
        self._puller: ImagePuller | None = None

    @property
    def puller(self) -> ImagePuller:
        """Made at the first pull: the registry client's stack (TLS, HTTP, the
        decompressors) was most of the modules an idle skiffd held."""
        if self._puller is None:
            self._puller = self._make_puller(self._config)
        return self._puller

    def _make_puller(self, config: Config) -> ImagePuller:
        # Here, not at the top: an idle skiffd need not load them (see `puller`).
        from image.pull import ImagePuller, PullSettings  # noqa: PLC0415
        from image.registry_client import RegistryClient  # noqa: PLC0415

        client = RegistryClient(
            Path(config.image.certs_dir),
            progress_timeout=config.image.pull_progress_timeout,
            retries=config.image.pull_retries,
        )
        return ImagePuller(
            self.store,
            client,
            lambda: self._registries,
            Path(config.image.auth_file),
            PullSettings(
                max_parallel_layers=config.image.max_parallel_layers,
                layer_attempts=config.image.pull_retries,
                progress_log_interval=config.image.pull_progress_log_interval,
            ),
            on_download=self.metrics.count_download,
        )

    async def open(self) -> None:
        await asyncio.to_thread(self.store.open)

    def reload(self, config: Config) -> None:
        try:
            self._registries = load_conf(Path(config.image.registries_conf))
        except RegistriesConfError as exc:
            log.error(
                "registries config not reloaded, keeping the old one", extra={"error": str(exc)}
            )
        if config.image != self._config.image:
            self._puller = None  # made again, from the new settings, at the next pull
        self._config = config

    # --- names -------------------------------------------------------------------

    def _names(self, text: str) -> list[str]:
        """The stored names (repo tags and digests) a client's text may mean."""
        try:
            ref = parse(text)
        except ReferenceError:
            if looks_like_image_id(text) or text.startswith("sha256:"):
                return []
            raise
        out: list[str] = []
        for candidate in self._registries.candidates(ref.defaulted() if not ref.digest else ref):
            if candidate.digest:
                out.append(f"{candidate.name}@{candidate.digest}")
            elif candidate.tag:
                out.append(candidate.tagged)
        return out

    def display_name(self, image: ImageRecord, *texts: str) -> str:
        """The name to show for `image` (as cri-o and containerd do, where the kubelet
        shows a container's image): the first of `texts` that names it by tag or
        digest, fully qualified; else its first repo tag; else its id."""
        for text in texts:
            try:
                names = self._names(text) if text else []
            except ReferenceError:
                continue
            for name in names:
                if name in image.repo_tags or name in image.repo_digests:
                    return name
        return image.repo_tags[0] if image.repo_tags else image.id

    def find(self, text: str) -> ImageRecord | None:
        if not text:
            raise InvalidArgument("image must not be empty: give a name, a digest or an image id")
        return self.store.find(text, self._names(text))

    # --- RPC work ----------------------------------------------------------------

    async def pull(
        self, image: str, credentials: Credentials | None, deadline_in: float | None
    ) -> ImageRecord:
        if not image:
            raise InvalidArgument("image.image must name the image to pull")
        started = time.monotonic()
        try:
            record = await self._pull(image, credentials, deadline_in)
        except (Exception, asyncio.CancelledError) as exc:
            self.metrics.record_pull_failure(exc)
            raise
        self.metrics.record_pull(time.monotonic() - started)
        return record

    async def _pull(
        self, image: str, credentials: Credentials | None, deadline_in: float | None
    ) -> ImageRecord:
        try:
            if deadline_in is None:
                return await self.puller.pull(image, credentials)
            return await asyncio.wait_for(
                self.puller.pull(image, credentials),
                max(deadline_in - deadline_margin(deadline_in), 0.01),
            )
        except TimeoutError:
            raise DeadlineExceeded(
                f"pulling {image} did not finish before the call's deadline; "
                "the partial pull was discarded"
            ) from None

    def list(self, filter_text: str) -> list[ImageRecord]:
        images = self.store.images()
        if not filter_text:
            return images
        found = self.find(filter_text)
        return [found] if found is not None else []

    async def remove(self, text: str, in_use: set[str]) -> None:
        """Remove the image `text` names, unless its id is `in_use` (by containers)."""
        image = self.find(text)
        if image is None:
            # RemoveImage of an image that is not there is not an error (CRI: idempotent).
            return
        names = self._names(text)
        tag = next((n for n in names if n in image.repo_tags), None)
        try:
            await asyncio.to_thread(self.store.remove, image, tag, in_use)
        except ImageNotFound:
            return

    async def fs_usage(self) -> FsUsage:
        used, inodes = self.store.usage()
        return FsUsage(str(self.store.layers), used, inodes, time.time_ns())
