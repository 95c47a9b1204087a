from __future__ import annotations

import asyncio
import errno
import logging
import re

import grpc
import pytest

from cri.errors import (
    MAX_STATUS_MESSAGE,
    InvalidArgument,
    NotFound,
    clip,
    fit_status,
    not_built,
    status_message,
    status_of,
)
from cri.interceptor import _fail


class LowerLayerMissing(LookupError, NotFound):
    """A lower layer's error: its own family, and the kind it names among its bases."""


def test_status_codes() -> None:
    assert status_of(NotFound("sandbox x not found")) == grpc.StatusCode.NOT_FOUND
    assert status_of(InvalidArgument("bad")) == grpc.StatusCode.INVALID_ARGUMENT
    assert status_of(not_built("Exec")) == grpc.StatusCode.UNIMPLEMENTED
    assert "Exec" in str(not_built("Exec"))
    # Lower layers cannot import cri/: they subclass the kinds of base/errors.py.
    assert status_of(LowerLayerMissing("layer gone")) == grpc.StatusCode.NOT_FOUND
    # Anything else is a bug, not a client error.
    assert status_of(KeyError("x")) is None


def test_clip() -> None:
    assert clip("short") == "short"
    long = clip("x" * 1000)
    assert len(long) == 80
    assert long.endswith("...")


def test_status_messages_fit_in_the_trailers() -> None:
    # A message quoting a client's 10 KB value would exceed the client's 8 KiB limit for
    # trailers and reach it as RESOURCE_EXHAUSTED instead of its real status.
    message = status_message(NotFound(f"container {'a' * 10_000!r} not found"))
    assert len(message) == MAX_STATUS_MESSAGE < 8192
    assert message.startswith("container 'aaa") and message.endswith("...")
    assert status_message(NotFound("sandbox x not found")) == "sandbox x not found"


def test_status_messages_fit_in_the_trailers_in_any_script() -> None:
    """gRPC percent-encodes every byte outside printable ASCII: 2,000 emoji were 24 KB in
    the trailers, and the client heard RESOURCE_EXHAUSTED (found by generated requests)."""
    message = status_message(InvalidArgument(f"pod {'😀' * 2000!r}: hostname is bad"))
    wire = sum(1 if " " <= c <= "~" and c != "%" else 3 * len(c.encode()) for c in message)
    assert wire <= MAX_STATUS_MESSAGE and message.endswith("...")
    assert message.startswith("pod '😀😀")
    assert fit_status("100% é") == "100% é"


class _AbortingContext:
    """What `_fail` needs of a servicer context: abort records what it was given."""

    def __init__(self) -> None:
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    async def abort(self, code: grpc.StatusCode, message: str) -> None:
        self.aborted = (code, message)


def test_an_internal_error_tells_the_client_an_id_not_the_exception(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The kubelet copies messages into pod events: a bug's exception (which may quote a
    client's value, a token say) stays in skiffd's log, found there by the id."""
    context = _AbortingContext()
    bug = UnicodeEncodeError("latin-1", "Bearer s3cret-token", 7, 8, "ordinal not in range")
    with caplog.at_level(logging.ERROR, logger="skiff.rpc"):
        asyncio.run(_fail(context, "PullImage", bug))  # type: ignore[arg-type]
    assert context.aborted is not None
    code, message = context.aborted
    assert code == grpc.StatusCode.INTERNAL
    assert "s3cret" not in message and "Bearer" not in message
    error_id = re.fullmatch(r"PullImage: internal error ([0-9a-f]{8}); .*", message)
    assert error_id is not None, message
    (record,) = [r for r in caplog.records if r.getMessage() == "internal error"]
    assert getattr(record, "error_id", None) == error_id.group(1)


def test_a_full_disk_anywhere_is_resource_exhausted_naming_the_file() -> None:
    full = OSError(errno.ENOSPC, "No space left on device", "/var/lib/skiff/x/config.json")
    assert status_of(full) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert status_of(OSError(errno.EDQUOT, "Disk quota exceeded")) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    assert status_message(full) == (
        "writing /var/lib/skiff/x/config.json: no space left on the device; "
        "free some space and retry"
    )
    assert status_of(OSError(errno.EIO, "I/O error")) is None  # a bug, or worse: INTERNAL

    class Typed(InvalidArgument, OSError):
        pass

    assert status_of(Typed(errno.ENOSPC, "typed")) == grpc.StatusCode.INVALID_ARGUMENT
