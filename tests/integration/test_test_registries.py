"""The registry fixtures themselves: real distribution registries in every mode, the
token server, the faulty proxy and the image builders, checked with raw HTTP."""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import io
import json
import os
import socket
import ssl
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from tests.integration.images import (
    ALL_MANIFEST_TYPES,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    MALICIOUS_KINDS,
    OCI_INDEX,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    Image,
    ManifestFormat,
    RegistryClient,
    RegistryHTTPError,
    big_image,
    build_layer,
    busybox_image,
    docker_image,
    escape_marker,
    layered_image,
    malicious_layer,
    multiarch_index,
    opaque_marker,
    push,
    regular_file,
    sha256_digest,
    tiny_image,
    whiteout,
    zstd_image,
)
from tests.integration.registry import (
    MODES,
    BlobHost,
    Fault,
    FaultyProxy,
    Mode,
    TestRegistry,
    basic_auth_header,
    parse_www_authenticate,
)


@pytest.fixture(scope="module")
def registries() -> Iterator[dict[Mode, TestRegistry]]:
    started: dict[Mode, TestRegistry] = {}
    try:
        for mode in MODES:
            reg = TestRegistry(mode)
            reg.start()
            started[mode] = reg
        yield started
    finally:
        for reg in started.values():
            reg.stop()


@pytest.fixture(scope="module")
def plain(registries: dict[Mode, TestRegistry]) -> TestRegistry:
    return registries["insecure"]


@pytest.fixture(scope="module")
def pushed_busybox(plain: TestRegistry) -> Image:
    img = busybox_image()
    push(plain, "proxied/busybox", "latest", img)
    return img


@pytest.fixture
def proxy(plain: TestRegistry, pushed_busybox: Image) -> Iterator[FaultyProxy]:
    with FaultyProxy.for_registry(plain) as p:
        yield p


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """GET with http.client; the body read stops at whatever the server sends."""
    host_port = url.split("/")[2]
    host, port = host_port.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", "/" + url.split("/", 3)[3], headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _members(tar_bytes: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        return tar.getmembers()


# ---------------------------------------------------------------------------------------
# Registries in every mode
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_push_then_fetch_manifest_by_tag(registries: dict[Mode, TestRegistry], mode: Mode) -> None:
    reg = registries[mode]
    img = busybox_image()
    result = push(reg, "library/busybox", "1.0", img)
    assert result.digest == img.digest
    assert result.reference == f"{reg.host}/library/busybox:1.0"

    client = RegistryClient(reg)
    resp = client.get_manifest("library/busybox", "1.0")
    assert resp.status == 200
    assert resp.header("Content-Type") == OCI_MANIFEST
    assert resp.header("Docker-Content-Digest") == img.digest
    assert sha256_digest(resp.body) == img.digest

    config = client.get_blob("library/busybox", img.config_digest)
    assert config.status == 200
    assert sha256_digest(config.body) == img.config_digest
    assert json.loads(config.body)["rootfs"]["diff_ids"] == img.diff_ids


def test_registry_properties(registries: dict[Mode, TestRegistry]) -> None:
    hosts = {r.host for r in registries.values()}
    assert len(hosts) == len(MODES)
    for mode, reg in registries.items():
        assert reg.host.startswith("127.0.0.1:")
        assert reg.url == f"{reg.scheme}://{reg.host}"
        assert reg.scheme == ("https" if mode == "tls" else "http")
        assert reg.dir is not None and reg.dir.name.startswith("skiff-reg-")
        assert (reg.username is not None) == (mode in ("basic", "token"))


def test_tls_certs_d_layout(registries: dict[Mode, TestRegistry], tmp_path: Path) -> None:
    reg = registries["tls"]
    ca = reg.write_certs_d(tmp_path / "certs.d")
    assert ca == tmp_path / "certs.d" / reg.host / "ca.crt"
    ctx = ssl.create_default_context(cafile=str(ca))
    for name in ("127.0.0.1", "localhost"):  # both SANs
        conn = http.client.HTTPSConnection(name, reg.port, context=ctx, timeout=10)
        conn.request("GET", "/v2/")
        assert conn.getresponse().status == 200
        conn.close()
    with pytest.raises(ssl.SSLCertVerificationError):  # the system roots don't know it
        conn = http.client.HTTPSConnection(
            "127.0.0.1", reg.port, context=ssl.create_default_context(), timeout=10
        )
        conn.request("GET", "/v2/")


