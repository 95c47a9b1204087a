"""The seed corpus: a few valid inputs per target, built here so the fuzzer starts from
inputs that reach deep into each parser instead of guessing the formats."""

from __future__ import annotations

import base64
import gzip
import io
import json
import struct
import tarfile
import zlib
from collections.abc import Callable

import zstandard

from cri.streaming.spdy import HEADER_DICTIONARY

SHA = "sha256:" + "ab" * 32


def _tar(pax: bool) -> bytes:
    out = io.BytesIO()
    fmt = tarfile.PAX_FORMAT if pax else tarfile.GNU_FORMAT
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:

        def add(name: str, kind: bytes, data: bytes = b"", **fields: object) -> None:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.size = len(data)
            info.mtime = 1_600_000_000
            for key, value in fields.items():
                setattr(info, key, value)
            tar.addfile(info, io.BytesIO(data) if data else None)

        add("etc", tarfile.DIRTYPE, mode=0o755)
        add("etc/hostname", tarfile.REGTYPE, b"node\n", mode=0o644, uid=1000, gid=1000)
        add("etc/link", tarfile.SYMTYPE, linkname="hostname")
        add("etc/hard", tarfile.LNKTYPE, linkname="etc/hostname")
        add("etc/.wh.gone", tarfile.REGTYPE)
        add("var/.wh..wh..opq", tarfile.REGTYPE)
        add("dev/fifo", tarfile.FIFOTYPE, mode=0o600)
        add("dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3)
        if pax:
            add(
                "bin/tool",
                tarfile.REGTYPE,
                b"#!/bin/sh\n",
                mode=0o4755,
                pax_headers={"SCHILY.xattr.user.note": "x", "mtime": "1600000000.5"},
            )
    return out.getvalue()


def layer() -> list[bytes]:
    plain = _tar(pax=True)
    return [
        plain,
        _tar(pax=False),
        gzip.compress(plain, mtime=0),
        zstandard.ZstdCompressor().compress(plain),
    ]


def manifest() -> list[bytes]:
    descriptor = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": SHA}
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {**descriptor, "size": 500, "platform": {"os": "linux", "architecture": "amd64"}},
            {
                **descriptor,
                "size": 500,
                "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"},
            },
        ],
    }
    image = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": SHA},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": SHA, "size": 10}
        ],
    }
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [SHA]},
    }
    return [json.dumps(doc).encode() for doc in (index, image, config)]


def registries_conf() -> list[bytes]:
    return [
        b'unqualified-search-registries = ["docker.io", "quay.io"]\n'
        b'[aliases]\nbusybox = "docker.io/library/busybox"\n'
        b'[[registry]]\nprefix = "docker.io"\nlocation = "mirror.local:5000"\ninsecure = true\n'
        b'[[registry.mirror]]\nlocation = "cache.local/hub"\npull-from-mirror = "digest-only"\n'
        b'[[registry]]\nprefix = "*.io"\nblocked = true\n',
        b'[[registry]]\nlocation = "q.io/a"\n',
    ]


def auth_file() -> list[bytes]:
    auth = base64.b64encode(b"alice:s3cret").decode()
    return [
        json.dumps(
            {
                "auths": {
                    "https://index.docker.io/v1/": {"auth": auth},
                    "q.io:5000/a": {"auth": auth, "identitytoken": "refresh"},
                }
            }
        ).encode()
    ]


def http_upgrade() -> list[bytes]:
    return [
        b"GET /exec/token?command=sh&stdin=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Protocol: v5.channel.k8s.io, v4.channel.k8s.io\r\n\r\n"
    ]


def _ws_frame(
    opcode: int, payload: bytes, *, fin: bool = True, key: bytes | None = b"k3y!"
) -> bytes:
    head = bytes([(0x80 if fin else 0) | opcode])
    bit = 0x80 if key is not None else 0
    if len(payload) < 126:
        head += bytes([bit | len(payload)])
    else:
        head += bytes([bit | 126]) + struct.pack("!H", len(payload))
    if key is None:
        return head + payload
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def websocket_frames() -> list[bytes]:
    client = (
        _ws_frame(0x2, b"\x00hello")
        + _ws_frame(0x1, b"frag", fin=False)
        + _ws_frame(0x9, b"ping")
        + _ws_frame(0x0, b"ment")
        + _ws_frame(0x2, bytes(300))
        + _ws_frame(0x8, struct.pack("!H", 1000) + b"bye")
    )
    server = _ws_frame(0x2, b"\x01out", key=None) + _ws_frame(0x8, b"", key=None)
    return [b"\x00" + client, b"\x01" + server]


def _control(kind: int, flags: int, payload: bytes) -> bytes:
    return struct.pack(">HHI", 0x8000 | 3, kind, flags << 24 | len(payload)) + payload


def spdy_frames() -> list[bytes]:
    deflate = zlib.compressobj(zdict=HEADER_DICTIONARY)
    frames = b""
    for stream_id, kind in ((1, b"stdin"), (3, b"resize")):
        block = struct.pack(">I", 1) + struct.pack(">I", 10) + b"streamtype"
        block += struct.pack(">I", len(kind)) + kind
        compressed = deflate.compress(block) + deflate.flush(zlib.Z_SYNC_FLUSH)
        frames += _control(1, 0, struct.pack(">IIBB", stream_id, 0, 0, 0) + compressed)
    frames += _control(4, 0, struct.pack(">III", 1, 7, 1 << 20))
    frames += _control(9, 0, struct.pack(">II", 1, 4096))
    frames += struct.pack(">II", 1, 5) + b"input"
    frames += struct.pack(">II", 3, 1 << 24 | 26) + b'{"Width":80,"Height":24}\n\n'
    frames += _control(6, 0, struct.pack(">I", 1))
    frames += _control(3, 0, struct.pack(">II", 1, 5))
    frames += _control(7, 0, struct.pack(">II", 3, 0))
    return [frames]


def terminal_resize() -> list[bytes]:
    return [b'{"Width":80,"Height":24}', b'{"Width":120,"Height":40}{"Width":1,"Height":2}\n']


SEEDS: dict[str, Callable[[], list[bytes]]] = {
    "layer": layer,
    "manifest": manifest,
    "registries_conf": registries_conf,
    "auth_file": auth_file,
    "http_upgrade": http_upgrade,
    "websocket_frames": websocket_frames,
    "spdy_frames": spdy_frames,
    "terminal_resize": terminal_resize,
}
