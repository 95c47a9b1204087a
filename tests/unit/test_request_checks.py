"""The value-only checks of client requests (cri/request_checks.py)."""

from __future__ import annotations

import pytest

from cri.errors import InvalidArgument
from cri.request_checks import (
    MAX_ARG_BYTES,
    MAX_METADATA_BYTES,
    check_argv,
    check_cgroup_parent,
    check_metadata_size,
    check_path_length,
)


@pytest.mark.parametrize(
    "parent",
    [
        "",
        "/kubepods/burstable/pod1b2c-3d4e",
        "/skiff-e2e-abc/kubepods/besteffort/pod5",
        "kubepods-burstable-pod1b2c.slice",  # systemd driver names
        "/cpu-heavy/memoryless",  # controller-like words without the dot
    ],
)
def test_cgroup_parents_the_kubelet_sends_pass(parent: str) -> None:
    check_cgroup_parent(parent, "pod")


@pytest.mark.parametrize(
    ("parent", "problem"),
    [
        ("/a\nb", "control characters"),
        ("/a/cgroup.procs", "control file"),
        ("/memory.limit_in_bytes", "control file"),
        ("/x/notify_on_release", "control file"),
        ("/a//b", "empty, '.' or '..'"),
        ("/a/./b", "empty, '.' or '..'"),
    ],
)
def test_cgroup_parents_that_are_no_cgroup_are_refused(parent: str, problem: str) -> None:
    with pytest.raises(InvalidArgument, match=problem):
        check_cgroup_parent(parent, "pod")


def test_argv_limits() -> None:
    check_argv(["echo", "x" * (MAX_ARG_BYTES - 1)], "cmd")
    with pytest.raises(InvalidArgument, match="per argument"):
        check_argv(["echo", "x" * MAX_ARG_BYTES], "cmd")
    with pytest.raises(InvalidArgument, match="in all"):
        check_argv(["y" * 100_000] * 11, "cmd")
    with pytest.raises(InvalidArgument, match="NUL"):
        check_argv(["a\0"], "cmd")


def test_path_limits() -> None:
    check_path_length("/" + "n" * 255, "log")
    with pytest.raises(InvalidArgument, match="255 bytes"):
        check_path_length("/" + "n" * 256, "log")
    with pytest.raises(InvalidArgument, match="4095 bytes"):
        check_path_length("/d" * 2048, "log")


def test_labels_and_annotations_of_the_size_kubernetes_allows() -> None:
    check_metadata_size({"app": "web"}, {"note": "x" * (MAX_METADATA_BYTES - 4)}, "pod 'p'")
    with pytest.raises(InvalidArgument, match=r"pod 'p': annotations take 262145 bytes"):
        check_metadata_size({}, {"note": "x" * (MAX_METADATA_BYTES - 3)}, "pod 'p'")
    many = {f"k{i}": "v" * 1000 for i in range(300)}
    with pytest.raises(InvalidArgument, match=r"container 'c': labels take \d+ bytes"):
        check_metadata_size(many, {}, "container 'c'")
