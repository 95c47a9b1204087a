"""Failpoints: every durable step skiffd takes is a place where it can be made to die at
once, with SIGKILL to itself as `kill -9` would, to prove what a crash there leaves
behind and that a restart reconciles it.

The points are not listed by hand. Each durable primitive (a record written, a cgroup
made, namespaces pinned, a CNI ADD, a container created by the OCI runtime, a layer
committed, ...) calls `step(kind)` once its effect is real, and the point is named by
the operation it happened in and how many steps of that kind came before:
`RunPodSandbox/after-cni-add`, `StopPodSandbox/after-sandbox-record-update#2`. So a new
durable step in any RPC is a new failpoint without anyone writing one down.

Off unless the environment names points (SKIFF_FAILPOINTS, comma-separated); a name
that cannot exist stops skiffd at start. SKIFF_FAILPOINTS_TRACE names a file that every
point reached is appended to, which is how a test finds the points of an operation.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import re
import signal
from collections import Counter
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field

log = logging.getLogger("skiff.failpoints")

ENV = "SKIFF_FAILPOINTS"
TRACE_ENV = "SKIFF_FAILPOINTS_TRACE"
#: The operation of skiffd's start: reconciling its records with what is really there.
STARTUP = "Startup"

#: Every kind of durable step, and what is real once it is taken.
STEPS: dict[str, str] = {
    "sandbox-record-add": "a pod's record is written",
    "sandbox-record-update": "a pod's record is rewritten",
    "sandbox-record-remove": "a pod's record is deleted",
    "container-record-add": "a container's record is written",
    "container-record-update": "a container's record is rewritten",
    "container-record-remove": "a container's record is deleted",
    "image-record-add": "an image's record is written in the state store",
    "image-record-update": "an image's record is rewritten in the state store",
    "image-record-write": "an image's record is written",
    "image-record-remove": "an image's record is deleted",
    "directory-make": "a pod's or container's own directory is made",
    "file-write": "a file is written in place (temp, fsync, rename)",
    "tree-remove": "a directory tree is removed",
    "cgroup-create": "a cgroup is made in every hierarchy",
    "cgroup-delete": "a cgroup is removed from every hierarchy",
    "namespaces-pin": "a pod's namespaces are made and bind-mounted",
    "namespaces-unpin": "a pod's namespace pins are unmounted and removed",
    "shm-mount": "a pod's /dev/shm tmpfs is mounted",
    "shm-unmount": "a pod's /dev/shm tmpfs is unmounted",
    "rootfs-mount": "a container's overlay root is mounted",
    "rootfs-unmount": "a container's overlay root is unmounted",
    "cni-add": "the CNI plugins attached a pod to its network",
    "cni-del": "the CNI plugins detached a pod from its network",
    "runtime-create": "conmon reported the pid of a container the OCI runtime created",
    "runtime-start": "the OCI runtime started a container",
    "runtime-kill": "the OCI runtime signalled a container",
    "runtime-delete": "the OCI runtime deleted a container",
    "pause-start": "a pod's PID namespace init (pause) is running",
    "pause-stop": "a pod's pause process is stopped",
    "blob-commit": "a fetched blob is in the content store",
    "layer-commit": "an unpacked layer is in the layer store",
    "layer-remove": "a layer is gone from the layer store",
    "blob-remove": "a blob is gone from the content store",
}

_POINT = re.compile(r"^(?P<operation>[A-Za-z]+)/after-(?P<step>[a-z-]+)(#(?P<nth>[1-9]\d*))?$")


class UnknownFailpoint(ValueError):
    pass


@dataclass
class _Operation:
    name: str
    taken: Counter[str] = field(default_factory=Counter)


_current: contextvars.ContextVar[_Operation | None] = contextvars.ContextVar(
    "skiff_failpoint_operation", default=None
)
_armed: set[str] = set()
_trace: list[str] = []  # the trace file's path, when one is named


def point_name(operation: str, step_kind: str, nth: int) -> str:
    return f"{operation}/after-{step_kind}" + (f"#{nth}" if nth > 1 else "")


def check(names: Collection[str], operations: Collection[str]) -> None:
    """Raises naming each point that cannot exist: an operation or step kind unknown."""
    wrong = []
    for name in names:
        match = _POINT.match(name)
        if not match or match["operation"] not in operations or match["step"] not in STEPS:
            wrong.append(name)
    if wrong:
        raise UnknownFailpoint(
            f"{ENV} names failpoints that cannot exist: {', '.join(sorted(wrong))}; a point "
            "is <operation>/after-<step>[#n], the steps are " + ", ".join(sorted(STEPS))
        )


def arm_from_environment(
    operations: Collection[str], environ: Mapping[str, str] | None = None
) -> frozenset[str]:
    """Read SKIFF_FAILPOINTS and SKIFF_FAILPOINTS_TRACE (once, at start)."""
    env = os.environ if environ is None else environ
    names = {n.strip() for n in env.get(ENV, "").split(",") if n.strip()}
    check(names, operations)
    _armed.clear()
    _armed.update(names)
    _trace[:] = [env[TRACE_ENV]] if env.get(TRACE_ENV) else []
    if _armed:
        log.warning(
            "failpoints armed: skiffd dies when it reaches one",
            extra={"failpoints": ",".join(sorted(_armed))},
        )
    return frozenset(_armed)


@contextlib.contextmanager
def operation(name: str) -> Iterator[None]:
    """The steps taken inside (and in the threads and tasks it starts) belong to `name`.
    Free when no point is armed or traced: every RPC passes here."""
    if not (_armed or _trace):
        yield
        return
    token = _current.set(_Operation(name))
    try:
        yield
    finally:
        _current.reset(token)


def step(kind: str) -> None:
    """A durable step of `kind` was just taken: die here when its point is armed."""
    if kind not in STEPS:
        raise ValueError(f"unknown durable step {kind!r}")
    current = _current.get()
    if current is None or not (_armed or _trace):
        return
    current.taken[kind] += 1
    name = point_name(current.name, kind, current.taken[kind])
    if _trace:
        with open(_trace[0], "a") as trace:
            trace.write(name + "\n")
    if name in _armed:
        log.warning("failpoint reached: dying", extra={"failpoint": name})
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)
