"""Failpoints: named places in a lifecycle step where skiffd can be made to die at once,
with SIGKILL to itself as `kill -9` would, to prove what a crash there leaves behind
and that a restart reconciles it.

Off unless the environment variable SKIFF_FAILPOINTS names some (comma-separated);
a name that is not in POINTS stops skiffd at start, so a test cannot arm a point that
no longer exists. Each point is reached with `reach(name)` right after the durable or
external step it is named for.
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger("skiff.failpoints")

ENV = "SKIFF_FAILPOINTS"

#: Every failpoint, and the moment it stands for.
POINTS: dict[str, str] = {
    "run-pod/after-cgroup": "RunPodSandbox made the pod cgroup, nothing is recorded yet",
    "start-container/after-runtime-start": "the OCI runtime started the container, RUNNING "
    "is not recorded yet",
    "stop-pod/after-not-ready": "StopPodSandbox recorded the pod NOTREADY, its network is "
    "not released yet",
    "stop-pod/after-cni-del": "StopPodSandbox's CNI DEL released the pod's network, the "
    "release is not recorded yet",
}


class UnknownFailpoint(ValueError):
    pass


def armed(environ: dict[str, str] | None = None) -> frozenset[str]:
    """The failpoints the environment arms; raises naming any that does not exist."""
    names = (environ if environ is not None else os.environ).get(ENV, "")
    chosen = frozenset(n.strip() for n in names.split(",") if n.strip())
    unknown = sorted(chosen - POINTS.keys())
    if unknown:
        raise UnknownFailpoint(
            f"{ENV} names unknown failpoints {', '.join(unknown)}; known: "
            + ", ".join(sorted(POINTS))
        )
    return chosen


_ARMED: set[str] = set()


def arm_from_environment() -> frozenset[str]:
    """Read SKIFF_FAILPOINTS (once, at start); logs what is armed."""
    _ARMED.clear()
    _ARMED.update(armed())
    if _ARMED:
        log.warning(
            "failpoints armed: skiffd dies when it reaches one",
            extra={"failpoints": ",".join(sorted(_ARMED))},
        )
    return frozenset(_ARMED)


def reach(name: str) -> None:
    """Die here, at once, when `name` is armed."""
    if name in _ARMED:
        log.warning("failpoint reached: dying", extra={"failpoint": name})
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)
