"""One layer, in one streaming pass: download → verify → decompress → unpack.

The compressed bytes are hashed as they arrive (the blob digest and size), the
decompressed bytes as they are unpacked (the diff id), and only fixed-size buffers
are held, so memory stays flat whatever the layer size. Compression is recognised by
its magic bytes (gzip, zstd, or a plain tar), which also covers registries that label
layers loosely.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from typing import Any, BinaryIO, cast

import zstandard
from isal import igzip
from isal.isal_zlib import IsalError
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import ReadTimeoutError

from base.errors import DataLoss
from image.registry_client import PullCancelled, PullWatch, RegistryUnavailable

CHUNK = 1 << 20
# What a decompressing() reader raises on a corrupt stream (gzip's bad headers and CRCs
# are OSErrors without an errno); isal's inflate errors derive from Exception only.
# (isal's stubs declare IsalError an instance, hence the cast.)
DECOMPRESSION_ERRORS: tuple[type[Exception], ...] = (
    EOFError,
    zstandard.ZstdError,
    cast(type[Exception], IsalError),
)
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class IntegrityError(DataLoss):
    pass


class HashingReader(io.RawIOBase):
    """Reads through, hashing and counting; stops past `limit` bytes or on cancel."""

    def __init__(
        self,
        source: BinaryIO,
        limit: int | None = None,
        cancel: PullWatch | None = None,
        on_bytes: Callable[[int], None] | None = None,
        what: str = "",
        network: bool = False,
    ) -> None:
        self.source = source
        self.hash = hashlib.sha256()
        self.count = 0
        self.limit = limit
        self.cancel = cancel
        self.on_bytes = on_bytes
        self.what = what
        # Only a reader of the network response turns read errors into "unavailable";
        # errors of a decompressor below belong to the caller.
        self.network = network

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self.cancel is not None and self.cancel.is_set():
            raise PullCancelled(f"{self.what}: pull cancelled")
        try:
            data = self.source.read(len(buffer))
        except ReadTimeoutError:
            raise RegistryUnavailable(f"{self.what}: the registry stopped sending") from None
        except (Urllib3Error, OSError) as exc:
            if not self.network:
                raise
            raise RegistryUnavailable(f"{self.what}: download broke off: {exc}") from None
        n = len(data)
        if self.cancel is not None and self.cancel.is_set():
            # The socket was shut down under this read: the pull is over.
            raise PullCancelled(f"{self.what}: pull cancelled")
        if n:
            if self.cancel is not None:
                self.cancel.progressed()
            buffer[:n] = data
            self.hash.update(data)
            self.count += n
            if self.limit is not None and self.count > self.limit:
                raise IntegrityError(f"{self.what}: more bytes than the {self.limit} declared")
            if self.on_bytes is not None:
                self.on_bytes(n)
        return n

    def drain(self) -> None:
        while self.read(CHUNK):
            pass

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


def decompressing(source: io.BufferedReader[Any]) -> BinaryIO:
    """A reader of the uncompressed tar, whatever compression `source` carries."""
    head = source.peek(4)[:4]
    if head.startswith(GZIP_MAGIC):
        return cast(BinaryIO, igzip.IGzipFile(fileobj=source, mode="rb"))  # type: ignore[no-untyped-call]
    if head.startswith(ZSTD_MAGIC):
        reader = zstandard.ZstdDecompressor().stream_reader(
            source, read_size=CHUNK, read_across_frames=True
        )
        return cast(BinaryIO, reader)
    return cast(BinaryIO, source)