def test_basic_auth_rejects_wrong_password(registries: dict[Mode, TestRegistry]) -> None:
    reg = registries["basic"]
    assert reg.username is not None and reg.password is not None
    url = f"{reg.url}/v2/"
    assert _get(url)[0] == 401
    status, headers, _ = _get(url, {"Authorization": basic_auth_header(reg.username, "nope")})
    assert status == 401
    assert parse_www_authenticate(headers["www-authenticate"])[0] == "basic"
    good = {"Authorization": basic_auth_header(reg.username, reg.password)}
    assert _get(url, good)[0] == 200
    with pytest.raises(RegistryHTTPError) as err:
        push(reg, "library/denied", "x", tiny_image(), password="wrong")
    assert err.value.status == 401


def test_token_flow_counts_and_reuses_tokens(registries: dict[Mode, TestRegistry]) -> None:
    reg = registries["token"]
    ts = reg.token_server
    assert ts is not None
    push(reg, "team/tiny", "v1", tiny_image())
    before = reg.tokens_issued
    client = RegistryClient(reg)
    for _ in range(3):
        assert client.get_manifest("team/tiny", "v1").status == 200
    assert client.tokens_fetched == 1  # one token, reused for the same scope
    assert reg.tokens_issued == before + 1
    last = ts.requests[-1]
    assert last.subject == reg.username
    assert last.scopes == ("repository:team/tiny:pull",)
    assert last.granted == (("team/tiny", ("pull",)),)


def test_token_is_a_jwt_the_registry_accepts(registries: dict[Mode, TestRegistry]) -> None:
    reg = registries["token"]
    ts = reg.token_server
    assert ts is not None and reg.username is not None and reg.password is not None
    status, headers, _ = _get(f"{reg.url}/v2/")
    scheme, params = parse_www_authenticate(headers["www-authenticate"])
    assert (status, scheme, params["realm"], params["service"]) == (
        401,
        "bearer",
        ts.realm,
        ts.service,
    )
    creds = {"Authorization": basic_auth_header(reg.username, reg.password)}
    url = f"{ts.realm}?service={ts.service}&scope=repository:team/jwt:pull,push"
    status, _, body = _get(url, creds)
    assert status == 200
    answer = json.loads(body)
    assert answer["token"] == answer["access_token"] and answer["expires_in"] == 300
    assert "issued_at" in answer
    header_b64, claims_b64, _sig = answer["token"].split(".")
    header = json.loads(base64.urlsafe_b64decode(header_b64 + "=="))
    claims = json.loads(base64.urlsafe_b64decode(claims_b64 + "=="))
    assert header["alg"] == "ES256" and len(header["x5c"]) == 1
    assert claims["iss"] == ts.issuer and claims["aud"] == ts.service
    assert claims["sub"] == reg.username
    assert claims["access"] == [
        {"type": "repository", "name": "team/jwt", "actions": ["pull", "push"]}
    ]
    assert claims["nbf"] <= claims["iat"] < claims["exp"]
    bearer = {"Authorization": "Bearer " + answer["token"]}
    assert _get(f"{reg.url}/v2/", bearer)[0] == 200
    # a tampered signature is refused by the registry
    forged = answer["token"][:-4] + ("AAAA" if not answer["token"].endswith("AAAA") else "BBBB")
    assert _get(f"{reg.url}/v2/", {"Authorization": "Bearer " + forged})[0] == 401
    # wrong password: the token server refuses, counted as no token
    issued = ts.tokens_issued
    assert _get(url, {"Authorization": basic_auth_header(reg.username, "bad")})[0] == 401
    assert ts.tokens_issued == issued


def test_token_anonymous_pull_only_under_public_prefix(
    registries: dict[Mode, TestRegistry],
) -> None:
    reg = registries["token"]
    img = tiny_image("public\n")
    push(reg, "public/tiny", "v1", img)
    push(reg, "private/tiny", "v1", img)
    anon = RegistryClient(reg.url)
    resp = anon.get_manifest("public/tiny", "v1")
    assert resp.status == 200 and resp.header("Docker-Content-Digest") == img.digest
    denied = anon.get_manifest("private/tiny", "v1")
    assert denied.status == 401
    challenge = parse_www_authenticate(denied.header("WWW-Authenticate") or "")[1]
    assert challenge.get("error") == "insufficient_scope"
    with pytest.raises(RegistryHTTPError):
        push(anon, "public/tiny", "v2", img)


