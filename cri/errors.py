"""Typed errors of the daemon and their gRPC status codes.

Servicers and managers raise these; one interceptor turns them into a gRPC status. The
lower layers (image/, runtime/, network/) cannot import this module, so they raise their
own exceptions carrying a ``grpc_status`` attribute with the name of a status code
(e.g. ``"NOT_FOUND"``); `status_of` understands both.
"""

from __future__ import annotations

import errno
import sqlite3

import grpc


class SkiffError(Exception):
    """An error a client can act on; the message names the object and the problem."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN


class InvalidArgument(SkiffError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(SkiffError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(SkiffError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(SkiffError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(SkiffError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(SkiffError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unavailable(SkiffError):
    code = grpc.StatusCode.UNAVAILABLE


class Unimplemented(SkiffError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(SkiffError):
    code = grpc.StatusCode.INTERNAL


def clip(text: str, limit: int = 80) -> str:
    """A client's value, short enough to quote in an error message."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: The longest status message sent. gRPC carries it in the trailers, which clients cap
#: (8 KiB by default): a longer one reaches the client as RESOURCE_EXHAUSTED instead
#: of the real code, so a message quoting a client's 10 KB value must be cut.
MAX_STATUS_MESSAGE = 2048


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
        return clip(message, MAX_STATUS_MESSAGE)
    return clip(str(exc), MAX_STATUS_MESSAGE)


def not_built(rpc: str) -> Unimplemented:
    """The answer of an RPC that skiff does not implement yet."""
    return Unimplemented(f"{rpc} is not implemented by skiff yet")


def status_of_typed(exc: BaseException) -> grpc.StatusCode | None:
    """The status code a typed error (ours, or a lower layer's) carries."""
    if isinstance(exc, SkiffError):
        return exc.code
    name = getattr(exc, "grpc_status", None)
    if isinstance(name, str):
        code = getattr(grpc.StatusCode, name, None)
        if isinstance(code, grpc.StatusCode):
            return code
    return None


def status_of(exc: BaseException) -> grpc.StatusCode | None:
    """The status code for an error a client can act on, or None for a bug."""
    typed = status_of_typed(exc)
    if typed is None and disk_full(exc):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    return typed
