"""Test images built in Python and pushed to real registries.

Layers come from `TarEntry` lists (`regular_file`, `directory`, `symlink`, `hardlink`,
`whiteout`, `opaque_marker`, `char_device`, `host_file`) via `build_layer`; images
and indexes from `build_image` / `build_index` (OCI or Docker schema2); `push` sends
them to a registry (plain, TLS, Basic or Bearer auth) with `RegistryClient`.

Ready-made images for the ImageService tests: `busybox_image`, `layered_image`
(whiteouts + opaque dir), `multiarch_index` (amd64 + arm64), `zstd_image`,
`docker_image`, `tiny_image`, `big_image` (~100 MB of random bytes, streamed to disk)
and `malicious_image` (path traversal in a layer).
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import http.client
import io
import json
import os
import re
import ssl
import subprocess
import tarfile
import tempfile
import urllib.parse
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal, Protocol, cast

import zstandard

from tests.integration.busybox import busybox_binary
from tests.integration.registry import basic_auth_header, parse_www_authenticate

Compression = Literal["gzip", "zstd", "none"]
ManifestFormat = Literal["oci", "docker"]
EntryType = Literal["file", "dir", "symlink", "hardlink", "char", "block", "fifo"]

# Media types ------------------------------------------------------------------------

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

#: What a client should send in Accept to get any manifest kind back.
ALL_MANIFEST_TYPES = (OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST)

FIXED_MTIME = 1_700_000_000  # 2023-11-14T22:13:20Z, every entry of every layer
FIXED_CREATED = "2023-11-14T22:13:20Z"
DEFAULT_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ======================================================================================
# Tar entries and layers
# ======================================================================================


@dataclass(frozen=True)
class TarEntry:
    """One member of a layer tar. Build with the helper functions below."""

    path: str
    type: EntryType = "file"
    content: bytes = b""
    source: Path | None = None  # regular file whose bytes come from the host
    mode: int | None = None  # None: 0644 file, 0755 dir, 0777 symlink, 0666 device
    uid: int = 0
    gid: int = 0
    linkname: str = ""  # symlink target (verbatim) or hardlink target (a layer path)
    devmajor: int = 0
    devminor: int = 0
    pax_headers: Mapping[str, str] = field(default_factory=dict)  # e.g. xattrs


def regular_file(
    path: str, content: bytes | str = b"", *, mode: int = 0o644, uid: int = 0, gid: int = 0
) -> TarEntry:
    data = content.encode() if isinstance(content, str) else content
    return TarEntry(path, "file", content=data, mode=mode, uid=uid, gid=gid)


def host_file(path: str, source: Path | str, *, mode: int | None = None) -> TarEntry:
    """A regular file at ``path`` with the bytes (and by default the mode) of ``source``."""
    src = Path(source)
    return TarEntry(path, "file", source=src, mode=mode)


def directory(path: str, *, mode: int = 0o755, uid: int = 0, gid: int = 0) -> TarEntry:
    return TarEntry(path, "dir", mode=mode, uid=uid, gid=gid)


def symlink(path: str, target: str, *, uid: int = 0, gid: int = 0) -> TarEntry:
    return TarEntry(path, "symlink", linkname=target, mode=0o777, uid=uid, gid=gid)


def hardlink(path: str, target: str) -> TarEntry:
    """A hard link to ``target``, an earlier member of the same layer."""
    return TarEntry(path, "hardlink", linkname=target)


def whiteout(path: str) -> TarEntry:
    """Deletes ``path`` (from lower layers): the ``.wh.<name>`` marker file."""
    parent, _, name = path.strip("/").rpartition("/")
    return TarEntry(f"{parent}/.wh.{name}" if parent else f".wh.{name}", "file", mode=0o644)


def opaque_marker(dir_path: str) -> TarEntry:
    """Makes ``dir_path`` opaque: lower layers' contents of it are hidden."""
    return TarEntry(f"{dir_path.strip('/')}/.wh..wh..opq", "file", mode=0o644)


def char_device(path: str, major: int, minor: int, *, mode: int = 0o666) -> TarEntry:
    return TarEntry(path, "char", mode=mode, devmajor=major, devminor=minor)


def fifo(path: str, *, mode: int = 0o644) -> TarEntry:
    return TarEntry(path, "fifo", mode=mode)


def _norm(path: str) -> str:
    parts = [p for p in path.split("/") if p not in ("", ".")]
    return "/".join(parts)


_TAR_TYPES: dict[EntryType, bytes] = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "char": tarfile.CHRTYPE,
    "block": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}
_DEFAULT_MODES: dict[EntryType, int] = {
    "file": 0o644,
    "dir": 0o755,
    "symlink": 0o777,
    "hardlink": 0o644,
    "char": 0o666,
    "block": 0o666,
    "fifo": 0o644,
}


def _with_parents(entries: Iterable[TarEntry]) -> Iterator[TarEntry]:
    """Normalize paths and add missing parent directories (0755, root) before use."""
    seen_dirs: set[str] = set()
    for e in entries:
        path = _norm(e.path)
        if not path:
            continue
        parts = path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent not in seen_dirs:
                seen_dirs.add(parent)
                yield directory(parent)
        if e.type == "dir":
            seen_dirs.add(path)
        linkname = _norm(e.linkname) if e.type == "hardlink" else e.linkname
        yield TarEntry(
            path,
            e.type,
            e.content,
            e.source,
            e.mode,
            e.uid,
            e.gid,
            linkname,
            e.devmajor,
            e.devminor,
            e.pax_headers,
        )


