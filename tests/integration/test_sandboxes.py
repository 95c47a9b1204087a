"""Pod sandboxes with real namespaces and the real CNI plugins: run, status, list,
stop, remove; connectivity, hostPort, DNS files, sysctls; bad input and leaks."""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from api.runtime.v1 import api_pb2 as pb
from tests.integration.skiffd import (
    Skiffd,
    mounts_below,
    release_leftovers,
    short_tempdir,
    unmount_below,
)

CNI_BIN = "/usr/lib/cni"


@dataclass
class PodNetwork:
    """A bridge network of this test run: its own bridge, subnet and IPAM store."""

    bridge: str
    subnet_prefix: str  # "10.x.y."
    data_dir: Path

    @property
    def gateway(self) -> str:
        return self.subnet_prefix + "1"

    def conflist(self, first_plugin: str = "bridge") -> dict[str, Any]:
        return {
            "cniVersion": "1.0.0",
            "name": f"net-{self.bridge}",
            "plugins": [
                {
                    "type": first_plugin,
                    "bridge": self.bridge,
                    "isGateway": True,
                    "ipMasq": False,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": self.subnet_prefix + "0/24"}]],
                        "dataDir": str(self.data_dir),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }

    def allocated(self) -> list[str]:
        """IPs host-local holds for pods (its files named after addresses)."""
        found: list[str] = []
        for path in self.data_dir.rglob("*"):
            if path.is_file() and path.name.startswith(self.subnet_prefix):
                found.append(path.name)
        return found

    def veths(self) -> list[str]:
        out = subprocess.run(
            ["ip", "-o", "link", "show", "master", self.bridge],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        return [line.split(":")[1].strip() for line in out.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def network() -> Iterator[PodNetwork]:
    tag = secrets.token_hex(3)
    data_dir = short_tempdir("ipam")
    net = PodNetwork(
        bridge=f"skp{tag}",
        subnet_prefix=f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(250)}.",
        data_dir=data_dir,
    )
    try:
        yield net
    finally:
        subprocess.run(["ip", "link", "del", net.bridge], capture_output=True, check=False)
        shutil.rmtree(data_dir, ignore_errors=True)


MakeDaemon = Callable[..., Skiffd]


@pytest.fixture
def make_daemon(network: PodNetwork) -> Iterator[MakeDaemon]:
    made: list[Skiffd] = []

    def make(
        conflist: dict[str, Any] | str | None = None,
        plugin_dirs: list[str] | None = None,
        config: dict[str, Any] | None = None,
    ) -> Skiffd:
        base = short_tempdir("pod")
        settings: dict[str, Any] = {
            "network": {"cni_plugin_dirs": plugin_dirs or [CNI_BIN], "cni_plugin_timeout": 5.0}
        }
        for key, value in (config or {}).items():
            settings[key] = {**settings.get(key, {}), **value} if isinstance(value, dict) else value
        daemon = Skiffd(base, settings)
        content = network.conflist() if conflist is None else conflist
        text = content if isinstance(content, str) else json.dumps(content)
        (daemon.cni_dir / "10-test.conflist").write_text(text)
        made.append(daemon)
        daemon.start()
        return daemon

    yield make
    for daemon in made:
        try:
            if daemon.proc is not None and daemon.proc.poll() is None:
                for pod in daemon.runtime().ListPodSandbox(pb.ListPodSandboxRequest()).items:
                    daemon.runtime().RemovePodSandbox(
                        pb.RemovePodSandboxRequest(pod_sandbox_id=pod.id)
                    )
                assert daemon.stop() == 0, daemon.logs()
        finally:
            daemon.kill()
            release_leftovers(daemon)
            unmount_below(daemon.base)
            shutil.rmtree(daemon.base, ignore_errors=True)


def _config(
    name: str = "web", namespace: str = "default", attempt: int = 0, **extra: Any
) -> pb.PodSandboxConfig:
    config = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(
            name=name, namespace=namespace, uid=f"uid-{name}-{namespace}", attempt=attempt
        ),
        hostname=extra.pop("hostname", name),
        labels=extra.pop("labels", {"app": name}),
        annotations=extra.pop("annotations", {"note": "skiff test"}),
    )
    for key, value in extra.items():
        if isinstance(value, list):
            getattr(config, key).extend(value)
        else:
            getattr(config, key).CopyFrom(value)
    return config


def _run(daemon: Skiffd, config: pb.PodSandboxConfig, timeout: float = 30) -> str:
    response = daemon.runtime().RunPodSandbox(
        pb.RunPodSandboxRequest(config=config), timeout=timeout
    )
    return response.pod_sandbox_id


def _run_error(daemon: Skiffd, config: pb.PodSandboxConfig, **kwargs: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        daemon.runtime().RunPodSandbox(pb.RunPodSandboxRequest(config=config, **kwargs), timeout=30)
    return err.value


def _status(daemon: Skiffd, sandbox_id: str, verbose: bool = False) -> pb.PodSandboxStatusResponse:
    return daemon.runtime().PodSandboxStatus(
        pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=verbose)
    )


def _stop(daemon: Skiffd, sandbox_id: str) -> None:
    daemon.runtime().StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))


