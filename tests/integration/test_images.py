"""ImageService against real registries on loopback: pull, status, list, remove,
fs info; auth, TLS, mirrors; bad input leaving nothing behind."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest

from api.runtime.v1 import api_pb2 as pb
from tests.integration import images as img
from tests.integration.registry import (
    BlobHost,
    Fault,
    FaultyProxy,
    Mode,
    TestRegistry,
    basic_auth_header,
)
from tests.integration.skiffd import Skiffd, short_tempdir

# --- fixtures ------------------------------------------------------------------------


def _registry_fixture(mode: Mode) -> Callable[[], Iterator[TestRegistry]]:
    """A module-scoped real registry in the given mode."""

    @pytest.fixture(scope="module")
    def registry() -> Iterator[TestRegistry]:
        with TestRegistry(mode) as started:
            yield started

    return registry


plain_registry = _registry_fixture("insecure")
tls_registry = _registry_fixture("tls")
basic_registry = _registry_fixture("basic")
token_registry = _registry_fixture("token")


MakeDaemon = Callable[..., Skiffd]


@pytest.fixture
def make_daemon() -> Iterator[MakeDaemon]:
    """Start skiffd with a registries.conf (and certs.d, auth file) of the test's own."""
    made: list[tuple[Skiffd, Path]] = []

    def make(
        insecure: tuple[str, ...] = (),
        certs_from: TestRegistry | None = None,
        auth: dict[str, tuple[str, str]] | None = None,
        extra_conf: str = "",
        config: dict[str, object] | None = None,
    ) -> Skiffd:
        base = short_tempdir("img")
        daemon = Skiffd(base, config)
        conf = "".join(f'[[registry]]\nlocation = "{h}"\ninsecure = true\n\n' for h in insecure)
        # Top-level keys must come before the first [[registry]] table in TOML.
        (base / "registries.conf").write_text(extra_conf + conf)
        if certs_from is not None:
            certs_from.write_certs_d(base / "certs.d")
        if auth:
            entries = {
                host: {"auth": base64.b64encode(f"{u}:{p}".encode()).decode()}
                for host, (u, p) in auth.items()
            }
            (base / "auth.json").write_text(json.dumps({"auths": entries}))
        made.append((daemon, base))
        daemon.start()
        return daemon

    yield make
    for daemon, base in made:
        try:
            if daemon.proc is not None and daemon.proc.poll() is None:
                assert daemon.stop() == 0, daemon.logs()
        finally:
            daemon.kill()
            shutil.rmtree(base, ignore_errors=True)


def _user(registry: TestRegistry) -> tuple[str, str]:
    assert registry.username is not None
    assert registry.password is not None
    return registry.username, registry.password


def _pull(daemon: Skiffd, ref: str, auth: pb.AuthConfig | None = None, timeout: float = 60) -> str:
    request = pb.PullImageRequest(image=pb.ImageSpec(image=ref))
    if auth is not None:
        request.auth.CopyFrom(auth)
    return daemon.images().PullImage(request, timeout=timeout).image_ref


