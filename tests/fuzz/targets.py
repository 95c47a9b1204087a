"""Fuzz targets: skiff's parsers of untrusted bytes, one function per parser.

Each target takes the fuzzer's bytes, feeds them to the real parser the way skiffd
does, and accepts only the parser's documented, typed errors. Anything else that
escapes (an AttributeError, a RecursionError, a write outside the layer root, a hang)
is a crash for the fuzzer to report with its input.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import os
import shutil
import socket
import tarfile
import tempfile
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, BinaryIO, cast

from cri.http_head import MalformedHead, parse_request_head
from cri.streaming.server import _sizes
from cri.streaming.spdy import SpdyError, SpdySession, SpdyStream
from cri.streaming.websocket import CHANNEL_PROTOCOLS, WebSocket, WebSocketError, handshake_response
from image.auth import AuthFileError, lookup_auth_file
from image.layer_fetch import DECOMPRESSION_ERRORS, HashingReader, decompressing
from image.pull import (
    ManifestError,
    Platform,
    _media_type,
    config_content,
    manifest_content,
    platform_manifest,
)
from image.reference import parse
from image.registries import BlockedError, RegistriesConfError, load_conf
from image.unpack import UnsafeLayerError, unpack_layer

# A streaming connection the fuzzer feeds ends in well under this; longer is a hang.
SESSION_DEADLINE = 5.0
NODE = Platform("linux", "amd64")

_loop = asyncio.new_event_loop()


class Hang(AssertionError):
    """A parser kept going after its input ended."""


def _run(coro: Coroutine[Any, Any, None]) -> None:
    async def bounded() -> None:
        try:
            async with asyncio.timeout(SESSION_DEADLINE):
                await coro
        except TimeoutError:
            raise Hang(f"still running {SESSION_DEADLINE} s after the input ended") from None

    _loop.run_until_complete(bounded())


# --- image layers ---------------------------------------------------------------------

# What the puller takes for a blob that does not decompress (see ImagePuller._explain).
_DECOMPRESSION_ERRORS: tuple[type[Exception], ...] = (*DECOMPRESSION_ERRORS, tarfile.TarError)


def layer(data: bytes) -> None:
    """unpack_layer behind the puller's decompression, into a fresh directory.

    Allowed: UnsafeLayerError, or the decompressor's own errors. Never a write beside
    the layer root: the root's parent holds a marker file and nothing else."""
    base = Path(tempfile.mkdtemp(prefix="skiff-fuzz-layer-"))
    try:
        marker = base / "marker"
        marker.write_bytes(b"outside the layer")
        source = io.BufferedReader(io.BytesIO(data))
        try:
            plain = HashingReader(decompressing(source))
            unpack_layer(cast(BinaryIO, plain), base / "root")
        except UnsafeLayerError:
            pass
        except _DECOMPRESSION_ERRORS:
            pass
        except OSError as exc:
            # gzip's BadGzipFile is an OSError without errno; an errno is the host's
            # trouble, and the only host trouble a temp dir may have is a full disk.
            if exc.errno not in (None, errno.ENOSPC, errno.EDQUOT):
                raise
        left = sorted(os.listdir(base))
        assert left in (["marker", "root"], ["marker"]), f"wrote beside the root: {left}"
        assert marker.read_bytes() == b"outside the layer", "the marker beside the root changed"
    finally:
        shutil.rmtree(base)


# --- manifests, indexes and image configs -----------------------------------------------


def manifest(data: bytes) -> None:
    """Every reader of a registry's JSON documents: the media type sniffer, the index's
    platform choice, the manifest's config and layers, the config's diff ids. Allowed:
    ManifestError."""
    with contextlib.suppress(ManifestError):
        _media_type(data, "", "fuzz")
    with contextlib.suppress(ManifestError):
        digest = platform_manifest(data, "fuzz", NODE)
        assert isinstance(digest, str)
    layer_count = 0
    with contextlib.suppress(ManifestError):
        config_digest, layers = manifest_content(data, "fuzz")
        assert isinstance(config_digest, str) and isinstance(layers, list)
        layer_count = len(layers)
    with contextlib.suppress(ManifestError):
        _config, diff_ids = config_content(data, "fuzz", layer_count)
        assert all(isinstance(d, str) for d in diff_ids)


# --- registries.conf and auth files ------------------------------------------------------

_REFERENCES = [
    parse(text)
    for text in ("busybox", "docker.io/library/busybox:1", "q.io/a/b@sha256:" + "0" * 64)
]


