"""CNI plugin chains with Debian's real plugins (bridge, host-local, portmap) on real
network namespaces.

Every module run has its own bridge (skb + 8 hex), /24 (10.199.x.0/24), host-local
dataDir and container id prefix, so parallel workers and other suites don't meet. The
bridge is removed at the end of the module, and the module checks that no iptables rule
mentions its container ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import re
import secrets
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from network.cni import CniError, CniPlugins, CniTimeout, PodNetworkRequest, PortMapping
from network.cni_config import CniNetwork, parse_network
from tests.integration.netns import (
    Netns,
    delete_link,
    delete_netns,
    iptables_lines,
    link_exists,
    links_with_master,
    netns,
    netns_addresses,
    run,
    tcp_fetch,
    tcp_server,
    wait_gone,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netns, links, iptables)")

SYSTEM_PLUGINS = "/usr/lib/cni"
IP_FILE = re.compile(r"^[0-9a-f.:]+$")


def _free_subnet() -> ipaddress.IPv4Network:
    """A 10.199.x.0/24 no interface or route on this machine uses yet."""
    used = run("ip", "-4", "route", "show", "table", "all").stdout
    used += run("ip", "-4", "addr").stdout
    for _ in range(200):
        x = secrets.randbelow(256)
        if f"10.199.{x}." not in used:
            return ipaddress.IPv4Network(f"10.199.{x}.0/24")
    raise AssertionError("no free 10.199.x.0/24")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Env:
    tmp: Path
    bridge: str
    subnet: ipaddress.IPv4Network
    data_dir: Path
    cache_dir: Path
    id_prefix: str

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1)

    def container_id(self) -> str:
        return self.id_prefix + secrets.token_hex(12)

    def network(
        self,
        *extra: dict[str, Any],
        version: str = "1.0.0",
        name: str = "skiff-test",
        ip_masq: bool = False,
        portmap: bool = True,
    ) -> CniNetwork:
        """bridge + host-local, then portmap, then `extra`; written and parsed as a file."""
        plugins: list[dict[str, Any]] = [
            {
                "type": "bridge",
                "bridge": self.bridge,
                "isGateway": True,
                "ipMasq": ip_masq,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": str(self.subnet)}]],
                    "dataDir": str(self.data_dir),
                },
            }
        ]
        if portmap:
            plugins.append({"type": "portmap", "capabilities": {"portMappings": True}})
        plugins.extend(extra)
        path = self.tmp / f"{secrets.token_hex(4)}-{name}.conflist"
        path.write_text(json.dumps({"cniVersion": version, "name": name, "plugins": plugins}))
        return parse_network(path, path.read_bytes())

    def plugins(self, *dirs: str, timeout: float = 60.0) -> CniPlugins:
        return CniPlugins([*dirs, SYSTEM_PLUGINS], self.cache_dir, timeout=timeout)

    def request(self, ns: Netns | None, **changes: Any) -> PodNetworkRequest:
        fields: dict[str, Any] = {
            "container_id": self.container_id(),
            "netns": ns.path if ns is not None else "",
            "pod_namespace": "cni-test",
            "pod_name": "pod-" + secrets.token_hex(3),
            "pod_uid": secrets.token_hex(8),
        }
        fields.update(changes)
        return PodNetworkRequest(**fields)

    def allocated(self, container_id: str | None = None) -> list[str]:
        """host-local's reservations (files named by IP) across all networks, optionally
        only those held by container_id."""
        found = []
        for path in self.data_dir.glob("*/*"):
            if not IP_FILE.match(path.name):
                continue
            if container_id is None or path.read_text().splitlines()[0] == container_id:
                found.append(path.name)
        return sorted(found)

    def veths(self) -> list[str]:
        return links_with_master(self.bridge)

    def cache_files(self) -> list[str]:
        return sorted(p.name for p in self.cache_dir.glob("*")) if self.cache_dir.exists() else []


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("cni")
    the_env = Env(
        tmp=tmp,
        bridge="skb" + secrets.token_hex(4),
        subnet=_free_subnet(),
        data_dir=tmp / "ipam",
        cache_dir=tmp / "cache",
        id_prefix="skcni" + secrets.token_hex(3),
    )
    try:
        yield the_env
    finally:
        # Whatever a failed test left attached: DEL it from the cache (that is what the
        # cache is for), then drop the bridge and check iptables.
        leftovers = CniPlugins([SYSTEM_PLUGINS], the_env.cache_dir)
        for name in the_env.cache_files():
            entry = json.loads((the_env.cache_dir / name).read_text())
            request = PodNetworkRequest(entry["containerId"], "", "", "", "", entry["ifName"])
            with contextlib.suppress(CniError):
                asyncio.run(leftovers.delete(None, request))
        delete_link(the_env.bridge)
        assert not link_exists(the_env.bridge)
        assert iptables_lines(the_env.id_prefix) == []


@pytest.fixture
def pod() -> Iterator[Netns]:
    with netns() as ns:
        yield ns


@pytest.fixture
def pod2() -> Iterator[Netns]:
    with netns() as ns:
        yield ns


def _assert_detached(env: Env, request: PodNetworkRequest) -> None:
    assert env.allocated(request.container_id) == []
    assert env.veths() == []
    assert iptables_lines(request.container_id) == []
    assert not any(request.container_id in name for name in env.cache_files())


@pytest.mark.parametrize("version", ["1.0.0", "0.4.0"])
def test_two_pods_get_distinct_addresses_and_reach_each_other(
    env: Env, pod: Netns, pod2: Netns, version: str
) -> None:
    network = env.network(version=version)
    plugins = env.plugins()
    req_a, req_b = env.request(pod), env.request(pod2)
    a = asyncio.run(plugins.add(network, req_a))
    try:
        b = asyncio.run(plugins.add(network, req_b))
        try:
            assert a.raw["cniVersion"] == version
            assert len(a.ips) == 1 and len(b.ips) == 1
            assert a.ips != b.ips
            for result, ns in ((a, pod), (b, pod2)):
                assert ipaddress.ip_address(result.ips[0]) in env.subnet
                assert netns_addresses(ns) == [result.ips[0]]
                sandbox = [i for i in result.interfaces if i.get("sandbox")]
                assert [(i["name"], i["sandbox"]) for i in sandbox] == [("eth0", ns.path)]
            assert len(env.veths()) == 2
            assert sorted(env.allocated()) == sorted([a.ips[0], b.ips[0]])

            token = secrets.token_hex(4)
            with tcp_server(pod, 8080, token, count=2):
                assert tcp_fetch(a.ips[0], 8080, ns=pod2) == token  # pod to pod
                assert tcp_fetch(a.ips[0], 8080) == token  # host to pod, via the bridge
            ping = pod.run("busybox", "ping", "-c", "1", "-W", "5", b.ips[0])
            assert ping.returncode == 0, ping.stdout + ping.stderr
        finally:
            asyncio.run(plugins.delete(network, req_b))
    finally:
        asyncio.run(plugins.delete(network, req_a))
    _assert_detached(env, req_a)
    _assert_detached(env, req_b)


def test_host_port_reaches_the_pod(env: Env, pod: Netns) -> None:
    network = env.network()
    plugins = env.plugins()
    host_port = _free_port()
    request = env.request(pod, port_mappings=(PortMapping(host_port, 8080),))
    result = asyncio.run(plugins.add(network, request))
    try:
        rules = iptables_lines(request.container_id)
        assert any(f"--dports {host_port}" in rule for rule in rules), rules
        token = secrets.token_hex(4)
        with tcp_server(pod, 8080, token):
            # Not 127.0.0.1: DNAT of loopback traffic needs route_localnet; a host
            # address (the bridge's gateway) goes through portmap's OUTPUT rules.
            assert tcp_fetch(env.gateway, host_port) == token
        assert result.ips
    finally:
        asyncio.run(plugins.delete(network, request))
    _assert_detached(env, request)


def test_del_frees_everything_and_a_second_del_is_fine(env: Env, pod: Netns) -> None:
    network = env.network()
    plugins = env.plugins()
    request = env.request(pod, port_mappings=(PortMapping(_free_port(), 80, "udp"),))
    result = asyncio.run(plugins.add(network, request))
    assert env.allocated(request.container_id) == [result.ips[0]]
    assert len(env.veths()) == 1
    assert iptables_lines(request.container_id) != []
    assert env.cache_files() == [f"skiff-test-{request.container_id}-eth0.json"]

    asyncio.run(plugins.delete(network, request))
    _assert_detached(env, request)
    assert netns_addresses(pod) == []  # eth0 is gone from the pod too
    asyncio.run(plugins.delete(network, request))
    asyncio.run(plugins.delete(None, request))


def test_del_after_the_netns_is_gone(env: Env) -> None:
    network = env.network()
    plugins = env.plugins()
    with netns() as ns:
        request = env.request(ns, port_mappings=(PortMapping(_free_port(), 80),))
        asyncio.run(plugins.add(network, request))
        delete_netns(ns)
        assert not os.path.exists(ns.path)
        asyncio.run(plugins.delete(network, request))
        _assert_detached(env, request)
        asyncio.run(plugins.delete(network, request))


def test_del_from_the_cache_after_restart_and_config_removal(env: Env, pod: Netns) -> None:
    network = env.network()
    request = env.request(pod, port_mappings=(PortMapping(_free_port(), 80),))
    asyncio.run(env.plugins().add(network, request))
    network.source.unlink()  # the config is gone; a new daemon knows only the sandbox id
    restarted = env.plugins()
    cached = restarted.cached(request.container_id)
    assert cached is not None
    assert cached["config"]["plugins"] == [dict(p) for p in network.plugins]
    asyncio.run(restarted.delete(None, PodNetworkRequest(request.container_id, "", "", "", "")))
    _assert_detached(env, request)
    assert restarted.cached(request.container_id) is None


def test_bridge_masquerade_rules_are_removed_by_del(env: Env, pod: Netns) -> None:
    network = env.network(name="skiff-masq", ip_masq=True, portmap=False)
    plugins = env.plugins()
    request = env.request(pod)
    asyncio.run(plugins.add(network, request))
    try:
        assert any(
            "MASQUERADE" in line or "CNI-" in line for line in iptables_lines(request.container_id)
        )
    finally:
        asyncio.run(plugins.delete(network, request))
    _assert_detached(env, request)


def test_check_finds_a_broken_attachment(env: Env, pod: Netns) -> None:
    # No port mappings: portmap v1.1.1's CHECK wants an ip6tables chain it never made
    # for an IPv4-only pod (containernetworking/plugins#819).
    network = env.network()
    plugins = env.plugins()
    request = env.request(pod)
    asyncio.run(plugins.add(network, request))
    try:
        asyncio.run(plugins.check(network, request))
        assert pod.run("ip", "addr", "flush", "dev", "eth0").returncode == 0
        with pytest.raises(CniError, match=r"CNI plugin bridge .* failed on CHECK"):
            asyncio.run(plugins.check(network, request))
    finally:
        asyncio.run(plugins.delete(network, request))
    _assert_detached(env, request)


def _script(directory: Path, name: str, body: str) -> None:
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def test_a_failing_second_plugin_leaves_nothing_behind(env: Env, pod: Netns) -> None:
    fake_dir = env.tmp / ("fake-" + secrets.token_hex(3))
    _script(
        fake_dir,
        "failer",
        'cat >/dev/null\nif [ "$CNI_COMMAND" = ADD ]; then\n'
        '  echo \'{"cniVersion":"1.0.0","code":100,"msg":"boom","details":"fake failure"}\'\n'
        "  exit 1\nfi\nexit 0\n",
    )
    network = env.network({"type": "failer"})
    plugins = env.plugins(str(fake_dir))
    request = env.request(pod, port_mappings=(PortMapping(_free_port(), 80),))
    with pytest.raises(CniError) as caught:
        asyncio.run(plugins.add(network, request))
    assert str(caught.value) == (
        "CNI plugin failer (network skiff-test) failed on ADD: boom: fake failure"
    )
    _assert_detached(env, request)
    assert netns_addresses(pod) == []
    assert env.allocated() == []


def test_a_hanging_plugin_times_out_and_is_killed(env: Env, pod: Netns) -> None:
    fake_dir = env.tmp / ("fake-" + secrets.token_hex(3))
    pids = fake_dir / "pids"
    _script(
        fake_dir,
        "hanger",
        'cat >/dev/null\n[ "$CNI_COMMAND" = ADD ] || exit 0\n'
        f"echo $$ > {pids}\nsleep 300 &\necho $! >> {pids}\nwait\n",
    )
    network = env.network({"type": "hanger"})
    plugins = env.plugins(str(fake_dir), timeout=1)
    request = env.request(pod)
    started = time.monotonic()
    with pytest.raises(CniTimeout, match=r"CNI plugin hanger .* timed out on ADD after 1s"):
        asyncio.run(plugins.add(network, request))
    assert time.monotonic() - started < 15
    plugin_pid, child_pid = (int(line) for line in pids.read_text().split())
    assert wait_gone(plugin_pid), f"plugin pid {plugin_pid} still there"
    assert wait_gone(child_pid), f"its child, pid {child_pid}, still there"
    _assert_detached(env, request)


def test_a_missing_plugin_is_named(env: Env, pod: Netns) -> None:
    network = env.network({"type": "skiff-no-such-plugin"})
    plugins = env.plugins()
    request = env.request(pod)
    with pytest.raises(CniError) as caught:
        asyncio.run(plugins.add(network, request))
    assert str(caught.value) == (
        f"CNI plugin skiff-no-such-plugin (network skiff-test) not found in {SYSTEM_PLUGINS}"
    )
    _assert_detached(env, request)


def test_thirty_add_del_cycles_leak_nothing(env: Env, pod: Netns) -> None:
    network = env.network(name="skiff-leak")
    plugins = env.plugins()
    seen: set[str] = set()
    for _ in range(30):
        request = env.request(pod, port_mappings=(PortMapping(_free_port(), 8080),))
        result = asyncio.run(plugins.add(network, request))
        seen.update(result.ips)
        asyncio.run(plugins.delete(network, request))
    assert len(seen) > 1  # host-local hands out the next address, not the freed one
    assert env.allocated() == []
    assert env.veths() == []
    assert env.cache_files() == []
    assert iptables_lines(env.id_prefix) == []
    assert netns_addresses(pod) == []