def _pull_error(daemon: Skiffd, ref: str, **kwargs: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        _pull(daemon, ref, **kwargs)  # type: ignore[arg-type]
    return err.value


def _status(daemon: Skiffd, ref: str, verbose: bool = False) -> pb.ImageStatusResponse:
    return daemon.images().ImageStatus(
        pb.ImageStatusRequest(image=pb.ImageSpec(image=ref), verbose=verbose)
    )


def _layer_dirs(daemon: Skiffd) -> list[Path]:
    layers = daemon.root / "layers"
    return sorted(layers.iterdir()) if layers.exists() else []


def _assert_nothing_left(daemon: Skiffd) -> None:
    """After a failed pull: no record, no layer, no blob, no work dir."""
    assert list(daemon.images().ListImages(pb.ListImagesRequest()).images) == []
    assert _layer_dirs(daemon) == []
    blobs = daemon.root / "blobs" / "sha256"
    assert not blobs.exists() or list(blobs.iterdir()) == []
    tmp = daemon.root / "tmp"
    assert not tmp.exists() or list(tmp.iterdir()) == []


def _find_in_layers(daemon: Skiffd, path: str) -> list[Path]:
    return [
        d / "diff" / path.lstrip("/")
        for d in _layer_dirs(daemon)
        if (d / "diff" / path.lstrip("/")).exists() or (d / "diff" / path.lstrip("/")).is_symlink()
    ]


# --- pulls that work -------------------------------------------------------------------


def test_pull_status_list_from_an_insecure_registry(
    plain_registry: TestRegistry, make_daemon: MakeDaemon
) -> None:
    image = img.busybox_image(run=img.RunConfig(user="1000"))
    pushed = img.push(plain_registry, "library/busybox", "1.35", image)
    daemon = make_daemon(insecure=(plain_registry.host,))
    ref = f"{plain_registry.host}/library/busybox:1.35"

    image_id = _pull(daemon, ref)
    assert image_id == image.config_digest

    for name in (ref, image_id, image_id.removeprefix("sha256:")[:12], pushed.by_digest):
        status = _status(daemon, name)
        assert status.image.id == image_id, name
    assert list(status.image.repo_tags) == [ref]
    assert list(status.image.repo_digests) == [
        f"{plain_registry.host}/library/busybox@{pushed.digest}"
    ]
    assert status.image.uid.value == 1000
    assert status.image.size > 0

    listed = daemon.images().ListImages(pb.ListImagesRequest()).images
    assert [i.id for i in listed] == [image_id]
    filtered = daemon.images().ListImages(
        pb.ListImagesRequest(filter=pb.ImageFilter(image=pb.ImageSpec(image="nope:1")))
    )
    assert list(filtered.images) == []

    verbose = _status(daemon, ref, verbose=True)
    config = json.loads(verbose.info["info"])["imageSpec"]
    assert config["config"]["User"] == "1000"

    busybox = _find_in_layers(daemon, "/bin/busybox")
    assert busybox, "the busybox binary was not unpacked"
    sh = _find_in_layers(daemon, "/bin/sh")[0]
    assert os.stat(sh).st_ino == os.stat(busybox[0]).st_ino  # applets stay hardlinks


def test_missing_image_status_is_empty_not_an_error(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon()
    status = _status(daemon, "127.0.0.1:1/not/there:1")
    assert not status.HasField("image")


def test_whiteouts_and_opaque_dirs_become_overlay_metadata(
    plain_registry: TestRegistry, make_daemon: MakeDaemon
) -> None:
    image = img.layered_image()
    img.push(plain_registry, "test/layered", "v1", image)
    daemon = make_daemon(insecure=(plain_registry.host,))
    _pull(daemon, f"{plain_registry.host}/test/layered:v1")

    whiteouts = _find_in_layers(daemon, "/etc/skiff/remove-me.txt")
    kinds = [stat.S_ISCHR(os.lstat(p).st_mode) and os.lstat(p).st_rdev == 0 for p in whiteouts]
    assert True in kinds, "no overlay whiteout (char 0:0) for the removed file"
    opaque = [
        p
        for p in _find_in_layers(daemon, "/data/opaque")
        if "trusted.overlay.opaque" in os.listxattr(p, follow_symlinks=False)
        and os.getxattr(p, "trusted.overlay.opaque", follow_symlinks=False) == b"y"
    ]
    assert opaque, "the opaque dir lost its overlay xattr"


@pytest.mark.parametrize("kind", ["multiarch", "zstd", "docker"])
def test_formats(plain_registry: TestRegistry, make_daemon: MakeDaemon, kind: str) -> None:
    builders: dict[str, Callable[[], img.Image | img.ImageIndex]] = {
        "multiarch": img.multiarch_index,
        "zstd": img.zstd_image,
        "docker": img.docker_image,
    }
    pushed_image = builders[kind]()
    pushed = img.push(plain_registry, f"formats/{kind}", "v1", pushed_image)
    daemon = make_daemon(insecure=(plain_registry.host,))
    image_id = _pull(daemon, f"{plain_registry.host}/formats/{kind}:v1")
    assert image_id == pushed.config_digests["linux/amd64"]
    status = _status(daemon, image_id)
    # The repo digest is what the tag names: the index itself for a multi-arch image.
    assert list(status.image.repo_digests) == [
        f"{plain_registry.host}/formats/{kind}@{pushed.digest}"
    ]


def test_tls_registry_needs_its_ca_in_certs_d(
    tls_registry: TestRegistry, make_daemon: MakeDaemon
) -> None:
    img.push(tls_registry, "tls/app", "v1", img.tiny_image())
    ref = f"{tls_registry.host}/tls/app:v1"
    without = make_daemon()
    error = _pull_error(without, ref)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "CERTIFICATE_VERIFY_FAILED" in (error.details() or "")
    assert "certs.d/<host:port>/ca.crt" in (error.details() or "")  # what to do about it
    _assert_nothing_left(without)
    with_ca = make_daemon(certs_from=tls_registry)
    assert _pull(with_ca, ref).startswith("sha256:")


def test_a_plain_http_registry_not_marked_insecure_is_named_as_such(
    plain_registry: TestRegistry, make_daemon: MakeDaemon
) -> None:
    img.push(plain_registry, "plain/app", "v1", img.tiny_image())
    daemon = make_daemon()
    error = _pull_error(daemon, f"{plain_registry.host}/plain/app:v1")
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert plain_registry.host in (error.details() or "")
    assert "plain HTTP" in (error.details() or "") and "insecure = true" in (error.details() or "")
    _assert_nothing_left(daemon)


def test_basic_auth_from_request_and_auth_file(
    basic_registry: TestRegistry, make_daemon: MakeDaemon
) -> None:
    user, password = _user(basic_registry)
    img.push(
        basic_registry,
        "private/app",
        "v1",
        img.tiny_image(),
        username=user,
        password=password,
    )
    ref = f"{basic_registry.host}/private/app:v1"
    daemon = make_daemon(insecure=(basic_registry.host,))

    denied = _pull_error(daemon, ref)
    assert denied.code() == grpc.StatusCode.UNAUTHENTICATED
    wrong = _pull_error(daemon, ref, auth=pb.AuthConfig(username=user, password="wrong-pw-123"))
    assert wrong.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "wrong-pw-123" not in (wrong.details() or "")
    _assert_nothing_left(daemon)

    auth = pb.AuthConfig(username=user, password=password)
    assert _pull(daemon, ref, auth=auth).startswith("sha256:")
    assert password not in daemon.logs()

    from_file = make_daemon(
        insecure=(basic_registry.host,), auth={basic_registry.host: (user, password)}
    )
    assert _pull(from_file, ref).startswith("sha256:")


def test_bearer_token_flow_and_token_reuse(
    token_registry: TestRegistry, make_daemon: MakeDaemon
) -> None:
    user, password = _user(token_registry)
    creds = {"username": user, "password": password}
    img.push(token_registry, "public/app", "v1", img.tiny_image("public\n"), **creds)
    img.push(token_registry, "team/app", "v1", img.tiny_image("team\n"), **creds)
    img.push(token_registry, "team/app", "v2", img.tiny_image("team v2\n"), **creds)
    daemon = make_daemon(insecure=(token_registry.host,))

    # Anonymous token for a public repository.
    assert _pull(daemon, f"{token_registry.host}/public/app:v1").startswith("sha256:")
    denied = _pull_error(daemon, f"{token_registry.host}/team/app:v1")
    assert denied.code() == grpc.StatusCode.UNAUTHENTICATED

    auth = pb.AuthConfig(username=user, password=password)
    _pull(daemon, f"{token_registry.host}/team/app:v1", auth=auth)
    issued = token_registry.tokens_issued
    _pull(daemon, f"{token_registry.host}/team/app:v2", auth=auth)
    assert token_registry.tokens_issued == issued, "the token was not reused"
    assert password not in daemon.logs()

    wrong = _pull_error(
        daemon,
        f"{token_registry.host}/team/app:v1",
        auth=pb.AuthConfig(username=user, password="not-the-password"),
    )
    assert wrong.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "not-the-password" not in (wrong.details() or "")


def test_a_token_the_registry_refuses_is_not_used_again(
    token_registry: TestRegistry, make_daemon: MakeDaemon
) -> None:
    """A cached token the registry stops taking (here: it expires long before the
    expires_in the token server gave) is forgotten and a new one asked for, once."""
    user, password = _user(token_registry)
    creds = {"username": user, "password": password}
    img.push(token_registry, "team/short", "v1", img.tiny_image("one\n"), **creds)
    img.push(token_registry, "team/short", "v2", img.tiny_image("two\n"), **creds)
    img.push(token_registry, "team/padded", "v1", img.tiny_image("three\n"), **creds)
    daemon = make_daemon(insecure=(token_registry.host,))
    server = token_registry.token_server
    assert server is not None
    auth = pb.AuthConfig(username=user, password=password)
    # The registry allows 60 s of clock skew past a token's exp: this one is good for
    # some 5 s, though the token server says 300.
    server.token_lifetime = -55
    try:
        _pull(daemon, f"{token_registry.host}/team/short:v1", auth=auth)
        issued = token_registry.tokens_issued
        server.token_lifetime = None
        time.sleep(6)  # the registry now refuses the cached token
        _pull(daemon, f"{token_registry.host}/team/short:v2", auth=auth)
        assert token_registry.tokens_issued == issued + 1
        # An answer no token fits in (for a scope with no token yet) is refused, not
        # read whole.
        server.padding = 2 << 20
        error = _pull_error(daemon, f"{token_registry.host}/team/padded:v1", auth=auth)
        assert "larger than 1048576 bytes" in (error.details() or ""), error.details()
    finally:
        server.token_lifetime = None
        server.padding = 0


def test_mirror_is_tried_first(plain_registry: TestRegistry, make_daemon: MakeDaemon) -> None:
    image = img.tiny_image("from the mirror\n")
    img.push(plain_registry, "mirror/docker.example/app", "v1", image)
    conf = (
        '[[registry]]\nprefix = "docker.example"\nlocation = "docker.example"\n'
        f'[[registry.mirror]]\nlocation = "{plain_registry.host}/mirror/docker.example"\n'
        "insecure = true\n"
    )
    daemon = make_daemon(extra_conf=conf)
    assert _pull(daemon, "docker.example/app:v1") == image.config_digest
    assert list(_status(daemon, "docker.example/app:v1").image.repo_tags) == [
        "docker.example/app:v1"
    ]


def test_short_names_resolve_through_search_registries(
    plain_registry: TestRegistry, make_daemon: MakeDaemon
) -> None:
    image = img.tiny_image("short\n")
    img.push(plain_registry, "shorty", "v1", image)
    conf = f'unqualified-search-registries = ["{plain_registry.host}"]\n'
    daemon = make_daemon(insecure=(plain_registry.host,), extra_conf=conf)
    assert _pull(daemon, "shorty:v1") == image.config_digest
    assert _status(daemon, "shorty:v1").image.id == image.config_digest


def test_blob_redirect_to_another_host_drops_authorization(
    basic_registry: TestRegistry, make_daemon: MakeDaemon
) -> None:
    user, password = _user(basic_registry)
    image = img.tiny_image("redirected\n")
    img.push(
        basic_registry,
        "redirect/app",
        "v1",
        image,
        username=user,
        password=password,
    )
    with BlobHost(basic_registry) as blob_host, FaultyProxy.for_registry(basic_registry) as proxy:
        for layer in image.layers:
            proxy.add_fault(Fault("redirect", digest=layer.digest, redirect_to=blob_host.url))
        daemon = make_daemon(insecure=(proxy.host,))
        auth = pb.AuthConfig(username=user, password=password)
        assert _pull(daemon, f"{proxy.host}/redirect/app:v1", auth=auth) == image.config_digest
        assert blob_host.requests, "the redirect was not followed"
        for request in blob_host.requests:
            assert "authorization" not in request.headers
        assert any("authorization" in r.headers for r in proxy.requests)


# --- remove, fs info, restart ------------------------------------------------------------


def test_remove_untags_then_deletes(plain_registry: TestRegistry, make_daemon: MakeDaemon) -> None:
    image = img.tiny_image("two tags\n")
    img.push(plain_registry, "rm/app", "a", image)
    img.push(plain_registry, "rm/app", "b", image)
    daemon = make_daemon(insecure=(plain_registry.host,))
    ref_a, ref_b = f"{plain_registry.host}/rm/app:a", f"{plain_registry.host}/rm/app:b"
    _pull(daemon, ref_a)
    _pull(daemon, ref_b)
    assert sorted(_status(daemon, ref_a).image.repo_tags) == [ref_a, ref_b]
    used = daemon.images().ImageFsInfo(pb.ImageFsInfoRequest()).image_filesystems[0]
    assert used.used_bytes.value > 0
    assert used.inodes_used.value > 0
    assert used.fs_id.mountpoint.startswith(str(daemon.root))

    daemon.images().RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=ref_a)))
    assert list(_status(daemon, ref_b).image.repo_tags) == [ref_b]
    assert not _status(daemon, ref_a).HasField("image")
    assert _layer_dirs(daemon), "untagging must not delete layers"

    daemon.images().RemoveImage(
        pb.RemoveImageRequest(image=pb.ImageSpec(image=image.config_digest))
    )
    _assert_nothing_left(daemon)
    after = daemon.images().ImageFsInfo(pb.ImageFsInfoRequest()).image_filesystems[0]
    assert after.used_bytes.value == 0
    # Removing what is not there is fine (the kubelet's GC may race with itself).
    daemon.images().RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=ref_a)))