def write_tar(
    entries: Iterable[TarEntry],
    out: IO[bytes],
    *,
    normalize: bool = True,
    readers: Mapping[str, tuple[int, Callable[[], IO[bytes]]]] | None = None,
) -> None:
    """Write a PAX tar of ``entries`` to the stream ``out`` (deterministic mtimes).

    ``normalize``: strip ``/`` and ``.`` components and add missing parent dirs. With
    ``normalize=False`` names go in verbatim (``../x``, ``/abs``): for malicious layers.
    ``readers``: path -> (size, opener) for file contents too big for memory.
    """
    items = _with_parents(entries) if normalize else iter(entries)
    file_modes: dict[str, int] = {}  # hardlinks default to their target's mode
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for e in items:
            ti = tarfile.TarInfo(e.path)
            ti.type = _TAR_TYPES[e.type]
            ti.mtime = FIXED_MTIME
            ti.uid, ti.gid = e.uid, e.gid
            ti.uname = ti.gname = ""
            if e.pax_headers:
                ti.pax_headers = dict(e.pax_headers)
            src: IO[bytes] | None = None
            if e.type == "file":
                if readers and e.path in readers:
                    ti.size, opener = readers[e.path]
                    src = opener()
                elif e.source is not None:
                    st = e.source.stat()
                    ti.size = st.st_size
                    ti.mode = (st.st_mode & 0o7777) if e.mode is None else e.mode
                    src = open(e.source, "rb")  # noqa: SIM115 - closed below
                else:
                    ti.size = len(e.content)
                    src = io.BytesIO(e.content)
            if e.mode is not None:
                ti.mode = e.mode
            elif e.type == "hardlink":
                ti.mode = file_modes.get(e.linkname, _DEFAULT_MODES["hardlink"])
            elif e.source is None:
                ti.mode = _DEFAULT_MODES[e.type]
            if e.type == "file":
                file_modes[e.path] = ti.mode
            if e.type in ("symlink", "hardlink"):
                ti.linkname = e.linkname
            if e.type in ("char", "block"):
                ti.devmajor, ti.devminor = e.devmajor, e.devminor
            try:
                tar.addfile(ti, src)
            finally:
                if src is not None:
                    src.close()


def build_tar(entries: Iterable[TarEntry], *, normalize: bool = True) -> bytes:
    buf = io.BytesIO()
    write_tar(entries, buf, normalize=normalize)
    return buf.getvalue()


