"""Checks of a client's values that need nothing but the value: each refuses with
INVALID_ARGUMENT naming the field, before anything is made (the kernel, runc or conmon
would otherwise fail late, with UNKNOWN or INTERNAL)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from cri.errors import InvalidArgument, clip

#: What exec(2) takes: one argument of at most MAX_ARG_STRLEN bytes (with its NUL), and
#: arguments and environment together under ARG_MAX; half of it is left to the latter.
MAX_ARG_BYTES = 128 * 1024
MAX_ARGV_BYTES = 1024 * 1024
#: What a pod's or container's labels, and its annotations, may take: Kubernetes' own
#: limit for an object's annotations. Every List answer carries them, and the kubelet
#: reads answers of at most 16 MiB.
MAX_METADATA_BYTES = 256 * 1024
#: A path's limits: PATH_MAX bytes in all (with the NUL), NAME_MAX per component.
PATH_MAX = 4096
NAME_MAX = 255


def check_argv(argv: Sequence[str], what: str) -> None:
    """Arguments exec(2) can take: no NUL byte, none too long, not too many together."""
    total = 0
    for arg in argv:
        if "\0" in arg:
            raise InvalidArgument(f"{what} argument {clip(arg)!r} contains a NUL byte")
        size = len(arg.encode(errors="surrogateescape")) + 1
        if size > MAX_ARG_BYTES:
            raise InvalidArgument(
                f"{what} argument {clip(arg)!r} is {size} bytes; exec takes at most "
                f"{MAX_ARG_BYTES} per argument"
            )
        total += size
    if total > MAX_ARGV_BYTES:
        raise InvalidArgument(
            f"{what} is {total} bytes in all; exec takes at most {MAX_ARGV_BYTES} here"
        )


def check_path_length(path: str, what: str) -> None:
    """A path the kernel can take: at most PATH_MAX bytes, NAME_MAX per component."""
    encoded = path.encode(errors="surrogateescape")
    if len(encoded) >= PATH_MAX:
        raise InvalidArgument(f"{what} {clip(path)!r} is longer than {PATH_MAX - 1} bytes")
    if any(len(part) > NAME_MAX for part in encoded.split(b"/")):
        raise InvalidArgument(f"{what} {clip(path)!r} has a component longer than {NAME_MAX} bytes")


_CONTROL_FILE = re.compile(
    r"^(cgroup\..*|tasks|notify_on_release|release_agent"
    r"|(blkio|cpu|cpuacct|cpuset|devices|freezer|hugetlb|io|memory|misc|net_cls|net_prio"
    r"|perf_event|pids|rdma)\..*)$"
)


def check_cgroup_parent(path: str, what: str) -> None:
    """A cgroup path: printable, each component a name a cgroup can have (not "." or
    "..", not one of the control files every cgroup holds)."""
    if not path:
        return
    if any(not c.isprintable() for c in path):
        raise InvalidArgument(f"{what}: cgroup_parent {clip(path)!r} has control characters")
    for part in path.strip("/").split("/"):
        if part in ("", ".", "..") and path.strip("/"):
            raise InvalidArgument(
                f"{what}: cgroup_parent {clip(path)!r} has an empty, '.' or '..' component"
            )
        if _CONTROL_FILE.match(part):
            raise InvalidArgument(
                f"{what}: cgroup_parent {clip(path)!r} names {part!r}, a cgroup control file"
            )
    check_path_length(path, f"{what}: cgroup_parent")


def check_metadata_size(
    labels: Mapping[str, str], annotations: Mapping[str, str], what: str
) -> None:
    """Labels and annotations of a size Kubernetes allows, each map in all."""
    for field, values in (("labels", labels), ("annotations", annotations)):
        size = sum(len(k.encode(errors="surrogateescape")) for k in values) + sum(
            len(v.encode(errors="surrogateescape")) for v in values.values()
        )
        if size > MAX_METADATA_BYTES:
            raise InvalidArgument(
                f"{what}: {field} take {size} bytes; at most {MAX_METADATA_BYTES} (Kubernetes' "
                "own limit: every List answer carries them)"
            )


def check_command(command: Sequence[str]) -> None:
    """An exec's command: a program to run, and arguments exec(2) can take."""
    if not command or not command[0]:
        raise InvalidArgument("cmd must not be empty: name the program to run")
    check_argv(command, "cmd")