def test_images_survive_restart(plain_registry: TestRegistry, make_daemon: MakeDaemon) -> None:
    image = img.tiny_image("persist\n")
    img.push(plain_registry, "persist/app", "v1", image)
    daemon = make_daemon(insecure=(plain_registry.host,))
    ref = f"{plain_registry.host}/persist/app:v1"
    _pull(daemon, ref)
    assert daemon.stop() == 0
    daemon.start()
    assert _status(daemon, ref).image.id == image.config_digest
    daemon.kill()
    daemon.start()
    assert _status(daemon, ref).image.id == image.config_digest


def test_concurrent_pulls_share_the_work(
    plain_registry: TestRegistry, make_daemon: MakeDaemon
) -> None:
    image = img.busybox_image(labels={"test": "shared"})
    img.push(plain_registry, "shared/app", "v1", image)
    with FaultyProxy.for_registry(plain_registry) as proxy:
        daemon = make_daemon(insecure=(proxy.host,))
        ref = f"{proxy.host}/shared/app:v1"
        results: list[str] = []
        threads = [
            threading.Thread(target=lambda: results.append(_pull(daemon, ref))) for _ in range(3)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert results == [image.config_digest] * 3
        for layer in image.layers:
            gets = [
                r for r in proxy.requests if r.method == "GET" and r.path.endswith(layer.digest)
            ]
            assert len(gets) == 1, f"layer {layer.digest} fetched {len(gets)} times"


# --- bad input: right code, nothing left -------------------------------------------------


def test_malformed_reference(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon()
    for ref in ("UPPER/case:1", "bad tag:1", "x@sha256:123", ""):
        error = _pull_error(daemon, ref)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, ref
    _assert_nothing_left(daemon)


def test_unknown_repo_or_tag(plain_registry: TestRegistry, make_daemon: MakeDaemon) -> None:
    img.push(plain_registry, "known/app", "v1", img.tiny_image())
    daemon = make_daemon(insecure=(plain_registry.host,))
    for ref in (f"{plain_registry.host}/unknown/app:v1", f"{plain_registry.host}/known/app:v9"):
        error = _pull_error(daemon, ref)
        assert error.code() == grpc.StatusCode.NOT_FOUND, ref
        assert "not found" in (error.details() or "")
    _assert_nothing_left(daemon)


@pytest.mark.parametrize("fault", ["tamper", "truncate", "drop"])
def test_broken_blob_downloads_leave_nothing(
    plain_registry: TestRegistry, make_daemon: MakeDaemon, fault: str
) -> None:
    image = img.busybox_image(labels={"fault": fault})
    img.push(plain_registry, f"faults/{fault}", "v1", image)
    with FaultyProxy.for_registry(plain_registry) as proxy:
        target = image.layers[0].digest
        proxy.add_fault(Fault(fault, digest=target, nbytes=1000, offset=5000))  # type: ignore[arg-type]
        daemon = make_daemon(insecure=(proxy.host,))
        ref = f"{proxy.host}/faults/{fault}:v1"
        error = _pull_error(daemon, ref)
        expected = grpc.StatusCode.DATA_LOSS if fault == "tamper" else grpc.StatusCode.UNAVAILABLE
        assert error.code() == expected, error.details()
        _assert_nothing_left(daemon)
        proxy.clear()
        assert _pull(daemon, ref) == image.config_digest


def test_a_layer_changed_on_the_way_is_data_loss_even_when_it_inflates(
    plain_registry: TestRegistry, make_daemon: MakeDaemon
) -> None:
    """Stored (level 0) gzip: flipped bytes inflate fine into a broken tar header. The
    digest decides: DATA_LOSS naming the layer and the registry (was INVALID_ARGUMENT
    "not a valid tar stream: bad checksum", naming no layer)."""
    tar = img.busybox_tar()
    blob = img.Blob.of(img.compress(tar, "gzip", level=0), img.OCI_LAYER_GZIP)
    layer = img.Layer(blob, img.sha256_digest(tar), "gzip", len(tar))
    image = img.build_image([layer], run=img.RunConfig(), history=["stored"])
    img.push(plain_registry, "faults/stored", "v1", image)
    with FaultyProxy.for_registry(plain_registry) as proxy:
        proxy.add_fault(Fault("tamper", digest=layer.digest, offset=200, count=4))
        daemon = make_daemon(insecure=(proxy.host,))
        ref = f"{proxy.host}/faults/stored:v1"
        error = _pull_error(daemon, ref)
        assert error.code() == grpc.StatusCode.DATA_LOSS, error.details()
        assert layer.digest in (error.details() or "")
        assert "faults/stored" in (error.details() or "")
        _assert_nothing_left(daemon)
        proxy.clear()
        assert _pull(daemon, ref) == image.config_digest


def test_a_misbehaving_registry_gets_the_code_that_says_what_to_do(
    plain_registry: TestRegistry, make_daemon: MakeDaemon
) -> None:
    """Not UNKNOWN: 500s past the retries and redirect loops are UNAVAILABLE (try again
    later); a manifest naming a blob the registry lacks is an incomplete image there,
    NOT_FOUND naming the blob (it was "image not found")."""
    image = img.busybox_image(labels={"misbehaves": "yes"})
    img.push(plain_registry, "odd/app", "v1", image)
    with FaultyProxy.for_registry(plain_registry) as proxy:
        daemon = make_daemon(insecure=(proxy.host,), config={"image": {"pull_retries": 1}})
        ref = f"{proxy.host}/odd/app:v1"
        proxy.add_fault(Fault("status", path=r"/manifests/", status=500))
        error = _pull_error(daemon, ref)
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
        assert "HTTP 500" in (error.details() or "")
        proxy.clear()
        proxy.add_fault(Fault("redirect", path=r"/manifests/", redirect_to=proxy.url))
        error = _pull_error(daemon, ref)
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
        assert "too many redirects" in (error.details() or "")
        proxy.clear()
        layer = image.layers[0].digest
        proxy.add_fault(Fault("status", digest=layer, status=404))
        error = _pull_error(daemon, ref)
        assert error.code() == grpc.StatusCode.NOT_FOUND, error.details()
        assert "incomplete" in (error.details() or "") and layer in (error.details() or "")
        assert not (error.details() or "").startswith("image ")
        _assert_nothing_left(daemon)
        proxy.clear()
        assert _pull(daemon, ref) == image.config_digest


def test_registry_down_mid_pull(plain_registry: TestRegistry, make_daemon: MakeDaemon) -> None:
    image = img.busybox_image(labels={"down": "yes"})
    img.push(plain_registry, "down/app", "v1", image)
    with FaultyProxy.for_registry(plain_registry) as proxy:
        proxy.add_fault(Fault("drop", digest=image.layers[0].digest, nbytes=4096, go_down=True))
        daemon = make_daemon(insecure=(proxy.host,))
        error = _pull_error(daemon, f"{proxy.host}/down/app:v1")
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        _assert_nothing_left(daemon)
        proxy.set_down(False)
        proxy.clear()
        assert _pull(daemon, f"{proxy.host}/down/app:v1") == image.config_digest


@pytest.mark.parametrize("kind", img.MALICIOUS_KINDS)
def test_malicious_layers_are_refused(
    plain_registry: TestRegistry, make_daemon: MakeDaemon, kind: img.MaliciousKind
) -> None:
    img.push(plain_registry, f"evil/{kind.replace('_', '-')}", "v1", img.malicious_image(kind))
    daemon = make_daemon(insecure=(plain_registry.host,))
    error = _pull_error(daemon, f"{plain_registry.host}/evil/{kind.replace('_', '-')}:v1")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "layer" in (error.details() or "")
    marker = img.escape_marker(kind)
    assert not Path(marker).exists() or not marker.startswith("/"), f"{marker} was written"
    _assert_nothing_left(daemon)


def test_deadline_stops_the_pull(plain_registry: TestRegistry, make_daemon: MakeDaemon) -> None:
    workdir = short_tempdir("big")
    try:
        image = img.big_image(workdir, total_mb=60)
        img.push(plain_registry, "big/app", "v1", image)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    daemon = make_daemon(insecure=(plain_registry.host,))
    error = _pull_error(daemon, f"{plain_registry.host}/big/app:v1", timeout=0.35)
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The abandoned pull winds down and cleans up behind itself.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        tmp = daemon.root / "tmp"
        if not _layer_dirs(daemon) and (not tmp.exists() or not list(tmp.iterdir())):
            break
        time.sleep(0.2)
    _assert_nothing_left(daemon)
    assert _pull(daemon, f"{plain_registry.host}/big/app:v1") == image.config_digest


def test_kill_9_mid_pull_leaves_nothing_partial(
    plain_registry: TestRegistry, make_daemon: MakeDaemon
) -> None:
    workdir = short_tempdir("big")
    try:
        image = img.big_image(workdir, total_mb=80)
        img.push(plain_registry, "big/crash", "v1", image)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    daemon = make_daemon(insecure=(plain_registry.host,))
    ref = f"{plain_registry.host}/big/crash:v1"
    errors: list[BaseException] = []

    def pull() -> None:
        try:
            _pull(daemon, ref)
        except grpc.RpcError as exc:
            errors.append(exc)

    puller = threading.Thread(target=pull)
    puller.start()
    tmp = daemon.root / "tmp"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (tmp.exists() and any(tmp.iterdir())):
        time.sleep(0.005)
    assert tmp.exists() and any(tmp.iterdir()), "the pull never started unpacking"
    daemon.kill()
    puller.join(20)
    assert errors, "the pull should have died with the daemon"

    daemon.start()
    _assert_nothing_left(daemon)
    assert _pull(daemon, ref) == image.config_digest


def test_sighup_reloads_the_registries_config(
    plain_registry: TestRegistry, make_daemon: MakeDaemon
) -> None:
    image = img.tiny_image("reloaded\n")
    img.push(plain_registry, "reload/app", "v1", image)
    daemon = make_daemon()  # the registry is not marked insecure yet: TLS is refused
    ref = f"{plain_registry.host}/reload/app:v1"
    assert _pull_error(daemon, ref).code() == grpc.StatusCode.UNAVAILABLE

    conf = daemon.base / "registries.conf"
    conf.write_text(f'[[registry]]\nlocation = "{plain_registry.host}"\ninsecure = true\n')
    daemon.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "config reloaded" not in daemon.logs() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _pull(daemon, ref) == image.config_digest


def test_a_stalled_pull_fails_while_lists_stay_responsive(
    plain_registry: TestRegistry, make_daemon: MakeDaemon
) -> None:
    image = img.busybox_image(labels={"stall": "yes"})
    img.push(plain_registry, "stall/app", "v1", image)
    with FaultyProxy.for_registry(plain_registry) as proxy:
        proxy.add_fault(Fault("stall", digest=image.layers[0].digest, nbytes=4096))
        settings = {"pull_progress_timeout": 1.5, "pull_retries": 1}
        settings["pull_progress_log_interval"] = 0.2
        daemon = make_daemon(insecure=(proxy.host,), config={"image": settings})
        ref = f"{proxy.host}/stall/app:v1"
        errors: list[grpc.RpcError] = []

        def pull() -> None:
            try:
                _pull(daemon, ref)
            except grpc.RpcError as exc:
                errors.append(exc)

        puller = threading.Thread(target=pull)
        puller.start()
        deadline = time.monotonic() + 10
        while "pull progress" not in daemon.logs() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "pull progress" in daemon.logs()
        # The stalled pull holds nothing that List or Status wait for.
        assert list(daemon.images().ListImages(pb.ListImagesRequest(), timeout=1).images) == []
        assert not _status(daemon, ref).HasField("image")
        puller.join(30)
        assert errors, "the stalled pull did not fail"
        assert errors[0].code() == grpc.StatusCode.UNAVAILABLE
        assert "stopped sending" in (errors[0].details() or "")
        progress = [line for line in daemon.logs().splitlines() if "pull progress" in line]
        assert any("/" in line and image.layers[0].digest[7:19] in line for line in progress)
        proxy.release_stalls()
        _assert_nothing_left(daemon)


def test_hanging_registries_do_not_hold_up_pod_work(
    plain_registry: TestRegistry, make_daemon: MakeDaemon
) -> None:
    """Eight pulls whose manifests never come: other calls go on at their own pace (pod
    work shared the few default threads with registry I/O; RunPodSandbox took 37 s)."""
    with FaultyProxy.for_registry(plain_registry) as proxy:
        proxy.add_fault(Fault("stall", path=r"/manifests/", nbytes=0))
        daemon = make_daemon(insecure=(proxy.host,))

        def hung_pull(i: int) -> grpc.StatusCode:
            request = pb.PullImageRequest(image=pb.ImageSpec(image=f"{proxy.host}/hung/app:{i}"))
            with pytest.raises(grpc.RpcError) as err:
                daemon.images().PullImage(request, timeout=1)
            return err.value.code()

        try:
            with ThreadPoolExecutor(8) as pool:
                codes = list(pool.map(hung_pull, range(8)))
            assert set(codes) == {grpc.StatusCode.DEADLINE_EXCEEDED}
            started = time.monotonic()
            host_pod = pb.PodSandboxConfig(
                metadata=pb.PodSandboxMetadata(name="p", namespace="n", uid="u"),
                linux=pb.LinuxPodSandboxConfig(
                    security_context=pb.LinuxSandboxSecurityContext(
                        namespace_options=pb.NamespaceOption(network=pb.NamespaceMode.NODE)
                    )
                ),
            )
            runtime = daemon.runtime()
            pod = runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=host_pod), timeout=20)
            runtime.RemovePodSandbox(
                pb.RemovePodSandboxRequest(pod_sandbox_id=pod.pod_sandbox_id), timeout=20
            )
            daemon.images().RemoveImage(
                pb.RemoveImageRequest(image=pb.ImageSpec(image="nothing/here:1")), timeout=20
            )
            assert time.monotonic() - started < 5
        finally:
            proxy.release_stalls()


