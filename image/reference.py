"""Image references: `[domain[:port]/]path[:tag][@algo:hex]`, as kubelets and crictl
write them (the grammar of the distribution project's reference package).

A reference without a domain is a short name; `registries.py` decides where it goes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from base.errors import InvalidArgument

DOCKER_HUB = "docker.io"
DEFAULT_TAG = "latest"
MAX_NAME_LENGTH = 255

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DOMAIN = re.compile(
    r"^(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
    r"(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*"
    r"|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?$"
)
_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}$")
_SHA256_HEX = re.compile(r"^[a-f0-9]{64}$")


class ReferenceError(InvalidArgument, ValueError):
    pass


@dataclass(frozen=True)
class Reference:
    """A parsed reference. `domain` is empty for a short name."""

    domain: str
    path: str
    tag: str = ""
    digest: str = ""

    @property
    def name(self) -> str:
        return f"{self.domain}/{self.path}" if self.domain else self.path

    @property
    def is_short(self) -> bool:
        return not self.domain

    def with_domain(self, domain: str) -> Reference:
        path = self.path
        if domain == DOCKER_HUB and "/" not in path:
            path = f"library/{path}"
        return Reference(domain, path, self.tag, self.digest)

    def defaulted(self) -> Reference:
        """With the `latest` tag when neither tag nor digest is given."""
        if self.tag or self.digest:
            return self
        return Reference(self.domain, self.path, DEFAULT_TAG, "")

    @property
    def tagged(self) -> str:
        """`name:tag`, for repo tags; empty when there is no tag."""
        return f"{self.name}:{self.tag}" if self.tag else ""

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def validate_digest(digest: str) -> str:
    if not _DIGEST.fullmatch(digest):
        raise ReferenceError(f"{digest[:80]!r} is not a digest (want sha256:<64 hex digits>)")
    algorithm, _, hex_part = digest.partition(":")
    if algorithm != "sha256":
        raise ReferenceError(f"digest algorithm {algorithm[:80]!r} is not supported (use sha256)")
    if not _SHA256_HEX.fullmatch(hex_part):
        raise ReferenceError(f"{digest!r} is not a sha256 digest (want 64 lowercase hex digits)")
    return digest


def parse(text: str) -> Reference:
    """Parse a reference; ReferenceError names what is wrong with it."""
    if not text:
        raise ReferenceError("image reference is empty")
    # What the messages quote: enough to recognise, never a client's 10 KB.
    shown = text if len(text) <= 80 else text[:77] + "..."
    if text != text.strip() or any(c.isspace() for c in text):
        raise ReferenceError(f"image reference {shown!r} contains white space")
    rest, digest = text, ""
    if "@" in rest:
        rest, _, digest = rest.partition("@")
        validate_digest(digest)
    domain, path_and_tag = "", rest
    first, sep, remainder = rest.partition("/")
    if sep and (("." in first or ":" in first) or first == "localhost"):
        domain, path_and_tag = first, remainder
        if not _DOMAIN.match(domain):
            raise ReferenceError(
                f"image reference {shown!r}: {domain[:80]!r} is not a registry host"
            )
        host, has_port, port = domain.rpartition(":")
        if has_port and port.isdigit() and not 0 < int(port) < 65536:
            raise ReferenceError(
                f"image reference {shown!r}: port {port} of registry {host} is not 1 to 65535"
            )
    path, tag = path_and_tag, ""
    slash = path_and_tag.rfind("/")
    colon = path_and_tag.rfind(":")
    if colon > slash:
        path, tag = path_and_tag[:colon], path_and_tag[colon + 1 :]
        if not _TAG.match(tag):
            raise ReferenceError(f"image reference {shown!r}: {tag!r} is not a valid tag")
    if not path:
        raise ReferenceError(f"image reference {shown!r} has no repository name")
    if path != path.lower() and _PATH.match(path.lower()):
        raise ReferenceError(f"image reference {shown!r}: repository names must be lowercase")
    if not _PATH.match(path):
        raise ReferenceError(
            f"image reference {shown!r}: {path[:80]!r} is not a valid repository name"
        )
    if len(domain) + 1 + len(path) > MAX_NAME_LENGTH:
        raise ReferenceError(f"image reference {shown!r}: name longer than {MAX_NAME_LENGTH}")
    return Reference(domain, path, tag, digest)


def looks_like_image_id(text: str) -> bool:
    """A bare image id (config digest hex, or sha256:hex), as crictl rmi passes."""
    return bool(_SHA256_HEX.match(text.removeprefix("sha256:")))
