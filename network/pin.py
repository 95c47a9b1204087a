"""The short-lived helper that pins a pod's namespaces (our take on cri-o's pinns).

Run by :func:`network.namespaces.pin_namespaces`, never imported by skiffd itself::

    python -I -S network/pin.py [--net PATH] [--ipc PATH] [--uts PATH]
        [--hostname NAME] [--sysctl NAME RELPATH VALUE]...

(``python -m network.pin`` works the same; running the file skips runpy and site.)

skiffd is multi-threaded (asyncio, gRPC), so it must not unshare or fork; this process
does it and exits, and the bind mounts it leaves keep the namespaces alive without any
long-running process.

The PATHs already exist as empty files (the parent creates them, so it knows exactly
what to remove on failure). RELPATH is the sysctl's path under /proc/sys, NAME its name
for messages. Steps: unshare the requested namespaces, set the hostname, write the
sysctls, bring ``lo`` up, bind-mount ``/proc/thread-self/ns/<kind>`` onto each PATH. The
mounts land in the caller's mount namespace because this process keeps it.

On failure: one JSON line on stderr, ``{"kind": "sysctl"|"namespace", "message": ...,
"errno": int|null}``, and exit status 1. Cleaning up mounts already made is the parent's
job, so that a helper killed at any point is handled by the same code.

Start-up is most of this helper's cost, so it imports only os, sys, errno, ctypes,
fcntl and struct. ``json`` and ``socket`` are avoided on purpose: they pull in ``re``
and ``enum`` and made the helper ~8 ms slower (a run is ~17 ms, ~9 of it the bare
interpreter). So the spec comes as plain arguments, the error line is encoded by hand,
and socket(2)/sethostname(2) go through ctypes like unshare(2) and mount(2).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
import sys

CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
# struct ifreq: char ifr_name[IFNAMSIZ]; then a union whose largest member makes the
# whole struct 40 bytes on 64-bit Linux; ifr_flags is a short at the union's start.
_IFREQ = "16sh22x"

AF_INET = 2
SOCK_DGRAM = 2
SOCK_CLOEXEC = 0o2000000

KINDS = {"net": CLONE_NEWNET, "ipc": CLONE_NEWIPC, "uts": CLONE_NEWUTS}

# errno values that say the sysctl or its value is wrong (the pod spec's fault), as
# opposed to the node being in trouble.
SYSCTL_USER_ERRNOS = frozenset(
    {errno.EINVAL, errno.ENOENT, errno.EACCES, errno.EPERM, errno.ERANGE, errno.EOVERFLOW}
)


class PinFailure(Exception):
    def __init__(self, kind: str, message: str, err: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.errno = err


def _oserror(err: int) -> str:
    return f"{errno.errorcode.get(err, str(err))} ({os.strerror(err)})"


def _libc() -> ctypes.CDLL:
    # CDLL(None) is the libc already loaded into this interpreter; ctypes.util.find_library
    # would spawn processes and cost more than the whole helper.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.unshare.argtypes = [ctypes.c_int]
    libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    libc.socket.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    libc.mount.argtypes = [
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_ulong,
        ctypes.c_char_p,
    ]
    return libc


def _sysctl_allowed(relpath: str, kinds: set[str]) -> bool:
    """Second line of defence: never write a sysctl of a namespace we did not create
    (that would change the host). The parent has validated the names already."""
    parts = relpath.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return False
    if parts[0] == "net":
        return "net" in kinds and len(parts) > 1
    if parts[0] == "kernel" or parts[:2] == ["fs", "mqueue"]:
        return "ipc" in kinds
    return False


def _write_sysctl(name: str, relpath: str, value: str) -> None:
    try:
        fd = os.open("/proc/sys/" + relpath, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        err = exc.errno or errno.EIO
        what = "does not exist on this kernel" if err == errno.ENOENT else "cannot be opened"
        kind = "sysctl" if err in SYSCTL_USER_ERRNOS else "namespace"
        raise PinFailure(kind, f"sysctl {name} {what}: {_oserror(err)}", err) from None
    try:
        # One write of the whole value: procfs parses each write on its own.
        os.write(fd, value.encode())
    except OSError as exc:
        err = exc.errno or errno.EIO
        kind = "sysctl" if err in SYSCTL_USER_ERRNOS else "namespace"
        raise PinFailure(
            kind, f"sysctl {name}={value!r} was refused by the kernel: {_oserror(err)}", err
        ) from None
    finally:
        os.close(fd)


def _loopback_up(libc: ctypes.CDLL) -> None:
    # The socket belongs to the netns current at its creation: ours, after unshare.
    # Setting IFF_UP on lo makes the kernel add 127.0.0.1/8 and ::1 itself.
    fd = libc.socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0)
    if fd < 0:
        err = ctypes.get_errno()
        raise PinFailure("namespace", f"cannot open a socket: {_oserror(err)}", err)
    try:
        req = fcntl.ioctl(fd, SIOCGIFFLAGS, struct.pack(_IFREQ, b"lo", 0))
        flags = struct.unpack(_IFREQ, req)[1]
        fcntl.ioctl(fd, SIOCSIFFLAGS, struct.pack(_IFREQ, b"lo", flags | IFF_UP))
    except OSError as exc:
        err = exc.errno or errno.EIO
        raise PinFailure("namespace", f"cannot bring up lo: {_oserror(err)}", err) from None
    finally:
        os.close(fd)


class Spec:
    def __init__(self) -> None:
        self.targets: dict[str, str] = {}
        self.hostname = ""
        self.sysctls: list[tuple[str, str, str]] = []


def parse_args(argv: list[str]) -> Spec:
    spec = Spec()
    i = 0
    while i < len(argv):
        opt = argv[i]
        if opt in ("--net", "--ipc", "--uts") and i + 1 < len(argv):
            spec.targets[opt[2:]] = argv[i + 1]
            i += 2
        elif opt == "--hostname" and i + 1 < len(argv):
            spec.hostname = argv[i + 1]
            i += 2
        elif opt == "--sysctl" and i + 3 < len(argv):
            spec.sysctls.append((argv[i + 1], argv[i + 2], argv[i + 3]))
            i += 4
        else:
            raise PinFailure("namespace", f"bad arguments at {opt!r}; see network/pin.py")
    if not spec.targets:
        raise PinFailure("namespace", "nothing to pin: no namespace was requested")
    for name, relpath, _ in spec.sysctls:
        if not _sysctl_allowed(relpath, set(spec.targets)):
            raise PinFailure(
                "sysctl", f"sysctl {name} is not in a namespace this pod gets of its own"
            )
    return spec


def pin(spec: Spec) -> None:
    libc = _libc()
    flags = 0
    for kind in spec.targets:
        flags |= KINDS[kind]
    if libc.unshare(flags) != 0:
        err = ctypes.get_errno()
        kinds = ", ".join(spec.targets)
        raise PinFailure("namespace", f"unshare({kinds}) failed: {_oserror(err)}", err)

    if spec.hostname and "uts" in spec.targets:
        raw = spec.hostname.encode()
        if libc.sethostname(raw, len(raw)) != 0:
            err = ctypes.get_errno()
            raise PinFailure(
                "namespace", f"cannot set hostname {spec.hostname!r}: {_oserror(err)}", err
            )

    # Sysctls before lo comes up, so that e.g. net.ipv6.conf.all.disable_ipv6 is in
    # force before the kernel gives lo its addresses.
    for name, relpath, value in spec.sysctls:
        _write_sysctl(name, relpath, value)

    if "net" in spec.targets:
        _loopback_up(libc)

    for kind, target in spec.targets.items():
        # thread-self, not self: unshare changed this thread's namespaces (the only
        # thread here, but say what we mean).
        source = f"/proc/thread-self/ns/{kind}".encode()
        if libc.mount(source, os.fsencode(target), None, MS_BIND, None) != 0:
            err = ctypes.get_errno()
            raise PinFailure(
                "namespace",
                f"cannot bind-mount the {kind} namespace on {target}: {_oserror(err)}",
                err,
            )


def _json_str(text: str) -> str:
    # Enough of JSON for our one line: quote, backslash and control characters escaped.
    out = []
    for ch in text:
        if ch in '"\\' or ch < " " or ch == "\x7f":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def error_line(failure: PinFailure) -> str:
    err = "null" if failure.errno is None else str(int(failure.errno))
    return (
        f'{{"kind": {_json_str(failure.kind)}, "message": {_json_str(failure.message)}, '
        f'"errno": {err}}}'
    )


def main(argv: list[str]) -> int:
    try:
        pin(parse_args(argv))
    except PinFailure as exc:
        sys.stderr.write(error_line(exc) + "\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
