"""The kinds of error a client can act on, one vocabulary for every layer.

image/, runtime/ and network/ subclass these kinds (they may not import cri/), and
cri/errors.py alone maps each kind to its gRPC status code. A lower layer's error keeps
its own name and family, and says what kind it is by naming the kind among its bases.
When a subclass is of another kind than its parent, it names the kind *first*
(``class CgroupNotFound(NotFound, CgroupError)``): an error's kind is the first kind in
its method resolution order (`kind_of`), and a unit test checks that every class naming
a kind gets that one.

An exception that is none of these is a bug: the client gets INTERNAL with an id, the
log gets the traceback.
"""

from __future__ import annotations


class SkiffError(Exception):
    """An error a client can act on; the message names the object and the problem.

    The root of the kinds below; raise one of them, never this root itself."""


class InvalidArgument(SkiffError):
    """The request itself is wrong, whatever the state of the node."""


class NotFound(SkiffError):
    """The object the request names does not exist."""


class AlreadyExists(SkiffError):
    """The object the request would make exists already."""


class FailedPrecondition(SkiffError):
    """The request is fine, but the node or the object is not in a state that allows it."""


class ResourceExhausted(SkiffError):
    """A limit was reached (disk, quota, a size skiff allows)."""


class DeadlineExceeded(SkiffError):
    """A program or peer took longer than skiff waits."""


class Unavailable(SkiffError):
    """A peer or service cannot be reached now; retrying later may work."""


class Unauthenticated(SkiffError):
    """The credentials are missing or refused."""


class PermissionDenied(SkiffError):
    """The node's policy forbids what the request asks."""


class DataLoss(SkiffError):
    """Data arrived or was found damaged (a digest that does not match)."""


class Cancelled(SkiffError):
    """The work was cancelled before it finished."""


class Unimplemented(SkiffError):
    """skiff does not do this (yet)."""


class Internal(SkiffError):
    """The node is broken in a way the client can only report (a failed mount, say)."""


class Unknown(SkiffError):
    """A program skiff runs failed in a way skiff cannot classify; its message says how."""


#: Every kind; cri/errors.py maps each one to a gRPC status code.
KINDS: tuple[type[SkiffError], ...] = (
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    ResourceExhausted,
    DeadlineExceeded,
    Unavailable,
    Unauthenticated,
    PermissionDenied,
    DataLoss,
    Cancelled,
    Unimplemented,
    Internal,
    Unknown,
)


def kind_of(error: type[BaseException]) -> type[SkiffError] | None:
    """The kind of an error class (the first kind in its method resolution order), or
    None for an error that is no client's: a bug."""
    for klass in error.__mro__:
        if issubclass(klass, SkiffError) and klass in KINDS:
            return klass
    return None
