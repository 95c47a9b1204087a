"""Test helpers for real network namespaces, bridges and servers inside namespaces.

Every name made here is unique per call (random suffix), and everything is removed in
``finally`` blocks: tests share the machine and run side by side.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

NETNS_DIR = "/run/netns"


@dataclass(frozen=True)
class Netns:
    name: str

    @property
    def path(self) -> str:
        return f"{NETNS_DIR}/{self.name}"

    def exec_args(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, *argv: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.exec_args(*argv), capture_output=True, text=True, timeout=timeout, check=False
        )


def run(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def create_netns(prefix: str = "skiff-cni-") -> Netns:
    ns = Netns(prefix + secrets.token_hex(4))
    run("ip", "netns", "add", ns.name)
    return ns


def delete_netns(ns: Netns) -> None:
    """Remove the namespace if it is still there (a test may have removed it)."""
    if os.path.exists(ns.path):
        run("ip", "netns", "del", ns.name, check=False)


@contextmanager
def netns(prefix: str = "skiff-cni-") -> Iterator[Netns]:
    ns = create_netns(prefix)
    try:
        yield ns
    finally:
        delete_netns(ns)


def link_exists(name: str) -> bool:
    return run("ip", "link", "show", "dev", name, check=False).returncode == 0


def delete_link(name: str) -> None:
    if link_exists(name):
        run("ip", "link", "del", "dev", name, check=False)


def links_with_master(bridge: str) -> list[str]:
    """Host interfaces enslaved to the bridge (the pods' veth peers)."""
    proc = run("ip", "-j", "link", "show", "master", bridge, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        return []
    return [str(link["ifname"]) for link in json.loads(proc.stdout)]


def netns_addresses(ns: Netns, ifname: str = "eth0") -> list[str]:
    """The IPv4 addresses of ifname inside ns ([] when it has none or is gone)."""
    proc = ns.run("ip", "-4", "-j", "addr", "show", "dev", ifname)
    if proc.returncode != 0 or not proc.stdout.strip():
        return []
    found: list[Any] = json.loads(proc.stdout)
    return [str(a["local"]) for link in found for a in link.get("addr_info", [])]


def iptables_lines(needle: str) -> list[str]:
    """iptables-save (IPv4, all tables) lines mentioning needle."""
    proc = run("iptables-save", check=False)
    return [line for line in proc.stdout.splitlines() if needle in line]


# A one-connection TCP server: prints "ready" once listening, answers each connection
# with the payload given on the command line, and exits after `count` connections.
_SERVER = """
import socket, sys
port, payload, count = int(sys.argv[1]), sys.argv[2].encode(), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", port))
s.listen(8)
print("ready", flush=True)
for _ in range(count):
    conn, _ = s.accept()
    conn.sendall(payload)
    conn.close()
"""

_CLIENT = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as c:
    data = b""
    while chunk := c.recv(4096):
        data += chunk
sys.stdout.write(data.decode())
"""


@contextmanager
def tcp_server(ns: Netns, port: int, payload: str, count: int = 1) -> Iterator[int]:
    """Run the test server inside ns; yields its pid, kills it (by pid) on the way out."""
    proc = subprocess.Popen(
        ns.exec_args(sys.executable, "-c", _SERVER, str(port), payload, str(count)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "ready":
            proc.kill()
            _, err = proc.communicate(timeout=10)
            raise AssertionError(f"test server in {ns.name} did not start: {err.strip()}")
        yield proc.pid
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
        if proc.stderr is not None:
            proc.stderr.close()


def tcp_fetch(host: str, port: int, ns: Netns | None = None) -> str:
    """Connect to host:port (from inside ns, or from the host) and read until EOF."""
    argv = [sys.executable, "-c", _CLIENT, host, str(port)]
    if ns is not None:
        argv = ns.exec_args(*argv)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"connect to {host}:{port} failed: {proc.stderr.strip()}")
    return proc.stdout


def pid_alive(pid: int) -> bool:
    """True while pid is a live process (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return not pid_alive(pid)