@dataclass(frozen=True)
class Blob:
    """Content-addressed bytes: in memory (``data``) or in a file (``path``)."""

    media_type: str
    digest: str
    size: int
    data: bytes | None = None
    path: Path | None = None

    def descriptor(self, **extra: object) -> dict[str, object]:
        d: dict[str, object] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        d.update(extra)
        return d

    def open(self) -> IO[bytes]:
        if self.data is not None:
            return io.BytesIO(self.data)
        assert self.path is not None
        return open(self.path, "rb")

    def read_bytes(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.path is not None
        return self.path.read_bytes()

    @classmethod
    def of(cls, data: bytes, media_type: str) -> Blob:
        return cls(media_type, sha256_digest(data), len(data), data=data)


@dataclass(frozen=True)
class Layer:
    blob: Blob
    diff_id: str  # sha256 of the uncompressed tar
    compression: Compression
    uncompressed_size: int

    @property
    def digest(self) -> str:
        return self.blob.digest

    @property
    def media_type(self) -> str:
        return self.blob.media_type

    @property
    def size(self) -> int:
        return self.blob.size


def layer_media_type(compression: Compression, fmt: ManifestFormat = "oci") -> str:
    if fmt == "oci":
        return {"gzip": OCI_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD, "none": OCI_LAYER}[compression]
    if compression == "gzip":
        return DOCKER_LAYER_GZIP
    if compression == "none":
        return DOCKER_LAYER
    raise ValueError("Docker schema2 has no zstd layer media type; use fmt='oci'")


class _Compressor:
    def __init__(self, compression: Compression, level: int | None = None) -> None:
        self._c: zlib._Compress | zstandard.ZstdCompressionObj | None
        if compression == "gzip":
            # wbits 31: gzip wrapper with mtime 0 -> deterministic output
            self._c = zlib.compressobj(6 if level is None else level, zlib.DEFLATED, 31)
        elif compression == "zstd":
            self._c = zstandard.ZstdCompressor(level=3 if level is None else level).compressobj()
        else:
            self._c = None

    def compress(self, data: bytes) -> bytes:
        return self._c.compress(data) if self._c is not None else data

    def flush(self) -> bytes:
        return self._c.flush() if self._c is not None else b""


def compress(data: bytes, compression: Compression, level: int | None = None) -> bytes:
    c = _Compressor(compression, level)
    return c.compress(data) + c.flush()


def make_layer(
    tar_bytes: bytes, compression: Compression = "gzip", fmt: ManifestFormat = "oci"
) -> Layer:
    """A layer from an uncompressed tar: compress, digest, media type."""
    media = layer_media_type(compression, fmt)
    blob = compress(tar_bytes, compression)
    return Layer(Blob.of(blob, media), sha256_digest(tar_bytes), compression, len(tar_bytes))


def build_layer(
    entries: Iterable[TarEntry],
    compression: Compression = "gzip",
    fmt: ManifestFormat = "oci",
    *,
    normalize: bool = True,
) -> Layer:
    return make_layer(build_tar(entries, normalize=normalize), compression, fmt)


class _LayerSink:
    """Write end of tar -> (diff_id hash) -> compressor -> (digest hash) -> file."""

    def __init__(self, out: IO[bytes], compression: Compression, level: int | None) -> None:
        self._out = out
        self._comp = _Compressor(compression, level)
        self.diff = hashlib.sha256()
        self.blob = hashlib.sha256()
        self.raw_size = 0
        self.blob_size = 0

    def write(self, data: bytes) -> int:
        self.diff.update(data)
        self.raw_size += len(data)
        self._emit(self._comp.compress(data))
        return len(data)

    def _emit(self, data: bytes) -> None:
        if data:
            self.blob.update(data)
            self.blob_size += len(data)
            self._out.write(data)

    def finish(self) -> None:
        self._emit(self._comp.flush())


def build_layer_file(
    entries: Iterable[TarEntry],
    dest: Path,
    compression: Compression = "gzip",
    fmt: ManifestFormat = "oci",
    *,
    level: int | None = None,
    readers: Mapping[str, tuple[int, Callable[[], IO[bytes]]]] | None = None,
) -> Layer:
    """Like `build_layer`, but streams the blob into the file ``dest`` (big layers)."""
    with open(dest, "wb") as f:
        sink = _LayerSink(f, compression, level)
        write_tar(entries, cast(IO[bytes], sink), readers=readers)
        sink.finish()
    blob = Blob(
        layer_media_type(compression, fmt),
        "sha256:" + sink.blob.hexdigest(),
        sink.blob_size,
        path=dest,
    )
    return Layer(blob, "sha256:" + sink.diff.hexdigest(), compression, sink.raw_size)


# ======================================================================================
# Images, manifests, indexes
# ======================================================================================


@dataclass(frozen=True)
class Platform:
    os: str = "linux"
    architecture: str = "amd64"
    variant: str | None = None

    def to_json(self) -> dict[str, str]:
        d = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            d["variant"] = self.variant
        return d

    def __str__(self) -> str:
        return "/".join(x for x in (self.os, self.architecture, self.variant) if x)


@dataclass(frozen=True)
class RunConfig:
    """The ``config`` section of an image config (what a container runs by default)."""

    env: tuple[str, ...] = (DEFAULT_PATH_ENV,)
    cmd: tuple[str, ...] | None = ("sh",)
    entrypoint: tuple[str, ...] | None = None
    user: str = ""
    working_dir: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    stop_signal: str | None = None
    exposed_ports: tuple[str, ...] = ()  # "8080/tcp"
    volumes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        d: dict[str, object] = {"Env": list(self.env)}
        if self.cmd is not None:
            d["Cmd"] = list(self.cmd)
        if self.entrypoint is not None:
            d["Entrypoint"] = list(self.entrypoint)
        if self.user:
            d["User"] = self.user
        if self.working_dir:
            d["WorkingDir"] = self.working_dir
        if self.labels:
            d["Labels"] = dict(self.labels)
        if self.stop_signal:
            d["StopSignal"] = self.stop_signal
        if self.exposed_ports:
            d["ExposedPorts"] = {p: {} for p in self.exposed_ports}
        if self.volumes:
            d["Volumes"] = {v: {} for v in self.volumes}
        return d


@dataclass(frozen=True)
class Image:
    """One single-platform image: layers, config blob and manifest blob."""

    fmt: ManifestFormat
    platform: Platform
    layers: tuple[Layer, ...]
    config: Blob
    manifest: Blob
    #: hints for pull tests: path in rootfs -> content, or None = must not exist
    expected_files: Mapping[str, bytes | None] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        """The manifest digest (what ``repo@digest`` names)."""
        return self.manifest.digest

    @property
    def config_digest(self) -> str:
        """The image ID in CRI terms."""
        return self.config.digest

    @property
    def diff_ids(self) -> list[str]:
        return [layer.diff_id for layer in self.layers]

    @property
    def config_json(self) -> dict[str, object]:
        result: dict[str, object] = json.loads(self.config.read_bytes())
        return result

    @property
    def manifest_json(self) -> dict[str, object]:
        result: dict[str, object] = json.loads(self.manifest.read_bytes())
        return result

    @property
    def size(self) -> int:
        """Manifest + config + compressed layers, in bytes."""
        return self.manifest.size + self.config.size + sum(x.size for x in self.layers)


@dataclass(frozen=True)
class ImageIndex:
    """An OCI image index or Docker manifest list over several `Image` s."""

    fmt: ManifestFormat
    images: tuple[Image, ...]
    manifest: Blob

    @property
    def digest(self) -> str:
        return self.manifest.digest

    def for_platform(self, architecture: str, os: str = "linux") -> Image:
        for img in self.images:
            if img.platform.architecture == architecture and img.platform.os == os:
                return img
        raise KeyError(f"no {os}/{architecture} image in index")


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def build_image(
    layers: Sequence[Layer],
    *,
    run: RunConfig | None = None,
    platform: Platform | None = None,
    fmt: ManifestFormat = "oci",
    created: str = FIXED_CREATED,
    history: Sequence[str] | None = None,
    annotations: Mapping[str, str] | None = None,
    expected_files: Mapping[str, bytes | None] | None = None,
) -> Image:
    """Config JSON + OCI manifest (``fmt="oci"``) or Docker schema2 manifest."""
    run = run or RunConfig()
    platform = platform or Platform()
    if fmt == "docker":
        for layer in layers:
            if layer.media_type not in (DOCKER_LAYER_GZIP, DOCKER_LAYER):
                raise ValueError(f"layer {layer.digest} is {layer.media_type}, not Docker")
    created_by = list(history) if history else [f"layer {i}" for i in range(len(layers))]
    config: dict[str, object] = {
        "created": created,
        "architecture": platform.architecture,
        "os": platform.os,
    }
    if platform.variant:
        config["variant"] = platform.variant
    config["config"] = run.to_json()
    config["rootfs"] = {"type": "layers", "diff_ids": [x.diff_id for x in layers]}
    config["history"] = [{"created": created, "created_by": c} for c in created_by]
    config_blob = Blob.of(_dumps(config), OCI_CONFIG if fmt == "oci" else DOCKER_CONFIG)
    manifest: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST if fmt == "oci" else DOCKER_MANIFEST,
        "config": config_blob.descriptor(),
        "layers": [x.blob.descriptor() for x in layers],
    }
    if annotations:
        if fmt != "oci":
            raise ValueError("annotations need an OCI manifest")
        manifest["annotations"] = dict(annotations)
    manifest_blob = Blob.of(_dumps(manifest), str(manifest["mediaType"]))
    return Image(
        fmt,
        platform,
        tuple(layers),
        config_blob,
        manifest_blob,
        dict(expected_files or {}),
    )


