"""Pinned pod namespaces: network, IPC and UTS held open by bind mounts, no process.

A pod sandbox gets its own network, IPC and UTS namespaces (unless it uses the host's).
They must outlive any process, so they are pinned the way ``ip netns add`` and cri-o's
``pinns`` do it: the nsfs file of each namespace is bind-mounted onto an empty file
``<pin_dir>/<kind>/<sandbox_id>``. The mount keeps the namespace alive; runc joins it by
that path; unmounting (and unlinking) the file lets it go.

skiffd is a multi-threaded asyncio/gRPC process, where fork and unshare are unsafe, so
the namespaces are made by a short-lived helper, ``python -m network.pin`` (see
``network/pin.py``). It also sets the hostname, writes the pod's namespaced sysctls and
brings up ``lo``, all from inside the new namespaces, then exits.

The helper keeps skiffd's mount namespace, so the pins are mounts there, whatever the
propagation of the pin directory's mount: if it is shared, peers get copies that our
unmount takes away again, and unlinking a pin detaches any copy left in another mount
namespace (Linux >= 3.18). Neither pinning nor unpinning depends on it.

Every pin either completes or leaves nothing: on any failure (helper error, timeout,
cancellation) the mounts and files this call made are removed before the error is raised.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import json
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from base import failpoints, processes
from base.errors import Internal, InvalidArgument
from base.processes import ProgramTimedOut, finish_even_if_cancelled

KINDS = ("net", "ipc", "uts")
MNT_DETACH = 0x2
UMOUNT_NOFOLLOW = 0x8
PIN_DIR_MODE = 0o711

# The IPC-namespace sysctls Kubernetes treats as namespaced (besides fs.mqueue.*).
IPC_KERNEL_SYSCTLS = frozenset(
    {
        "shm_rmid_forced",
        "shmmax",
        "shmall",
        "shmmni",
        "msgmax",
        "msgmnb",
        "msgmni",
        "sem",
    }
)
ALLOWED_SUMMARY = (
    "net.*, kernel.shm_rmid_forced, kernel.shmmax, kernel.shmall, kernel.shmmni, "
    "kernel.msgmax, kernel.msgmnb, kernel.msgmni, kernel.sem, fs.mqueue.*"
)

# The helper runs as a script (see _run_helper), so by file, not by module name.
_HELPER = Path(__file__).resolve().with_name("pin.py")


@dataclass(frozen=True)
class PinRequest:
    """What to pin for one sandbox.

    A kind set to False means the pod uses the host's namespace of that kind: nothing is
    pinned and nothing of the host is changed. ``hostname`` is set only when ``uts`` is
    True (it is ignored otherwise: the host's hostname is never touched). ``sysctls``
    must have passed :func:`validate_sysctls`; they are checked again here.
    """

    sandbox_id: str
    pin_dir: Path
    net: bool = True
    ipc: bool = True
    uts: bool = True
    hostname: str = ""
    sysctls: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PinnedNamespaces:
    net: str | None
    ipc: str | None
    uts: str | None

    def paths(self) -> list[str]:
        return [p for p in (self.net, self.ipc, self.uts) if p]


class NamespaceError(Internal):
    pass


class InvalidSysctl(InvalidArgument):
    pass


# --- sysctl names -----------------------------------------------------------------------


def sysctl_parts(name: str) -> tuple[str, ...]:
    """The path components of a sysctl name, in either spelling.

    Like sysctl(8) and the kubelet: when the first separator is '/', the name is in path
    form and a '.' is part of a component (``net/ipv4/conf/eth0.100/rp_filter``); when
    it is '.', the name is in dotted form and a '/' inside a component stands for a '.'
    (``net.ipv4.conf.eth0/100.rp_filter``). Both give the same components.
    """
    if not name:
        raise InvalidSysctl("a sysctl name is empty")
    slash, dot = name.find("/"), name.find(".")
    if slash != -1 and (dot == -1 or slash < dot):
        parts = name.split("/")
    else:
        parts = [p.replace("/", ".") for p in name.split(".")]
    for part in parts:
        # '.' and '..' would walk out of /proc/sys; empty parts mean a doubled or
        # trailing separator; whitespace and control characters are in no sysctl name.
        if part in ("", ".", "..") or any(c.isspace() or not c.isprintable() for c in part):
            raise InvalidSysctl(f"sysctl {name!r} is not a well-formed sysctl name")
    return tuple(parts)


def sysctl_name(parts: Iterable[str]) -> str:
    """The canonical dotted name for components from :func:`sysctl_parts`."""
    return ".".join(p.replace(".", "/") for p in parts)


def _sysctl_kind(name: str, parts: tuple[str, ...]) -> str:
    """Which pod namespace a sysctl belongs to ('net' or 'ipc'), or InvalidSysctl."""
    if parts[0] == "net" and len(parts) > 1:
        return "net"
    if parts[0] == "kernel" and len(parts) == 2 and parts[1] in IPC_KERNEL_SYSCTLS:
        return "ipc"
    if parts[:2] == ("fs", "mqueue") and len(parts) > 2:
        return "ipc"
    if parts in (("kernel", "hostname"), ("kernel", "domainname")):
        raise InvalidSysctl(
            f"sysctl {name} is not allowed: set the pod's hostname in its spec instead"
        )
    raise InvalidSysctl(
        f"sysctl {name} is not allowed: it is not namespaced, so setting it for a pod "
        f"would change the whole node; a pod may set only {ALLOWED_SUMMARY}"
    )


def validate_sysctls(sysctls: Mapping[str, str], host_network: bool, host_ipc: bool) -> None:
    """Refuse (InvalidSysctl, naming the sysctl and why) anything a pod may not set."""
    seen: dict[tuple[str, ...], str] = {}
    for name, value in sysctls.items():
        parts = sysctl_parts(name)
        kind = _sysctl_kind(name, parts)
        if kind == "net" and host_network:
            raise InvalidSysctl(
                f"sysctl {name} is not allowed: the pod uses the host's network namespace, "
                "so it would change the node's network settings"
            )
        if kind == "ipc" and host_ipc:
            raise InvalidSysctl(
                f"sysctl {name} is not allowed: the pod uses the host's IPC namespace, "
                "so it would change the node's IPC settings"
            )
        if not isinstance(value, str) or not value:
            raise InvalidSysctl(f"sysctl {name} has an empty value")
        if "\n" in value or "\r" in value or "\0" in value:
            raise InvalidSysctl(
                f"sysctl {name} has a value with a line break or NUL; give a single line"
            )
        if parts in seen:
            raise InvalidSysctl(
                f"sysctl {sysctl_name(parts)} is given twice (as {seen[parts]!r} and {name!r})"
            )
        if Path("/proc/sys", *parts).is_dir():
            raise InvalidSysctl(
                f"sysctl {name} names a group of sysctls (a directory), not one; name one of "
                "its entries"
            )
        seen[parts] = name


# --- pinning ----------------------------------------------------------------------------


# The timeout is the helper's own time limit (it is killed past it), part of the API.
async def pin_namespaces(
    request: PinRequest,
    timeout: float = 10.0,  # noqa: ASYNC109
) -> PinnedNamespaces:
    """Create and pin the requested namespaces; see the module docstring.

    Raises InvalidSysctl when a sysctl is not allowed or the kernel refuses its value,
    NamespaceError for everything else. Nothing is left behind on failure.
    """
    validate_sysctls(request.sysctls, not request.net, not request.ipc)
    sid = request.sandbox_id
    if not sid or "/" in sid or sid in (".", "..") or "\0" in sid:
        raise NamespaceError(f"sandbox id {sid!r} cannot be used as a file name")
    targets = {k: request.pin_dir / k / sid for k in KINDS if getattr(request, k)}
    if not targets:
        return PinnedNamespaces(None, None, None)

    if "\0" in request.hostname:
        raise NamespaceError(f"sandbox {sid}: hostname {request.hostname!r} contains a NUL")
    args: list[str] = []
    for kind, target in targets.items():
        args += [f"--{kind}", str(target)]
    if request.hostname and "uts" in targets:
        args += ["--hostname", request.hostname]
    for name, value in request.sysctls.items():
        parts = sysctl_parts(name)
        args += ["--sysctl", sysctl_name(parts), "/".join(parts), value]
    created: list[Path] = []
    try:
        await finish_even_if_cancelled(
            asyncio.to_thread(_create_targets, request.pin_dir, list(targets.values()), created)
        )
        await _run_helper(args, sid, timeout)
        dead = [str(p) for p in targets.values() if not namespace_alive(str(p))]
        if dead:
            raise NamespaceError(
                f"sandbox {sid}: the namespace helper succeeded but {', '.join(dead)} "
                "is not a namespace mount"
            )
    except BaseException as exc:
        try:
            await finish_even_if_cancelled(asyncio.to_thread(_remove_pins, created))
        except NamespaceError as cleanup:
            exc.add_note(f"cleanup after the failure was incomplete too: {cleanup}")
        raise
    failpoints.step("namespaces-pin")
    return PinnedNamespaces(
        net=str(targets["net"]) if "net" in targets else None,
        ipc=str(targets["ipc"]) if "ipc" in targets else None,
        uts=str(targets["uts"]) if "uts" in targets else None,
    )


async def unpin_namespaces(pinned: PinnedNamespaces) -> None:
    """Unmount (lazily) and remove the pin files. Idempotent: missing files are fine."""
    paths = [Path(p) for p in pinned.paths()]
    if paths:
        await finish_even_if_cancelled(asyncio.to_thread(_remove_pins, paths))
        failpoints.step("namespaces-unpin")


def namespace_alive(path: str) -> bool:
    """Whether a namespace is still mounted at ``path``.

    All namespace files live on the kernel's single nsfs superblock, so a path whose
    device is nsfs's is a namespace; lstat, so that a /proc/<pid>/ns symlink does not
    count. An unpinned file (or none) is on the filesystem of its directory.
    """
    try:
        return os.lstat(path).st_dev == os.stat("/proc/self/ns/net").st_dev
    except OSError:
        return False


async def _run_helper(args: list[str], sandbox_id: str, limit: float) -> None:
    # -I (isolated: no PYTHON* variables, no user site, and the script's directory is
    # not put on sys.path, so nothing in network/ can shadow a stdlib module) and -S (no
    # site-packages): the helper needs only the stdlib. Running the file rather than
    # "-m network.pin" also skips runpy. Together ~5 ms of a ~17 ms helper run.
    argv = [sys.executable, "-I", "-S", str(_HELPER), *args]
    try:
        # Killed and reaped on a timeout or cancellation, so that the cleanup that follows
        # cannot race with a mount it is still making.
        done = await processes.run(argv, timeout=limit)
    except OSError as exc:
        raise NamespaceError(
            f"sandbox {sandbox_id}: cannot start the namespace helper: {exc}"
        ) from None
    except ProgramTimedOut:
        raise NamespaceError(
            f"sandbox {sandbox_id}: the namespace helper did not finish in {limit:g}s "
            "and was killed"
        ) from None
    if done.returncode == 0:
        return
    text = done.stderr.decode(errors="replace").strip()
    for line in reversed(text.splitlines()):
        try:
            report = json.loads(line)
        except ValueError:
            continue
        if isinstance(report, dict) and isinstance(report.get("message"), str):
            message = f"sandbox {sandbox_id}: {report['message']}"
            if report.get("kind") == "sysctl":
                raise InvalidSysctl(message)
            raise NamespaceError(message)
    last = text.splitlines()[-1] if text else "no output"
    raise NamespaceError(f"sandbox {sandbox_id}: the namespace helper {done.status()}: {last}")


# --- blocking parts, run in a thread ------------------------------------------------------


def _create_targets(pin_dir: Path, targets: list[Path], created: list[Path]) -> None:
    """Make the empty files to mount on; ``created`` gets exactly the ones we made."""
    _make_dir(pin_dir)
    for target in targets:
        _make_dir(target.parent)
        try:
            # O_EXCL: an existing file may be a live pin of someone else; never take it
            # over, and never remove it in our rollback.
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
        except FileExistsError:
            raise NamespaceError(
                f"{target} already exists: a namespace for this sandbox is already pinned "
                "(or was left over); remove the sandbox first"
            ) from None
        except OSError as exc:
            raise NamespaceError(f"cannot create {target}: {exc.strerror}") from None
        created.append(target)
        os.close(fd)


def _make_dir(path: Path) -> None:
    # 0711: whoever is handed a pin's path can reach it, but nobody can list the
    # sandboxes. Only directories we make get it; existing ones are left as they are.
    try:
        path.mkdir(mode=PIN_DIR_MODE, parents=False)
    except FileExistsError:
        return
    except FileNotFoundError:
        _make_dir(path.parent)
        _make_dir(path)
        return
    except OSError as exc:
        raise NamespaceError(f"cannot create {path}: {exc.strerror}") from None
    os.chmod(path, PIN_DIR_MODE)  # mkdir's mode is cut by the umask


# The libc already loaded into this interpreter (no find_library: it spawns processes).
_libc = ctypes.CDLL(None, use_errno=True)
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _umount2(path: Path, flags: int) -> int:
    """umount2(2); returns 0 or the errno."""
    if _libc.umount2(os.fsencode(path), flags) == 0:
        return 0
    return ctypes.get_errno()


def _remove_pins(paths: list[Path]) -> None:
    """Unmount and unlink each path; missing ones are fine. NamespaceError lists the rest."""
    problems: list[str] = []
    for path in paths:
        # Lazy, so a process still inside the namespace (or holding the file open) does
        # not make this fail; the namespace goes when its last user does. NOFOLLOW: only
        # ever the file we made, not where a symlink might point. Looping takes off
        # stacked mounts too; EINVAL means "no longer a mount point".
        for _ in range(16):
            err = _umount2(path, MNT_DETACH | UMOUNT_NOFOLLOW)
            if err != 0:
                break
        if err not in (0, errno.EINVAL, errno.ENOENT):
            problems.append(f"cannot unmount {path}: {os.strerror(err)}")
            continue
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            problems.append(f"cannot remove {path}: {exc.strerror}")
    if problems:
        raise NamespaceError("; ".join(problems))
