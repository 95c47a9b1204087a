"""A container as skiff keeps it: typed in memory, JSON only at the store's edge."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from cri.store import Record
from runtime.cgroups import CgroupResources

ContainerState = Literal["created", "running", "exited"]
CREATED: ContainerState = "created"
RUNNING: ContainerState = "running"
EXITED: ContainerState = "exited"
STATES: tuple[ContainerState, ...] = (CREATED, RUNNING, EXITED)

Propagation = Literal["private", "slave", "shared"]


@dataclass(frozen=True)
class CriMount:
    container_path: str
    host_path: str
    readonly: bool = False
    propagation: Propagation = "private"
    # Read-only all the way down: submounts of the host path too (needs readonly and
    # private propagation).
    recursive_read_only: bool = False
    # An image volume: the image's files (or a directory of them), read-only.
    image: str = ""
    image_sub_path: str = ""
    # Once an image volume is mounted (`image` cleared): the image as the request named
    # it and its id, for ContainerStatus.
    volume_image: str = ""
    volume_image_id: str = ""


@dataclass
class Container:
    """A container as stored (Record.data) and kept in memory."""

    id: str
    sandbox_id: str
    name: str
    attempt: int
    image: str
    image_id: str
    image_ref: str
    state: ContainerState
    created_ns: int
    started_ns: int
    finished_ns: int
    exit_code: int
    reason: str
    message: str
    labels: dict[str, str]
    annotations: dict[str, str]
    log_path: str
    runtime_handler: str
    container_dir: str
    mounts: list[CriMount]
    uid: int
    gid: int
    groups: list[int]
    resources: CgroupResources | None
    stop_signal: int
    pid: int
    tty: bool
    stdin: bool
    config: dict[str, Any]
    # Images mounted as volumes (CRI image volumes), by id.
    volume_image_ids: list[str] = field(default_factory=list)
    # The cgroup of the container's conmon, under the pod's ("" when it has none).
    conmon_cgroup: str = ""
    # The image's name as ContainerStatus shows it: the name the pod used, when it is
    # one of the image's, else the image's first repo tag ("" before this was kept).
    image_name: str = ""

    @property
    def reserved_name(self) -> str:
        return f"{self.sandbox_id}/{self.name}/{self.attempt}"

    @property
    def bundle(self) -> Path:
        return Path(self.container_dir) / "bundle"

    def to_record(self) -> Record:
        return Record("container", self.id, self.reserved_name, self.created_ns, asdict(self))

    @classmethod
    def from_record(cls, record: Record) -> Container:
        data = dict(record.data)
        if data["state"] not in STATES:
            raise ValueError(f"container {record.id}: unknown state {data['state']!r}")
        data["mounts"] = [CriMount(**mount) for mount in data["mounts"]]
        resources = data["resources"]
        data["resources"] = CgroupResources(**resources) if resources is not None else None
        return cls(**data)
