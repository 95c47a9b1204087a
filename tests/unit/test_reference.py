"""The image reference grammar and short-name resolution."""

from __future__ import annotations

from pathlib import Path

import pytest

from image.reference import (
    Reference,
    ReferenceError,
    looks_like_image_id,
    parse,
    validate_digest,
)
from image.registries import BlockedError, RegistriesConfError, load_conf, parse_conf

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "domain", "path", "tag", "digest"),
    [
        ("busybox", "", "busybox", "", ""),
        ("library/busybox", "", "library/busybox", "", ""),
        ("docker.io/library/busybox:1.36", "docker.io", "library/busybox", "1.36", ""),
        ("registry.k8s.io/pause:3.10", "registry.k8s.io", "pause", "3.10", ""),
        ("host:5000/a/b/c:tag", "host:5000", "a/b/c", "tag", ""),
        ("localhost/app", "localhost", "app", "", ""),
        ("127.0.0.1:5000/app:v1", "127.0.0.1:5000", "app", "v1", ""),
        (f"name@{DIGEST}", "", "name", "", DIGEST),
        (f"name:tag@{DIGEST}", "", "name", "tag", DIGEST),
        ("quay.io/a_b/c-d.e:X_1.2-3", "quay.io", "a_b/c-d.e", "X_1.2-3", ""),
    ],
)
def test_parse(text: str, domain: str, path: str, tag: str, digest: str) -> None:
    ref = parse(text)
    assert (ref.domain, ref.path, ref.tag, ref.digest) == (domain, path, tag, digest)
    assert str(ref) == text


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty"),
        ("Busybox", "lowercase"),
        ("busy box", "white space"),
        ("busybox:", "not a valid tag"),
        ("busybox:-bad", "not a valid tag"),
        ("busybox@sha256:abc", "not a digest"),
        (f"busybox@md5:{'a' * 32}", "not supported"),
        ("busybox@sha512:" + "a" * 128, "not supported"),
        ("a//b", "not a valid repository name"),
        ("host:5000/", "no repository name"),
        ("-foo.io/x", "not a registry host"),
        ("x" * 300, "longer than"),
        ("host:99999/x", "port 99999 of registry host is not 1 to 65535"),
        ("host:0/x", "port 0 of registry host"),
        ("[::1]:70000/x", "port 70000 of registry [::1]"),
    ],
)
def test_parse_refuses_with_the_reason(text: str, problem: str) -> None:
    with pytest.raises(ReferenceError) as err:
        parse(text)
    assert problem in str(err.value)


def test_docker_hub_gets_library() -> None:
    assert str(parse("busybox").with_domain("docker.io").defaulted()) == (
        "docker.io/library/busybox:latest"
    )
    assert parse("a/b").with_domain("docker.io").path == "a/b"
    assert parse("busybox").with_domain("quay.io").path == "busybox"


def test_image_ids() -> None:
    assert looks_like_image_id("ab" * 32)
    assert looks_like_image_id("sha256:" + "ab" * 32)
    assert not looks_like_image_id("busybox")


CONF = """
unqualified-search-registries = ["quay.io", "docker.io"]
short-name-mode = "enforcing"

[aliases]
"pause" = "registry.k8s.io/pause"

[[registry]]
prefix = "docker.io"
location = "docker.io"
[[registry.mirror]]
location = "mirror.local:5000/hub"
insecure = true
[[registry.mirror]]
location = "digests.local/hub"
pull-from-mirror = "digest-only"

[[registry]]
prefix = "docker.io/library/secret"
blocked = true

[[registry]]
location = "127.0.0.1:5000"
insecure = true

[[registry]]
prefix = "*.corp.example"
location = "proxy.corp.example"
"""


def test_short_names_use_aliases_then_search_registries() -> None:
    conf = parse_conf(CONF, "registries.conf")
    assert [str(r) for r in conf.candidates(parse("pause:3.10"))] == ["registry.k8s.io/pause:3.10"]
    assert [str(r) for r in conf.candidates(parse("busybox:1"))] == [
        "quay.io/busybox:1",
        "docker.io/library/busybox:1",
    ]
    assert [str(r) for r in conf.candidates(parse("ghcr.io/x/y:1"))] == ["ghcr.io/x/y:1"]


def test_mirrors_come_first_and_respect_pull_from_mirror() -> None:
    conf = parse_conf(CONF, "registries.conf")
    tagged = conf.endpoints(parse("docker.io/library/busybox:1"))
    assert [(e.host, e.repository, e.insecure, e.mirror) for e in tagged] == [
        ("mirror.local:5000", "hub/library/busybox", True, True),
        ("docker.io", "library/busybox", False, False),
    ]
    assert tagged[-1].api_host == "registry-1.docker.io"
    by_digest = conf.endpoints(parse(f"docker.io/library/busybox@{DIGEST}"))
    assert [e.host for e in by_digest] == ["mirror.local:5000", "digests.local", "docker.io"]


def test_insecure_blocked_and_wildcard_registries() -> None:
    conf = parse_conf(CONF, "registries.conf")
    (local,) = conf.endpoints(parse("127.0.0.1:5000/app:1"))
    assert local.insecure
    with pytest.raises(BlockedError, match="blocked"):
        conf.endpoints(parse("docker.io/library/secret:1"))
    (wild,) = conf.endpoints(parse("git.corp.example/team/app:1"))
    assert (wild.host, wild.repository) == ("proxy.corp.example", "team/app")
    (plain,) = conf.endpoints(parse("ghcr.io/x/y:1"))
    assert not plain.insecure


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("unqualified-search-registries = [", "not valid TOML"),
        ("[registries.search]\nregistries = ['docker.io']", "version 1 format"),
        ("[aliases]\nx = 'busybox'", "fully qualified"),
        ("[[registry]]\nlocation = 'a.io'\ninsecure = 'yes'", "insecure must be true or false"),
        (
            "[[registry]]\nlocation = 'a.io'\n[[registry.mirror]]\nlocation = 'b.io'\n"
            "pull-from-mirror = 'sometimes'",
            "pull-from-mirror",
        ),
    ],
)
def test_bad_registries_conf(text: str, problem: str) -> None:
    with pytest.raises(RegistriesConfError) as err:
        parse_conf(text, "/etc/containers/registries.conf")
    assert problem in str(err.value)
    assert "/etc/containers/registries.conf" in str(err.value)


def test_no_config_means_docker_hub() -> None:
    conf = parse_conf("", "none")
    assert conf.candidates(parse("busybox")) == [Reference("docker.io", "library/busybox")]


def test_registries_conf_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    """Found by fuzzing (python -m tests.fuzz registries_conf): load_conf let the
    UnicodeDecodeError out, a ValueError no caller maps."""
    path = tmp_path / "registries.conf"
    path.write_bytes(b'[[registry]]\xdd\nlocation = "q.io/a"\n')
    with pytest.raises(RegistriesConfError) as err:
        load_conf(path)
    assert str(path) in str(err.value) and "UTF-8" in str(err.value)


@pytest.mark.parametrize("tail", ["\n", "\n\n"])
def test_a_digest_with_a_trailing_newline_is_not_one(tail: str) -> None:
    """`$` matches before a final newline: such a digest went into registry URLs."""
    with pytest.raises(ReferenceError):
        validate_digest("sha256:" + "a" * 64 + tail)
