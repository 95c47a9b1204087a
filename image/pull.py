"""Pulling an image: resolve the reference, fetch and verify the manifest and config,
fetch the missing layers in parallel, then record the image.

Work is shared: two pulls of one reference wait on one pull, and a layer (by chain id)
is fetched once however many pulls need it. A pull whose callers have all gone away
(deadline passed, client cancelled) is cancelled: the connections it reads are shut
down, so its worker threads stop at once, even in a read that waits on a silent
registry. Blocking work (HTTP, decompression, unpacking) runs on threads.
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import hashlib
import io
import json
import logging
import platform
import shutil
import tarfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar, cast

from base.errors import FailedPrecondition, Internal, ResourceExhausted
from image.auth import Credentials, lookup_auth_file
from image.layer_fetch import DECOMPRESSION_ERRORS, HashingReader, IntegrityError, decompressing
from image.reference import Reference, ReferenceError, parse, validate_digest
from image.registries import Endpoint, RegistriesConf
from image.registry_client import (
    PullWatch,
    RegistryAuthError,
    RegistryBlobMissing,
    RegistryClient,
    RegistryError,
    RegistryNotFound,
    RegistryUnavailable,
    Repository,
)
from image.store import ImageRecord, ImageStore, LayerRecord
from image.unpack import MalformedLayerError, UnpackStats, UnsafeLayerError, unpack_layer

log = logging.getLogger("skiff.image.pull")

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)
ACCEPT = (OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST)
INDEXES = (OCI_INDEX, DOCKER_LIST)
MANIFESTS = (OCI_MANIFEST, DOCKER_MANIFEST)
MAX_MANIFEST_BYTES = 4 << 20
MAX_CONFIG_BYTES = 8 << 20
# A layer that does not decompress, or does not read as tar past the unpacker's checks.
_UNREADABLE_LAYER: tuple[type[Exception], ...] = (
    *DECOMPRESSION_ERRORS,
    ValueError,
    tarfile.TarError,
)

T = TypeVar("T")


class ManifestError(FailedPrecondition):
    pass


class StoreFull(ResourceExhausted):
    pass


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class StoreWriteError(Internal):
    pass


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""


def node_platform() -> Platform:
    machine = platform.machine().lower()
    arch, variant = {
        "x86_64": ("amd64", ""),
        "amd64": ("amd64", ""),
        "aarch64": ("arm64", "v8"),
        "arm64": ("arm64", "v8"),
        "armv7l": ("arm", "v7"),
        "armv6l": ("arm", "v6"),
        "i686": ("386", ""),
        "ppc64le": ("ppc64le", ""),
        "s390x": ("s390x", ""),
        "riscv64": ("riscv64", ""),
    }.get(machine, (machine, ""))
    return Platform("linux", arch, variant)


def chain_ids(diff_ids: list[str]) -> list[str]:
    out: list[str] = []
    for diff_id in diff_ids:
        if not out:
            out.append(diff_id)
        else:
            joined = f"{out[-1]} {diff_id}".encode()
            out.append("sha256:" + hashlib.sha256(joined).hexdigest())
    return out


def _digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _json(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        raise ManifestError(f"{what} is not valid JSON") from None
    if not isinstance(value, dict):
        raise ManifestError(f"{what} is not a JSON object")
    return value


@dataclass(frozen=True)
class PullSettings:
    max_parallel_layers: int = 4
    layer_attempts: int = 3
    progress_log_interval: float = 5.0


class _Progress:
    """Bytes per layer, read by the periodic progress log; each chunk is also told to
    ``on_download`` (the daemon's byte counter), from the download threads."""

    def __init__(self, on_download: Callable[[int], None] | None = None) -> None:
        self._lock = threading.Lock()
        self.layers: dict[str, list[int]] = {}
        self._on_download = on_download

    def start(self, digest: str, size: int) -> Callable[[int], None]:
        with self._lock:
            self.layers[digest] = [0, size]

        def add(n: int) -> None:
            with self._lock:
                self.layers[digest][0] += n
            if self._on_download is not None:
                self._on_download(n)

        return add

    def snapshot(self) -> dict[str, str]:
        with self._lock:
            return {d[7:19]: f"{done}/{size}" for d, (done, size) in self.layers.items()}


@dataclass(frozen=True)
class _Documents:
    """What a pull reads before its layers: the image manifest (with the index that
    led to it, if any), the image config, and the layers and diff ids they list."""

    top_digest: str
    manifest_digest: str
    config_digest: str
    config: dict[str, Any]
    config_bytes: bytes
    layers: list[Any]
    diff_ids: list[str]
    chains: list[str]
    blobs: dict[str, bytes]


#: Threads for manifests, configs and the store's housekeeping, beside one per layer
#: being fetched.
PULL_THREADS = 8


class ImagePuller:
    def __init__(
        self,
        store: ImageStore,
        client: RegistryClient,
        registries: Callable[[], RegistriesConf],
        auth_file: Path,
        settings: PullSettings,
        node: Platform | None = None,
        on_download: Callable[[int], None] | None = None,
    ) -> None:
        self.store = store
        self.client = client
        self.registries = registries
        self.auth_file = auth_file
        self.settings = settings
        self.node = node or node_platform()
        self.on_download = on_download
        self._pulls: dict[str, asyncio.Task[ImageRecord]] = {}
        self._waiters: dict[str, int] = {}
        self._layers: dict[str, asyncio.Future[LayerRecord]] = {}
        self._slots = asyncio.Semaphore(settings.max_parallel_layers)
        # Registry I/O has threads of its own: a registry that hangs ties up these, not
        # the ones pod and container work runs on (RunPodSandbox took 37 s behind eight
        # hanging pulls).
        self._executor = ThreadPoolExecutor(
            max_workers=PULL_THREADS + settings.max_parallel_layers,
            thread_name_prefix="skiff-pull",
        )

    # --- entry point -------------------------------------------------------------

    async def pull(self, text: str, credentials: Credentials | None) -> ImageRecord:
        """Pull (or join the pull already running for) one reference."""
        ref = parse(text)
        key = str(ref)
        task = self._pulls.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._pull(ref, credentials))
            self._pulls[key] = task
            task.add_done_callback(lambda _t: self._pulls.pop(key, None))
        self._waiters[key] = self._waiters.get(key, 0) + 1
        try:
            return await asyncio.shield(task)
        finally:
            self._waiters[key] -= 1
            if self._waiters[key] == 0:
                del self._waiters[key]
                if not task.done():
                    task.cancel()

    def _in_thread(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        # With the caller's context, as asyncio.to_thread does: the failpoints of the
        # steps taken there belong to the RPC.
        context = contextvars.copy_context()
        return asyncio.get_running_loop().run_in_executor(self._executor, context.run, fn)

    async def _thread(self, fn: Callable[[], T]) -> T:
        return await self._in_thread(fn)

    async def _pull(self, ref: Reference, credentials: Credentials | None) -> ImageRecord:
        cancel = PullWatch(self.client.progress_timeout)
        progress = _Progress(self.on_download)
        reporter = asyncio.get_running_loop().create_task(self._report(str(ref), progress))
        started = time.monotonic()
        try:
            record = await self._pull_candidates(ref, credentials, cancel, progress)
        except asyncio.CancelledError:
            cancel.set()
            raise
        finally:
            reporter.cancel()
        log.info(
            "image pulled",
            extra={
                "image": str(ref),
                "image_id": record.id,
                "size": record.size,
                "seconds": round(time.monotonic() - started, 3),
            },
        )
        return record

    async def _report(self, image: str, progress: _Progress) -> None:
        while True:
            await asyncio.sleep(self.settings.progress_log_interval)
            log.info("pull progress", extra={"image": image, "layers": progress.snapshot()})

    async def _pull_candidates(
        self,
        ref: Reference,
        credentials: Credentials | None,
        cancel: PullWatch,
        progress: _Progress,
    ) -> ImageRecord:
        conf = self.registries()
        # With a digest, the digest wins over any tag.
        if ref.digest and ref.tag:
            ref = Reference(ref.domain, ref.path, "", ref.digest)
        ref = ref.defaulted()
        failures: list[str] = []
        not_found: RegistryError | None = None
        for candidate in conf.candidates(ref):
            for endpoint in conf.endpoints(candidate):
                try:
                    return await self._pull_from(candidate, endpoint, credentials, cancel, progress)
                except RegistryNotFound as exc:
                    not_found = not_found or exc
                    failures.append(str(exc))
                except (RegistryUnavailable, RegistryAuthError) as exc:
                    if not endpoint.mirror and len(conf.candidates(ref)) == 1:
                        raise
                    failures.append(str(exc))
        if isinstance(not_found, RegistryBlobMissing) and len(failures) == 1:
            raise not_found  # the image is there, broken: not "image not found"
        if not_found is not None:
            tried = "; ".join(failures)
            raise RegistryNotFound(f"image {ref} not found: {tried}")
        raise RegistryUnavailable(f"image {ref} could not be pulled: {'; '.join(failures)}")

    def _credentials_for(self, endpoint: Endpoint, given: Credentials | None) -> Credentials:
        if given is not None and not given.empty:
            return given
        return lookup_auth_file(self.auth_file, endpoint.host, endpoint.repository)

    async def _pull_from(
        self,
        ref: Reference,
        endpoint: Endpoint,
        credentials: Credentials | None,
        cancel: PullWatch,
        progress: _Progress,
    ) -> ImageRecord:
        creds = self._credentials_for(endpoint, credentials)
        repo = await self._thread(lambda: self.client.repository(endpoint, creds))
        documents = await self._read_documents(ref, repo, cancel)
        held = documents.chains + list(documents.blobs)
        self.store.hold(held)
        finished = False
        try:
            record = await self._finish(ref, documents, repo, cancel, progress)
            finished = True
            return record
        finally:
            self.store.release(held)
            if not finished:
                # A failed or abandoned pull takes back what it alone had added.
                self._in_thread(self.store.collect_garbage)

    async def _read_documents(
        self, ref: Reference, repo: Repository, cancel: PullWatch
    ) -> _Documents:
        top, top_digest, media_type = await self._top_manifest(ref, repo, cancel)
        blobs = {top_digest: top}
        manifest, manifest_digest = top, top_digest
        if media_type in INDEXES:
            manifest, manifest_digest = await self._node_manifest(ref, repo, top, cancel)
            blobs[manifest_digest] = manifest
        config_digest, layers = manifest_content(manifest, str(ref))
        config_bytes = await self._thread(
            lambda: _fetch_small_blob(repo, config_digest, MAX_CONFIG_BYTES, cancel)
        )
        blobs[config_digest] = config_bytes
        config, diff_ids = config_content(config_bytes, str(ref), len(layers))
        return _Documents(
            top_digest=top_digest,
            manifest_digest=manifest_digest,
            config_digest=config_digest,
            config=config,
            config_bytes=config_bytes,
            layers=layers,
            diff_ids=diff_ids,
            chains=chain_ids(diff_ids),
            blobs=blobs,
        )

    async def _top_manifest(
        self, ref: Reference, repo: Repository, cancel: PullWatch
    ) -> tuple[bytes, str, str]:
        """The manifest or index the reference names, its digest and its media type."""
        wanted = ref.digest or ref.tag
        top, top_type = await self._thread(
            lambda: repo.manifest(wanted, ACCEPT, MAX_MANIFEST_BYTES, cancel)
        )
        top_digest = _digest_of(top)
        if ref.digest and top_digest != ref.digest:
            raise IntegrityError(
                f"manifest of {ref} from {repo.where} has digest {top_digest}, not {ref.digest}"
            )
        return top, top_digest, _media_type(top, top_type, str(ref))

    async def _node_manifest(
        self, ref: Reference, repo: Repository, index: bytes, cancel: PullWatch
    ) -> tuple[bytes, str]:
        """The image manifest an index lists for this node, and its digest."""
        manifest_digest = platform_manifest(index, str(ref), self.node)
        manifest, manifest_type = await self._thread(
            lambda: repo.manifest(manifest_digest, ACCEPT, MAX_MANIFEST_BYTES, cancel)
        )
        if _digest_of(manifest) != manifest_digest:
            raise IntegrityError(
                f"manifest {manifest_digest} of {ref} from {repo.where} does not match its digest"
            )
        media_type = _media_type(manifest, manifest_type, str(ref))
        if media_type not in MANIFESTS:
            raise ManifestError(f"{ref}: the index points at {media_type}, not an image")
        return manifest, manifest_digest

    async def _finish(
        self,
        ref: Reference,
        documents: _Documents,
        repo: Repository,
        cancel: PullWatch,
        progress: _Progress,
    ) -> ImageRecord:
        results = await asyncio.gather(
            *(
                self._layer(repo, dict(desc), diff_id, chain, cancel, progress)
                for desc, diff_id, chain in zip(
                    documents.layers, documents.diff_ids, documents.chains, strict=True
                )
            )
        )
        for digest, data in documents.blobs.items():
            await self._stored(
                ref,
                lambda d=digest, b=data: self.store.put_blob(d, b),  # type: ignore[misc]
            )
        record = ImageRecord(
            id=documents.config_digest,
            repo_tags=[ref.tagged] if ref.tag else [],
            repo_digests=[f"{ref.name}@{documents.top_digest}"],
            size=sum(layer.size for layer in results) or len(documents.config_bytes),
            chain_ids=documents.chains,
            manifest_digest=documents.manifest_digest,
            config_digest=documents.config_digest,
            config=documents.config,
            created_ns=time.time_ns(),
        )
        return await self._stored(ref, lambda: self.store.save_image(record))

    async def _stored(self, ref: Reference, write: Callable[[], T]) -> T:
        """A write to the image store; a full disk is named as such, with the image."""
        try:
            return await self._thread(write)
        except OSError as exc:
            if exc.errno in DISK_FULL:
                raise StoreFull(f"image {ref}: no space left in {self.store.root}") from None
            raise

    # --- layers ------------------------------------------------------------------

    async def _layer(
        self,
        repo: Repository,
        desc: dict[str, Any],
        diff_id: str,
        chain_id: str,
        cancel: PullWatch,
        progress: _Progress,
    ) -> LayerRecord:
        existing = self.store.layer(chain_id)
        if existing is not None:
            return existing
        shared = self._layers.get(chain_id)
        if shared is None:
            shared = asyncio.get_running_loop().create_future()
            self._layers[chain_id] = shared
            try:
                async with self._slots:
                    record = await self._fetch_layer(
                        repo, desc, diff_id, chain_id, cancel, progress
                    )
                shared.set_result(record)
            except BaseException as exc:
                if isinstance(exc, asyncio.CancelledError):
                    shared.cancel()
                else:
                    shared.set_exception(exc)
                    shared.exception()  # the error is reported by this pull; mark it seen
                raise
            finally:
                self._layers.pop(chain_id, None)
            return record
        return await asyncio.shield(shared)

    async def _fetch_layer(
        self,
        repo: Repository,
        desc: dict[str, Any],
        diff_id: str,
        chain_id: str,
        cancel: PullWatch,
        progress: _Progress,
    ) -> LayerRecord:
        digest = str(desc.get("digest", ""))
        size = desc.get("size")
        if not isinstance(size, int) or size < 0:
            raise ManifestError(f"layer {digest} has no valid size in the manifest")
        attempts = self.settings.layer_attempts
        for attempt in range(1, attempts + 1):
            on_bytes = progress.start(digest, size)
            try:
                return await self._thread(
                    lambda add=on_bytes: self._fetch_layer_once(  # type: ignore[misc]
                        repo, digest, size, diff_id, chain_id, cancel, add
                    )
                )
            except RegistryUnavailable:
                if attempt == attempts or cancel.is_set() or cancel.out_of_patience():
                    raise
                log.warning(
                    "layer download failed, retrying",
                    extra={"layer": digest, "attempt": attempt, "registry": repo.where},
                )
                await asyncio.sleep(0.5 * attempt)
        raise AssertionError("unreachable")

    def _fetch_layer_once(
        self,
        repo: Repository,
        digest: str,
        size: int,
        diff_id: str,
        chain_id: str,
        cancel: PullWatch,
        on_bytes: Callable[[int], None],
    ) -> LayerRecord:
        what = f"layer {digest} from {repo.where}"
        work = self.store.new_work_dir()
        try:
            response = repo.blob(digest, cancel)
            try:
                compressed = HashingReader(
                    response,  # type: ignore[arg-type]
                    size,
                    cancel,
                    on_bytes,
                    what,
                    network=True,
                )
                plain, stats = self._unpack(what, compressed, size, digest, cancel, work / "diff")
            finally:
                response.release_conn()
            _check_layer(what, compressed, plain, size, digest, diff_id)
            record = LayerRecord(chain_id, diff_id, stats.bytes, stats.inodes)
            self.store.commit_layer(work, record)
            return record
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _unpack(
        self,
        what: str,
        compressed: HashingReader,
        size: int,
        digest: str,
        cancel: PullWatch,
        into: Path,
    ) -> tuple[HashingReader, UnpackStats]:
        """Unpack a layer as it downloads; what goes wrong is named as a download, a
        digest, a disk or a layer that is broken."""
        buffered = io.BufferedReader(compressed, 1 << 20)
        plain = HashingReader(decompressing(buffered), None, cancel, None, what)
        try:
            stats = unpack_layer(cast(BinaryIO, plain), into)
            plain.drain()
            _drain(buffered)
        except OSError as exc:
            if exc.errno in DISK_FULL:
                raise StoreFull(f"{what}: no space left in {self.store.root}") from None
            if exc.errno is not None and not isinstance(exc, EOFError):
                raise StoreWriteError(f"{what}: writing the layer failed: {exc.strerror}") from None
            raise self._explain(what, compressed, buffered, size, digest, exc) from None
        except MalformedLayerError as exc:
            # Bytes that inflate into no tar are, more often than not, a blob
            # that changed on the way: its digest decides (DATA_LOSS).
            explained = self._explain(what, compressed, buffered, size, digest, exc)
            if compressed.digest == digest and compressed.count >= size:
                raise UnsafeLayerError(f"{what}: {exc}") from None
            raise explained from None
        except _UNREADABLE_LAYER as exc:
            raise self._explain(what, compressed, buffered, size, digest, exc) from None
        return plain, stats

    @staticmethod
    def _explain(
        what: str,
        compressed: HashingReader,
        buffered: io.BufferedReader[Any],
        size: int,
        digest: str,
        exc: BaseException,
    ) -> Exception:
        """Why a layer could not be decompressed or read as tar: a short download, a
        blob that is not what its digest says, or a blob that is broken as sent."""
        try:
            _drain(buffered)
        except (RegistryUnavailable, IntegrityError) as drained:
            return drained
        if compressed.count < size:
            return RegistryUnavailable(
                f"{what}: the download ended after {compressed.count} of {size} bytes"
            )
        if compressed.digest != digest:
            return IntegrityError(f"{what}: content does not match its digest")
        return IntegrityError(f"{what} cannot be unpacked: {exc}")


# --- the documents a pull reads: registry bytes, parsed without any I/O --------------


def platform_manifest(index: bytes, what: str, node: Platform) -> str:
    """The digest of the manifest for `node` in an image index (or manifest list)."""
    descriptor = _choose_platform(_json(index, f"index of {what}"), what, node)
    return _descriptor_digest(descriptor, f"index of {what}: the manifest for this node")


def manifest_content(manifest: bytes, what: str) -> tuple[str, list[Any]]:
    """An image manifest's config digest and its layer descriptors."""
    parsed = _json(manifest, f"manifest of {what}")
    config_desc = parsed.get("config")
    layers = parsed.get("layers")
    if not isinstance(config_desc, dict) or not isinstance(layers, list):
        raise ManifestError(f"manifest of {what} lacks config or layers")
    for index, layer in enumerate(layers):
        if not isinstance(layer, dict):
            raise ManifestError(f"manifest of {what}: layer {index} is not an object")
    return _descriptor_digest(config_desc, f"manifest of {what}: the config"), layers


def config_content(
    config_bytes: bytes, what: str, layer_count: int
) -> tuple[dict[str, Any], list[str]]:
    """An image config and its diff ids, one per layer of the manifest."""
    config = _json(config_bytes, f"config of {what}")
    rootfs = config.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or len(diff_ids) != layer_count:
        raise ManifestError(
            f"{what}: the config lists {len(diff_ids or [])} layers, the manifest {layer_count}"
        )
    return config, [str(d) for d in diff_ids]


def _descriptor_digest(descriptor: dict[str, Any], what: str) -> str:
    """The digest a descriptor names; it becomes part of a registry URL, so nothing but
    a digest will do."""
    digest = descriptor.get("digest")
    try:
        return validate_digest(digest) if isinstance(digest, str) else validate_digest("")
    except ReferenceError as exc:
        raise ManifestError(f"{what} has no valid digest: {exc}") from None


def _choose_platform(index: dict[str, Any], what: str, node: Platform) -> dict[str, Any]:
    entries = index.get("manifests")
    if not isinstance(entries, list):
        raise ManifestError(f"index of {what} has no manifests list")
    for position, entry in enumerate(entries):
        platform_ = (entry.get("platform") or {}) if isinstance(entry, dict) else None
        if not isinstance(platform_, dict) or not all(
            isinstance(platform_.get(key, ""), str) for key in ("os", "architecture", "variant")
        ):
            raise ManifestError(
                f"index of {what}: entry {position} is not a descriptor with a platform object"
            )
    best: dict[str, Any] | None = None
    for entry in entries:
        plat = entry.get("platform") or {}
        if plat.get("os") != node.os or plat.get("architecture") != node.architecture:
            continue
        variant = plat.get("variant", "")
        if variant and node.variant and variant != node.variant:
            continue
        if best is None or variant == node.variant:
            best = entry
    if best is None:
        offered = sorted(
            {
                "/".join(
                    p
                    for p in (
                        (e.get("platform") or {}).get("os", "?"),
                        (e.get("platform") or {}).get("architecture", "?"),
                        (e.get("platform") or {}).get("variant", ""),
                    )
                    if p
                )
                for e in entries
            }
        )
        node_name = "/".join(p for p in (node.os, node.architecture, node.variant) if p)
        raise ManifestError(
            f"{what} has no image for this node's platform {node_name} "
            f"(it offers {', '.join(offered) or 'none'})"
        )
    return best


def _drain(reader: io.BufferedReader[Any]) -> None:
    """Read to the end, so the hashes cover every byte the registry sent."""
    while reader.read(1 << 20):
        pass


def _check_layer(
    what: str,
    compressed: HashingReader,
    plain: HashingReader,
    size: int,
    digest: str,
    diff_id: str,
) -> None:
    """The layer came with the size and digest the manifest gives, and unpacked to the
    diff id the config gives."""
    if compressed.count != size:
        raise RegistryUnavailable(f"{what}: got {compressed.count} bytes, the manifest says {size}")
    if compressed.digest != digest:
        raise IntegrityError(f"{what}: content does not match its digest")
    if plain.digest != diff_id:
        raise IntegrityError(f"{what}: uncompressed content does not match diff id {diff_id}")


def _media_type(data: bytes, header_type: str, what: str) -> str:
    declared = ""
    try:
        parsed = json.loads(data)
        if isinstance(parsed, dict):
            declared = str(parsed.get("mediaType", ""))
            if not declared and parsed.get("schemaVersion") == 1:
                declared = DOCKER_SCHEMA1[0]
            if not declared and "manifests" in parsed:
                declared = OCI_INDEX
            if not declared and "layers" in parsed:
                declared = OCI_MANIFEST
    except ValueError:
        pass
    media_type = declared or header_type
    if media_type in DOCKER_SCHEMA1:
        raise ManifestError(
            f"{what} is a Docker schema 1 image, which skiff does not pull; "
            "push it again with a current client (schema 2 or OCI)"
        )
    if media_type not in ACCEPT:
        raise ManifestError(f"{what} has unsupported manifest type {media_type!r}")
    return media_type


def _fetch_small_blob(repo: Repository, digest: str, limit: int, cancel: PullWatch) -> bytes:
    response = repo.blob(digest, cancel)
    try:
        reader = HashingReader(response, limit, cancel, None, f"blob {digest}")  # type: ignore[arg-type]
        data = reader.read()
    finally:
        response.release_conn()
    if data is None or _digest_of(data) != digest:
        raise IntegrityError(f"blob {digest} from {repo.where} does not match its digest")
    return data
