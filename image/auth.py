"""Registry credentials: from the PullImage request, else from an auth file in the
containers-auth.json(5) format.

Credentials never reach a log line or an error message: `Credentials.__repr__` hides
them, and nothing here formats a secret into text.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from base.errors import FailedPrecondition, InvalidArgument


class AuthFileError(FailedPrecondition, ValueError):
    pass


class InvalidAuthConfig(InvalidArgument, ValueError):
    """The credentials a PullImage request carries are malformed (the client's fault)."""


@dataclass(frozen=True)
class Credentials:
    username: str = field(default="", repr=False)
    password: str = field(default="", repr=False)
    # An OAuth2 refresh token for the token server (docker's "identitytoken").
    identity_token: str = field(default="", repr=False)
    # A bearer token to send to the registry as is.
    registry_token: str = field(default="", repr=False)

    @property
    def empty(self) -> bool:
        return not (self.username or self.password or self.identity_token or self.registry_token)

    def __repr__(self) -> str:
        return "Credentials(<hidden>)" if not self.empty else "Credentials(anonymous)"

    def identity(self) -> str:
        """A key for token caches that tells credentials apart without holding them."""
        material = "\0".join(
            (self.username, self.password, self.identity_token, self.registry_token)
        )
        return hashlib.sha256(material.encode()).hexdigest()[:16]


ANONYMOUS = Credentials()


def decode_auth(auth: str, where: str) -> tuple[str, str]:
    """Split a base64 `user:password` (the `auth` field) into its parts."""
    try:
        decoded = base64.b64decode(auth, validate=True).decode()
    except ValueError:  # binascii.Error, UnicodeDecodeError, or a non-ASCII str
        raise AuthFileError(f"{where}: auth is not base64 of user:password") from None
    username, sep, password = decoded.partition(":")
    if not sep:
        raise AuthFileError(f"{where}: auth is not base64 of user:password")
    return username, password


def from_request(
    username: str, password: str, auth: str, identity_token: str, registry_token: str
) -> Credentials:
    if auth and not username:
        try:
            username, password = decode_auth(auth, "PullImageRequest.auth")
        except AuthFileError as exc:
            raise InvalidAuthConfig(str(exc)) from None
    fields = {
        "username": username,
        "password": password,
        "identity_token": identity_token,
        "registry_token": registry_token,
    }
    for name, value in fields.items():
        # They go into HTTP headers and forms: a line break would end the header.
        if any(not c.isprintable() for c in value):
            raise InvalidAuthConfig(
                f"PullImageRequest.auth: {name} contains control characters (a line break?)"
            )
    if not header_safe(registry_token):
        raise InvalidAuthConfig(
            "PullImageRequest.auth: registry_token has characters an HTTP header cannot "
            "carry (a bearer token is printable ASCII)"
        )
    return Credentials(username, password, identity_token, registry_token)


def header_safe(token: str) -> bool:
    """Whether a bearer token can go into an Authorization header as it is: printable
    ASCII (RFC 6750), never quoted in an error when it cannot."""
    return token.isascii() and token.isprintable()


def lookup_auth_file(path: Path, host: str, repository: str) -> Credentials:
    """The most specific entry for host/repository (`host/ns/repo`, `host/ns`, `host`)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return ANONYMOUS
    except OSError as exc:
        raise AuthFileError(f"auth file {path}: cannot read: {exc.strerror}") from None
    except ValueError:
        raise AuthFileError(f"auth file {path}: not valid JSON") from None
    auths = raw.get("auths", {}) if isinstance(raw, dict) else None
    if not isinstance(auths, dict):
        raise AuthFileError(f"auth file {path}: 'auths' must be an object")
    normalized = {_strip_scheme(key): value for key, value in auths.items()}
    parts = repository.split("/")
    keys = [f"{host}/{'/'.join(parts[:n])}" for n in range(len(parts), 0, -1)] + [host]
    if host == "docker.io":
        keys += ["index.docker.io/v1/", "index.docker.io", "registry-1.docker.io"]
    for key in keys:
        entry = normalized.get(key)
        if isinstance(entry, dict):
            where = f"auth file {path}: entry {key!r}"
            username, password = "", ""
            if entry.get("auth"):
                username, password = decode_auth(str(entry["auth"]), where)
            return Credentials(username, password, str(entry.get("identitytoken", "")), "")
    return ANONYMOUS


def _strip_scheme(key: str) -> str:
    for scheme in ("https://", "http://"):
        if key.startswith(scheme):
            key = key[len(scheme) :]
    return key.rstrip("/") if key.count("/") <= 1 and key.endswith("/") else key
