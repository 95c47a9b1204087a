"""Every RPC skiff has not built yet answers UNIMPLEMENTED, naming itself."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message_factory import GetMessageClass

from api.runtime.v1 import api_pb2 as pb
from tests.integration.skiffd import Skiffd

BUILT = {
    "Version",
    "Status",
    "RuntimeConfig",
    "UpdateRuntimeConfig",
    "ListImages",
    "StreamImages",
    "ImageStatus",
    "PullImage",
    "RemoveImage",
    "ImageFsInfo",
    "RunPodSandbox",
    "StopPodSandbox",
    "RemovePodSandbox",
    "PodSandboxStatus",
    "ListPodSandbox",
    "StreamPodSandboxes",
    "UpdatePodSandboxResources",
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
    "GetContainerEvents",
    "ContainerStats",
    "ListContainerStats",
    "StreamContainerStats",
    "PodSandboxStats",
    "ListPodSandboxStats",
    "StreamPodSandboxStats",
    "ListMetricDescriptors",
    "ListPodSandboxMetrics",
    "StreamPodSandboxMetrics",
}

METHODS = [
    (service.name, method)
    for service in pb.DESCRIPTOR.services_by_name.values()
    for method in service.methods
    if method.name not in BUILT
]


@pytest.mark.parametrize(("service", "method"), METHODS, ids=[f"{s}.{m.name}" for s, m in METHODS])
def test_unbuilt_rpc_is_unimplemented(
    shared_skiffd: Skiffd, service: str, method: MethodDescriptor
) -> None:
    request_class = GetMessageClass(method.input_type)
    response_class = GetMessageClass(method.output_type)
    path = f"/runtime.v1.{service}/{method.name}"
    channel = shared_skiffd.channel()
    with pytest.raises(grpc.RpcError) as err:
        if method.server_streaming:
            call = channel.unary_stream(
                path,
                request_serializer=request_class.SerializeToString,
                response_deserializer=response_class.FromString,
            )
            list(call(request_class(), timeout=10))
        else:
            channel.unary_unary(
                path,
                request_serializer=request_class.SerializeToString,
                response_deserializer=response_class.FromString,
            )(request_class(), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert method.name in (err.value.details() or "")
