"""CNI plugin chains: config assembly, result parsing, and the ADD/DEL/CHECK protocol as
seen by fake plugins (scripts that record what they were given)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from cri.errors import status_of
from network.cni import (
    CniError,
    CniPlugins,
    CniTimeout,
    PodNetworkRequest,
    PortMapping,
    capability_args,
    chains_prev_result,
    cni_args,
    del_gets_prev_result,
    parse_result,
    plugin_config,
    plugin_error_message,
    supports_check,
    version_tuple,
)
from network.cni_config import CniNetwork

CID = "0123456789abcdef" * 4

RESULT_1_0 = {
    "cniVersion": "1.0.0",
    "interfaces": [
        {"name": "cni0", "mac": "00:11:22:33:44:55"},
        {"name": "veth1", "mac": "55:44:33:22:11:11"},
        {"name": "eth0", "mac": "99:88:77:66:55:44", "sandbox": "/run/netns/x"},
    ],
    "ips": [
        {"address": "10.1.0.1/24", "interface": 0},
        {"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 2},
        {"address": "fd00::5/64", "gateway": "fd00::1", "interface": 2},
    ],
    "routes": [{"dst": "0.0.0.0/0"}],
    "dns": {},
}


def _request(**changes: Any) -> PodNetworkRequest:
    fields: dict[str, Any] = {
        "container_id": CID,
        "netns": "/proc/self/ns/net",
        "pod_namespace": "default",
        "pod_name": "web-0",
        "pod_uid": "4f9c-uid",
    }
    fields.update(changes)
    return PodNetworkRequest(**fields)


# ------------------------------------------------------------------------- pure logic


def test_cni_args() -> None:
    assert cni_args(_request()) == (
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;"
        f"K8S_POD_INFRA_CONTAINER_ID={CID};K8S_POD_UID=4f9c-uid"
    )
    with pytest.raises(CniError, match="K8S_POD_NAME"):
        cni_args(_request(pod_name="a;b"))


def test_capability_args_lists_only_what_the_pod_has() -> None:
    assert capability_args(_request()) == {}
    args = capability_args(
        _request(
            port_mappings=(
                PortMapping(8080, 80),
                PortMapping(0, 81),  # container port only: no host port to map
                PortMapping(5353, 53, "UDP", "192.0.2.2"),
            ),
            bandwidth={"ingressRate": 1000, "ingressBurst": 100},
            ip_ranges=(("10.0.0.0/24", "10.0.1.0/24"), ("fd00::/64",)),
            dns={"servers": ["10.0.0.10"], "searches": ["svc"]},
        )
    )
    assert args == {
        "portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""},
            {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "192.0.2.2"},
        ],
        "bandwidth": {"ingressRate": 1000, "ingressBurst": 100},
        "ipRanges": [
            [{"subnet": "10.0.0.0/24"}, {"subnet": "10.0.1.0/24"}],
            [{"subnet": "fd00::/64"}],
        ],
        "dns": {"servers": ["10.0.0.10"], "searches": ["svc"]},
    }
    with pytest.raises(CniError, match="protocol 'icmp'"):
        capability_args(_request(port_mappings=(PortMapping(1, 2, "icmp"),)))
    with pytest.raises(CniError, match="between 1 and 65535"):
        capability_args(_request(port_mappings=(PortMapping(70000, 2),)))


def test_plugin_config_injects_name_version_prev_result_and_declared_capabilities() -> None:
    caps = capability_args(
        _request(port_mappings=(PortMapping(8080, 80),), bandwidth={"egressRate": 5})
    )
    portmap = {"type": "portmap", "capabilities": {"portMappings": True, "bandwidth": False}}
    config = plugin_config(
        portmap, name="podnet", cni_version="1.0.0", prev_result=RESULT_1_0, capabilities=caps
    )
    assert config["name"] == "podnet"
    assert config["cniVersion"] == "1.0.0"
    assert config["prevResult"] == RESULT_1_0
    assert config["runtimeConfig"] == {"portMappings": caps["portMappings"]}
    assert "runtimeConfig" not in portmap  # the network's own dicts are not touched

    # A plugin declaring nothing gets no runtimeConfig; its own name/version are replaced.
    bridge = {"type": "bridge", "name": "other", "cniVersion": "0.3.1", "bridge": "cni0"}
    config = plugin_config(
        bridge, name="podnet", cni_version="1.0.0", prev_result=None, capabilities=caps
    )
    assert config == {"type": "bridge", "name": "podnet", "cniVersion": "1.0.0", "bridge": "cni0"}

    # Declared, but the pod has no value for it: the plugin's own runtimeConfig stays.
    tuning = {"type": "x", "capabilities": {"dns": True}, "runtimeConfig": {"keep": 1}}
    config = plugin_config(
        tuning, name="n", cni_version="0.4.0", prev_result=None, capabilities=caps
    )
    assert config["runtimeConfig"] == {"keep": 1}
    assert "prevResult" not in config


def test_version_rules() -> None:
    assert version_tuple("1.0.0") == (1, 0, 0)
    assert version_tuple("0.3") == (0, 3, 0)
    assert not chains_prev_result("0.2.0")
    assert chains_prev_result("0.3.0")
    assert not del_gets_prev_result("0.3.1")
    assert del_gets_prev_result("0.4.0")
    assert not supports_check("0.3.1")
    assert supports_check("1.0.0")


def test_parse_result_1_0_skips_host_side_addresses() -> None:
    parsed = parse_result(RESULT_1_0)
    assert parsed.ips == ("10.1.0.5", "fd00::5")
    assert [i["name"] for i in parsed.interfaces] == ["cni0", "veth1", "eth0"]
    assert parsed.raw is RESULT_1_0


def test_parse_result_0_4_and_without_interface_index() -> None:
    result = {
        "cniVersion": "0.4.0",
        "ips": [
            {"version": "6", "address": "fd00::7/64"},
            {"version": "4", "address": "10.2.0.7/16", "gateway": "10.2.0.1"},
        ],
    }
    parsed = parse_result(result)
    assert parsed.ips == ("fd00::7", "10.2.0.7")
    assert parsed.interfaces == ()


def test_parse_result_legacy_0_2() -> None:
    result = {"cniVersion": "0.2.0", "ip4": {"ip": "10.3.0.2/24"}, "ip6": {"ip": "fd03::2/64"}}
    assert parse_result(result).ips == ("10.3.0.2", "fd03::2")


@pytest.mark.parametrize(
    ("result", "problem"),
    [
        ({"ips": [{"address": "10.0.0.2/24", "interface": 3}], "interfaces": []}, "interface 3"),
        ({"ips": [{"address": "banana"}]}, "banana"),
        ({"ips": "10.0.0.2"}, "ips must be a list"),
        ({"interfaces": {}}, "interfaces must be a list"),
    ],
)
def test_parse_result_refuses_malformed_results(result: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_result(result)


def test_plugin_error_message() -> None:
    out = json.dumps({"cniVersion": "1.0.0", "code": 100, "msg": "boom", "details": "why"})
    assert plugin_error_message(out.encode(), b"", 1) == ("boom: why", 100)
    assert plugin_error_message(b"", b"panic: nil map\n", 2) == (
        "exit status 2: panic: nil map",
        None,
    )
    assert plugin_error_message(b"", b"", -9) == ("killed by signal 9 (no output)", None)
    long = b"x" * 5000 + b"END"
    message, _ = plugin_error_message(b"not json", long, 1)
    assert message.endswith("END")
    assert len(message) < 1000


# ------------------------------------------------------------------ with fake plugins

FAKE = """#!{python}
import json, os, sys, time
NAME = {name!r}
BEHAVIOUR = {behaviour!r}
conf = json.load(sys.stdin)
command = os.environ["CNI_COMMAND"]
with open({calls!r}, "a") as f:
    f.write(json.dumps({{
        "plugin": NAME,
        "command": command,
        "pid": os.getpid(),
        "env": {{k: v for k, v in os.environ.items() if k.startswith("CNI_")}},
        "conf": conf,
    }}) + "\\n")
