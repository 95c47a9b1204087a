"""Where a pod's cgroups are: the one place that knows the layout.

A pod's cgroup is the kubelet's `cgroup_parent`, or one of skiff's own under
DEFAULT_ROOT. Below it, each container has a leaf `skiff-<id12>`, conmon a leaf
`skiff-conmon-<id12>` (its overhead is the pod's), and the pod's pause process a leaf
`skiff-pause` (on cgroup v2 processes live only in leaves, so none sits in the pod
cgroup itself).
"""

from __future__ import annotations

#: Where the cgroups of pods that name no cgroup parent go (crictl's, mostly).
DEFAULT_ROOT = "/skiff"


def default_parent(sandbox_id: str) -> str:
    """The cgroup of a pod that named none."""
    return f"{DEFAULT_ROOT}/pod-{sandbox_id[:12]}"


def chain(path: str) -> list[str]:
    """Every ancestor of a cgroup path and the path itself, outermost first."""
    parts = [p for p in path.strip("/").split("/") if p]
    return ["/" + "/".join(parts[: n + 1]) for n in range(len(parts))]


def pause(pod: str) -> str:
    return f"{pod.rstrip('/')}/skiff-pause"


def container(pod: str, container_id: str) -> str:
    return f"{pod.rstrip('/')}/skiff-{container_id[:12]}"


def conmon(pod: str, container_id: str) -> str:
    """conmon's leaf in the pod's cgroup; none ("") for a pod whose parent is not a
    cgroupfs path (a systemd slice): conmon then stays where skiffd is."""
    if not pod.startswith("/"):
        return ""
    return f"{pod.rstrip('/')}/skiff-conmon-{container_id[:12]}"