def test_index_and_docker_formats(registries: dict[Mode, TestRegistry]) -> None:
    reg = registries["insecure"]
    client = RegistryClient(reg)
    cases: list[tuple[ManifestFormat, str]] = [("oci", OCI_INDEX), ("docker", "list")]
    for fmt, media in cases:
        index = multiarch_index(fmt=fmt)
        result = push(reg, f"multi/{fmt}", "latest", index)
        resp = client.get_manifest(f"multi/{fmt}", "latest")
        assert resp.header("Docker-Content-Digest") == index.digest
        assert media in (resp.header("Content-Type") or "")
        assert set(result.manifest_digests) == {"linux/amd64", "linux/arm64/v8"}
        for img in index.images:
            child = client.get_manifest(f"multi/{fmt}", img.digest)
            assert child.status == 200 and child.body == img.manifest.data

    img = docker_image()
    push(reg, "docker/busybox", "latest", img)
    resp = client.get_manifest("docker/busybox", "latest", accept=[DOCKER_MANIFEST])
    assert resp.header("Content-Type") == DOCKER_MANIFEST
    assert resp.header("Docker-Content-Digest") == img.digest
    assert all(layer.media_type == DOCKER_LAYER_GZIP for layer in img.layers)
    # distribution 2.8 hides OCI manifests from clients that do not accept them
    push(reg, "oci/tiny", "v1", tiny_image())
    hidden = client.get_manifest("oci/tiny", "v1", accept=[DOCKER_MANIFEST])
    assert hidden.status == 404
    assert client.get_manifest("oci/tiny", "v1", accept=ALL_MANIFEST_TYPES).status == 200


def test_zstd_and_layered_images_push(registries: dict[Mode, TestRegistry]) -> None:
    reg = registries["insecure"]
    client = RegistryClient(reg)
    z = zstd_image()
    push(reg, "zstd/busybox", "latest", z)
    assert {layer.media_type for layer in z.layers} == {OCI_LAYER_ZSTD}
    blob = client.get_blob("zstd/busybox", z.layers[-1].digest).body
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(blob)
    assert sha256_digest(raw) == z.layers[-1].diff_id

    img = layered_image()
    push(reg, "layers/whiteouts", "latest", img)
    names = []
    for layer in img.layers[1:]:
        data = gzip.decompress(client.get_blob("layers/whiteouts", layer.digest).body)
        assert sha256_digest(data) == layer.diff_id
        names.append([m.name for m in _members(data)])
    assert "etc/skiff/remove-me.txt" in names[0]
    assert "etc/skiff/.wh.remove-me.txt" in names[1]
    assert "data/opaque/.wh..wh..opq" in names[1]
    assert img.expected_files["etc/skiff/remove-me.txt"] is None


# ---------------------------------------------------------------------------------------
# Image builders
# ---------------------------------------------------------------------------------------


def test_layer_builder_entries_and_digests() -> None:
    layer = build_layer(
        [
            regular_file("/a/b.txt", "x", mode=0o600, uid=7, gid=8),
            whiteout("a/gone"),
            opaque_marker("/c/"),
        ],
        "none",
    )
    assert layer.blob.data is not None
    assert layer.diff_id == layer.digest == sha256_digest(layer.blob.data)
    members = {m.name: m for m in _members(layer.blob.data)}
    assert list(members) == ["a", "a/b.txt", "a/.wh.gone", "c", "c/.wh..wh..opq"]
    b = members["a/b.txt"]
    assert (b.mode, b.uid, b.gid, b.mtime) == (0o600, 7, 8, 1_700_000_000)
    again = build_layer([regular_file("/a/b.txt", "x", mode=0o600, uid=7, gid=8)], "gzip")
    assert (
        again.digest == build_layer([regular_file("a/b.txt", "x", mode=0o600, uid=7, gid=8)]).digest
    )


def test_malicious_layers_keep_their_names() -> None:
    for kind in MALICIOUS_KINDS:
        layer = malicious_layer(kind, "none")
        assert layer.blob.data is not None
        text = " ".join(f"{m.name}>{m.linkname}" for m in _members(layer.blob.data))
        assert ".." in text or "/tmp" in text or "/etc" in text, kind
        if kind in ("dotdot", "absolute", "symlink_relative", "symlink_absolute"):
            assert escape_marker(kind) in text


def test_big_image_streams_to_disk(tmp_path: Path) -> None:
    img = big_image(tmp_path, total_mb=2, files=2, with_busybox=False)
    (layer,) = img.layers
    assert layer.blob.data is None and layer.blob.path is not None
    data = layer.blob.path.read_bytes()
    assert sha256_digest(data) == layer.digest and len(data) == layer.size
    raw = gzip.decompress(data)
    assert sha256_digest(raw) == layer.diff_id
    sizes = [m.size for m in _members(raw) if m.isfile()]
    assert sizes == [1024 * 1024] * 2
    assert len(data) > 2 * 1024 * 1024  # random data does not compress


