"""The image store on disk: manifests and configs as content-addressed blobs, layers
unpacked once per chain id (ready to be overlayfs lower dirs), and image records.

    <root>/blobs/sha256/<hex>        manifests, indexes, configs
    <root>/layers/<chain hex>/diff/  an unpacked layer
    <root>/layers/<chain hex>/layer.json
    <root>/images/<config hex>.json  an image record
    <root>/tmp/                      work in progress, emptied on start

Everything appears by an atomic rename of a complete file or directory, so a crash
never leaves a partial layer, blob or record visible. The order of a pull — layers,
then blobs, then the record — means a crash leaves at worst unreferenced layers and
blobs, which `open` removes. Layer reference counts are not stored: they are derived
from the image records, so they cannot drift.

Blocking methods; the caller runs them on a worker thread.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from base import failpoints
from base.errors import FailedPrecondition, NotFound
from base.files import fsync_directory, is_unfinished, remove_unfinished, write_atomic
from image.reference import looks_like_image_id

log = logging.getLogger("skiff.image.store")


class ImageNotFound(NotFound):
    pass


class ImageInUse(FailedPrecondition):
    pass


@dataclass(frozen=True)
class LayerRecord:
    chain_id: str
    diff_id: str
    size: int
    inodes: int


@dataclass
class ImageRecord:
    id: str  # the config digest, sha256:<hex>
    repo_tags: list[str]
    repo_digests: list[str]
    size: int
    chain_ids: list[str]
    manifest_digest: str
    config_digest: str
    config: dict[str, Any] = field(repr=False)
    created_ns: int = 0
    pinned: bool = False

    @property
    def user(self) -> str:
        return str(self.config.get("config", {}).get("User", "") or "")


def _hex(digest: str) -> str:
    return digest.split(":", 1)[-1]


class ImageStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.layers = root / "layers"
        self.images_dir = root / "images"
        self.tmp = root / "tmp"
        self._lock = threading.Lock()
        self._images: dict[str, ImageRecord] = {}
        self._layers: dict[str, LayerRecord] = {}
        # Chain ids that pulls in progress need: kept by garbage collection, and the
        # only layers a finishing download may still add.
        self._holds: collections.Counter[str] = collections.Counter()

    # --- start -----------------------------------------------------------------------

    def open(self) -> None:
        for directory in (self.blobs, self.layers, self.images_dir, self.tmp):
            directory.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir()
        for directory in (self.blobs, self.images_dir):
            remove_unfinished(directory)  # writes cut short by a death before their rename
        for path in self.images_dir.glob("*.json"):
            try:
                raw = json.loads(path.read_bytes())
                record = ImageRecord(**raw)
            except (ValueError, TypeError) as exc:
                log.error("unreadable image record moved aside", extra={"path": str(path)})
                path.rename(path.with_suffix(f".bad-{int(time.time())}"))
                del exc
                continue
            self._images[record.id] = record
        for layer_dir in self.layers.iterdir():
            meta = layer_dir / "layer.json"
            try:
                self._layers[f"sha256:{layer_dir.name}"] = LayerRecord(
                    **json.loads(meta.read_bytes())
                )
            except (OSError, ValueError, TypeError):
                shutil.rmtree(layer_dir, ignore_errors=True)
        self._collect_garbage()

    def hold(self, chain_ids: list[str]) -> None:
        with self._lock:
            self._holds.update(chain_ids)

    def release(self, chain_ids: list[str]) -> None:
        with self._lock:
            self._holds.subtract(chain_ids)
            self._holds = +self._holds

    def collect_garbage(self) -> None:
        with self._lock:
            self._collect_garbage()

    def _collect_garbage(self) -> None:
        """Drop layers and blobs no image needs (left by a crash or a failed pull)."""
        wanted_layers = {c for image in self._images.values() for c in image.chain_ids}
        wanted_layers.update(self._holds)
        for chain_id in list(self._layers):
            if chain_id not in wanted_layers:
                self._delete_layer(chain_id)
        wanted_blobs = set()
        for image in self._images.values():
            wanted_blobs.update(self._blobs_of(image))
        wanted_blobs.update(self._holds)
        for blob in self.blobs.iterdir():
            # A blob being written by a pull (its temp file) is that pull's to finish.
            if f"sha256:{blob.name}" not in wanted_blobs and not is_unfinished(blob.name):
                with contextlib.suppress(FileNotFoundError):
                    blob.unlink()
                    failpoints.step("blob-remove")

    def _blobs_of(self, image: ImageRecord) -> set[str]:
        digests = {image.config_digest, image.manifest_digest}
        digests.update(d.split("@", 1)[1] for d in image.repo_digests if "@" in d)
        return digests

    # --- blobs -----------------------------------------------------------------------

    def put_blob(self, digest: str, data: bytes) -> None:
        path = self.blobs / _hex(digest)
        if not path.exists():
            write_atomic(path, data)
            failpoints.step("blob-commit")

    def blob(self, digest: str) -> bytes:
        return (self.blobs / _hex(digest)).read_bytes()

    # --- layers ----------------------------------------------------------------------

    def has_layer(self, chain_id: str) -> bool:
        with self._lock:
            return chain_id in self._layers

    def layer(self, chain_id: str) -> LayerRecord | None:
        with self._lock:
            return self._layers.get(chain_id)

    def layer_path(self, chain_id: str) -> Path:
        return self.layers / _hex(chain_id) / "diff"

    def new_work_dir(self) -> Path:
        return Path(tempfile.mkdtemp(dir=self.tmp, prefix="layer-"))

    def commit_layer(self, work_dir: Path, record: LayerRecord) -> None:
        """Make an unpacked layer (work_dir/diff) visible under its chain id."""
        write_atomic(work_dir / "layer.json", json.dumps(asdict(record)).encode())
        target = self.layers / _hex(record.chain_id)
        with self._lock:
            if record.chain_id in self._layers or record.chain_id not in self._holds:
                # Already there, or the pull that wanted it has ended: nobody needs it.
                shutil.rmtree(work_dir, ignore_errors=True)
                return
            os.rename(work_dir, target)
            self._layers[record.chain_id] = record
        fsync_directory(self.layers)
        failpoints.step("layer-commit")

    def _delete_layer(self, chain_id: str) -> None:
        self._layers.pop(chain_id, None)
        path = self.layers / _hex(chain_id)
        if path.exists():
            # Rename first so a crash mid-delete leaves no half layer under a real id.
            doomed = self.tmp / f"doomed-{_hex(chain_id)}-{time.monotonic_ns()}"
            os.rename(path, doomed)
            failpoints.step("layer-remove")
            shutil.rmtree(doomed, ignore_errors=True)

    # --- images ----------------------------------------------------------------------

    def save_image(self, record: ImageRecord) -> ImageRecord:
        """Store a pulled image; its tags move here from any image that had them."""
        with self._lock:
            existing = self._images.get(record.id)
            if existing is not None:
                record.repo_tags = _merge(existing.repo_tags, record.repo_tags)
                record.repo_digests = _merge(existing.repo_digests, record.repo_digests)
                record.created_ns = existing.created_ns or record.created_ns
            changed = []
            for other in self._images.values():
                if other.id == record.id:
                    continue
                kept = [t for t in other.repo_tags if t not in record.repo_tags]
                if kept != other.repo_tags:
                    other.repo_tags = kept
                    changed.append(other)
            for image in [record, *changed]:
                self._write_image(image)
            self._images[record.id] = record
            return record

    def _write_image(self, record: ImageRecord) -> None:
        data = json.dumps(asdict(record), sort_keys=True).encode()
        write_atomic(self.images_dir / f"{_hex(record.id)}.json", data)
        failpoints.step("image-record-write")

    def images(self) -> list[ImageRecord]:
        with self._lock:
            return list(self._images.values())

    def find(self, text: str, candidates: list[str]) -> ImageRecord | None:
        """By id (full or unique prefix), or by one of the candidate tag/digest names."""
        with self._lock:
            if looks_like_image_id(text):
                image = self._images.get("sha256:" + text.removeprefix("sha256:"))
                if image is not None:
                    return image
            for name in candidates:
                for image in self._images.values():
                    if name in image.repo_tags or name in image.repo_digests:
                        return image
            bare = text.removeprefix("sha256:")
            if len(bare) >= 3 and all(c in "0123456789abcdef" for c in bare):
                hits = [i for i in self._images.values() if _hex(i.id).startswith(bare)]
                if len(hits) == 1:
                    return hits[0]
        return None

    def remove(self, image: ImageRecord, tag: str | None, in_use: set[str]) -> bool:
        """Untag (when the image keeps other tags) or delete; True when deleted."""
        with self._lock:
            current = self._images.get(image.id)
            if current is None:
                return False
            if tag is not None and tag in current.repo_tags and len(current.repo_tags) > 1:
                current.repo_tags = [t for t in current.repo_tags if t != tag]
                self._write_image(current)
                return False
            if current.id in in_use:
                raise ImageInUse(
                    f"image {current.id} ({', '.join(current.repo_tags) or 'untagged'}) is "
                    "used by a container; remove the container first"
                )
            os.unlink(self.images_dir / f"{_hex(current.id)}.json")
            fsync_directory(self.images_dir)
            failpoints.step("image-record-remove")
            del self._images[current.id]
            self._collect_garbage()
            return True

    def usage(self) -> tuple[int, int]:
        """Bytes and inodes used by unpacked layers."""
        with self._lock:
            return (
                sum(layer.size for layer in self._layers.values()),
                sum(layer.inodes for layer in self._layers.values()),
            )


def _merge(old: list[str], new: list[str]) -> list[str]:
    return old + [item for item in new if item not in old]
