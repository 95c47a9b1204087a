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


def _pod(**config: object) -> pb.RunPodSandboxRequest:
    return pb.RunPodSandboxRequest(
        config=pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name="web", namespace="ns", uid="u1"),
            **config,  # type: ignore[arg-type]
        )
    )


@pytest.mark.parametrize(
    ("mapping", "problem"),
    [
        (pb.PortMapping(host_port=70000, container_port=80), "host_port must be 0"),
        (pb.PortMapping(host_port=-1, container_port=80), "host_port must be 0"),
        (pb.PortMapping(host_port=8080, container_port=0), "container_port must be 1 to 65535"),
        (pb.PortMapping(host_port=8080, container_port=-5), "container_port must be 1 to 65535"),
        (pb.PortMapping(host_port=0, container_port=65536), "container_port must be 1 to 65535"),
        (pb.PortMapping(host_port=8080, container_port=80, protocol=7), "protocol: 7 is not"),  # type: ignore[arg-type]
        (pb.PortMapping(host_port=8080, container_port=80, host_ip="eth0"), "not an IP address"),
    ],
)
def test_bad_port_mappings(mapping: pb.PortMapping, problem: str) -> None:
    with pytest.raises(InvalidArgument, match="pod 'web' in namespace 'ns': port mapping") as err:
        spec_from(_pod(port_mappings=[mapping]))
    assert problem in str(err.value)


def test_good_port_mappings() -> None:
    mappings = [
        pb.PortMapping(host_port=65535, container_port=1, protocol=pb.Protocol.SCTP),
        pb.PortMapping(host_port=80, container_port=8080, host_ip="::1"),
    ]
    spec = spec_from(_pod(port_mappings=mappings))
    assert [(p.host_port, p.container_port, p.protocol, p.host_ip) for p in spec.port_mappings] == [
        (65535, 1, "sctp", ""),
        (80, 8080, "tcp", "::1"),
    ]


@pytest.mark.parametrize("kind", ["network", "pid", "ipc"])
def test_unknown_namespace_modes(kind: str) -> None:
    options = pb.NamespaceOption(**{kind: 9})  # type: ignore[arg-type]
    linux = pb.LinuxPodSandboxConfig(
        security_context=pb.LinuxSandboxSecurityContext(namespace_options=options)
    )
    with pytest.raises(InvalidArgument, match=f"namespace_options.{kind}: 9 is not a valid value"):
        spec_from(_pod(linux=linux))


def test_bandwidth_above_the_kubelet_limit() -> None:
    assert bits_per_second("a", "1P") == 10**15
    with pytest.raises(InvalidArgument, match="above 1P"):
        bits_per_second("a", "99999999999999999999E")
