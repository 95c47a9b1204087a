"""Seccomp profiles for containers: skiff's RuntimeDefault and Localhost files.

The RuntimeDefault profile lives in ``deploy/seccomp/default.json``, in the OCI
``linux.seccomp`` format that runc and crun read as is. It is an allow list: anything
not named fails with EPERM (``defaultErrnoRet: 1``), which programs treat as "not
permitted here" and mostly survive. What it leaves out, and why:

- kernel-wide state that no namespace fences: the keyrings (``keyctl``, ``add_key``,
  ``request_key``), the clock (``settimeofday``, ``clock_settime``), swap, process
  accounting, kernel modules, ``kexec_*`` and ``reboot``;
- big attack surfaces with a record of container escapes or kernel exploits: ``bpf``,
  ``perf_event_open``, ``userfaultfd``, ``io_uring_*``, ``open_by_handle_at`` (the
  "shocker" escape), ``keyctl``;
- mounting and namespaces: ``mount``/``umount2``/the new mount API, ``pivot_root``,
  ``setns``, and ``unshare``/``clone`` with a CLONE_NEW* flag (an argument filter keeps
  plain ``clone``, so fork and threads work, and plain ``unshare``). A user namespace
  needs no capability at all, so without this rule any container could make one and
  reach the kernel code that is only exposed to "root in a user namespace";
- ``clone3``: its flags sit in a struct that seccomp cannot read, so it cannot be
  filtered like clone; it answers ENOSYS (not EPERM), which glibc takes as "old
  kernel" and falls back to ``clone``;
- obsolete or legacy calls nobody needs: ``uselib``, ``_sysctl``, ``ustat``, ``sysfs``,
  ``vm86*``, ``modify_ldt``, ``nfsservctl``, ``lookup_dcookie``;
- ``socket`` for AF_VSOCK (40): it talks to the hypervisor, past the network
  namespace; ``personality`` only for the values ordinary programs use (Linux,
  32-bit, uname26, query), not e.g. READ_IMPLIES_EXEC or ADDR_NO_RANDOMIZE.

``ptrace`` and ``process_vm_*`` are allowed: since Linux 4.8 seccomp is re-checked
after a tracer changes a syscall, so ptrace no longer bypasses the filter, and the
kernel still asks for ptrace permission (same user, or CAP_SYS_PTRACE).

Many of the left-out calls are also what a capability grants. OCI profiles (as runc
1.1 and crun read them) cannot say "allowed when the container has CAP_X", so the
JSON holds the unconditional list and :func:`with_capabilities` adds the calls of the
capabilities a container really has (e.g. ``mount`` for CAP_SYS_ADMIN), as a
container that was given CAP_SYS_ADMIN expects to mount. Some calls stay denied
whatever the capabilities (:data:`ALWAYS_DENIED`).
"""

from __future__ import annotations

import copy
import json
import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from base.errors import Internal, InvalidArgument

#: The RuntimeDefault profile, found next to the code (the repository's layout; skiff
#: is installed in place, "pip install -e").
DEFAULT_PROFILE_PATH = Path(__file__).resolve().parents[1] / "deploy" / "seccomp" / "default.json"

RUNTIME_DEFAULT = "runtime/default"
UNCONFINED = "unconfined"
LOCALHOST = "localhost"

#: Calls the RuntimeDefault profile never allows, whatever the container's capabilities.
ALWAYS_DENIED: frozenset[str] = frozenset(
    {
        "add_key",
        "keyctl",
        "request_key",
        "kexec_load",
        "kexec_file_load",
        "open_by_handle_at",
        "userfaultfd",
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "lookup_dcookie",
        "uselib",
        "_sysctl",
        "ustat",
        "sysfs",
        "vm86",
        "vm86old",
        "modify_ldt",
        "nfsservctl",
        "create_module",
        "get_kernel_syms",
        "query_module",
    }
)

#: Calls RuntimeDefault allows only to a container holding the capability, because
#: the kernel lets that capability use them for what it is meant to do.
CAPABILITY_SYSCALLS: Mapping[str, tuple[str, ...]] = {
    "CAP_SYS_ADMIN": (
        # clone and unshare without the namespace-flag filter, and setns.
        "clone",
        "unshare",
        "setns",
        "mount",
        "umount",
        "umount2",
        "mount_setattr",
        "move_mount",
        "open_tree",
        "fsopen",
        "fsconfig",
        "fsmount",
        "fspick",
        "pivot_root",
        "sethostname",
        "setdomainname",
        "quotactl",
        "quotactl_fd",
        "name_to_handle_at",
        "fanotify_init",
        "swapon",
        "swapoff",
        "bpf",
        "perf_event_open",
    ),
    "CAP_BPF": ("bpf",),
    "CAP_PERFMON": ("perf_event_open",),
    "CAP_SYSLOG": ("syslog",),
    "CAP_SYS_BOOT": ("reboot",),
    "CAP_SYS_MODULE": ("init_module", "finit_module", "delete_module"),
    "CAP_SYS_PACCT": ("acct",),
    "CAP_SYS_TIME": ("settimeofday", "stime", "clock_settime", "clock_settime64"),
    "CAP_SYS_RAWIO": ("iopl", "ioperm"),
    "CAP_SYS_NICE": (
        "mbind",
        "set_mempolicy",
        "set_mempolicy_home_node",
        "migrate_pages",
        "move_pages",
    ),
    "CAP_SYS_PTRACE": ("kcmp",),
    "CAP_SYS_TTY_CONFIG": ("vhangup",),
}

_ALLOW = "SCMP_ACT_ALLOW"


