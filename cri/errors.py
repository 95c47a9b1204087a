"""Typed errors of the daemon and their gRPC status codes.

Every layer raises the error kinds of base/errors.py (cri/ itself raises them directly:
they are re-exported here); one interceptor turns them into a gRPC status. This module
alone knows which kind is which status code.
"""

from __future__ import annotations

import errno
import sqlite3

import grpc

from base.errors import (
    AlreadyExists,
    Cancelled,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    SkiffError,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
    kind_of,
)

__all__ = [
    "MAX_STATUS_MESSAGE",
    "AlreadyExists",
    "Cancelled",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "SkiffError",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "clip",
    "disk_full",
    "fit_status",
    "not_built",
    "status_message",
    "status_of",
    "status_of_typed",
]

#: The gRPC status code of each error kind.
STATUS_CODES: dict[type[SkiffError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    DataLoss: grpc.StatusCode.DATA_LOSS,
    Cancelled: grpc.StatusCode.CANCELLED,
    Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
    Internal: grpc.StatusCode.INTERNAL,
    Unknown: grpc.StatusCode.UNKNOWN,
}


def clip(text: str, limit: int = 80) -> str:
    """A client's value, short enough to quote in an error message."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: The longest status message sent, in bytes on the wire. gRPC carries it in the
#: trailers, which clients cap (8 KiB by default): a longer one reaches the client as
#: RESOURCE_EXHAUSTED instead of the real code, so a message quoting a client's 10 KB
#: value must be cut.
MAX_STATUS_MESSAGE = 2048


def _wire_size(char: str) -> int:
    """What a character of a status message takes in the trailer: gRPC percent-encodes
    every byte outside printable ASCII (and '%'), so 'é' takes 6 and '😀' 12."""
    if " " <= char <= "~" and char != "%":
        return 1
    return 3 * len(char.encode(errors="replace"))


def fit_status(text: str, limit: int = MAX_STATUS_MESSAGE) -> str:
    """`text`, cut so that it takes at most `limit` bytes on the wire."""
    sizes = [_wire_size(c) for c in text]
    if sum(sizes) <= limit:
        return text
    budget, end = limit - 3, 0
    while end < len(text) and budget >= sizes[end]:
        budget -= sizes[end]
        end += 1
    return text[:end] + "..."


def disk_full(exc: BaseException) -> bool:
    """A write that found the node's disk (or quota) full, wherever it was: the client
    can act on it (free space, then retry), so it is no bug."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    return False


def status_message(exc: BaseException) -> str:
    """The message of an error as a client gets it: never longer than the limit."""
    if disk_full(exc) and status_of_typed(exc) is None:
        where = getattr(exc, "filename", None)
        place = f"writing {where}" if where else "writing"
        message = f"{place}: no space left on the device; free some space and retry"
        return fit_status(message)
    return fit_status(str(exc))


def not_built(rpc: str) -> Unimplemented:
    """The answer of an RPC that skiff does not implement yet."""
    return Unimplemented(f"{rpc} is not implemented by skiff yet")


def status_of_typed(exc: BaseException) -> grpc.StatusCode | None:
    """The status code of an error's kind (base/errors.py), wherever it was raised."""
    kind = kind_of(type(exc))
    return STATUS_CODES[kind] if kind is not None else None


def status_of(exc: BaseException) -> grpc.StatusCode | None:
    """The status code for an error a client can act on, or None for a bug."""
    typed = status_of_typed(exc)
    if typed is None and disk_full(exc):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    return typed