def build_index(
    images: Sequence[Image],
    *,
    fmt: ManifestFormat | None = None,
    annotations: Mapping[str, str] | None = None,
) -> ImageIndex:
    """An OCI index (``fmt="oci"``) or a Docker manifest list over ``images``."""
    fmt = fmt or images[0].fmt
    for img in images:
        if img.fmt != fmt:
            raise ValueError(f"a {fmt} index cannot list a {img.fmt} manifest")
    index: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX if fmt == "oci" else DOCKER_MANIFEST_LIST,
        "manifests": [img.manifest.descriptor(platform=img.platform.to_json()) for img in images],
    }
    if annotations:
        index["annotations"] = dict(annotations)
    blob = Blob.of(_dumps(index), str(index["mediaType"]))
    return ImageIndex(fmt, tuple(images), blob)


# ======================================================================================
# The busybox base layer
# ======================================================================================

#: Applets the tests rely on; every applet busybox lists is linked, these must exist.
REQUIRED_APPLETS = (
    "sh", "ls", "cat", "echo", "sleep", "true", "false", "id", "env", "mkdir", "rm",
    "ps", "wget", "nc", "hostname", "top",
)  # fmt: skip

ETC_PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "app:x:1000:1000:app:/home/app:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
ETC_GROUP = "root:x:0:\napp:x:1000:\nnogroup:x:65534:\n"
APP_UID = 1000
NOBODY_UID = 65534


def _shared_libs(binary: Path) -> list[str]:
    """The absolute paths ld.so loads for ``binary`` (ldd), loader included."""
    out = subprocess.run(
        ["ldd", str(binary)], check=True, capture_output=True, text=True, timeout=30
    ).stdout
    paths: list[str] = []
    for line in out.splitlines():
        m = re.search(r"=>\s*(/\S+)", line) or re.match(r"\s*(/\S+)", line)
        if m and m.group(1) not in paths:
            paths.append(m.group(1))
    return paths


def _lib_entries(paths: Iterable[str]) -> list[TarEntry]:
    """Each library at the path ld.so uses; a symlinked file (the loader in /lib64)
    stays a symlink to its target, which is added too. Directory symlinks of the host
    (merged /usr) become plain directories in the image."""
    entries: list[TarEntry] = []
    done: set[str] = set()
    todo = list(paths)
    while todo:
        p = todo.pop(0)
        if p in done:
            continue
        done.add(p)
        if os.path.islink(p):
            target = os.readlink(p)
            entries.append(symlink(p, target))
            todo.append(os.path.normpath(os.path.join(os.path.dirname(p), target)))
        else:
            entries.append(host_file(p, os.path.realpath(p), mode=0o755))
    return entries


def host_program(path: str, source: Path, *, have: Iterable[TarEntry] = ()) -> list[TarEntry]:
    """A program of the host at `path` in a layer, with the libraries ld.so loads for
    it that `have` (the rest of the layer) does not already hold."""
    held = {_norm(entry.path) for entry in have}
    libraries = [e for e in _lib_entries(_shared_libs(source)) if _norm(e.path) not in held]
    return [host_file(path, source, mode=0o755), *libraries]


def busybox_applets() -> list[str]:
    out = subprocess.run(
        [str(busybox_binary()), "--list"], check=True, capture_output=True, text=True, timeout=30
    ).stdout
    applets = sorted({a for a in out.split() if a and "/" not in a and a != "busybox"})
    missing = [a for a in REQUIRED_APPLETS if a not in applets]
    if missing:
        raise RuntimeError(f"{busybox_binary()} lacks applets {missing}")
    return applets


