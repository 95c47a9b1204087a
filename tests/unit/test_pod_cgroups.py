"""The pod cgroup layout: one place computes every path of it."""

from __future__ import annotations

from cri import pod_cgroups


def test_a_pod_without_a_parent_gets_one_of_skiffs_own() -> None:
    assert pod_cgroups.default_parent("0123456789abcdef" * 4) == "/skiff/pod-0123456789ab"


def test_the_leaves_below_a_pod() -> None:
    pod, cid = "/kubepods/burstable/podabc/", "fedcba9876543210" * 4
    assert pod_cgroups.container(pod, cid) == "/kubepods/burstable/podabc/skiff-fedcba987654"
    assert pod_cgroups.conmon(pod, cid) == "/kubepods/burstable/podabc/skiff-conmon-fedcba987654"
    assert pod_cgroups.pause(pod) == "/kubepods/burstable/podabc/skiff-pause"


def test_a_systemd_slice_parent_keeps_conmon_where_skiffd_is() -> None:
    assert pod_cgroups.conmon("kubepods-burstable-podabc.slice", "f" * 64) == ""


def test_the_chain_of_a_path_is_outermost_first() -> None:
    assert pod_cgroups.chain("/a/b//c/") == ["/a", "/a/b", "/a/b/c"]
    assert pod_cgroups.chain("/") == []
