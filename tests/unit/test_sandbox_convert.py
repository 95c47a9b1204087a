"""RunPodSandbox requests as plain data: bandwidth annotations, namespaces, ports."""

from __future__ import annotations

import pytest

from api.runtime.v1 import api_pb2 as pb
from cri.errors import InvalidArgument
from cri.server.sandbox import UNLIMITED_BURST, bandwidth_from, bits_per_second, spec_from


@pytest.mark.parametrize(
    ("value", "rate"),
    [("10M", 10_000_000), ("1Gi", 2**30), ("512k", 512_000), ("1.5M", 1_500_000), ("100", 100)],
)
def test_bandwidth_quantities(value: str, rate: int) -> None:
    assert bits_per_second("a", value) == rate


@pytest.mark.parametrize("value", ["", "10 M", "ten", "10Q", "-1M", "0"])
def test_bad_bandwidth_quantities(value: str) -> None:
    with pytest.raises(InvalidArgument, match="annotation a"):
        bits_per_second("a", value)


def test_bandwidth_annotations() -> None:
    assert bandwidth_from({}) is None
    limits = bandwidth_from({"kubernetes.io/ingress-bandwidth": "1M"})
    assert limits == {"ingressRate": 1_000_000, "ingressBurst": UNLIMITED_BURST}


def test_spec_from_request() -> None:
    request = pb.RunPodSandboxRequest(
        config=pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name="web", namespace="ns", uid="u1", attempt=2),
            port_mappings=[
                pb.PortMapping(protocol=pb.Protocol.UDP, container_port=53, host_port=5353),
                pb.PortMapping(container_port=80),  # no host port: not a mapping for CNI
            ],
            linux=pb.LinuxPodSandboxConfig(
                security_context=pb.LinuxSandboxSecurityContext(
                    namespace_options=pb.NamespaceOption(
                        network=pb.NamespaceMode.NODE, pid=pb.NamespaceMode.POD
                    )
                ),
                sysctls={"kernel.shm_rmid_forced": "1"},
            ),
        ),
        runtime_handler="crun",
    )
    spec = spec_from(request)
    assert spec.reserved_name == "web_ns_u1_2"
    assert spec.host_network and not spec.host_ipc and not spec.host_pid
    assert spec.pid_mode == "pod"
    assert [(p.protocol, p.container_port, p.host_port) for p in spec.port_mappings] == [
        ("udp", 53, 5353)
    ]
    assert spec.runtime_handler == "crun"
    assert spec.sysctls == {"kernel.shm_rmid_forced": "1"}
    assert spec.config_json["metadata"]["name"] == "web"