# ---------------------------------------------------------------------------------------
# The faulty proxy
# ---------------------------------------------------------------------------------------


def test_proxy_passes_through(proxy: FaultyProxy, pushed_busybox: Image) -> None:
    layer = pushed_busybox.layers[0]
    status, headers, body = _get(f"{proxy.url}/v2/proxied/busybox/blobs/{layer.digest}")
    assert status == 200 and headers["content-length"] == str(layer.size)
    assert body == layer.blob.data
    client = RegistryClient(proxy.url)
    resp = client.get_manifest("proxied/busybox", "latest")
    assert resp.header("Docker-Content-Digest") == pushed_busybox.digest
    assert [r.fault for r in proxy.requests] == [None, None]


def test_proxy_tampers_keeping_length(proxy: FaultyProxy, pushed_busybox: Image) -> None:
    layer = pushed_busybox.layers[0]
    proxy.add_fault(Fault("tamper", digest=layer.digest, offset=100_000, count=3, times=1))
    url = f"{proxy.url}/v2/proxied/busybox/blobs/{layer.digest}"
    status, _, body = _get(url)
    assert status == 200 and len(body) == layer.size
    assert layer.blob.data is not None
    diff = [i for i, (a, b) in enumerate(zip(body, layer.blob.data, strict=True)) if a != b]
    assert diff == [100_000, 100_001, 100_002]
    assert _get(url)[2] == layer.blob.data  # times=1: the next GET is clean


def test_proxy_truncates(proxy: FaultyProxy, pushed_busybox: Image) -> None:
    layer = pushed_busybox.layers[0]
    proxy.add_fault(Fault("truncate", digest=layer.digest, nbytes=4096))
    with pytest.raises(http.client.IncompleteRead) as err:
        _get(f"{proxy.url}/v2/proxied/busybox/blobs/{layer.digest}")
    assert len(err.value.partial) == 4096
    assert err.value.expected == layer.size - 4096


def test_proxy_drops_and_goes_down(proxy: FaultyProxy, pushed_busybox: Image) -> None:
    layer = pushed_busybox.layers[0]
    proxy.add_fault(Fault("drop", path=r"/blobs/", nbytes=70_000, go_down=True))
    with pytest.raises((http.client.IncompleteRead, ConnectionResetError)):
        _get(f"{proxy.url}/v2/proxied/busybox/blobs/{layer.digest}")
    assert proxy.is_down
    with pytest.raises((ConnectionError, http.client.RemoteDisconnected)):
        _get(f"{proxy.url}/v2/")
    proxy.set_down(False)
    assert _get(f"{proxy.url}/v2/")[0] == 200


def test_proxy_status_fault(proxy: FaultyProxy, pushed_busybox: Image) -> None:
    proxy.add_fault(Fault("status", path=r"/manifests/", status=503, times=2))
    url = f"{proxy.url}/v2/proxied/busybox/manifests/latest"
    accept = {"Accept": ", ".join(ALL_MANIFEST_TYPES)}
    assert [_get(url, accept)[0] for _ in range(3)] == [503, 503, 200]


def test_proxy_redirects_to_blob_host(
    proxy: FaultyProxy, plain: TestRegistry, pushed_busybox: Image
) -> None:
    layer = pushed_busybox.layers[0]
    with BlobHost(plain) as blob_host:
        proxy.add_fault(Fault("redirect", digest=layer.digest, redirect_to=blob_host.url))
        auth = {"Authorization": "Bearer secret-token"}
        status, headers, _ = _get(f"{proxy.url}/v2/proxied/busybox/blobs/{layer.digest}", auth)
        assert status == 307
        location = headers["location"]
        assert location == f"{blob_host.url}/blobs/{layer.digest}"
        assert proxy.requests[-1].headers["authorization"] == "Bearer secret-token"
        assert proxy.requests[-1].fault == "redirect"
        status, _, body = _get(location)  # a well-behaved client drops Authorization
        assert status == 200 and hashlib.sha256(body).hexdigest() == layer.digest[7:]
        assert [r.path for r in blob_host.requests] == [f"/blobs/{layer.digest}"]
        assert "authorization" not in blob_host.requests[0].headers


def test_stop_kills_registry_and_cleans_up() -> None:
    reg = TestRegistry("token")
    reg.start()
    pid, directory, port = reg.pid, reg.dir, reg.port
    ts_port = reg.token_server.port if reg.token_server else 0
    assert pid is not None and directory is not None and directory.is_dir()
    reg.stop()
    assert not directory.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    for p in (port, ts_port):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", p)) != 0
