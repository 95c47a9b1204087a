"""A container as the runner sees it: plain data, made by cri/ from a CreateContainer
request and turned into an OCI runtime spec by `oci_spec.build_spec`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from runtime.cgroups import CgroupResources

SeccompKind = Literal["runtime/default", "unconfined", "localhost"]
NamespaceKind = Literal["network", "ipc", "uts", "pid", "mount", "cgroup"]
# A namespace is made new for the container, shared with the host, or joined by path.
NEW = "new"
HOST = "host"


@dataclass(frozen=True)
class MountSpec:
    destination: str
    source: str
    type: str = "bind"
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class DeviceSpec:
    container_path: str
    host_path: str
    permissions: str = "rwm"


@dataclass(frozen=True)
class UserSpec:
    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()


@dataclass(frozen=True)
class SecuritySpec:
    privileged: bool = False
    capabilities_add: tuple[str, ...] = ()
    capabilities_drop: tuple[str, ...] = ()
    no_new_privileges: bool = False
    readonly_rootfs: bool = False
    seccomp: SeccompKind = "runtime/default"
    seccomp_profile_path: str = ""  # for "localhost"
    # None: the runtime's defaults; a tuple (possibly empty): exactly these.
    masked_paths: tuple[str, ...] | None = None
    readonly_paths: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ContainerSpec:
    id: str
    rootfs: str
    args: tuple[str, ...]
    env: tuple[str, ...] = ()
    cwd: str = "/"
    user: UserSpec = field(default_factory=lambda: UserSpec(0, 0))
    terminal: bool = False
    hostname: str = ""
    mounts: tuple[MountSpec, ...] = ()
    devices: tuple[DeviceSpec, ...] = ()
    # kind -> NEW, HOST or the path of a namespace to join; kinds left out are NEW,
    # except "cgroup", which is left alone when absent.
    namespaces: Mapping[str, str] = field(default_factory=dict)
    cgroups_path: str = ""
    resources: CgroupResources | None = None
    oom_score_adj: int | None = None
    security: SecuritySpec = field(default_factory=SecuritySpec)
    sysctls: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    # How errors name the container: the client's name for it, when it has one (a
    # failed create never told the client the id).
    name: str = ""
    # rslave or rshared when a mount propagates from (or to) the host; empty: private.
    rootfs_propagation: str = ""


def who(spec: ContainerSpec) -> str:
    """The container as error messages name it."""
    return f"container {spec.name!r}" if spec.name else f"container {spec.id}"