def busybox_entries() -> list[TarEntry]:
    """A minimal root filesystem around Debian's dynamic busybox."""
    entries = [
        directory("bin"),
        directory("dev"),
        directory("etc"),
        directory("home"),
        directory("home/app", mode=0o755, uid=APP_UID, gid=APP_UID),
        directory("proc"),
        directory("root", mode=0o700),
        directory("sys"),
        directory("tmp", mode=0o1777),
        directory("usr"),
        directory("usr/bin"),
        directory("var"),
        directory("var/tmp", mode=0o1777),
        host_file("bin/busybox", busybox_binary(), mode=0o755),
    ]
    entries += [hardlink(f"bin/{a}", "bin/busybox") for a in busybox_applets()]
    entries += _lib_entries(_shared_libs(busybox_binary()))
    entries += [
        regular_file("etc/passwd", ETC_PASSWD),
        regular_file("etc/group", ETC_GROUP),
        regular_file("etc/hostname", "skiff-test\n"),
    ]
    return entries


@functools.cache
def busybox_tar() -> bytes:
    """The uncompressed busybox rootfs tar (built once per process)."""
    return build_tar(busybox_entries())


@functools.cache
def busybox_layer(compression: Compression = "gzip", fmt: ManifestFormat = "oci") -> Layer:
    return make_layer(busybox_tar(), compression, fmt)


def busybox_image(
    *,
    fmt: ManifestFormat = "oci",
    compression: Compression = "gzip",
    run: RunConfig | None = None,
    extra_layers: Sequence[Layer] = (),
    labels: Mapping[str, str] | None = None,
) -> Image:
    """busybox + libc as one layer, ``sh`` as Cmd; extra layers on top."""
    run = run or RunConfig(labels=dict(labels or {}))
    return build_image(
        [busybox_layer(compression, fmt), *extra_layers],
        run=run,
        fmt=fmt,
        history=["busybox base", *[f"extra {i}" for i in range(len(extra_layers))]],
        expected_files={"etc/hostname": b"skiff-test\n"},
    )


# ======================================================================================
# Images for the ImageService tests
# ======================================================================================


def tiny_image(
    text: str = "hello from skiff\n",
    *,
    fmt: ManifestFormat = "oci",
    compression: Compression = "gzip",
    platform: Platform | None = None,
    run: RunConfig | None = None,
) -> Image:
    """One small layer holding ``/hello.txt``; not runnable, fast to pull."""
    layer = build_layer([regular_file("hello.txt", text)], compression, fmt)
    return build_image(
        [layer],
        run=run or RunConfig(cmd=("/hello",)),
        platform=platform,
        fmt=fmt,
        expected_files={"hello.txt": text.encode()},
    )


def layered_image(
    *, fmt: ManifestFormat = "oci", compression: Compression = "gzip", devices: bool = True
) -> Image:
    """busybox + an app layer + a layer that deletes and hides things of the app layer.

    Layer 2 adds ``/etc/skiff/{keep,remove-me}.txt``, ``/data/opaque/{old-a.txt,
    sub/old-b.txt}``, a symlink, a hardlink, a 0600 file owned by 1000:1000, an executable
    script and (``devices``) a char device ``/dev/skiff-null`` (1:3). Layer 3 whites out
    ``remove-me.txt``, makes ``/data/opaque`` opaque (adding ``new.txt``) and rewrites
    ``keep.txt``. ``expected_files`` says what the merged rootfs must (not) contain.
    """
    app: list[TarEntry] = [
        regular_file("etc/skiff/keep.txt", "keep v1\n"),
        regular_file("etc/skiff/remove-me.txt", "remove me\n"),
        regular_file("data/opaque/old-a.txt", "old a\n"),
        regular_file("data/opaque/sub/old-b.txt", "old b\n"),
        symlink("data/link-to-keep", "/etc/skiff/keep.txt"),
        hardlink("data/hard-keep", "etc/skiff/keep.txt"),
        regular_file("data/private.txt", "secret\n", mode=0o600, uid=APP_UID, gid=APP_UID),
        regular_file("data/run.sh", "#!/bin/sh\necho run.sh ran\n", mode=0o755),
        directory("data/appdir", mode=0o700, uid=APP_UID, gid=APP_UID),
    ]
    if devices:
        app.append(char_device("dev/skiff-null", 1, 3))
    removals: list[TarEntry] = [
        whiteout("etc/skiff/remove-me.txt"),
        opaque_marker("data/opaque"),
        regular_file("data/opaque/new.txt", "new\n"),
        regular_file("etc/skiff/keep.txt", "keep v2\n"),
    ]
    return build_image(
        [
            busybox_layer(compression, fmt),
            build_layer(app, compression, fmt),
            build_layer(removals, compression, fmt),
        ],
        run=RunConfig(
            cmd=("cat", "/etc/skiff/keep.txt"),
            working_dir="/data",
            labels={"org.skiff.test": "layered"},
            stop_signal="SIGINT",
        ),
        fmt=fmt,
        history=["busybox base", "app files", "removals"],
        expected_files={
            "etc/skiff/keep.txt": b"keep v2\n",
            "etc/skiff/remove-me.txt": None,
            "etc/skiff/.wh.remove-me.txt": None,
            "data/opaque/new.txt": b"new\n",
            "data/opaque/old-a.txt": None,
            "data/opaque/sub": None,
            "data/opaque/.wh..wh..opq": None,
            "data/hard-keep": b"keep v1\n",
            "data/private.txt": b"secret\n",
            "data/run.sh": b"#!/bin/sh\necho run.sh ran\n",
            "etc/passwd": ETC_PASSWD.encode(),
        },
    )


