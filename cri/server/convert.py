"""Proto messages shared by several RPC families, turned into plain data."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from api.runtime.v1 import api_pb2 as pb
from cri.errors import InvalidArgument, Unimplemented
from runtime.cgroups import CgroupResources

if TYPE_CHECKING:  # the stubs' name; at run time the class is EnumTypeWrapper
    from google.protobuf.internal.enum_type_wrapper import _EnumTypeWrapper


def known(enum: _EnumTypeWrapper[Any], value: int, what: str) -> None:
    """protobuf takes any int for an enum field: refuse one the enum does not name,
    instead of reading it as some default."""
    if value not in enum.values():
        names = ", ".join(enum.keys())
        raise InvalidArgument(f"{what}: {value} is not a valid value (one of {names})")


def resources(message: pb.LinuxContainerResources) -> CgroupResources:
    """LinuxContainerResources as cgroup settings; zero values mean "not set"."""
    return CgroupResources(
        cpu_shares=message.cpu_shares or None,
        cpu_quota=message.cpu_quota or None,
        cpu_period=message.cpu_period or None,
        cpuset_cpus=message.cpuset_cpus,
        cpuset_mems=message.cpuset_mems,
        memory_limit=message.memory_limit_in_bytes or None,
        memory_swap=message.memory_swap_limit_in_bytes or None,
        hugepage_limits={h.page_size: h.limit for h in message.hugepage_limits},
        unified=dict(message.unified),
    )


def refuse_user_namespaces(options: pb.NamespaceOption, what: str) -> None:
    """skiff runs pods in the node's user namespace only. A request for a user
    namespace of the pod's own is refused, never run without one: the pod would have
    host root where it asked not to."""
    if not options.HasField("userns_options"):
        return
    userns = options.userns_options
    known(pb.NamespaceMode, userns.mode, f"{what}: user namespace mode")
    if userns.mode == pb.NamespaceMode.NODE:
        if userns.uids or userns.gids:
            raise InvalidArgument(
                f"{what}: a user namespace in NODE mode takes no uid or gid mappings"
            )
        return
    if userns.mode == pb.NamespaceMode.POD:
        raise Unimplemented(
            f"{what}: user namespaces of the pod's own (userns_options mode POD) are not "
            "supported by skiff yet (its runtime handlers report user_namespaces false)"
        )
    name = pb.NamespaceMode.Name(userns.mode)
    raise InvalidArgument(f"{what}: user namespace mode {name} is not valid; use POD or NODE")