def test_identity_and_registry_tokens(
    token_registry: TestRegistry, make_daemon: MakeDaemon
) -> None:
    user, password = _user(token_registry)
    image = img.tiny_image("tokens\n")
    img.push(token_registry, "team/tokens", "v1", image, username=user, password=password)
    daemon = make_daemon(insecure=(token_registry.host,))
    ref = f"{token_registry.host}/team/tokens:v1"
    server = token_registry.token_server
    assert server is not None

    # An identity token is a refresh token, traded at the token server.
    identity = pb.AuthConfig(identity_token=server.refresh_token)
    assert _pull(daemon, ref, auth=identity) == image.config_digest
    daemon.images().RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=ref)))
    bad = _pull_error(daemon, ref, auth=pb.AuthConfig(identity_token="refresh-forged"))
    assert bad.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "refresh-forged" not in (bad.details() or "")

    # A registry token goes to the registry as it is, with no token server round trip.
    query = urllib.parse.urlencode(
        {"service": server.service, "scope": "repository:team/tokens:pull"}
    )
    request = urllib.request.Request(
        f"{server.realm}?{query}", headers={"Authorization": basic_auth_header(user, password)}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        token = json.loads(answer.read())["token"]
    issued = server.tokens_issued
    assert _pull(daemon, ref, auth=pb.AuthConfig(registry_token=token)) == image.config_digest
    assert server.tokens_issued == issued
    assert token not in daemon.logs()


def test_a_full_disk_is_resource_exhausted_and_leaves_nothing(
    plain_registry: TestRegistry, make_daemon: MakeDaemon
) -> None:
    workdir = short_tempdir("big")
    try:
        image = img.big_image(workdir, total_mb=24, files=2)
        img.push(plain_registry, "big/full", "v1", image)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    mount_dir = short_tempdir("tmpfs")
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=12m", "skiff-test", str(mount_dir)], check=True
    )
    try:
        daemon = make_daemon(
            insecure=(plain_registry.host,), config={"root": str(mount_dir / "root")}
        )
        error = _pull_error(daemon, f"{plain_registry.host}/big/full:v1")
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
        assert "no space left" in (error.details() or "")
        _assert_nothing_left(daemon)
        assert daemon.stop() == 0
    finally:
        subprocess.run(["umount", "-l", str(mount_dir)], check=False)
        shutil.rmtree(mount_dir, ignore_errors=True)