def multiarch_index(*, fmt: ManifestFormat = "oci") -> ImageIndex:
    """amd64 = the busybox image; arm64 (v8) = one text layer (``/arch.txt``)."""
    amd64 = busybox_image(fmt=fmt, labels={"org.skiff.arch": "amd64"})
    amd64 = dataclasses.replace(
        amd64, expected_files={"etc/hostname": b"skiff-test\n", "arch.txt": None}
    )
    arm64 = build_image(
        [build_layer([regular_file("arch.txt", "arm64\n")], "gzip", fmt)],
        run=RunConfig(cmd=("/bin/sh",), labels={"org.skiff.arch": "arm64"}),
        platform=Platform("linux", "arm64", "v8"),
        fmt=fmt,
        expected_files={"arch.txt": b"arm64\n"},
    )
    return build_index([amd64, arm64], fmt=fmt)


def zstd_image() -> Image:
    """busybox and a small file layer, both zstd-compressed (OCI only)."""
    extra = build_layer([regular_file("etc/zstd.txt", "zstd layer\n")], "zstd", "oci")
    img = busybox_image(compression="zstd", extra_layers=[extra])
    return dataclasses.replace(
        img, expected_files={"etc/zstd.txt": b"zstd layer\n", "etc/hostname": b"skiff-test\n"}
    )


def docker_image() -> Image:
    """The busybox image as Docker schema2 (Docker media types, gzip)."""
    return busybox_image(fmt="docker")


class _RandomReader(io.RawIOBase):
    def __init__(self, size: int) -> None:
        super().__init__()
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
        n = min(len(buf), self._left)
        buf[:n] = os.urandom(n)
        self._left -= n
        return n


def big_image(
    workdir: Path,
    *,
    total_mb: int = 100,
    files: int = 4,
    compression: Compression = "gzip",
    with_busybox: bool = True,
) -> Image:
    """~``total_mb`` MiB of random (incompressible) bytes in ``files`` files under
    ``/big/``, one layer streamed to a file in ``workdir`` (the caller removes it)."""
    per_file = total_mb * 1024 * 1024 // files
    names = [f"big/random-{i}.bin" for i in range(files)]
    entries = [TarEntry(n, "file", mode=0o644) for n in names]

    def opener(size: int) -> Callable[[], IO[bytes]]:
        return lambda: io.BufferedReader(_RandomReader(size), 1 << 16)

    fd, name = tempfile.mkstemp(prefix="big-layer-", suffix=".blob", dir=workdir)
    os.close(fd)
    layer = build_layer_file(
        entries,
        Path(name),
        compression,
        level=1,
        readers={n: (per_file, opener(per_file)) for n in names},
    )
    layers = [busybox_layer("gzip", "oci"), layer] if with_busybox else [layer]
    return build_image(
        layers,
        run=RunConfig(cmd=("ls", "-l", "/big")),
        history=["busybox base", "random data"][-len(layers) :],
    )


MaliciousKind = Literal[
    "dotdot", "absolute", "symlink_relative", "symlink_absolute", "hardlink_escape"
]
MALICIOUS_KINDS: tuple[MaliciousKind, ...] = (
    "dotdot",
    "absolute",
    "symlink_relative",
    "symlink_absolute",
    "hardlink_escape",
)


def escape_marker(kind: MaliciousKind) -> str:
    """The file name a malicious layer of ``kind`` tries to create outside the rootfs."""
    return f"skiff-escape-{kind}"


def malicious_entries(kind: MaliciousKind) -> list[TarEntry]:
    """Tar members that try to write outside the rootfs; names are used verbatim.

    - ``dotdot``: ``../../../../../../tmp/<marker>`` and ``../<marker>``
    - ``absolute``: ``/tmp/<marker>``
    - ``symlink_relative``: ``evil -> ../../../../../../../../tmp`` then ``evil/<marker>``
    - ``symlink_absolute``: ``evil -> /tmp`` then ``evil/<marker>``
    - ``hardlink_escape``: hardlinks to ``../../../../../../etc/passwd`` and ``/etc/passwd``
    """
    marker = escape_marker(kind)
    ok = regular_file("ok.txt", "harmless\n")
    if kind == "dotdot":
        return [
            ok,
            regular_file("../../../../../../tmp/" + marker, "escaped\n"),
            regular_file("../" + marker, "escaped\n"),
        ]
    if kind == "absolute":
        return [ok, regular_file("/tmp/" + marker, "escaped\n")]
    if kind == "symlink_relative":
        return [
            ok,
            symlink("evil", "../../../../../../../../tmp"),
            regular_file("evil/" + marker, "escaped\n"),
        ]
    if kind == "symlink_absolute":
        return [ok, symlink("evil", "/tmp"), regular_file("evil/" + marker, "escaped\n")]
    if kind == "hardlink_escape":
        return [
            ok,
            TarEntry("passwd-rel", "hardlink", linkname="../../../../../../etc/passwd"),
            TarEntry("passwd-abs", "hardlink", linkname="/etc/passwd"),
        ]
    raise ValueError(f"unknown malicious kind {kind!r}")


def malicious_layer(
    kind: MaliciousKind, compression: Compression = "gzip", fmt: ManifestFormat = "oci"
) -> Layer:
    return build_layer(malicious_entries(kind), compression, fmt, normalize=False)


def malicious_image(kind: MaliciousKind, *, fmt: ManifestFormat = "oci") -> Image:
    """A one-layer image whose layer is `malicious_layer` (kind)."""
    return build_image(
        [malicious_layer(kind, "gzip", fmt)],
        run=RunConfig(cmd=("/ok",)),
        fmt=fmt,
        history=[f"malicious {kind}"],
    )