def _remove(daemon: Skiffd, sandbox_id: str) -> None:
    daemon.runtime().RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))


def _in_netns(netns: str, code: str, timeout: float = 10) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["nsenter", f"--net={netns}", sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _server_in(netns: str, port: int, reply: str) -> subprocess.Popen[str]:
    code = (
        "import socket\n"
        "s = socket.socket()\n"
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"s.bind(('0.0.0.0', {port}))\n"
        "s.listen(8)\n"
        "print('ready', flush=True)\n"
        "s.settimeout(20)\n"
        "while True:\n"
        "    c, _ = s.accept()\n"
        f"    c.sendall({reply!r}.encode())\n"
        "    c.close()\n"
    )
    proc = _in_netns(netns, code)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _fetch(host: str, port: int) -> str:
    with socket.create_connection((host, port), timeout=5) as conn:
        return conn.recv(100).decode()


def _assert_no_leaks(daemon: Skiffd, network: PodNetwork) -> None:
    assert list(daemon.runtime().ListPodSandbox(pb.ListPodSandboxRequest()).items) == []
    assert mounts_below(daemon.base) == [], "mounts left behind"
    for kind in ("net", "ipc", "uts"):
        pins = daemon.runroot / "ns" / kind
        assert not pins.exists() or list(pins.iterdir()) == [], f"{kind} pins left"
    sandboxes = daemon.runroot / "sandboxes"
    assert not sandboxes.exists() or list(sandboxes.iterdir()) == [], "sandbox dirs left"
    assert network.allocated() == [], "IP allocations left"
    assert network.veths() == [], "veths left on the bridge"


# --- the life of a pod --------------------------------------------------------------------


def test_run_status_list_stop_remove(make_daemon: MakeDaemon, network: PodNetwork) -> None:
    daemon = make_daemon()
    dns = pb.DNSConfig(
        servers=["10.96.0.10"],
        searches=["default.svc.cluster.local", "svc.cluster.local"],
        options=["ndots:5"],
    )
    sandbox_id = _run(daemon, _config("web", dns_config=dns))
    assert len(sandbox_id) == 64

    status = _status(daemon, sandbox_id, verbose=True)
    assert status.status.state == pb.PodSandboxState.SANDBOX_READY
    assert status.status.metadata.name == "web"
    assert status.status.network.ip.startswith(network.subnet_prefix)
    assert dict(status.status.labels) == {"app": "web"}
    assert dict(status.status.annotations) == {"note": "skiff test"}
    assert status.status.linux.namespaces.options.network == pb.NamespaceMode.POD
    assert status.status.created_at > 0
    record = json.loads(status.info["info"])
    netns = record["netns"]
    assert Path(netns).exists()

    files = Path(record["files_dir"])
    resolv = (files / "resolv.conf").read_text()
    assert "nameserver 10.96.0.10" in resolv
    assert "search default.svc.cluster.local svc.cluster.local" in resolv
    assert "options ndots:5" in resolv
    assert (files / "hostname").read_text() == "web\n"
    assert f"{status.status.network.ip}\tweb" in (files / "hosts").read_text()
    hostname = subprocess.run(
        ["nsenter", f"--uts={record['utsns']}", "hostname"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert hostname == "web"
    assert network.allocated() == [status.status.network.ip]

    # Listing with filters, and crictl-style id prefixes.
    other = _run(daemon, _config("db", labels={"app": "db"}))
    runtime = daemon.runtime()
    listed = runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items
    assert sorted(p.id for p in listed) == sorted([sandbox_id, other])
    by_label = runtime.ListPodSandbox(
        pb.ListPodSandboxRequest(filter=pb.PodSandboxFilter(label_selector={"app": "db"}))
    ).items
    assert [p.id for p in by_label] == [other]
    by_id = runtime.ListPodSandbox(
        pb.ListPodSandboxRequest(filter=pb.PodSandboxFilter(id=sandbox_id[:12]))
    ).items
    assert [p.id for p in by_id] == [sandbox_id]
    assert _status(daemon, sandbox_id[:12]).status.id == sandbox_id

    _stop(daemon, sandbox_id)
    stopped = _status(daemon, sandbox_id).status
    assert stopped.state == pb.PodSandboxState.SANDBOX_NOTREADY
    assert stopped.network.ip == ""
    assert len(network.allocated()) == 1  # only the other pod's
    ready_only = runtime.ListPodSandbox(
        pb.ListPodSandboxRequest(
            filter=pb.PodSandboxFilter(
                state=pb.PodSandboxStateValue(state=pb.PodSandboxState.SANDBOX_READY)
            )
        )
    ).items
    assert [p.id for p in ready_only] == [other]
    _stop(daemon, sandbox_id)  # idempotent

    _remove(daemon, sandbox_id)
    _remove(daemon, sandbox_id)  # idempotent
    _stop(daemon, "f" * 64)  # unknown ids are fine too
    _remove(daemon, "f" * 64)
    with pytest.raises(grpc.RpcError) as err:
        _status(daemon, sandbox_id)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert not Path(netns).exists()
    _remove(daemon, other)
    _assert_no_leaks(daemon, network)


def test_pods_reach_each_other_the_host_and_host_ports(
    make_daemon: MakeDaemon, network: PodNetwork
) -> None:
    daemon = make_daemon()
    host_port = _free_port()
    port_mapping = pb.PortMapping(
        protocol=pb.Protocol.TCP, container_port=8080, host_port=host_port
    )
    a = _run(daemon, _config("pod-a", port_mappings=[port_mapping]))
    b = _run(daemon, _config("pod-b"))
    a_status = json.loads(_status(daemon, a, verbose=True).info["info"])
    b_status = json.loads(_status(daemon, b, verbose=True).info["info"])
    a_ip, b_ip = a_status["ips"][0], b_status["ips"][0]
    assert a_ip != b_ip

    server = _server_in(a_status["netns"], 8080, "hello from a")
    try:
        # pod b -> pod a
        client = _in_netns(
            b_status["netns"],
            "import socket\n"
            f"conn = socket.create_connection(({a_ip!r}, 8080), timeout=5)\n"
            "print(conn.recv(100).decode())",
        )
        out, err = client.communicate(timeout=15)
        assert out.strip() == "hello from a", err
        # host -> pod a
        assert _fetch(a_ip, 8080) == "hello from a"
        # hostPort through the node's address on the bridge
        assert _fetch(network.gateway, host_port) == "hello from a"
    finally:
        server.kill()
        server.wait()
    _remove(daemon, a)
    _remove(daemon, b)
    _assert_no_leaks(daemon, network)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_host_network_pod(make_daemon: MakeDaemon, network: PodNetwork) -> None:
    daemon = make_daemon()
    linux = pb.LinuxPodSandboxConfig(
        security_context=pb.LinuxSandboxSecurityContext(
            namespace_options=pb.NamespaceOption(network=pb.NamespaceMode.NODE)
        )
    )
    sandbox_id = _run(daemon, _config("hostnet", linux=linux))
    status = _status(daemon, sandbox_id, verbose=True)
    assert status.status.linux.namespaces.options.network == pb.NamespaceMode.NODE
    assert status.status.network.ip == ""
    record = json.loads(status.info["info"])
    assert record["netns"] is None
    assert network.allocated() == []
    assert (Path(record["files_dir"]) / "hosts").read_text() == Path("/etc/hosts").read_text()
    _remove(daemon, sandbox_id)
    _assert_no_leaks(daemon, network)


def test_update_pod_sandbox_resources_is_recorded(
    make_daemon: MakeDaemon, network: PodNetwork
) -> None:
    daemon = make_daemon()
    sandbox_id = _run(daemon, _config("resize"))
    resources = pb.LinuxContainerResources(cpu_shares=512, memory_limit_in_bytes=128 << 20)
    daemon.runtime().UpdatePodSandboxResources(
        pb.UpdatePodSandboxResourcesRequest(
            pod_sandbox_id=sandbox_id,
            resources=resources,
            overhead=pb.LinuxContainerResources(cpu_shares=2),
        )
    )
    linux = json.loads(_status(daemon, sandbox_id, verbose=True).info["info"])["config"]["linux"]
    assert linux["resources"] == {"cpu_shares": "512", "memory_limit_in_bytes": "134217728"}
    assert linux["overhead"] == {"cpu_shares": "2"}
    # It survives a restart, and a later update without overhead drops it.
    daemon.stop()
    daemon.start()
    daemon.runtime().UpdatePodSandboxResources(
        pb.UpdatePodSandboxResourcesRequest(pod_sandbox_id=sandbox_id, resources=resources)
    )
    linux = json.loads(_status(daemon, sandbox_id, verbose=True).info["info"])["config"]["linux"]
    assert "overhead" not in linux and linux["resources"]["cpu_shares"] == "512"
    with pytest.raises(grpc.RpcError) as err:
        daemon.runtime().UpdatePodSandboxResources(
            pb.UpdatePodSandboxResourcesRequest(pod_sandbox_id="f" * 64, resources=resources)
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "f" * 12 in (err.value.details() or "")
    _remove(daemon, sandbox_id)
    _assert_no_leaks(daemon, network)


def test_sysctls_are_applied_and_unsafe_ones_refused(
    make_daemon: MakeDaemon, network: PodNetwork
) -> None:
    daemon = make_daemon()
    linux = pb.LinuxPodSandboxConfig(
        sysctls={"net.ipv4.ip_unprivileged_port_start": "80", "kernel.shm_rmid_forced": "1"}
    )
    sandbox_id = _run(daemon, _config("sysctl", linux=linux))
    record = json.loads(_status(daemon, sandbox_id, verbose=True).info["info"])
    inside = subprocess.run(
        [
            "nsenter",
            f"--net={record['netns']}",
            "cat",
            "/proc/sys/net/ipv4/ip_unprivileged_port_start",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert inside == "80"
    _remove(daemon, sandbox_id)

    bad = pb.LinuxPodSandboxConfig(sysctls={"kernel.panic": "1"})
    error = _run_error(daemon, _config("unsafe", linux=bad))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "kernel.panic" in (error.details() or "")
    _assert_no_leaks(daemon, network)


# --- bad input -------------------------------------------------------------------------------


def test_bad_requests(make_daemon: MakeDaemon, network: PodNetwork) -> None:
    daemon = make_daemon()
    error = _run_error(daemon, pb.PodSandboxConfig())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "metadata.name" in (error.details() or "")
    error = _run_error(daemon, _config("x"), runtime_handler="kata")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "kata" in (error.details() or "")

    first = _run(daemon, _config("dup"))
    error = _run_error(daemon, _config("dup"))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert first in (error.details() or "")
    _remove(daemon, first)
    _assert_no_leaks(daemon, network)


def test_user_namespace_requests_are_refused_not_ignored(
    make_daemon: MakeDaemon, network: PodNetwork
) -> None:
    daemon = make_daemon()
    mapping = [pb.IDMapping(container_id=0, host_id=100000, length=65536)]

    def userns(mode: int, ids: list[pb.IDMapping] | None = None) -> pb.LinuxPodSandboxConfig:
        options = pb.UserNamespace(mode=mode, uids=ids or [], gids=ids or [])  # type: ignore[arg-type]
        return pb.LinuxPodSandboxConfig(
            security_context=pb.LinuxSandboxSecurityContext(
                namespace_options=pb.NamespaceOption(userns_options=options)
            )
        )

    # A pod asking for a user namespace of its own must not get host root instead.
    error = _run_error(daemon, _config("own-userns", linux=userns(pb.NamespaceMode.POD, mapping)))
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "'own-userns'" in (error.details() or "") and "user namespace" in (error.details() or "")
    for mode in (pb.NamespaceMode.CONTAINER, pb.NamespaceMode.TARGET, 9):
        error = _run_error(daemon, _config("bad-userns", linux=userns(mode)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, mode
        assert "user namespace mode" in (error.details() or "")
    error = _run_error(daemon, _config("mapped-node", linux=userns(pb.NamespaceMode.NODE, mapping)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "NODE mode takes no uid or gid mappings" in (error.details() or "")
    _assert_no_leaks(daemon, network)
    # The node's user namespace, said out loud, is what every pod gets anyway.
    node = _run(daemon, _config("node-userns", linux=userns(pb.NamespaceMode.NODE)))
    _remove(daemon, node)
    _assert_no_leaks(daemon, network)


def test_broken_conflist(make_daemon: MakeDaemon, network: PodNetwork) -> None:
    daemon = make_daemon(conflist="{ not json")
    conditions = {c.type: c for c in daemon.runtime().Status(pb.StatusRequest()).status.conditions}
    assert not conditions["NetworkReady"].status
    assert "10-test.conflist" in conditions["NetworkReady"].message
    error = _run_error(daemon, _config("nonet"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "10-test.conflist" in (error.details() or "")
    _assert_no_leaks(daemon, network)


def _plugin_dir(body: str, name: str) -> Path:
    directory = short_tempdir("plug")
    plugin = directory / name
    plugin.write_text("#!/bin/sh\n" + body + "\n")
    plugin.chmod(0o755)
    for real in ("bridge", "host-local", "portmap", "loopback"):
        (directory / real).symlink_to(f"{CNI_BIN}/{real}")
    return directory


def test_failing_plugin_rolls_everything_back(make_daemon: MakeDaemon, network: PodNetwork) -> None:
    plugins = _plugin_dir(
        "cat >/dev/null\n"
        'echo \'{"cniVersion":"1.0.0","code":7,'
        '"msg":"the test plugin refuses","details":"on purpose"}\'\n'
        "exit 1",
        "refuser",
    )
    try:
        conflist = network.conflist()
        conflist["plugins"].insert(1, {"type": "refuser"})
        daemon = make_daemon(conflist=conflist, plugin_dirs=[str(plugins)])
        error = _run_error(daemon, _config("refused"))
        assert "the test plugin refuses" in (error.details() or "")
        _assert_no_leaks(daemon, network)
    finally:
        shutil.rmtree(plugins, ignore_errors=True)


def test_hanging_plugin_times_out_and_rolls_back(
    make_daemon: MakeDaemon, network: PodNetwork
) -> None:
    plugins = _plugin_dir("exec sleep 60", "hanger")
    try:
        conflist = network.conflist()
        conflist["plugins"].insert(1, {"type": "hanger"})
        daemon = make_daemon(
            conflist=conflist,
            plugin_dirs=[str(plugins)],
            config={"network": {"cni_plugin_timeout": 1.0}},
        )
        error = _run_error(daemon, _config("hung"))
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "hanger" in (error.details() or "")
        _assert_no_leaks(daemon, network)
        leftovers = subprocess.run(
            ["pgrep", "-f", f"{plugins}/hanger"], capture_output=True, text=True, check=False
        )
        assert leftovers.stdout.strip() == "", "the hung plugin is still running"
    finally:
        shutil.rmtree(plugins, ignore_errors=True)


def test_kubelet_retry_after_deadline_gets_the_same_sandbox(
    make_daemon: MakeDaemon, network: PodNetwork
) -> None:
    plugins = _plugin_dir(f"sleep 2; exec {CNI_BIN}/bridge", "slowbridge")
    try:
        daemon = make_daemon(conflist=network.conflist("slowbridge"), plugin_dirs=[str(plugins)])
        config = _config("slow")
        with pytest.raises(grpc.RpcError) as err:
            daemon.runtime().RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=0.5)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # Retried while the first creation is still running: joins it.
        first = _run(daemon, config)
        listed = daemon.runtime().ListPodSandbox(pb.ListPodSandboxRequest()).items
        assert [p.id for p in listed] == [first]

        # Retried after the first one finished unseen: gets its result.
        config2 = _config("slow2")
        with pytest.raises(grpc.RpcError):
            daemon.runtime().RunPodSandbox(pb.RunPodSandboxRequest(config=config2), timeout=0.5)
        time.sleep(3)
        second = _run(daemon, config2)
        listed = daemon.runtime().ListPodSandbox(pb.ListPodSandboxRequest()).items
        assert sorted(p.id for p in listed) == sorted([first, second])
        _remove(daemon, first)
        _remove(daemon, second)
        _assert_no_leaks(daemon, network)
    finally:
        shutil.rmtree(plugins, ignore_errors=True)


# --- restarts and cycles ----------------------------------------------------------------------


def test_pods_survive_a_restart_and_lost_namespaces_are_noticed(
    make_daemon: MakeDaemon, network: PodNetwork
) -> None:
    daemon = make_daemon()
    kept = _run(daemon, _config("kept"))
    lost = _run(daemon, _config("lost"))
    lost_netns = json.loads(_status(daemon, lost, verbose=True).info["info"])["netns"]
    daemon.kill()
    subprocess.run(["umount", lost_netns], check=True)
    daemon.start()
    assert _status(daemon, kept).status.state == pb.PodSandboxState.SANDBOX_READY
    assert _status(daemon, lost).status.state == pb.PodSandboxState.SANDBOX_NOTREADY
    _remove(daemon, kept)
    _remove(daemon, lost)
    _assert_no_leaks(daemon, network)


def _iptables_nat() -> str:
    return subprocess.run(
        ["iptables-save", "-t", "nat"], capture_output=True, text=True, check=True
    ).stdout


def test_what_a_pod_start_cut_short_by_kill_9_made_is_removed_at_start(
    make_daemon: MakeDaemon, network: PodNetwork
) -> None:
    daemon = make_daemon()
    kept = _run(daemon, _config("kept"))
    lost = _run(
        daemon,
        _config("lost", port_mappings=[pb.PortMapping(container_port=80, host_port=_free_port())]),
    )
    cgroup = json.loads(_status(daemon, lost, verbose=True).info["info"])["cgroup_parent"]
    assert len(network.allocated()) == 2
    assert lost in _iptables_nat(), "portmap made no rules naming the pod"
    daemon.kill()
    # What a RunPodSandbox killed before it wrote its record leaves: everything it made
    # (files, /dev/shm, pins, the CNI attachment, its cgroup), no record.
    with contextlib.closing(sqlite3.connect(daemon.root / "state.db")) as db:
        db.execute("DELETE FROM records WHERE kind = 'sandbox' AND id = ?", (lost,))
        db.commit()
    daemon.start()
    assert [p.id for p in daemon.runtime().ListPodSandbox(pb.ListPodSandboxRequest()).items] == [
        kept
    ]
    assert len(network.allocated()) == 1 and len(network.veths()) == 1
    assert not (daemon.runroot / "sandboxes" / lost).exists()
    assert not [m for m in mounts_below(daemon.base) if lost in m]
    assert not Path(f"/sys/fs/cgroup/memory{cgroup}").exists()
    assert lost not in _iptables_nat(), "the pod's port mapping rules are left"
    assert "removed what an interrupted creation left" in daemon.logs()
    _remove(daemon, kept)
    _assert_no_leaks(daemon, network)


def test_fifty_cycles_leave_nothing(make_daemon: MakeDaemon, network: PodNetwork) -> None:
    daemon = make_daemon()
    made = []
    for i in range(50):
        sandbox_id = _run(daemon, _config(f"cycle-{i}"))
        made.append(sandbox_id)
        _stop(daemon, sandbox_id)
        _remove(daemon, sandbox_id)
    _assert_no_leaks(daemon, network)
    left = [
        str(hierarchy / "skiff" / f"pod-{sandbox_id[:12]}")
        for hierarchy in Path("/sys/fs/cgroup").iterdir()
        for sandbox_id in made
        if (hierarchy / "skiff" / f"pod-{sandbox_id[:12]}").exists()
    ]
    assert left == [], "pod cgroups left"


def test_list_answers_while_a_sandbox_is_being_created(
    make_daemon: MakeDaemon, network: PodNetwork
) -> None:
    plugins = _plugin_dir(f"sleep 3; exec {CNI_BIN}/bridge", "slowbridge")
    try:
        daemon = make_daemon(conflist=network.conflist("slowbridge"), plugin_dirs=[str(plugins)])
        result: list[str] = []
        creator = threading.Thread(target=lambda: result.append(_run(daemon, _config("slowpod"))))
        creator.start()
        time.sleep(0.5)
        listed = daemon.runtime().ListPodSandbox(pb.ListPodSandboxRequest(), timeout=1)
        assert list(listed.items) == []
        creator.join(30)
        assert result
        _remove(daemon, result[0])
        _assert_no_leaks(daemon, network)
    finally:
        shutil.rmtree(plugins, ignore_errors=True)


def test_pod_cgroup_is_made_and_removed(make_daemon: MakeDaemon, network: PodNetwork) -> None:
    daemon = make_daemon()
    parent = f"/skiff-test-{secrets.token_hex(4)}"
    pod_cgroup = f"{parent}/pod-{secrets.token_hex(4)}"
    memory_dir = Path("/sys/fs/cgroup/memory" + pod_cgroup)
    try:
        linux = pb.LinuxPodSandboxConfig(
            cgroup_parent=pod_cgroup,
            resources=pb.LinuxContainerResources(memory_limit_in_bytes=128 * 1024 * 1024),
        )
        sandbox_id = _run(daemon, _config("cg", linux=linux))
        assert memory_dir.is_dir()
        limit = int((memory_dir / "memory.limit_in_bytes").read_text())
        assert limit == 128 * 1024 * 1024
        _remove(daemon, sandbox_id)
        assert not memory_dir.exists()
        _assert_no_leaks(daemon, network)
    finally:
        for hierarchy in Path("/sys/fs/cgroup").iterdir():
            for path in (hierarchy / pod_cgroup.lstrip("/"), hierarchy / parent.lstrip("/")):
                if path.is_dir():
                    path.rmdir()


def test_a_pod_without_cgroup_parent_gets_its_own(
    make_daemon: MakeDaemon, network: PodNetwork
) -> None:
    daemon = make_daemon()
    sandbox_id = _run(daemon, _config("own-cg"))
    pod_cgroup = f"/skiff/pod-{sandbox_id[:12]}"
    memory_dir = Path("/sys/fs/cgroup/memory" + pod_cgroup)
    assert memory_dir.is_dir()
    _remove(daemon, sandbox_id)
    assert not memory_dir.exists()
    # The shared root goes with the last pod that used it; pods of other daemons on
    # this machine may still be in it.
    root = Path("/sys/fs/cgroup/memory/skiff")
    assert not root.exists() or any(p.is_dir() for p in root.iterdir())
    _assert_no_leaks(daemon, network)


def test_bandwidth_annotations_shape_the_pod_link(
    make_daemon: MakeDaemon, network: PodNetwork
) -> None:
    conflist = network.conflist()
    conflist["plugins"].append({"type": "bandwidth", "capabilities": {"bandwidth": True}})
    daemon = make_daemon(conflist=conflist)
    log_dir = daemon.base / "logs" / "pod-bw"
    config = _config(
        "bw",
        annotations={"kubernetes.io/ingress-bandwidth": "10M"},
    )
    config.log_directory = str(log_dir)
    sandbox_id = _run(daemon, config)
    assert log_dir.is_dir(), "the pod's log directory was not made"
    (veth,) = network.veths()
    qdiscs = subprocess.run(
        ["tc", "qdisc", "show", "dev", veth.split("@")[0]],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "tbf" in qdiscs and "10Mbit" in qdiscs, qdiscs
    _remove(daemon, sandbox_id)
    _assert_no_leaks(daemon, network)
    leftover_ifb = subprocess.run(
        ["ip", "-o", "link", "show", "type", "ifb"], capture_output=True, text=True, check=False
    ).stdout
    assert sandbox_id[:8] not in leftover_ifb
