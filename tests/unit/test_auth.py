"""Credentials from requests and auth files, and that they never print."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import grpc
import pytest

from cri.errors import status_of
from image.auth import (
    ANONYMOUS,
    AuthFileError,
    Credentials,
    InvalidAuthConfig,
    from_request,
    lookup_auth_file,
)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_request_auth_field_is_decoded() -> None:
    creds = from_request("", "", _b64("alice:s3cret:with:colons"), "", "")
    assert (creds.username, creds.password) == ("alice", "s3cret:with:colons")


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        (("", "", "!!not base64", "", ""), "auth is not base64"),
        (("", "", _b64("no-colon"), "", ""), "auth is not base64"),
        (("alice\r\nX-Evil: 1", "pw", "", "", ""), "username contains control characters"),
        (("", "", "", "", "s3cret\ntoken"), "registry_token contains control characters"),
        (("", "", "", "", "s3cret-\u00e9-token"), "registry_token has characters an HTTP"),
        (("", "", "", "", "s3cret \u4e2d"), "registry_token has characters an HTTP"),
    ],
)
def test_malformed_request_auth_is_the_clients_fault(
    fields: tuple[str, str, str, str, str], problem: str
) -> None:
    with pytest.raises(InvalidAuthConfig, match=problem) as err:
        from_request(*fields)
    assert status_of(err.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert "alice" not in str(err.value) and "s3cret" not in str(err.value)


def test_credentials_never_print() -> None:
    creds = Credentials("alice", "hunter2", "refresh-xyz", "bearer-abc")
    for text in (repr(creds), str(creds), f"{creds}", repr([creds])):
        assert "hunter2" not in text
        assert "refresh-xyz" not in text
        assert "bearer-abc" not in text
    assert "hunter2" not in creds.identity()


def test_auth_file_most_specific_entry_wins(tmp_path: Path) -> None:
    path = tmp_path / "auth.json"
    path.write_text(
        json.dumps(
            {
                "auths": {
                    "reg.example:5000": {"auth": _b64("host:h")},
                    "reg.example:5000/team": {"auth": _b64("team:t")},
                    "https://index.docker.io/v1/": {"auth": _b64("hub:x")},
                }
            }
        )
    )
    assert lookup_auth_file(path, "reg.example:5000", "team/app").username == "team"
    assert lookup_auth_file(path, "reg.example:5000", "other/app").username == "host"
    assert lookup_auth_file(path, "docker.io", "library/busybox").username == "hub"
    assert lookup_auth_file(path, "elsewhere.io", "a") == ANONYMOUS
    assert lookup_auth_file(tmp_path / "missing.json", "a", "b") == ANONYMOUS


def test_bad_auth_file_is_named_without_secrets(tmp_path: Path) -> None:
    path = tmp_path / "auth.json"
    path.write_text(json.dumps({"auths": {"reg.io": {"auth": "not-base64-!!"}}}))
    with pytest.raises(AuthFileError) as err:
        lookup_auth_file(path, "reg.io", "x")
    assert str(path) in str(err.value)
    assert "not-base64" not in str(err.value)
    path.write_text("{")
    with pytest.raises(AuthFileError, match="not valid JSON"):
        lookup_auth_file(path, "reg.io", "x")


def test_non_ascii_in_the_auth_field_is_not_base64(tmp_path: Path) -> None:
    """Found by fuzzing (python -m tests.fuzz auth_file): b64decode raised a bare
    ValueError for a str with non-ASCII characters, from the file and from a request."""
    path = tmp_path / "auth.json"
    path.write_text(json.dumps({"auths": {"q.io:5000/a": {"auth": "YWxpY\u01aa\u025czNjcmV0"}}}))
    with pytest.raises(AuthFileError, match="auth is not base64"):
        lookup_auth_file(path, "q.io:5000", "a/b")
    with pytest.raises(InvalidAuthConfig, match="auth is not base64"):
        from_request("", "", "YWxpY\u01aa\u025czNjcmV0", "", "")