# ======================================================================================
# A small synchronous registry client (push, and raw reads for tests)
# ======================================================================================


class RegistryEndpoint(Protocol):
    """What `RegistryClient` needs from a registry (`TestRegistry` has all of it)."""

    @property
    def url(self) -> str: ...

    @property
    def username(self) -> str | None: ...

    @property
    def password(self) -> str | None: ...

    def ssl_context(self) -> ssl.SSLContext | None: ...


class RegistryHTTPError(RuntimeError):
    def __init__(self, method: str, url: str, status: int, body: bytes) -> None:
        super().__init__(f"{method} {url} -> {status}: {body[:500]!r}")
        self.status = status
        self.body = body


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes
    url: str

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def json(self) -> dict[str, object]:
        result: dict[str, object] = json.loads(self.body)
        return result


class RegistryClient:
    """Plain ``http.client`` registry client: Basic and Bearer auth, TLS, no redirects.

    ``request`` answers a 401 by authenticating as the ``WWW-Authenticate`` header asks
    (Basic with the credentials; Bearer: GET the realm with service + scope, Basic
    credentials if any) and retrying once. Tokens are cached per scope;
    ``tokens_fetched`` counts realm round trips.
    """

    def __init__(
        self,
        endpoint: RegistryEndpoint | str,
        *,
        username: str | None = None,
        password: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 120.0,
    ) -> None:
        if isinstance(endpoint, str):
            self.base = endpoint.rstrip("/")
            self.username, self.password = username, password
            self._ssl = ssl_context
        else:
            self.base = endpoint.url.rstrip("/")
            self.username = username if username is not None else endpoint.username
            self.password = password if password is not None else endpoint.password
            self._ssl = ssl_context or endpoint.ssl_context()
        self.timeout = timeout
        self.tokens_fetched = 0
        self._tokens: dict[str, str] = {}
        self._basic = False

    # -- transport -----------------------------------------------------------------------

    def _conn(self, url: str) -> http.client.HTTPConnection:
        u = urllib.parse.urlsplit(url)
        assert u.hostname is not None
        if u.scheme == "https":
            return http.client.HTTPSConnection(
                u.hostname, u.port, timeout=self.timeout, context=self._ssl, blocksize=1 << 16
            )
        return http.client.HTTPConnection(
            u.hostname, u.port, timeout=self.timeout, blocksize=1 << 16
        )

    def raw(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | Blob | None = None,
    ) -> Response:
        """One HTTP exchange, no auth handling."""
        hdrs = dict(headers or {})
        u = urllib.parse.urlsplit(url)
        target = u.path + (f"?{u.query}" if u.query else "")
        conn = self._conn(url)
        stream: IO[bytes] | None = None
        try:
            payload: bytes | IO[bytes] | None
            if isinstance(body, Blob):
                stream = body.open()
                payload = stream
                hdrs.setdefault("Content-Length", str(body.size))
            else:
                payload = body
                if body is not None:
                    hdrs.setdefault("Content-Length", str(len(body)))
            if payload is None and method in ("POST", "PUT", "PATCH"):
                hdrs.setdefault("Content-Length", "0")
            conn.request(method, target, body=payload, headers=hdrs)
            resp = conn.getresponse()
            data = resp.read()
            return Response(resp.status, resp.headers, data, url)
        finally:
            if stream is not None:
                stream.close()
            conn.close()

    def request(
        self,
        method: str,
        path_or_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | Blob | None = None,
        scope: str | None = None,
        expect: Iterable[int] | None = None,
    ) -> Response:
        """A request with auth; raises `RegistryHTTPError` unless status in ``expect``."""
        url = path_or_url if "://" in path_or_url else self.base + path_or_url
        scope = scope if scope is not None else _default_scope(method, url)
        hdrs = dict(headers or {})
        auth = self._auth_for(scope)
        if auth:
            hdrs["Authorization"] = auth
        resp = self.raw(method, url, headers=hdrs, body=body)
        if resp.status == 401 and (challenge := resp.header("WWW-Authenticate")):
            auth = self._authenticate(challenge, scope)
            if auth:
                hdrs["Authorization"] = auth
                resp = self.raw(method, url, headers=hdrs, body=body)
        if expect is not None and resp.status not in set(expect):
            raise RegistryHTTPError(method, url, resp.status, resp.body)
        return resp

    def _auth_for(self, scope: str) -> str | None:
        if scope in self._tokens:
            return "Bearer " + self._tokens[scope]
        if self._basic and self.username is not None:
            return basic_auth_header(self.username, self.password or "")
        return None

    def _authenticate(self, challenge: str, scope: str) -> str | None:
        scheme, params = parse_www_authenticate(challenge)
        if scheme == "basic":
            if self.username is None:
                return None
            self._basic = True
            return basic_auth_header(self.username, self.password or "")
        if scheme == "bearer" and "realm" in params:
            token = self.fetch_token(params["realm"], params.get("service", ""), scope)
            self._tokens[scope] = token
            return "Bearer " + token
        return None

    def fetch_token(self, realm: str, service: str, scope: str) -> str:
        query = {"service": service} if service else {}
        if scope:
            query["scope"] = scope
        url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
        hdrs = {}
        if self.username is not None:
            hdrs["Authorization"] = basic_auth_header(self.username, self.password or "")
        resp = self.raw("GET", url, headers=hdrs)
        self.tokens_fetched += 1
        if resp.status != 200:
            raise RegistryHTTPError("GET", url, resp.status, resp.body)
        data = resp.json()
        token = data.get("token") or data.get("access_token")
        if not isinstance(token, str):
            raise RuntimeError(f"token server {realm} answered without a token: {data}")
        return token

    # -- registry operations ---------------------------------------------------------

    def blob_exists(self, repo: str, digest: str, *, scope: str | None = None) -> bool:
        r = self.request("HEAD", f"/v2/{repo}/blobs/{digest}", scope=scope, expect=(200, 404))
        return r.status == 200

    def push_blob(self, repo: str, blob: Blob) -> bool:
        """Upload ``blob`` unless present (HEAD); True when it was uploaded."""
        scope = f"repository:{repo}:pull,push"
        if self.blob_exists(repo, blob.digest, scope=scope):
            return False
        r = self.request("POST", f"/v2/{repo}/blobs/uploads/", scope=scope, expect=(202,))
        location = r.header("Location")
        if not location:
            raise RuntimeError(f"upload for {repo} started without a Location")
        url = urllib.parse.urljoin(self.base + "/", location)
        url += ("&" if "?" in url else "?") + "digest=" + urllib.parse.quote(blob.digest)
        r = self.request(
            "PUT",
            url,
            headers={"Content-Type": "application/octet-stream"},
            body=blob,
            scope=scope,
            expect=(201,),
        )
        got = r.header("Docker-Content-Digest")
        if got and got != blob.digest:
            raise RuntimeError(f"registry stored {got} for blob {blob.digest}")
        return True

    def put_manifest(self, repo: str, reference: str, manifest: Blob) -> str:
        r = self.request(
            "PUT",
            f"/v2/{repo}/manifests/{reference}",
            headers={"Content-Type": manifest.media_type},
            body=manifest,
            scope=f"repository:{repo}:pull,push",
            expect=(201,),
        )
        got = r.header("Docker-Content-Digest") or manifest.digest
        if got != manifest.digest:
            raise RuntimeError(f"registry computed {got} for manifest {manifest.digest}")
        return got

    def get_manifest(
        self, repo: str, reference: str, *, accept: Sequence[str] = ALL_MANIFEST_TYPES
    ) -> Response:
        return self.request(
            "GET",
            f"/v2/{repo}/manifests/{reference}",
            headers={"Accept": ", ".join(accept)},
        )

    def get_blob(self, repo: str, digest: str) -> Response:
        return self.request("GET", f"/v2/{repo}/blobs/{digest}")

    def delete_manifest(self, repo: str, digest: str) -> Response:
        return self.request(
            "DELETE", f"/v2/{repo}/manifests/{digest}", scope=f"repository:{repo}:delete"
        )