def test_client_certificates_from_certs_d(make_daemon: MakeDaemon) -> None:
    with TestRegistry("tls", client_certs=True) as registry:
        img.push(registry, "mtls/app", "v1", img.tiny_image())
        ref = f"{registry.host}/mtls/app:v1"
        without = make_daemon(certs_from=registry)
        refused = _pull_error(without, ref)
        assert refused.code() == grpc.StatusCode.UNAVAILABLE
        _assert_nothing_left(without)
        with_cert = make_daemon(certs_from=registry)
        registry.write_client_cert(with_cert.base / "certs.d")
        assert _pull(with_cert, ref).startswith("sha256:")


# --- registries that misbehave in ways the real one cannot be made to ------------------


class ImitationRegistry:
    """A loopback HTTP/1.1 server answering each request with ``answer(handler)``, to
    imitate a registry (or token server) misbehaving; it notes when each connection it
    served ended, so a test can tell whether skiffd let go of it. With
    ``hold_tls_hellos`` it never answers a TLS hello, as a plain-HTTP server waiting for
    the rest of a request line does; the connection ends when the client ends it."""

    def __init__(
        self, answer: Callable[[BaseHTTPRequestHandler], None], *, hold_tls_hellos: bool = False
    ) -> None:
        imitation = self
        self.open_connections = 0
        self.tls_hellos_held = 0
        self.tls_hellos_let_go = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                answer(self)

            def handle(self) -> None:
                with imitation.lock:
                    imitation.open_connections += 1
                try:
                    if hold_tls_hellos and self.connection.recv(1, socket.MSG_PEEK) == b"\x16":
                        imitation.tls_hellos_held += 1
                        while self.connection.recv(4096):
                            pass
                        imitation.tls_hellos_let_go += 1
                        return
                    super().handle()
                except OSError:
                    pass
                finally:
                    with imitation.lock:
                        imitation.open_connections -= 1

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> ImitationRegistry:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()

    def wait_until_let_go(self, seconds: float) -> int:
        """The connections still open after waiting up to `seconds` for none."""
        deadline = time.monotonic() + seconds
        while self.open_connections and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.open_connections


