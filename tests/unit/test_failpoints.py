"""Failpoint names, arming, and that every kind of durable step is one the code takes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from base import failpoints
from cri.interceptor import CRI_RPCS
from cri.store import KINDS

REPO = Path(failpoints.__file__).resolve().parent.parent
SOURCES = ("base", "cri", "image", "network", "runtime")


def _stepped_kinds() -> set[str]:
    """The step kinds the code names: literally, or per record kind in the state store."""
    text = "\n".join(
        path.read_text() for folder in SOURCES for path in (REPO / folder).rglob("*.py")
    )
    kinds = set(re.findall(r'failpoints\.step\("([a-z-]+)"\)', text))
    for template in re.findall(r'failpoints\.step\(f"\{(?:record\.)?kind\}-([a-z-]+)"\)', text):
        kinds.update(f"{kind}-{template}" for kind in KINDS)
    return kinds


def test_every_step_the_code_takes_is_a_known_kind_and_every_kind_is_taken() -> None:
    assert _stepped_kinds() == set(failpoints.STEPS)


def test_points_are_named_by_operation_step_and_count() -> None:
    assert failpoints.point_name("RunPodSandbox", "cni-add", 1) == "RunPodSandbox/after-cni-add"
    assert (
        failpoints.point_name("StopPodSandbox", "sandbox-record-update", 2)
        == "StopPodSandbox/after-sandbox-record-update#2"
    )


def test_a_point_that_cannot_exist_is_refused_naming_it() -> None:
    failpoints.check(["RunPodSandbox/after-cni-add", "PullImage/after-layer-commit#3"], CRI_RPCS)
    for wrong in (
        "RunPodSandbox/after-coffee",  # no such step
        "BrewCoffee/after-cni-add",  # no such RPC
        "RunPodSandbox/after-cni-add#0",
        "run-pod/after-cgroup",
    ):
        with pytest.raises(failpoints.UnknownFailpoint, match=re.escape(wrong)):
            failpoints.check([wrong, "RunPodSandbox/after-cni-add"], CRI_RPCS)


def test_steps_outside_an_operation_or_unarmed_are_free(tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    failpoints.arm_from_environment(CRI_RPCS, {failpoints.TRACE_ENV: str(trace)})
    try:
        failpoints.step("cni-add")  # no operation: at start-up, say
        with failpoints.operation("StopPodSandbox"):
            failpoints.step("sandbox-record-update")
            failpoints.step("cni-del")
            failpoints.step("sandbox-record-update")
        with pytest.raises(ValueError, match="unknown durable step"):
            failpoints.step("coffee")
    finally:
        failpoints.arm_from_environment(CRI_RPCS, {})
    assert trace.read_text().split() == [
        "StopPodSandbox/after-sandbox-record-update",
        "StopPodSandbox/after-cni-del",
        "StopPodSandbox/after-sandbox-record-update#2",
    ]
