"""Hostile input to the real skiffd's RuntimeService and ImageService, as a fuzzer or a
kubelet gone wrong would send it: every bad request gets a clear status (the right
code, a message naming the object and the problem, short enough to reach the client)
and leaves nothing behind."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from api.runtime.v1 import api_pb2 as pb
from cri.errors import MAX_STATUS_MESSAGE
from tests.integration.nodes import MakeNode, container_config

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND

# Ids no object has: too long, far too long, NUL, newline, path-like, unicode.
ODD_IDS = ["a" * 65, "a" * 10_000, "x\0y", "a\nb", "/", "..", "../../etc", "ü", "%s%n"]


def _error(call: Callable[..., Any], request: Any) -> grpc.RpcError:
    try:
        call(request, timeout=30)
    except grpc.RpcError as err:
        return err
    raise AssertionError(f"{type(request).__name__} succeeded: {request!s:.300}")


def _expect(call: Callable[..., Any], request: Any, code: grpc.StatusCode, *words: str) -> str:
    """The call fails with `code`, a message holding `words` and fitting the trailers."""
    err = _error(call, request)
    details = err.details() or ""
    assert err.code() == code, f"{type(request).__name__}: {err.code()} {details[:300]}"
    assert len(details) <= MAX_STATUS_MESSAGE
    for word in words:
        assert word in details, f"{word!r} not in {details[:300]!r}"
    return details


# --- ids and image names -----------------------------------------------------------------


def test_odd_ids_and_image_names(make_node: MakeNode) -> None:
    node = make_node()
    rt, images = node.runtime, node.daemon.images()
    busybox = node.world.busybox
    for odd in ODD_IDS:
        for call, request, kind in (
            (rt.ContainerStatus, pb.ContainerStatusRequest(container_id=odd), "container"),
            (rt.StartContainer, pb.StartContainerRequest(container_id=odd), "container"),
            (rt.ExecSync, pb.ExecSyncRequest(container_id=odd, cmd=["true"]), "container"),
            (rt.ReopenContainerLog, pb.ReopenContainerLogRequest(container_id=odd), "container"),
            (
                rt.UpdateContainerResources,
                pb.UpdateContainerResourcesRequest(
                    container_id=odd, linux=pb.LinuxContainerResources()
                ),
                "container",
            ),
            (rt.ContainerStats, pb.ContainerStatsRequest(container_id=odd), "container"),
            (rt.Exec, pb.ExecRequest(container_id=odd, cmd=["true"], stdout=True), "container"),
            (rt.Attach, pb.AttachRequest(container_id=odd, stdout=True), "container"),
            (rt.PodSandboxStatus, pb.PodSandboxStatusRequest(pod_sandbox_id=odd), "sandbox"),
            (rt.PodSandboxStats, pb.PodSandboxStatsRequest(pod_sandbox_id=odd), "sandbox"),
            (rt.PortForward, pb.PortForwardRequest(pod_sandbox_id=odd, port=[80]), "sandbox"),
            (
                rt.UpdatePodSandboxResources,
                pb.UpdatePodSandboxResourcesRequest(pod_sandbox_id=odd),
                "sandbox",
            ),
            (
                rt.CreateContainer,
                pb.CreateContainerRequest(
                    pod_sandbox_id=odd, config=container_config("c", busybox, command=["true"])
                ),
                "sandbox",
            ),
        ):
            _expect(call, request, NOT_FOUND, kind, "not found", repr(odd)[:40])
        # Stopping or removing what is not there is fine (the CRI wants it idempotent).
        rt.StopContainer(pb.StopContainerRequest(container_id=odd), timeout=30)
        rt.RemoveContainer(pb.RemoveContainerRequest(container_id=odd), timeout=30)
        rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=odd), timeout=30)
        rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=odd), timeout=30)
    _expect(rt.ContainerStatus, pb.ContainerStatusRequest(), INVALID, "container id")
    _expect(rt.StopPodSandbox, pb.StopPodSandboxRequest(), INVALID, "sandbox id")

    # Image names that are no references, whatever the RPC.
    host = node.world.registry.host
    for name, problem in (
        ("UPPER/case", "lowercase"),
        ("a@sha256:short", "not a digest"),
        ("host:99999/x", "port 99999"),
        (f"{host}/" + "x" * 300, "longer than"),
        ("x" * 10_000, "longer than"),
        ("x\0y", "not a valid repository name"),
        ("a\nb", "white space"),
        ("../../etc", "not a registry host"),
    ):
        spec = pb.ImageSpec(image=name)
        _expect(images.PullImage, pb.PullImageRequest(image=spec), INVALID, problem)
        _expect(images.ImageStatus, pb.ImageStatusRequest(image=spec), INVALID, problem)
        _expect(images.RemoveImage, pb.RemoveImageRequest(image=spec), INVALID, problem)
        listing = pb.ListImagesRequest(filter=pb.ImageFilter(image=spec))
        _expect(images.ListImages, listing, INVALID, problem)
    empty = pb.ImageSpec()
    _expect(images.ImageStatus, pb.ImageStatusRequest(image=empty), INVALID, "image")
    _expect(images.RemoveImage, pb.RemoveImageRequest(image=empty), INVALID, "image")
    _expect(images.PullImage, pb.PullImageRequest(image=empty), INVALID, "image")
    # Nothing was pulled, half-pulled or lost; the node's pod is still there.
    listed = images.ListImages(pb.ListImagesRequest()).images
    assert sorted(tag for image in listed for tag in image.repo_tags) == sorted(
        [busybox, node.world.stopper]
    )
    pods = rt.ListPodSandbox(pb.ListPodSandboxRequest()).items
    assert [p.id for p in pods] == [node.pod]
