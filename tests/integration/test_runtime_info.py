"""Version, Status, RuntimeConfig and UpdateRuntimeConfig over the real socket."""

from __future__ import annotations

import json
import os
import stat
from importlib import metadata
from pathlib import Path

import grpc
import pytest

from api.runtime.v1 import api_pb2 as pb
from cri import VERSION
from tests.integration.skiffd import Skiffd, skiffd_process

BRIDGE_CONFLIST = {
    "cniVersion": "1.0.0",
    "name": "testnet",
    "plugins": [
        {"type": "bridge", "bridge": "unused0", "ipam": {"type": "host-local"}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ],
}


def _conditions(daemon: Skiffd) -> dict[str, pb.RuntimeCondition]:
    response = daemon.runtime().Status(pb.StatusRequest())
    return {c.type: c for c in response.status.conditions}


def test_version_names_skiff(skiffd: Skiffd) -> None:
    response = skiffd.runtime().Version(pb.VersionRequest(version="0.1.0"))
    assert response.runtime_name == "skiff"
    assert response.runtime_version == VERSION == metadata.version("skiff-cri")
    assert response.runtime_api_version == "v1"
    assert response.version == "0.1.0"


def test_socket_mode_is_0660(skiffd: Skiffd) -> None:
    st = os.stat(skiffd.socket)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660


def test_status_runtime_ready_with_runc_and_conmon(skiffd: Skiffd) -> None:
    ready = _conditions(skiffd)["RuntimeReady"]
    assert ready.status is True, ready.message
    assert ready.reason == ""


def test_status_network_not_ready_without_cni_config(skiffd: Skiffd) -> None:
    network = _conditions(skiffd)["NetworkReady"]
    assert network.status is False
    assert network.reason == "NetworkPluginNotReady"
    assert str(skiffd.cni_dir) in network.message


def test_status_network_follows_the_cni_directory(skiffd: Skiffd) -> None:
    conflist = skiffd.cni_dir / "10-test.conflist"
    conflist.write_text(json.dumps(BRIDGE_CONFLIST))
    network = _conditions(skiffd)["NetworkReady"]
    assert network.status is True, network.message

    conflist.write_text("{not json")
    network = _conditions(skiffd)["NetworkReady"]
    assert network.status is False
    assert "10-test.conflist" in network.message
    assert "not valid JSON" in network.message

    conflist.unlink()
    assert _conditions(skiffd)["NetworkReady"].status is False


def test_status_network_names_a_missing_plugin(skiffd: Skiffd) -> None:
    broken = dict(BRIDGE_CONFLIST, plugins=[{"type": "no-such-plugin-xyz"}])
    (skiffd.cni_dir / "10-test.conflist").write_text(json.dumps(broken))
    network = _conditions(skiffd)["NetworkReady"]
    assert network.status is False
    assert "no-such-plugin-xyz" in network.message


def test_status_lists_every_handler_and_the_default_as_empty_name(skiffd: Skiffd) -> None:
    response = skiffd.runtime().Status(pb.StatusRequest())
    names = [h.name for h in response.runtime_handlers]
    assert names[0] == ""
    assert sorted(names) == ["", "crun", "runc"]
    # Debian 12's runc lists "rro" in `runc features` (and this kernel has
    # mount_setattr); its crun 1.8.1 has no `features` command, so nothing is claimed.
    recursive = {h.name: h.features.recursive_read_only_mounts for h in response.runtime_handlers}
    assert recursive == {"": True, "runc": True, "crun": False}
    for handler in response.runtime_handlers:
        # Not supported by skiff's runner yet, and so not claimed.
        assert handler.features.user_namespaces is False
    assert response.features.supplemental_groups_policy is True
    assert response.features.mount_options is False


def test_status_verbose_carries_the_config_as_json(skiffd: Skiffd) -> None:
    plain = skiffd.runtime().Status(pb.StatusRequest(verbose=False))
    assert dict(plain.info) == {}
    verbose = skiffd.runtime().Status(pb.StatusRequest(verbose=True))
    config = json.loads(verbose.info["config"])
    assert config["listen"] == str(skiffd.socket)
    assert config["root"] == str(skiffd.root)
    assert config["runtime"]["default_handler"] == "runc"
    programs = json.loads(verbose.info["programs"])
    assert programs["conmon"]["usable"] is True


def test_runtime_not_ready_names_the_missing_runtime() -> None:
    config = {"runtime": {"handlers": {"runc": {"path": "/nonexistent/runc-missing"}}}}
    with skiffd_process("rt-missing", config) as daemon:
        ready = _conditions(daemon)["RuntimeReady"]
        assert ready.status is False
        assert ready.reason == "OCIRuntimeNotReady"
        assert "/nonexistent/runc-missing" in ready.message


def test_runtime_not_ready_when_conmon_fails(tmp_path: Path) -> None:
    broken = tmp_path / "conmon"
    broken.write_text("#!/bin/sh\necho 'conmon: broken install' >&2\nexit 3\n")
    broken.chmod(0o755)
    with skiffd_process("conmon-bad", {"runtime": {"conmon": str(broken)}}) as daemon:
        ready = _conditions(daemon)["RuntimeReady"]
        assert ready.status is False
        assert ready.reason == "ConmonNotReady"
        assert "exit status 3" in ready.message
        assert "broken install" in ready.message


def test_runtime_config_states_cgroupfs_explicitly(skiffd: Skiffd) -> None:
    response = skiffd.runtime().RuntimeConfig(pb.RuntimeConfigRequest())
    assert response.HasField("linux")
    assert response.linux.cgroup_driver == pb.CgroupDriver.CGROUPFS
    # The zero value means systemd: the field must be on the wire, not defaulted.
    assert response.SerializeToString() != pb.RuntimeConfigResponse().SerializeToString()


def test_update_runtime_config_keeps_the_pod_cidr_across_restarts(skiffd: Skiffd) -> None:
    request = pb.UpdateRuntimeConfigRequest(
        runtime_config=pb.RuntimeConfig(
            network_config=pb.NetworkConfig(pod_cidr="10.244.1.0/24,fd00:10:244:1::/64")
        )
    )
    skiffd.runtime().UpdateRuntimeConfig(request)
    info = skiffd.runtime().Status(pb.StatusRequest(verbose=True)).info
    assert info["pod_cidr"] == "10.244.1.0/24,fd00:10:244:1::/64"

    assert skiffd.stop() == 0
    skiffd.start()
    info = skiffd.runtime().Status(pb.StatusRequest(verbose=True)).info
    assert info["pod_cidr"] == "10.244.1.0/24,fd00:10:244:1::/64"


def test_update_runtime_config_refuses_a_bad_cidr(skiffd: Skiffd) -> None:
    request = pb.UpdateRuntimeConfigRequest(
        runtime_config=pb.RuntimeConfig(network_config=pb.NetworkConfig(pod_cidr="10.0.0.0/33"))
    )
    with pytest.raises(grpc.RpcError) as err:
        skiffd.runtime().UpdateRuntimeConfig(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "pod_cidr" in (err.value.details() or "")
    assert "10.0.0.0/33" in (err.value.details() or "")


def test_messages_up_to_16_mib_are_accepted_and_larger_refused(skiffd: Skiffd) -> None:
    def update(size: int) -> grpc.RpcError:
        junk = "x" * size
        request = pb.UpdateRuntimeConfigRequest(
            runtime_config=pb.RuntimeConfig(network_config=pb.NetworkConfig(pod_cidr=junk))
        )
        with pytest.raises(grpc.RpcError) as err:
            skiffd.runtime().UpdateRuntimeConfig(request)
        return err.value

    # 15 MiB reaches the servicer, which refuses the content itself ...
    assert update(15 * 1024 * 1024).code() == grpc.StatusCode.INVALID_ARGUMENT
    # ... 17 MiB is stopped by the message size limit.
    assert update(17 * 1024 * 1024).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
