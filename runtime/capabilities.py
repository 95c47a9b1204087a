"""Linux capabilities of a container: the default set, the host's bounding set, and the
CRI rules for adding and dropping.

Names are always the kernel's "CAP_X" form here; the CRI lets clients write "x",
"X" or "CAP_X", and "ALL".
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from base.errors import InvalidArgument

#: Every capability the kernel knows, by bit number (include/uapi/linux/capability.h).
#: A name past the end of this table is unknown to us and refused; a name here that
#: the running kernel lacks is simply not in the host's bounding set.
CAPABILITY_NUMBERS: dict[str, int] = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_DAC_READ_SEARCH": 2,
    "CAP_FOWNER": 3,
    "CAP_FSETID": 4,
    "CAP_KILL": 5,
    "CAP_SETGID": 6,
    "CAP_SETUID": 7,
    "CAP_SETPCAP": 8,
    "CAP_LINUX_IMMUTABLE": 9,
    "CAP_NET_BIND_SERVICE": 10,
    "CAP_NET_BROADCAST": 11,
    "CAP_NET_ADMIN": 12,
    "CAP_NET_RAW": 13,
    "CAP_IPC_LOCK": 14,
    "CAP_IPC_OWNER": 15,
    "CAP_SYS_MODULE": 16,
    "CAP_SYS_RAWIO": 17,
    "CAP_SYS_CHROOT": 18,
    "CAP_SYS_PTRACE": 19,
    "CAP_SYS_PACCT": 20,
    "CAP_SYS_ADMIN": 21,
    "CAP_SYS_BOOT": 22,
    "CAP_SYS_NICE": 23,
    "CAP_SYS_RESOURCE": 24,
    "CAP_SYS_TIME": 25,
    "CAP_SYS_TTY_CONFIG": 26,
    "CAP_MKNOD": 27,
    "CAP_LEASE": 28,
    "CAP_AUDIT_WRITE": 29,
    "CAP_AUDIT_CONTROL": 30,
    "CAP_SETFCAP": 31,
    "CAP_MAC_OVERRIDE": 32,
    "CAP_MAC_ADMIN": 33,
    "CAP_SYSLOG": 34,
    "CAP_WAKE_ALARM": 35,
    "CAP_BLOCK_SUSPEND": 36,
    "CAP_AUDIT_READ": 37,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
    "CAP_CHECKPOINT_RESTORE": 40,
}
ALL_CAPABILITIES: frozenset[str] = frozenset(CAPABILITY_NUMBERS)

#: What a container gets when it asks for nothing: cri-o's default since 1.18, which
#: containerd and Docker extend with CAP_MKNOD, CAP_NET_RAW, CAP_SYS_CHROOT and
#: CAP_AUDIT_WRITE. We take the smaller set because those four buy little and cost
#: much: MKNOD is moot behind the device cgroup (only the standard devices are
#: allowed, and they exist already); NET_RAW lets any pod forge packets on the pod
#: network (ARP/DNS spoofing) and has been the door to kernel bugs such as
#: CVE-2020-14386; SYS_CHROOT and AUDIT_WRITE serve few images (sshd, login). A
#: workload that needs one asks for it with capabilities.add. The visible effect:
#: `ping` needs NET_RAW (or the net.ipv4.ping_group_range sysctl).
DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_KILL",
)

_ALL = "ALL"


class UnknownCapability(InvalidArgument, ValueError):
    pass


def decode_mask(mask: int) -> frozenset[str]:
    """The names of the capabilities whose bits are set in a kernel capability mask."""
    return frozenset(name for name, bit in CAPABILITY_NUMBERS.items() if mask >> bit & 1)


def host_bounding_set(status: Path = Path("/proc/self/status")) -> frozenset[str]:
    """The capabilities skiffd's bounding set holds: the most any container can get.

    runc refuses a capability the kernel does not know, and a process cannot gain one
    outside its bounding set, so this is the ceiling of every container's set.
    """
    for line in status.read_text().splitlines():
        key, _, value = line.partition(":")
        if key == "CapBnd":
            return decode_mask(int(value.strip(), 16))
    raise OSError(f"{status} has no CapBnd line")


def normalize(name: str) -> str:
    """The kernel's name of a capability as the CRI may spell it: "net_raw", "NET_RAW"
    and "cap_net_raw" are all "CAP_NET_RAW"; "all" is "ALL".

    Raises UnknownCapability for a name the kernel does not define.
    """
    upper = name.strip().upper()
    if upper in (_ALL, "CAP_ALL"):
        return _ALL
    full = upper if upper.startswith("CAP_") else "CAP_" + upper
    if full not in CAPABILITY_NUMBERS:
        raise UnknownCapability(
            f"unknown capability {name!r}: use a Linux capability name such as "
            "NET_ADMIN or CAP_NET_ADMIN, or ALL"
        )
    return full


def _normalize_all(names: Iterable[str]) -> set[str]:
    return {normalize(name) for name in names}


def effective_capabilities(
    privileged: bool,
    add: Iterable[str],
    drop: Iterable[str],
    bounding: frozenset[str],
) -> list[str]:
    """The capability set of a container, in bit order, never beyond ``bounding``.

    The CRI rules, in containerd's order: start from the defaults; "ALL" in add makes
    it every capability; "ALL" in drop empties it; then the named adds, then the named
    drops (so a name both added and dropped is dropped). Privileged is the whole
    bounding set whatever add and drop say; the names are still checked, so a typo is
    refused rather than silently ignored. A known capability the host lacks is left
    out without complaint: a pod spec written for a newer kernel still runs.
    """
    added = _normalize_all(add)
    dropped = _normalize_all(drop)
    if privileged:
        caps: set[str] = set(bounding)
    else:
        caps = set(DEFAULT_CAPABILITIES)
        if _ALL in added:
            caps = set(ALL_CAPABILITIES)
        if _ALL in dropped:
            caps = set()
        caps |= added - {_ALL}
        caps -= dropped - {_ALL}
    return sorted(caps & bounding & ALL_CAPABILITIES, key=CAPABILITY_NUMBERS.__getitem__)