class SeccompError(InvalidArgument):
    """A profile the client named (Localhost) that cannot be used."""


class DefaultProfileBroken(Internal, SeccompError):
    """skiff's own RuntimeDefault profile is missing or broken: the installation is."""


def load_profile(
    kind: str, localhost_path: str = "", default_path: Path = DEFAULT_PROFILE_PATH
) -> dict[str, Any] | None:
    """The OCI ``linux.seccomp`` object for a container, or None for unconfined.

    ``kind`` is "runtime/default", "unconfined" or "localhost"; ``localhost_path`` is
    the profile file of "localhost" (absolute, as the kubelet resolves it).
    """
    if kind == UNCONFINED:
        return None
    if kind == RUNTIME_DEFAULT:
        if not default_path.is_file():
            raise DefaultProfileBroken(
                f"skiff's RuntimeDefault seccomp profile {default_path} is missing: the "
                "installation is incomplete (it ships as deploy/seccomp/default.json)"
            )
        try:
            return _read_profile(default_path)
        except SeccompError as exc:
            raise DefaultProfileBroken(str(exc)) from exc
    if kind == LOCALHOST:
        if not localhost_path:
            raise SeccompError("seccomp profile type Localhost needs a localhost_ref (a file)")
        path = Path(localhost_path)
        if not path.is_absolute():
            raise SeccompError(
                f"seccomp profile {localhost_path!r} must be an absolute path on the node"
            )
        return _read_profile(path)
    raise SeccompError(
        f"unknown seccomp profile type {kind!r}: use RuntimeDefault, Unconfined or Localhost"
    )


#: The largest profile read (Docker's default profile is some 20 KiB).
MAX_PROFILE_BYTES = 1 << 20


def _read_profile(path: Path) -> dict[str, Any]:
    try:
        text = _read_regular_file(path).decode()
    except FileNotFoundError as exc:
        raise SeccompError(f"seccomp profile {path} does not exist on this node") from exc
    except OSError as exc:
        raise SeccompError(f"seccomp profile {path} cannot be read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise SeccompError(f"seccomp profile {path} is not UTF-8 text") from exc
    try:
        profile = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SeccompError(
            f"seccomp profile {path} is not valid JSON: {exc.msg} at line {exc.lineno}"
        ) from exc
    except RecursionError:
        raise SeccompError(f"seccomp profile {path} is nested too deeply to be one") from None
    problem = profile_problem(profile)
    if problem:
        raise SeccompError(f"seccomp profile {path} {problem}")
    assert isinstance(profile, dict)
    return profile


def _read_regular_file(path: Path) -> bytes:
    """The bytes of a regular file of at most MAX_PROFILE_BYTES. Opened without blocking
    and checked before it is read: a FIFO or a device named as a profile would block
    the reader, or never end."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SeccompError(f"seccomp profile {path} is not a regular file")
        if st.st_size > MAX_PROFILE_BYTES:
            raise SeccompError(
                f"seccomp profile {path} is {st.st_size} bytes; the limit is {MAX_PROFILE_BYTES}"
            )
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(MAX_PROFILE_BYTES + 1)
    finally:
        os.close(fd)


def profile_problem(profile: object) -> str:
    """What makes ``profile`` unusable as an OCI seccomp object ("" when nothing).

    Only the shape is checked, so the message can name the file; the names of
    syscalls and actions are left to the OCI runtime, which knows its libseccomp.
    """
    if not isinstance(profile, dict):
        return "must be a JSON object"
    if not isinstance(profile.get("defaultAction"), str) or not profile["defaultAction"]:
        return "has no defaultAction (e.g. SCMP_ACT_ERRNO)"
    architectures = profile.get("architectures", [])
    if not isinstance(architectures, list) or not all(isinstance(a, str) for a in architectures):
        return "has an architectures field that is not a list of names"
    syscalls = profile.get("syscalls", [])
    if not isinstance(syscalls, list):
        return "has a syscalls field that is not a list"
    for index, entry in enumerate(syscalls):
        if not isinstance(entry, dict):
            return f"has syscalls[{index}] that is not an object"
        names = entry.get("names")
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            return f"has syscalls[{index}] without a list of syscall names"
        if not isinstance(entry.get("action"), str):
            return f"has syscalls[{index}] without an action"
    return ""


def with_capabilities(profile: Mapping[str, Any], capabilities: Iterable[str]) -> dict[str, Any]:
    """The RuntimeDefault profile widened by the calls the given capabilities grant.

    A copy: the caller's profile is left as it is. Names a capability lifts out of an
    argument filter (clone, unshare under CAP_SYS_ADMIN) leave that filtered entry, so
    libseccomp is never asked for an unconditional and a conditional rule of the same
    call; names the profile already allows outright are not repeated.
    """
    result = copy.deepcopy(dict(profile))
    wanted = {name for cap in capabilities for name in CAPABILITY_SYSCALLS.get(cap, ())}
    wanted -= ALWAYS_DENIED
    syscalls: list[dict[str, Any]] = list(result.get("syscalls", []))
    allowed_plainly = {
        name
        for entry in syscalls
        if entry.get("action") == _ALLOW and not entry.get("args")
        for name in entry["names"]
    }
    extra = sorted(wanted - allowed_plainly)
    if not extra:
        return result
    kept: list[dict[str, Any]] = []
    for entry in syscalls:
        if entry.get("args"):
            names = [n for n in entry["names"] if n not in extra]
            if names:
                kept.append({**entry, "names": names})
            continue
        kept.append(entry)
    kept.append({"names": extra, "action": _ALLOW})
    result["syscalls"] = kept
    return result