def _default_scope(method: str, url: str) -> str:
    m = re.search(r"/v2/(.+)/(?:manifests|blobs|tags)/", urllib.parse.urlsplit(url).path)
    if not m:
        return ""
    actions = "pull" if method in ("GET", "HEAD") else "pull,push"
    return f"repository:{m.group(1)}:{actions}"


@dataclass(frozen=True)
class PushResult:
    host: str  # "127.0.0.1:PORT"
    repo: str
    tag: str | None
    digest: str  # top-level: the index digest for an ImageIndex, else the manifest's
    manifest_digests: Mapping[str, str]  # platform ("linux/amd64") -> manifest digest
    config_digests: Mapping[str, str]  # platform -> config digest (image ID)
    blobs_uploaded: int

    @property
    def reference(self) -> str:
        """``host/repo:tag`` (or ``host/repo@digest`` when pushed without a tag)."""
        return f"{self.host}/{self.repo}:{self.tag}" if self.tag else self.by_digest

    @property
    def by_digest(self) -> str:
        return f"{self.host}/{self.repo}@{self.digest}"


def push(
    registry: RegistryEndpoint | RegistryClient,
    repo: str,
    tag: str | None,
    image: Image | ImageIndex,
    *,
    username: str | None = None,
    password: str | None = None,
) -> PushResult:
    """Push blobs, config, manifest(s) and the index; tag the top level with ``tag``
    (None: push by digest only). Credentials default to the registry's own."""
    client = (
        registry
        if isinstance(registry, RegistryClient)
        else RegistryClient(registry, username=username, password=password)
    )
    images = image.images if isinstance(image, ImageIndex) else (image,)
    uploaded = 0
    manifests: dict[str, str] = {}
    configs: dict[str, str] = {}
    for img in images:
        for layer in img.layers:
            uploaded += client.push_blob(repo, layer.blob)
        uploaded += client.push_blob(repo, img.config)
        if isinstance(image, ImageIndex):
            client.put_manifest(repo, img.digest, img.manifest)  # children by digest
        manifests[str(img.platform)] = img.digest
        configs[str(img.platform)] = img.config_digest
    top = image.manifest
    client.put_manifest(repo, tag or top.digest, top)
    host = urllib.parse.urlsplit(client.base).netloc
    return PushResult(host, repo, tag, top.digest, manifests, configs, uploaded)


def docker_config_auth(registry: RegistryEndpoint, host: str | None = None) -> dict[str, object]:
    """``{"auths": {host: {"auth": base64(user:pass)}}}`` for the registry's credentials."""
    h = host or urllib.parse.urlsplit(registry.url).netloc
    auth = base64.b64encode(f"{registry.username}:{registry.password}".encode()).decode()
    return {"auths": {h: {"auth": auth}}}