def _behind_token_server(status: int, body: bytes, **headers: str) -> ImitationRegistry:
    """A registry that sends every client to its token server, which answers `status`
    with `body`."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        if handler.path.startswith("/token"):
            _send(handler, status, body, **headers)
            return
        realm = f'Bearer realm="http://{registry.host}/token",service="imitation"'
        _send(handler, 401, b"{}", WWW_Authenticate=realm)

    registry = ImitationRegistry(answer)
    return registry


def _send(handler: BaseHTTPRequestHandler, status: int, body: bytes, **headers: str) -> None:
    handler.send_response(status)
    for name, value in headers.items():
        handler.send_header(name.replace("_", "-"), value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def _skiffd_connections_to(daemon: Skiffd, port: int) -> list[str]:
    """skiffd's established TCP connections to a loopback port."""
    assert daemon.proc is not None
    out = subprocess.run(
        ["ss", "-Htnp", "state", "established", "dst", f"127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line for line in out.splitlines() if f"pid={daemon.proc.pid}," in line]


def test_a_stall_ends_the_pull_within_the_progress_timeout_whatever_the_retries(
    plain_registry: TestRegistry, make_daemon: MakeDaemon
) -> None:
    """pull_progress_timeout is the time a pull may go without a byte: each retry of a
    stalled layer waited it anew (three attempts and their backoff: over 6 s for 1.5)."""
    image = img.busybox_image(labels={"stall": "retries"})
    img.push(plain_registry, "stall/retries", "v1", image)
    with FaultyProxy.for_registry(plain_registry) as proxy:
        proxy.add_fault(Fault("stall", digest=image.layers[0].digest, nbytes=4096))
        settings = {"pull_progress_timeout": 1.5, "pull_retries": 3}
        daemon = make_daemon(insecure=(proxy.host,), config={"image": settings})
        ref = f"{proxy.host}/stall/retries:v1"
        started = time.monotonic()
        error = _pull_error(daemon, ref, timeout=30)
        elapsed = time.monotonic() - started
        proxy.release_stalls()
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
        assert "stopped sending" in (error.details() or "")
        assert "stall/retries" in (error.details() or "")
        assert elapsed < 4.5, f"a 1.5 s progress timeout took {elapsed:.1f} s"  # was over 6
        _assert_nothing_left(daemon)
        proxy.clear()
        assert _pull(daemon, ref) == image.config_digest


@pytest.mark.parametrize("stalled", ["manifest", "layer"])
def test_a_stalled_fetch_is_let_go_when_the_caller_gives_up(
    plain_registry: TestRegistry, make_daemon: MakeDaemon, stalled: str
) -> None:
    """A read blocked on a silent registry held its connection (and a pull thread) for
    the whole progress timeout after the caller's deadline had passed: the manifest
    read took no cancel, and a layer's looked at it only between reads."""
    image = img.tiny_image("after the stall\n")
    img.push(plain_registry, f"stalled/{stalled}", "v1", image)
    with FaultyProxy.for_registry(plain_registry) as proxy:
        if stalled == "manifest":
            proxy.add_fault(Fault("stall", path=r"/manifests/v1", nbytes=0))
        else:
            proxy.add_fault(Fault("stall", digest=image.layers[0].digest, nbytes=10))
        daemon = make_daemon(insecure=(proxy.host,))  # default progress timeout: 60 s
        try:
            error = _pull_error(daemon, f"{proxy.host}/stalled/{stalled}:v1", timeout=1)
            assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            deadline = time.monotonic() + 3
            while _skiffd_connections_to(daemon, proxy.port) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert _skiffd_connections_to(daemon, proxy.port) == [], (
                proxy.requests,
                daemon.logs()[-3000:],
            )
        finally:
            proxy.release_stalls()
        proxy.clear()
        _assert_nothing_left(daemon)
        assert _pull(daemon, f"{proxy.host}/stalled/{stalled}:v1") == image.config_digest


def test_an_error_body_that_never_ends_is_not_read_on_and_on(make_daemon: MakeDaemon) -> None:
    """A 500 whose body trickles forever: skiffd read it to its end ("draining" the
    connection for reuse), so the pull never ended and the connection stayed."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        if handler.path == "/v2/":
            _send(handler, 200, b"{}", Content_Type="application/json")
            return
        handler.send_response(500)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        handler.wfile.write(b"1\r\n{\r\n")
        while not imitation.stopping.is_set():
            handler.wfile.write(b"1\r\n \r\n")
            handler.wfile.flush()
            time.sleep(0.02)

    with ImitationRegistry(answer) as imitation:
        daemon = make_daemon(insecure=(imitation.host,), config={"image": {"pull_retries": 1}})
        ref = f"{imitation.host}/endless/error:v1"
        error = _pull_error(daemon, ref, timeout=10)
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
        assert "HTTP 500" in (error.details() or "") and "endless/error" in (error.details() or "")
        assert imitation.wait_until_let_go(3) == 0
        assert daemon.images().ListImages(pb.ListImagesRequest(), timeout=5).images == []


@pytest.mark.parametrize(
    "token_answer",
    [
        (200, b"<html>not json</html>"),
        (200, b"[1, 2]"),
        (200, b'{"token": ""}'),
        (200, b'{"token": "two\\nlines", "expires_in": 60}'),
        (200, b'{"token": "x", "expires_in": "soon"}'),
    ],
    ids=["html", "list", "empty", "newline", "bad-expiry"],
)
def test_a_garbage_token_answer_is_unauthenticated(
    make_daemon: MakeDaemon, token_answer: tuple[int, bytes]
) -> None:
    status, body = token_answer
    with _behind_token_server(status, body, Content_Type="application/json") as imitation:
        daemon = make_daemon(insecure=(imitation.host,))
        error = _pull_error(daemon, f"{imitation.host}/garbage/token:v1", timeout=20)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error.details()
        assert f"token server {imitation.host}" in (error.details() or "")
        assert "two" not in (error.details() or "")
        _assert_nothing_left(daemon)


def test_a_token_server_that_fails_is_unavailable(make_daemon: MakeDaemon) -> None:
    """A token server answering 500 is down, not a mystery (it was UNKNOWN)."""
    with _behind_token_server(503, b"down") as imitation:
        daemon = make_daemon(insecure=(imitation.host,))
        error = _pull_error(daemon, f"{imitation.host}/down/token:v1", timeout=20)
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
        assert f"token server {imitation.host}" in (error.details() or "")
        assert "HTTP 503" in (error.details() or "")


def test_an_oversized_manifest_is_invalid_argument(make_daemon: MakeDaemon) -> None:
    huge = b'{"schemaVersion": 2, "pad": "' + b"x" * (5 << 20) + b'"}'

    def answer(handler: BaseHTTPRequestHandler) -> None:
        if handler.path == "/v2/":
            _send(handler, 200, b"{}")
            return
        _send(handler, 200, huge, Content_Type="application/vnd.oci.image.manifest.v1+json")

    with ImitationRegistry(answer) as imitation:
        daemon = make_daemon(insecure=(imitation.host,))
        error = _pull_error(daemon, f"{imitation.host}/huge/manifest:v1", timeout=20)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        details = error.details() or ""
        assert "manifest v1" in details and "huge/manifest" in details and "larger" in details
        _assert_nothing_left(daemon)


def test_a_tag_moved_during_the_pull_gives_the_image_it_named_when_the_pull_began(
    plain_registry: TestRegistry, make_daemon: MakeDaemon
) -> None:
    """The tag is resolved once: a push to it mid-pull does not mix two images (the
    manifest of one with the config or layers of the other)."""
    first = img.busybox_image(labels={"tag": "first"})
    second = img.tiny_image("second\n")
    img.push(plain_registry, "moving/tag", "v1", first)
    with FaultyProxy.for_registry(plain_registry) as proxy:
        proxy.add_fault(Fault("stall", digest=first.layers[0].digest, nbytes=4096, times=1))
        daemon = make_daemon(insecure=(proxy.host,))
        ref = f"{proxy.host}/moving/tag:v1"
        pulled: list[str] = []
        puller = threading.Thread(target=lambda: pulled.append(_pull(daemon, ref)))
        puller.start()
        try:
            deadline = time.monotonic() + 60
            while not proxy.requests_for(first.layers[0].digest) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert proxy.requests_for(first.layers[0].digest), "the pull never asked for a layer"
            img.push(plain_registry, "moving/tag", "v1", second)
        finally:
            proxy.release_stalls()
            puller.join(60)
        assert pulled == [first.config_digest]
        status = _status(daemon, ref).image
        assert status.id == first.config_digest
        assert list(status.repo_digests) == [f"{proxy.host}/moving/tag@{first.digest}"]
        # The next pull sees the moved tag; the first image keeps no tag.
        assert _pull(daemon, ref) == second.config_digest
        assert list(_status(daemon, first.config_digest).image.repo_tags) == []


def test_an_insecure_registry_in_plain_http_is_used_without_waiting_for_its_tls_answer(
    make_daemon: MakeDaemon,
) -> None:
    """An insecure registry is asked over TLS and plain HTTP at once. Asked over TLS
    first, a plain-HTTP server that took the hello for the start of a request line held
    every first pull for the connect timeout (10 s), and a test relying on pull timing
    failed now and then."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        if handler.path == "/v2/":
            _send(handler, 200, b"{}")
            return
        _send(handler, 404, b'{"errors": [{"code": "MANIFEST_UNKNOWN", "message": "no"}]}')

    with ImitationRegistry(answer, hold_tls_hellos=True) as imitation:
        daemon = make_daemon(insecure=(imitation.host,))
        error = _pull_error(daemon, f"{imitation.host}/plain/only:v1", timeout=5)
        assert error.code() == grpc.StatusCode.NOT_FOUND, error.details()
        # The TLS attempt (its hello held, unless it was called off before it was
        # sent) is called off rather than left to its timeout.
        deadline = time.monotonic() + 3
        while imitation.tls_hellos_let_go < imitation.tls_hellos_held:
            assert time.monotonic() < deadline, "the TLS attempt was left open"
            time.sleep(0.05)


def test_a_registry_that_never_answers_is_let_go_when_the_caller_gives_up(
    make_daemon: MakeDaemon,
) -> None:
    """Before its headers come there is no response to shut down: the thread sat in
    the header read, holding the connection, for the whole progress timeout."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        if handler.path == "/v2/":
            _send(handler, 200, b"{}")
            return
        imitation.stopping.wait(120)

    with ImitationRegistry(answer) as imitation:
        daemon = make_daemon(insecure=(imitation.host,))  # default progress timeout: 60 s
        port = int(imitation.host.rsplit(":", 1)[1])
        error = _pull_error(daemon, f"{imitation.host}/silent/registry:v1", timeout=1)
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        deadline = time.monotonic() + 3
        while _skiffd_connections_to(daemon, port) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _skiffd_connections_to(daemon, port) == []