def _as_file(data: bytes, name: str, use: Callable[[Path], None]) -> None:
    directory = Path(tempfile.mkdtemp(prefix="skiff-fuzz-file-"))
    try:
        path = directory / name
        path.write_bytes(data)
        use(path)
    finally:
        shutil.rmtree(directory)


def registries_conf(data: bytes) -> None:
    """load_conf on a registries.conf with these bytes, then where some references would
    be pulled from. Allowed: RegistriesConfError; BlockedError for a blocked registry."""

    def use(path: Path) -> None:
        try:
            conf = load_conf(path)
        except RegistriesConfError:
            return
        for ref in _REFERENCES:
            for candidate in conf.candidates(ref):
                with contextlib.suppress(BlockedError):
                    conf.endpoints(candidate)

    _as_file(data, "registries.conf", use)


def auth_file(data: bytes) -> None:
    """lookup_auth_file on an auth.json with these bytes. Allowed: AuthFileError."""

    def use(path: Path) -> None:
        for host, repository in (("docker.io", "library/busybox"), ("q.io:5000", "a/b")):
            with contextlib.suppress(AuthFileError):
                lookup_auth_file(path, host, repository)

    _as_file(data, "auth.json", use)


# --- the streaming server ------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _connection(
    data: bytes,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """Our end of a loopback socket pair whose other end sends `data` and then EOF (and
    reads whatever we answer, so our writes never block)."""
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    loop = asyncio.get_running_loop()

    async def sink() -> None:
        with contextlib.suppress(OSError):
            while await loop.sock_recv(theirs, 65536):
                pass

    sinking = loop.create_task(sink())
    try:
        reader, writer = await asyncio.open_connection(sock=ours)
        await loop.sock_sendall(theirs, data)
        theirs.shutdown(socket.SHUT_WR)
        try:
            yield reader, writer
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    finally:
        sinking.cancel()
        ours.close()
        theirs.close()


def websocket_frames(data: bytes) -> None:
    """WebSocket.receive until the end, on frames from a client (first byte even) or a
    server (odd), with a 1 KiB message limit. Allowed: WebSocketError."""

    async def session() -> None:
        server = not data[:1] or data[0] % 2 == 0
        async with _connection(data[1:]) as (reader, writer):
            ws = WebSocket(reader, writer, server=server, max_message=1024, close_timeout=1)
            with contextlib.suppress(WebSocketError):
                while (message := await ws.receive()) is not None:
                    assert isinstance(message, bytes)

    _run(session())


def http_upgrade(data: bytes) -> None:
    """A streaming request's head, then its WebSocket upgrade headers. Allowed:
    MalformedHead, WebSocketError."""
    try:
        head = parse_request_head(data)
    except MalformedHead:
        return
    with contextlib.suppress(WebSocketError):
        response, protocol = handshake_response(head.headers, (*CHANNEL_PROTOCOLS, ""))
        assert response.endswith(b"\r\n\r\n") and protocol in (*CHANNEL_PROTOCOLS, "")


def spdy_frames(data: bytes) -> None:
    """A server SpdySession reading the bytes as a client's frames, with an application
    that accepts every stream and reads it to its end. Allowed: SpdyError from run()."""

    async def session() -> None:
        async with _connection(data) as (reader, writer):
            spdy = SpdySession(reader, writer, server=True)
            readers: list[asyncio.Task[None]] = []

            async def drain(stream: SpdyStream) -> None:
                while await stream.read():
                    pass

            async def accept() -> None:
                while (stream := await spdy.accept_stream()) is not None:
                    readers.append(asyncio.get_running_loop().create_task(drain(stream)))

            acceptor = asyncio.get_running_loop().create_task(accept())
            try:
                with contextlib.suppress(SpdyError):
                    await spdy.run()
                await acceptor
                await asyncio.gather(*readers)
            finally:
                acceptor.cancel()
                for task in readers:
                    task.cancel()
                await spdy.close()

    _run(session())


def terminal_resize(data: bytes) -> None:
    """The resize channel's parser: JSON TerminalSize objects in a byte buffer. Nothing
    is allowed to escape: a bad object is the client's mistake, not skiffd's."""
    buffer = bytearray(data)
    for width, height in _sizes(buffer):
        assert isinstance(width, int) and isinstance(height, int)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "layer": layer,
    "manifest": manifest,
    "registries_conf": registries_conf,
    "auth_file": auth_file,
    "http_upgrade": http_upgrade,
    "websocket_frames": websocket_frames,
    "spdy_frames": spdy_frames,
    "terminal_resize": terminal_resize,
}
