"""A Kubernetes node of the test run's own: etcd, kube-apiserver and a kubelet whose
runtime is a skiffd of its own, on temp directories, free loopback ports, a link of its own
for the node's address, a bridge and a cgroup root named for the run.

Everything it starts is stopped by pid and everything it makes is removed by `stop()`,
also after a failed start. Host settings the kubelet changes (a few kernel sysctls) are
put back as they were.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import os
import secrets
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from api.runtime.v1 import api_pb2 as pb
from tests.e2e.toolchain import tool
from tests.integration.netns import links_with_master
from tests.integration.registry import LOOPBACK, TestCA, free_port
from tests.integration.skiffd import (
    Skiffd,
    mounts_below,
    processes_mentioning,
    release_leftovers,
    rmdir_when_empty,
    unmount_below,
)

CNI_BIN = "/usr/lib/cni"
CGROUP_V1 = Path("/sys/fs/cgroup")
# What the kubelet sets at start (setupKernelTunables) when they differ; put back after.
KUBELET_SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
CLUSTER_DNS = "10.96.0.10"
CLUSTER_DOMAIN = "cluster.local"
SERVICE_RANGE = "10.96.0.0/24"
START_TIMEOUT = 90.0


class NodeError(RuntimeError):
    """The node could not be brought up; the message carries the failing part's log."""


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class Child:
    """One program the node started, its log, and a clean stop by pid."""

    name: str
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise NodeError(f"{self.name} exited with {self.proc.returncode}:\n{_tail(self.log)}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout)
        self.proc = None


def wait_for(what: str, check: Callable[[], bool], timeout: float, *alive: Child) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in alive:
            child.check_alive()
        if check():
            return
        time.sleep(0.2)
    logs = "\n".join(f"--- {c.name}:\n{_tail(c.log)}" for c in alive)
    raise NodeError(f"{what} not within {timeout:.0f}s\n{logs}")


@dataclass
class Names:
    """Everything of the host the node makes, named for its run."""

    tag: str = field(default_factory=lambda: secrets.token_hex(3))

    @property
    def node(self) -> str:
        return f"skiff-e2e-{self.tag}"

    @property
    def node_link(self) -> str:
        return f"ske{self.tag}"

    @property
    def bridge(self) -> str:
        return f"skb{self.tag}"

    @property
    def cgroup_root(self) -> str:
        return f"/skiff-e2e-{self.tag}"


def _random_subnet() -> ipaddress.IPv4Network:
    # 10.128.0.0/9 holds 2^15 /24s; a run takes one for pods and one address for the node.
    index = secrets.randbelow(1 << 15)
    return ipaddress.IPv4Network((0x0A800000 + (index << 8), 24))


class LocalNode:
    """One node: ``start()``, use ``kubeconfig``, then ``stop()`` (idempotent)."""

    def __init__(
        self,
        base: Path,
        *,
        registries: tuple[str, ...] = (),
        image_fs_mb: int = 0,
        kubelet_config: dict[str, Any] | None = None,
    ) -> None:
        self.base = base
        self.registries = registries
        self.image_fs_mb = image_fs_mb
        self.names = Names()
        pods = _random_subnet()
        self.pod_subnet = pods
        self.node_ip = str(_random_subnet()[1])
        self.admin_token = secrets.token_hex(16)
        self.kubelet_token = secrets.token_hex(16)
        self.etcd_port = free_port()
        self.apiserver_port = free_port()
        self.kubelet_port = free_port()
        self.kubelet_config_extra = kubelet_config or {}
        self.ca = TestCA.create("skiff e2e cluster CA")
        (base / "skiff").mkdir(parents=True, exist_ok=True)
        self.skiffd = Skiffd(
            base / "skiff",
            {
                "network": {"cni_plugin_dirs": [CNI_BIN]},
                "runtime": {"cgroup_driver": "cgroupfs"},
            },
        )
        self.etcd = Child("etcd", [], base / "etcd.log")
        self.apiserver = Child("kube-apiserver", [], base / "kube-apiserver.log")
        self.kubelet = Child("kubelet", [], base / "kubelet.log")
        self._sysctls: dict[str, str] = {}
        self.leaks: list[str] = []
        self._made_cgroups: list[Path] = []

    # -- what tests use --------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.names.node

    @property
    def server(self) -> str:
        return f"https://{LOOPBACK}:{self.apiserver_port}"

    @property
    def kubeconfig(self) -> Path:
        return self.base / "admin.kubeconfig"

    @property
    def cgroup_root(self) -> str:
        return self.names.cgroup_root

    # -- bring-up --------------------------------------------------------------------

    def start(self) -> None:
        try:
            self._write_pki()
            self._make_host_parts()
            self._start_etcd()
            self._start_apiserver()
            self._start_skiffd()
            self._start_kubelet()
        except BaseException:
            self.stop()
            raise

    def _write_pki(self) -> None:
        pki = self.base / "pki"
        pki.mkdir(parents=True, exist_ok=True)
        key, cert = self.ca.issue(
            "kube-apiserver",
            dns_names=("localhost", "kubernetes", "kubernetes.default"),
            ip_addresses=(LOOPBACK, self.node_ip),
        )
        (pki / "ca.crt").write_bytes(self.ca.cert_pem())
        (pki / "apiserver.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (pki / "apiserver.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (pki / "sa.key").write_bytes(
            sa.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        (pki / "sa.pub").write_bytes(
            sa.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        (pki / "tokens.csv").write_text(
            f'{self.admin_token},skiff-e2e-admin,admin,"system:masters"\n'
            f'{self.kubelet_token},system:node:{self.name},node,"system:nodes"\n'
        )
        self._write_kubeconfig(self.kubeconfig, "skiff-e2e-admin", self.admin_token)
        self._write_kubeconfig(self.base / "kubelet.kubeconfig", "kubelet", self.kubelet_token)

    def _write_kubeconfig(self, path: Path, user: str, token: str) -> None:
        ca = base64.b64encode(self.ca.cert_pem()).decode()
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": "skiff-e2e",
                            "cluster": {"server": self.server, "certificate-authority-data": ca},
                        }
                    ],
                    "users": [{"name": user, "user": {"token": token}}],
                    "contexts": [
                        {"name": "skiff-e2e", "context": {"cluster": "skiff-e2e", "user": user}}
                    ],
                    "current-context": "skiff-e2e",
                }
            )
        )
        path.chmod(0o600)

    def _make_host_parts(self) -> None:
        for name in KUBELET_SYSCTLS:
            self._sysctls[name] = Path("/proc/sys", name).read_text().strip()
        # A bridge without ports holds the node's address (this kernel has no dummy links).
        subprocess.run(
            ["ip", "link", "add", self.names.node_link, "type", "bridge"], check=True, timeout=10
        )
        subprocess.run(
            ["ip", "addr", "add", f"{self.node_ip}/32", "dev", self.names.node_link],
            check=True,
            timeout=10,
        )
        subprocess.run(["ip", "link", "set", self.names.node_link, "up"], check=True, timeout=10)
        # The kubelet's cgroup root must exist in every hierarchy it uses.
        for hierarchy in _v1_hierarchies():
            path = hierarchy / self.cgroup_root.lstrip("/")
            path.mkdir()
            self._made_cgroups.append(path)

    def _start_etcd(self) -> None:
        url = f"http://{LOOPBACK}:{self.etcd_port}"
        peer = f"http://{LOOPBACK}:{free_port()}"
        self.etcd.argv = [
            str(tool("etcd")),
            "--name=skiff-e2e",
            f"--data-dir={self.base / 'etcd'}",
            f"--listen-client-urls={url}",
            f"--advertise-client-urls={url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=skiff-e2e={peer}",
            "--listen-metrics-urls=",
            # A throwaway store: durability costs seconds per test here and buys nothing.
            "--unsafe-no-fsync",
            "--log-level=warn",
        ]
        self.etcd.start()
        wait_for("etcd answering", lambda: _http_ok(f"{url}/health"), START_TIMEOUT, self.etcd)

    def _start_apiserver(self) -> None:
        pki = self.base / "pki"
        self.apiserver.argv = [
            str(tool("kube-apiserver")),
            f"--etcd-servers=http://{LOOPBACK}:{self.etcd_port}",
            f"--bind-address={LOOPBACK}",
            f"--secure-port={self.apiserver_port}",
            f"--advertise-address={self.node_ip}",
            f"--cert-dir={self.base / 'apiserver-certs'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--token-auth-file={pki / 'tokens.csv'}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            "--disable-admission-plugins=ServiceAccount",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-cluster-ip-range={SERVICE_RANGE}",
            # No node runs the endpoints of the `kubernetes` Service; nothing here uses it.
            "--endpoint-reconciler-type=none",
            "--kubelet-preferred-address-types=InternalIP",
            "--allow-privileged=true",
            "--profiling=false",
            "--v=1",
        ]
        self.apiserver.start()
        wait_for(
            "kube-apiserver ready",
            lambda: _http_ok(f"{self.server}/readyz", self._tls(), self.admin_token),
            START_TIMEOUT,
            self.etcd,
            self.apiserver,
        )

    def _tls(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.base / "pki" / "ca.crt"))
        return context

    def _start_skiffd(self) -> None:
        skiff = self.skiffd
        (skiff.cni_dir / "10-e2e.conflist").write_text(json.dumps(self.conflist()))
        (skiff.base / "registries.conf").write_text(
            "".join(f'[[registry]]\nlocation = "{r}"\ninsecure = true\n' for r in self.registries)
        )
        if self.image_fs_mb:
            # skiff's root (images, writable layers) on a filesystem of its own size, so
            # the kubelet's image GC thresholds are crossed by what a test pulls.
            skiff.root.mkdir(parents=True)
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={self.image_fs_mb}m", "tmpfs", skiff.root],
                check=True,
                timeout=10,
            )
        skiff.start()

    def conflist(self) -> dict[str, Any]:
        return {
            "cniVersion": "1.0.0",
            "name": f"e2e-{self.names.tag}",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.names.bridge,
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": str(self.pod_subnet)}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(self.base / "ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }

    def kubelet_config(self) -> dict[str, Any]:
        socket_url = f"unix://{self.skiffd.socket}"
        config: dict[str, Any] = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "containerRuntimeEndpoint": socket_url,
            "imageServiceEndpoint": socket_url,
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": self.cgroup_root,
            # This host has cgroup v1 (Kubernetes 1.35+ refuses it unless told).
            "failCgroupV1": False,
            "failSwapOn": False,
            "address": self.node_ip,
            "port": self.kubelet_port,
            "readOnlyPort": 0,
            "healthzPort": 0,
            "authentication": {
                "anonymous": {"enabled": True},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(self.base / "pki" / "ca.crt")},
            },
            "authorization": {"mode": "AlwaysAllow"},
            # The node's iptables are the CNI plugins' and the host's, not the kubelet's.
            "makeIPTablesUtilChains": False,
            "clusterDNS": [CLUSTER_DNS],
            "clusterDomain": CLUSTER_DOMAIN,
            "podLogsDir": str(self.base / "pod-logs"),
            "staticPodPath": "",
            "syncFrequency": "10s",
            "nodeStatusUpdateFrequency": "4s",
            # 0 would mean the default, 2 minutes.
            "imageMinimumGCAge": "1s",
            "serializeImagePulls": False,
            # Evict nothing because of this shared machine's disk or memory.
            "evictionHard": {
                "memory.available": "1Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
            },
            # A crashing container is restarted within seconds, not minutes.
            "crashLoopBackOff": {"maxContainerRestartPeriod": "3s"},
            "evictionPressureTransitionPeriod": "5s",
            # Pod and container statistics from skiff's CRI stats, not from cAdvisor.
            "featureGates": {"PodAndContainerStatsFromCRI": True},
        }
        for key, value in self.kubelet_config_extra.items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}
            else:
                config[key] = value
        return config

    def _start_kubelet(self, verbosity: int = 2) -> None:
        config_path = self.base / "kubelet.yaml"
        config_path.write_text(yaml.safe_dump(self.kubelet_config()))
        self.kubelet.argv = [
            str(tool("kubelet")),
            f"--config={config_path}",
            f"--kubeconfig={self.base / 'kubelet.kubeconfig'}",
            f"--root-dir={self.base / 'kubelet'}",
            f"--cert-dir={self.base / 'kubelet-pki'}",
            f"--hostname-override={self.name}",
            f"--node-ip={self.node_ip}",
            f"--v={verbosity}",
        ]
        self.kubelet.start()
        wait_for(
            f"node {self.name} Ready",
            self._node_ready,
            START_TIMEOUT,
            self.apiserver,
            self.kubelet,
        )

    def _node_ready(self) -> bool:
        try:
            node = self.api_get(f"/api/v1/nodes/{self.name}")
        except urllib.error.HTTPError:
            return False
        conditions = node.get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def api_get(self, path: str) -> dict[str, Any]:
        request = urllib.request.Request(
            self.server + path, headers={"Authorization": f"Bearer {self.admin_token}"}
        )
        with urllib.request.urlopen(request, timeout=10, context=self._tls()) as response:
            body: dict[str, Any] = json.load(response)
            return body

    def check_running(self) -> None:
        """Raises, with the log's tail, when a part of the node has died under a test."""
        for child in (self.etcd, self.apiserver, self.kubelet):
            child.check_alive()
        proc = self.skiffd.proc
        if proc is not None and proc.poll() is not None:
            raise NodeError(f"skiffd exited with {proc.returncode}:\n{_tail(self.skiffd.log_path)}")

    # -- restarts the suite drives ---------------------------------------------------

    def restart_kubelet(self, config: dict[str, Any] | None = None, verbosity: int = 2) -> None:
        self.kubelet.stop()
        if config is not None:
            self.kubelet_config_extra = config
        self._start_kubelet(verbosity)

    def kill_skiffd(self) -> None:
        self.skiffd.kill()

    def start_skiffd(self) -> None:
        self.skiffd.start()

    # -- tear-down -------------------------------------------------------------------

    def stop(self) -> None:
        """Stops everything by pid and removes what the node made; safe to repeat.
        What skiff itself should have removed but did not is kept in `leaks`."""
        self.kubelet.stop()
        self._remove_pods()
        self.leaks += self._leftovers()
        self.skiffd.kill()
        release_leftovers(self.skiffd)
        # Nothing of the API server's state outlives the node: no graceful drain needed.
        self.apiserver.stop(signal.SIGKILL)
        self.etcd.stop()
        for pid in processes_mentioning(str(self.base)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        unmount_below(self.base)
        self._remove_cgroups()
        for link in (self.names.bridge, self.names.node_link):
            subprocess.run(["ip", "link", "del", link], capture_output=True, check=False)
        for name, value in self._sysctls.items():
            with contextlib.suppress(OSError):
                Path("/proc/sys", name).write_text(value)
        self._sysctls.clear()

    def _remove_pods(self) -> None:
        """The pods the kubelet left (it removes a deleted pod's sandbox only at its
        next garbage collection) removed through skiff's CRI, then skiffd stopped."""
        if not self.skiffd.proc or self.skiffd.proc.poll() is not None:
            return
        runtime = self.skiffd.runtime()
        try:
            for pod in runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items:
                runtime.RemovePodSandbox(
                    pb.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=60
                )
        except grpc.RpcError as exc:
            self.leaks.append(f"removing the pods left: {exc.code().name} {exc.details()}")
        status = self.skiffd.stop()
        if status != 0:
            self.leaks.append(f"skiffd exited with {status} on SIGTERM")

    def _leftovers(self) -> list[str]:
        """What skiff made for pods and should have taken away when it removed them."""
        # The kubelet makes its root directory a mount of its own; skiff's root is a tmpfs.
        own = (str(self.skiffd.root), str(self.base / "kubelet"))
        found = [f"mount {m}" for m in mounts_below(self.base) if m not in own]
        found += [f"process {pid}" for pid in processes_mentioning(str(self.skiffd.base))]
        found += [
            f"pause process {pid}"
            for pid in processes_mentioning("skiff-pause ")
            if self._is_ours(pid)
        ]
        found += [f"veth {name}" for name in links_with_master(self.names.bridge)]
        ipam = self.base / "ipam"
        for network in ipam.iterdir() if ipam.is_dir() else []:
            found += [f"IP allocation {f.name}" for f in network.iterdir() if f.name[0].isdigit()]
        pins = self.skiffd.runroot / "ns"
        found += [f"namespace pin {p}" for p in pins.rglob("*") if p.is_file()]
        for records in (self.skiffd.root / "containers", self.skiffd.runroot / "containers"):
            found += [f"state {d}" for d in records.iterdir()] if records.is_dir() else []
        for root in self._made_cgroups:
            found += [
                f"cgroup {path}"
                for path in root.rglob("*")
                if path.is_dir() and path.name.startswith("skiff-")
            ]
        return found

    def _is_ours(self, pid: int) -> bool:
        try:
            cgroups = Path(f"/proc/{pid}/cgroup").read_text()
        except OSError:
            return False
        return self.cgroup_root in cgroups

    def check_pods_stopped(self) -> None:
        """Once the API server has no pods left, the kubelet has stopped them all: skiff
        must report no ready sandbox and no running container."""
        runtime = self.skiffd.runtime()
        ready = [
            p.metadata.name
            for p in runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items
            if p.state == pb.PodSandboxState.SANDBOX_READY
        ]
        running = [
            c.metadata.name
            for c in runtime.ListContainers(pb.ListContainersRequest(), timeout=10).containers
            if c.state == pb.ContainerState.CONTAINER_RUNNING
        ]
        assert (ready, running) == ([], []), f"still ready: {ready}, still running: {running}"

    def check_nothing_left(self) -> None:
        assert self.leaks == [], "left after the suite:\n" + "\n".join(self.leaks)

    def _remove_cgroups(self) -> None:
        # The kubelet makes its cgroup root in the cgroup2 hierarchy of this hybrid host
        # itself; named for this run, it is ours to remove too.
        unified = CGROUP_V1 / "unified" / self.cgroup_root.lstrip("/")
        if unified.is_dir() and unified not in self._made_cgroups:
            self._made_cgroups.append(unified)
        for root in self._made_cgroups:
            for directory in _deepest_first(root):
                rmdir_when_empty(directory)
        self._made_cgroups = [root for root in self._made_cgroups if root.exists()]


def _v1_hierarchies() -> list[Path]:
    return [
        h
        for h in sorted(CGROUP_V1.iterdir())
        if h.is_dir() and h.name != "unified" and (h / "cgroup.procs").exists()
    ]


def _deepest_first(root: Path) -> Iterator[Path]:
    if not root.is_dir():
        return
    for directory, subdirs, _ in os.walk(root, topdown=False):
        del subdirs
        yield Path(directory)


def _http_ok(url: str, context: ssl.SSLContext | None = None, token: str = "") -> bool:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=2, context=context
        ) as response:
            return bool(response.status == 200)
    except (OSError, ValueError):
        return False