what = BEHAVIOUR.get(command, "ok")
if what == "fail":
    print(json.dumps({{"cniVersion": conf["cniVersion"], "code": 100, "msg": "boom",
                      "details": "from " + NAME}}))
    sys.exit(1)
if what == "crash":
    sys.stderr.write("panic: " + NAME + " fell over\\n")
    sys.exit(2)
if what == "hang":
    time.sleep(60)
if what == "garbage" and command == "ADD":
    print("this is not json")
    sys.exit(0)
if command == "ADD":
    result = BEHAVIOUR.get("result") or conf.get("prevResult") or {{
        "cniVersion": conf["cniVersion"],
        "interfaces": [{{"name": "eth0", "sandbox": os.environ["CNI_NETNS"]}}],
        "ips": [{{"address": "10.9.0.2/24", "interface": 0}}],
    }}
    print(json.dumps(result))
"""


class Fakes:
    def __init__(self, tmp_path: Path) -> None:
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        self.calls_file = tmp_path / "calls.jsonl"
        self.cache = tmp_path / "cache"

    def plugin(self, name: str, **behaviour: Any) -> str:
        path = self.bin / name
        path.write_text(
            FAKE.format(
                python=sys.executable, name=name, behaviour=behaviour, calls=str(self.calls_file)
            )
        )
        path.chmod(0o755)
        return name

    def calls(self) -> list[dict[str, Any]]:
        if not self.calls_file.exists():
            return []
        return [json.loads(line) for line in self.calls_file.read_text().splitlines()]

    def steps(self) -> list[tuple[str, str]]:
        return [(c["command"], c["plugin"]) for c in self.calls()]

    def plugins(self, timeout: float = 30.0) -> CniPlugins:
        return CniPlugins([str(self.bin), "/nonexistent/cni"], self.cache, timeout=timeout)


@pytest.fixture
def fakes(tmp_path: Path) -> Fakes:
    return Fakes(tmp_path)


def _network(*plugins: dict[str, Any], version: str = "1.0.0", name: str = "fakenet") -> CniNetwork:
    return CniNetwork(name, version, tuple(plugins), Path("/etc/cni/net.d/10-fake.conflist"))


def test_add_chains_results_and_sets_the_environment(fakes: Fakes) -> None:
    fakes.plugin("first")
    fakes.plugin("second")
    network = _network(
        {"type": "first", "foo": 1},
        {"type": "second", "capabilities": {"portMappings": True}},
    )
    request = _request(port_mappings=(PortMapping(8080, 80),), ifname="net1")
    plugins = fakes.plugins()
    result = asyncio.run(plugins.add(network, request))
    assert result.ips == ("10.9.0.2",)

    first, second = fakes.calls()
    assert first["env"] == {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": CID,
        "CNI_NETNS": "/proc/self/ns/net",
        "CNI_IFNAME": "net1",
        "CNI_PATH": f"{fakes.bin}:/nonexistent/cni",
        "CNI_ARGS": cni_args(request),
    }
    assert first["conf"] == {"type": "first", "foo": 1, "cniVersion": "1.0.0", "name": "fakenet"}
    assert second["conf"]["prevResult"] == dict(result.raw)
    assert second["conf"]["runtimeConfig"] == {
        "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""}]
    }

    cached = plugins.cached(CID, "net1")
    assert cached is not None
    assert cached["result"] == dict(result.raw)
    assert cached["config"]["plugins"] == [dict(p) for p in network.plugins]
    assert (fakes.cache / f"fakenet-{CID}-net1.json").exists()
    assert plugins.cached(CID) is None  # eth0 was not attached
    assert not [p for p in fakes.cache.iterdir() if p.name.startswith(".")]  # no temp files


def test_the_last_plugins_result_is_the_final_result(fakes: Fakes) -> None:
    final = {"cniVersion": "1.0.0", "ips": [{"address": "10.9.9.9/24"}]}
    fakes.plugin("first")
    fakes.plugin("rewriter", result=final)
    result = asyncio.run(
        fakes.plugins().add(_network({"type": "first"}, {"type": "rewriter"}), _request())
    )
    assert result.ips == ("10.9.9.9",)
    assert result.raw == final


def test_old_versions_get_no_prev_result(fakes: Fakes) -> None:
    fakes.plugin("first")
    network = _network({"type": "first"}, version="0.2.0")
    plugins = fakes.plugins()
    asyncio.run(plugins.add(network, _request()))
    asyncio.run(plugins.delete(network, _request()))
    assert [("prevResult" in c["conf"]) for c in fakes.calls()] == [False, False]


@pytest.mark.parametrize(
    ("version", "gets_prev"), [("0.3.1", False), ("0.4.0", True), ("1.0.0", True)]
)
def test_del_runs_in_reverse_with_the_cached_result(
    fakes: Fakes, version: str, gets_prev: bool
) -> None:
    fakes.plugin("a")
    fakes.plugin("b")
    network = _network({"type": "a"}, {"type": "b"}, version=version)
    plugins = fakes.plugins()
    result = asyncio.run(plugins.add(network, _request()))
    asyncio.run(plugins.delete(network, _request()))
    assert fakes.steps() == [("ADD", "a"), ("ADD", "b"), ("DEL", "b"), ("DEL", "a")]
    for call in fakes.calls()[2:]:
        assert call["conf"].get("prevResult") == (dict(result.raw) if gets_prev else None)
    assert plugins.cached(CID) is None
    assert list(fakes.cache.iterdir()) == []


def test_second_plugin_failing_rolls_the_whole_chain_back(fakes: Fakes) -> None:
    fakes.plugin("a")
    fakes.plugin("b", ADD="fail")
    fakes.plugin("c")
    network = _network({"type": "a"}, {"type": "b"}, {"type": "c"})
    plugins = fakes.plugins()
    with pytest.raises(CniError) as caught:
        asyncio.run(plugins.add(network, _request()))
    assert str(caught.value) == "CNI plugin b (network fakenet) failed on ADD: boom: from b"
    assert caught.value.code == 100
    assert status_of(caught.value) == grpc.StatusCode.UNKNOWN
    assert fakes.steps() == [("ADD", "a"), ("ADD", "b"), ("DEL", "c"), ("DEL", "b"), ("DEL", "a")]
    a_result = fakes.calls()[1]["conf"]["prevResult"]
    assert all(c["conf"]["prevResult"] == a_result for c in fakes.calls()[2:])
    assert plugins.cached(CID) is None
    assert list(fakes.cache.iterdir()) == []


def test_a_plugin_without_error_json_is_reported_with_exit_status_and_stderr(fakes: Fakes) -> None:
    fakes.plugin("a", ADD="crash")
    with pytest.raises(CniError) as caught:
        asyncio.run(fakes.plugins().add(_network({"type": "a"}), _request()))
    assert str(caught.value) == (
        "CNI plugin a (network fakenet) failed on ADD: exit status 2: panic: a fell over"
    )


def test_a_result_that_is_not_json_fails_the_add(fakes: Fakes) -> None:
    fakes.plugin("a", ADD="garbage")
    with pytest.raises(CniError, match="its result is not JSON"):
        asyncio.run(fakes.plugins().add(_network({"type": "a"}), _request()))
    assert fakes.steps() == [("ADD", "a"), ("DEL", "a")]


def test_failed_rollback_keeps_the_cache_for_a_later_del(fakes: Fakes) -> None:
    fakes.plugin("a", DEL="crash")
    fakes.plugin("b", ADD="fail")
    network = _network({"type": "a"}, {"type": "b"})
    plugins = fakes.plugins()
    with pytest.raises(CniError) as caught:
        asyncio.run(plugins.add(network, _request()))
    assert "boom" in str(caught.value)
    assert "cleaning up also failed: CNI plugin a (network fakenet) failed on DEL" in str(
        caught.value
    )
    cached = plugins.cached(CID)
    assert cached is not None
    assert cached["result"] is not None  # a's result, for the DEL that finishes the job
    fakes.plugin("a")  # fixed
    asyncio.run(fakes.plugins().delete(None, _request(netns="")))
    assert plugins.cached(CID) is None


def test_del_tries_every_plugin_and_reports_all_failures(fakes: Fakes) -> None:
    fakes.plugin("a", DEL="fail")
    fakes.plugin("b")
    fakes.plugin("c", DEL="crash")
    network = _network({"type": "a"}, {"type": "b"}, {"type": "c"})
    plugins = fakes.plugins()
    asyncio.run(plugins.add(network, _request()))
    with pytest.raises(CniError) as caught:
        asyncio.run(plugins.delete(network, _request()))
    assert fakes.steps()[3:] == [("DEL", "c"), ("DEL", "b"), ("DEL", "a")]
    message = str(caught.value)
    assert "CNI plugin c (network fakenet) failed on DEL: exit status 2" in message
    assert "CNI plugin a (network fakenet) failed on DEL: boom: from a" in message
    assert plugins.cached(CID) is not None  # kept until a DEL succeeds
    fakes.plugin("a")
    fakes.plugin("c")
    asyncio.run(plugins.delete(network, _request()))
    assert plugins.cached(CID) is None
    asyncio.run(plugins.delete(network, _request()))  # and again: fine


def test_del_uses_the_cached_config_not_the_current_one(fakes: Fakes) -> None:
    fakes.plugin("a")
    fakes.plugin("b")
    fakes.plugin("new")
    request = _request(port_mappings=(PortMapping(8080, 80),))
    plugins = fakes.plugins()
    added = _network({"type": "a"}, {"type": "b", "capabilities": {"portMappings": True}})
    asyncio.run(plugins.add(added, request))
    changed = _network({"type": "new"})
    # After a restart the caller may know neither the ports nor the netns.
    bare = PodNetworkRequest(CID, "", "", "", "")
    asyncio.run(fakes.plugins().delete(changed, bare))
    assert fakes.steps()[2:] == [("DEL", "b"), ("DEL", "a")]
    b_del = fakes.calls()[2]
    assert b_del["conf"]["runtimeConfig"]["portMappings"][0]["hostPort"] == 8080
    assert b_del["env"]["CNI_ARGS"] == cni_args(request)
    assert b_del["env"]["CNI_NETNS"] == "/proc/self/ns/net"  # the cached one, still live


def test_del_without_cache_uses_the_given_network_and_none_is_a_no_op(fakes: Fakes) -> None:
    fakes.plugin("a")
    plugins = fakes.plugins()
    asyncio.run(plugins.delete(None, _request()))
    assert fakes.calls() == []
    asyncio.run(plugins.delete(_network({"type": "a"}), _request()))
    assert fakes.steps() == [("DEL", "a")]
    assert "prevResult" not in fakes.calls()[0]["conf"]


def test_del_passes_an_empty_netns_once_the_namespace_is_gone(fakes: Fakes, tmp_path: Path) -> None:
    fakes.plugin("a")
    network = _network({"type": "a"})
    leftover = tmp_path / "leftover-mountpoint"
    leftover.touch()
    plugins = fakes.plugins()
    for netns in ("/proc/self/ns/net", str(tmp_path / "gone"), str(leftover), ""):
        asyncio.run(plugins.delete(network, _request(netns=netns)))
    assert [c["env"]["CNI_NETNS"] for c in fakes.calls()] == ["/proc/self/ns/net", "", "", ""]


def test_missing_plugin_is_named_and_nothing_runs(fakes: Fakes) -> None:
    fakes.plugin("a")
    network = _network({"type": "a"}, {"type": "nosuchplugin"})
    plugins = fakes.plugins()
    with pytest.raises(CniError) as caught:
        asyncio.run(plugins.add(network, _request()))
    assert str(caught.value) == (
        f"CNI plugin nosuchplugin (network fakenet) not found in {fakes.bin}:/nonexistent/cni"
    )
    assert fakes.calls() == []
    assert plugins.cached(CID) is None


def _wait_for_call(fakes: Fakes, command: str, plugin: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for call in fakes.calls():
            if (call["command"], call["plugin"]) == (command, plugin):
                return call
        time.sleep(0.02)
    raise AssertionError(f"{plugin} never got {command}")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def test_hanging_plugin_times_out_is_killed_and_rolled_back(fakes: Fakes) -> None:
    fakes.plugin("a")
    fakes.plugin("slow", ADD="hang")
    network = _network({"type": "a"}, {"type": "slow"})
    plugins = fakes.plugins(timeout=0.5)
    started = time.monotonic()
    with pytest.raises(CniTimeout) as caught:
        asyncio.run(plugins.add(network, _request()))
    assert time.monotonic() - started < 10
    assert status_of(caught.value) == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "CNI plugin slow (network fakenet) timed out on ADD after 0.5s" in str(caught.value)
    pid = _wait_for_call(fakes, "ADD", "slow")["pid"]
    assert not _alive(pid)
    assert fakes.steps() == [("ADD", "a"), ("ADD", "slow"), ("DEL", "slow"), ("DEL", "a")]
    assert plugins.cached(CID) is None


def test_cancelled_add_kills_the_plugin_and_rolls_back(fakes: Fakes) -> None:
    fakes.plugin("a")
    fakes.plugin("slow", ADD="hang")
    network = _network({"type": "a"}, {"type": "slow"})
    plugins = fakes.plugins()

    async def main() -> None:
        task = asyncio.create_task(plugins.add(network, _request()))
        await asyncio.to_thread(_wait_for_call, fakes, "ADD", "slow")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert not _alive(_wait_for_call(fakes, "ADD", "slow")["pid"])
    assert fakes.steps()[2:] == [("DEL", "slow"), ("DEL", "a")]
    assert plugins.cached(CID) is None


def test_check_passes_the_cached_result(fakes: Fakes) -> None:
    fakes.plugin("a")
    fakes.plugin("b")
    network = _network({"type": "a"}, {"type": "b"}, version="0.4.0")
    plugins = fakes.plugins()
    with pytest.raises(CniError, match="no cached ADD result"):
        asyncio.run(plugins.check(network, _request()))
    result = asyncio.run(plugins.add(network, _request()))
    asyncio.run(plugins.check(network, _request()))
    checks = [c for c in fakes.calls() if c["command"] == "CHECK"]
    assert [c["plugin"] for c in checks] == ["a", "b"]
    assert all(c["conf"]["prevResult"] == dict(result.raw) for c in checks)

    fakes.plugin("b", CHECK="fail")
    with pytest.raises(CniError, match="failed on CHECK: boom"):
        asyncio.run(plugins.check(network, _request()))


def test_check_needs_0_4(fakes: Fakes) -> None:
    fakes.plugin("a")
    with pytest.raises(CniError, match=r"CHECK needs 0\.4\.0"):
        asyncio.run(fakes.plugins().check(_network({"type": "a"}, version="0.3.1"), _request()))


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"container_id": ""}, "sandbox id"),
        ({"container_id": "../x"}, "sandbox id"),
        ({"ifname": "a/b"}, "interface name"),
        ({"ifname": "x" * 16}, "interface name"),
        ({"netns": ""}, "no network namespace"),
    ],
)
def test_bad_requests_are_refused_before_any_plugin_runs(
    fakes: Fakes, changes: dict[str, Any], problem: str
) -> None:
    fakes.plugin("a")
    with pytest.raises(CniError, match=problem):
        asyncio.run(fakes.plugins().add(_network({"type": "a"}), _request(**changes)))
    assert fakes.calls() == []


def test_plugin_runs_are_logged_with_ids(fakes: Fakes, caplog: pytest.LogCaptureFixture) -> None:
    fakes.plugin("a")
    with caplog.at_level(logging.INFO, logger="skiff.cni"):
        asyncio.run(fakes.plugins().add(_network({"type": "a"}), _request()))
    ran = [r for r in caplog.records if r.getMessage() == "CNI plugin ran"]
    assert len(ran) == 1
    record: Any = ran[0]
    assert (record.sandbox_id, record.network, record.plugin) == (CID, "fakenet", "a")
    assert isinstance(record.duration_ms, int)


def test_a_corrupt_cache_entry_is_ignored(fakes: Fakes) -> None:
    fakes.plugin("a")
    fakes.cache.mkdir()
    (fakes.cache / f"fakenet-{CID}-eth0.json").write_text("{not json")
    plugins = fakes.plugins()
    assert plugins.cached(CID) is None
    asyncio.run(plugins.delete(None, _request()))
    assert fakes.calls() == []


def test_environment_cni_variables_do_not_leak_in(
    fakes: Fakes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CNI_EXTRA", "leak")
    fakes.plugin("a")
    asyncio.run(fakes.plugins().add(_network({"type": "a"}), _request()))
    assert "CNI_EXTRA" not in fakes.calls()[0]["env"]
    assert os.environ["CNI_EXTRA"] == "leak"


def test_an_unwritable_cache_fails_the_add_before_any_plugin_runs(fakes: Fakes) -> None:
    fakes.plugin("a")
    fakes.cache.write_text("a file where the cache directory should be")
    with pytest.raises(CniError, match="cannot write the result cache"):
        asyncio.run(fakes.plugins().add(_network({"type": "a"}), _request()))
    assert fakes.calls() == []


def test_every_plugin_run_is_observed_with_its_outcome(fakes: Fakes) -> None:
    observed: list[tuple[str, str, float, bool]] = []
    fakes.plugin("a")
    fakes.plugin("b", ADD="fail")
    plugins = CniPlugins(
        [str(fakes.bin)],
        fakes.cache,
        observer=lambda *call: observed.append(call),
    )
    with pytest.raises(CniError):
        asyncio.run(plugins.add(_network({"type": "a"}, {"type": "b"}), _request()))
    # The failed ADD of b, then the rollback DELs.
    assert [(p, c, ok) for p, c, _, ok in observed] == [
        ("a", "ADD", True),
        ("b", "ADD", False),
        ("b", "DEL", True),
        ("a", "DEL", True),
    ]
    assert all(seconds > 0 for _, _, seconds, _ in observed)
