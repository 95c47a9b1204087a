"""Container and sandbox records for unit tests of what is built from them."""

from __future__ import annotations

from typing import Any

from cri.containers import Container
from cri.sandboxes import Sandbox

S = 1_000_000_000


def container_record(**overrides: Any) -> Container:
    fields: dict[str, Any] = {
        "id": "c" * 64,
        "sandbox_id": "p" * 64,
        "name": "web",
        "attempt": 0,
        "image": "registry.example/web:1",
        "image_id": "sha256:" + "1" * 64,
        "image_ref": "registry.example/web@sha256:" + "2" * 64,
        "state": "running",
        "created_ns": 1,
        "started_ns": 1700000000 * S,
        "finished_ns": 0,
        "exit_code": 0,
        "reason": "",
        "message": "",
        "labels": {},
        "annotations": {},
        "log_path": "",
        "runtime_handler": "",
        "container_dir": "/nowhere",
        "mounts": [],
        "uid": 0,
        "gid": 0,
        "groups": [],
        "resources": {"cpu_shares": 256, "cpu_quota": 50000, "memory_limit": 1 << 26},
        "stop_signal": 0,
        "pid": 1,
        "tty": False,
        "stdin": False,
        "config": {},
    }
    fields.update(overrides)
    return Container(**fields)


def sandbox_record() -> Sandbox:
    return Sandbox(
        id="p" * 64,
        name="shop",
        namespace="prod",
        uid="u1",
        attempt=0,
        state="ready",
        created_ns=1,
        runtime_handler="",
        hostname="shop",
        log_directory="",
        labels={},
        annotations={},
        host_network=False,
        host_ipc=False,
        host_pid=False,
        pid_mode="container",
        cgroup_parent="",
        cgroup_created=False,
        netns="/run/netns/x",
        ipcns=None,
        utsns=None,
        ips=[],
        network_name="",
        files_dir="",
        shm_path=None,
        port_mappings=[],
        config={},
    )
