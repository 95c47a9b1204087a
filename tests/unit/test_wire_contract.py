"""Our .proto carries the whole upstream CRI v1 contract, the generated modules match
it, and our servicers answer every RPC in it."""

from __future__ import annotations

import inspect
import tempfile
from pathlib import Path

import pytest
from google.protobuf.descriptor import FieldDescriptor

from api import generate
from api.runtime.v1 import api_pb2 as pb
from cri.server.services import ImageService, RuntimeService

# The RPCs of kubernetes/cri-api runtime/v1 (v0.37 and later), by service.
UPSTREAM_RUNTIME_RPCS = [
    "Version",
    "RunPodSandbox",
    "StopPodSandbox",
    "RemovePodSandbox",
    "PodSandboxStatus",
    "ListPodSandbox",
    "StreamPodSandboxes",
    "CreateContainer",
    "StartContainer",
    "StopContainer",
    "RemoveContainer",
    "ListContainers",
    "StreamContainers",
    "ContainerStatus",
    "UpdateContainerResources",
    "ReopenContainerLog",
    "ExecSync",
    "Exec",
    "Attach",
    "PortForward",
    "ContainerStats",
    "ListContainerStats",
    "StreamContainerStats",
    "PodSandboxStats",
    "ListPodSandboxStats",
    "StreamPodSandboxStats",
    "UpdateRuntimeConfig",
    "Status",
    "CheckpointContainer",
    "CheckpointPod",
    "RestorePod",
    "GetContainerEvents",
    "ListMetricDescriptors",
    "ListPodSandboxMetrics",
    "StreamPodSandboxMetrics",
    "RuntimeConfig",
    "UpdatePodSandboxResources",
]
UPSTREAM_IMAGE_RPCS = [
    "ListImages",
    "StreamImages",
    "ImageStatus",
    "PullImage",
    "RemoveImage",
    "ImageFsInfo",
]
SERVER_STREAMING = {
    "StreamPodSandboxes",
    "StreamContainers",
    "StreamContainerStats",
    "StreamPodSandboxStats",
    "GetContainerEvents",
    "StreamPodSandboxMetrics",
    "StreamImages",
}

SERVICES = [
    ("RuntimeService", UPSTREAM_RUNTIME_RPCS, RuntimeService),
    ("ImageService", UPSTREAM_IMAGE_RPCS, ImageService),
]


def test_upstream_counts() -> None:
    assert len(UPSTREAM_RUNTIME_RPCS) == 37
    assert len(UPSTREAM_IMAGE_RPCS) == 6


@pytest.mark.parametrize(("service", "rpcs", "servicer"), SERVICES)
def test_proto_has_exactly_the_upstream_rpcs(service: str, rpcs: list[str], servicer: type) -> None:
    descriptor = pb.DESCRIPTOR.services_by_name[service]
    assert descriptor.full_name == f"runtime.v1.{service}"
    assert sorted(m.name for m in descriptor.methods) == sorted(rpcs)
    for method in descriptor.methods:
        assert method.server_streaming == (method.name in SERVER_STREAMING), method.name
        assert not method.client_streaming, method.name


@pytest.mark.parametrize(("service", "rpcs", "servicer"), SERVICES)
def test_our_servicers_answer_every_rpc(service: str, rpcs: list[str], servicer: type) -> None:
    for name in rpcs:
        owner = next(cls for cls in servicer.__mro__ if name in vars(cls))
        # Defined by us, not inherited from the generated base class.
        assert owner.__module__.startswith("cri.server."), f"{service}.{name} not implemented"
        method = getattr(servicer, name)
        if name in SERVER_STREAMING:
            assert not inspect.iscoroutinefunction(method), name
        else:
            assert inspect.iscoroutinefunction(method), name


def test_generated_modules_are_not_stale() -> None:
    committed_dir = generate.REPO / generate.PROTO.parent
    with tempfile.TemporaryDirectory() as tmp:
        for fresh in generate.generate(Path(tmp)):
            committed = committed_dir / fresh.name
            assert committed.read_bytes() == fresh.read_bytes(), (
                f"{committed} is stale: run `make proto` and commit the result"
            )


def _field(message: str, name: str) -> FieldDescriptor:
    return pb.DESCRIPTOR.message_types_by_name[message].fields_by_name[name]


@pytest.mark.parametrize(
    ("message", "field", "number", "kind"),
    [
        # A few fields newer clients rely on; a wrong number breaks them silently.
        ("KeyValue", "value", 2, FieldDescriptor.TYPE_BYTES),
        ("ImageFsInfoResponse", "container_filesystems", 2, FieldDescriptor.TYPE_MESSAGE),
        ("UserNamespace", "uids", 2, FieldDescriptor.TYPE_MESSAGE),
        ("StatusResponse", "runtime_handlers", 3, FieldDescriptor.TYPE_MESSAGE),
        ("StatusResponse", "features", 4, FieldDescriptor.TYPE_MESSAGE),
        ("RuntimeFeatures", "mount_options", 3, FieldDescriptor.TYPE_BOOL),
        ("RuntimeConfigResponse", "linux", 1, FieldDescriptor.TYPE_MESSAGE),
        ("LinuxRuntimeConfiguration", "cgroup_driver", 1, FieldDescriptor.TYPE_ENUM),
        ("AuthConfig", "registry_token", 6, FieldDescriptor.TYPE_STRING),
        ("ImageSpec", "user_specified_image", 18, FieldDescriptor.TYPE_STRING),
    ],
)
def test_field_numbers(message: str, field: str, number: int, kind: int) -> None:
    descriptor = _field(message, field)
    assert descriptor.number == number
    assert descriptor.type == kind


def test_cgroup_driver_zero_value_is_systemd() -> None:
    assert pb.CgroupDriver.SYSTEMD == 0
    assert pb.CgroupDriver.CGROUPFS == 1
