"""Pinned pod namespaces on the real kernel: made by the helper, seen through nsenter,
and gone without a trace after unpin or a failure. Needs root.

Every test works in its own ``/tmp/skiff-ns-*`` directory and, whatever happens, unmounts
and removes everything under it and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cri.errors import status_of
from network import namespaces
from network.namespaces import (
    InvalidSysctl,
    NamespaceError,
    PinnedNamespaces,
    PinRequest,
    namespace_alive,
    pin_namespaces,
    unpin_namespaces,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="pinning namespaces needs root")

MNT_DETACH = 0x2
_libc = ctypes.CDLL(None, use_errno=True)
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below ``root`` in our mount namespace, deepest first."""
    found = []
    prefix = str(root).rstrip("/") + "/"
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
            if point == str(root) or point.startswith(prefix):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def files_under(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*") if not p.is_dir())


def processes_of(pin_dir: Path) -> list[str]:
    """Our unreaped children, and any process (say an orphaned helper) naming pin_dir."""
    me, found = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == me or str(pin_dir).encode() in cmdline:
            found.append(f"{entry}: {cmdline.decode(errors='replace')}")
    return found


@pytest.fixture
def pin_dir() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="skiff-ns-"))
    try:
        yield root / "ns"
    finally:
        for point in mounts_under(root):
            _libc.umount2(point.encode(), MNT_DETACH)
        shutil.rmtree(root, ignore_errors=True)


def assert_nothing_left(pin_dir: Path) -> None:
    assert mounts_under(pin_dir) == []
    if pin_dir.exists():
        assert files_under(pin_dir) == []
    assert processes_of(pin_dir) == []


def nsenter(pinned: PinnedNamespaces, *command: str) -> str:
    args = ["nsenter"]
    for kind, path in (("net", pinned.net), ("ipc", pinned.ipc), ("uts", pinned.uts)):
        if path:
            args.append(f"--{kind}={path}")
    done = subprocess.run([*args, *command], capture_output=True, text=True, timeout=30, check=True)
    return done.stdout.strip()


def host_sysctl(relpath: str) -> str:
    return Path("/proc/sys", relpath).read_text().strip()


def test_pin_all_three(pin_dir: Path) -> None:
    port_start = host_sysctl("net/ipv4/ip_unprivileged_port_start")
    shm_rmid = host_sysctl("kernel/shm_rmid_forced")
    hostname = socket.gethostname()
    request = PinRequest(
        sandbox_id="sb-all",
        pin_dir=pin_dir,
        hostname="pod-xyz",
        sysctls={"net.ipv4.ip_unprivileged_port_start": "80", "kernel.shm_rmid_forced": "1"},
    )
    pinned = asyncio.run(pin_namespaces(request))

    assert pinned == PinnedNamespaces(
        net=str(pin_dir / "net" / "sb-all"),
        ipc=str(pin_dir / "ipc" / "sb-all"),
        uts=str(pin_dir / "uts" / "sb-all"),
    )
    assert processes_of(pin_dir) == []
    for kind, path in (("net", pinned.net), ("ipc", pinned.ipc), ("uts", pinned.uts)):
        assert path is not None
        assert namespace_alive(path)
        assert os.stat(path).st_ino != os.stat(f"/proc/self/ns/{kind}").st_ino
    assert (pin_dir.stat().st_mode & 0o777) == 0o711
    assert ((pin_dir / "net").stat().st_mode & 0o777) == 0o711

    assert nsenter(pinned, "hostname") == "pod-xyz"
    link = nsenter(pinned, "ip", "-o", "link", "show", "dev", "lo")
    assert re.search(r"<[^>]*\bUP\b[^>]*>", link), link
    assert "inet 127.0.0.1/8" in nsenter(pinned, "ip", "-o", "-4", "addr", "show", "dev", "lo")
    inside = nsenter(
        pinned,
        "cat",
        "/proc/sys/net/ipv4/ip_unprivileged_port_start",
        "/proc/sys/kernel/shm_rmid_forced",
    )
    assert inside.split() == ["80", "1"]
    # ... and the host kept its own.
    assert host_sysctl("net/ipv4/ip_unprivileged_port_start") == port_start
    assert host_sysctl("kernel/shm_rmid_forced") == shm_rmid
    assert socket.gethostname() == hostname

    asyncio.run(unpin_namespaces(pinned))
    for path in pinned.paths():
        assert not os.path.exists(path)
        assert not namespace_alive(path)
    assert_nothing_left(pin_dir)
    asyncio.run(unpin_namespaces(pinned))  # twice is fine


def test_slash_form_and_mqueue_sysctls(pin_dir: Path) -> None:
    msg_max = host_sysctl("fs/mqueue/msg_max")
    want = "11" if msg_max != "11" else "12"
    request = PinRequest(
        sandbox_id="sb-slash",
        pin_dir=pin_dir,
        sysctls={"net/ipv4/conf/lo/rp_filter": "2", "fs.mqueue.msg_max": want},
    )
    pinned = asyncio.run(pin_namespaces(request))
    try:
        inside = nsenter(
            pinned, "cat", "/proc/sys/net/ipv4/conf/lo/rp_filter", "/proc/sys/fs/mqueue/msg_max"
        )
        assert inside.split() == ["2", want]
        assert host_sysctl("fs/mqueue/msg_max") == msg_max
    finally:
        asyncio.run(unpin_namespaces(pinned))
    assert_nothing_left(pin_dir)


def test_net_only(pin_dir: Path) -> None:
    hostname = socket.gethostname()
    request = PinRequest("sb-net", pin_dir, ipc=False, uts=False, hostname="ignored-without-uts")
    pinned = asyncio.run(pin_namespaces(request))
    try:
        assert pinned == PinnedNamespaces(str(pin_dir / "net" / "sb-net"), None, None)
        assert files_under(pin_dir) == [str(pin_dir / "net" / "sb-net")]
        assert namespace_alive(str(pinned.net))
        assert "inet 127.0.0.1/8" in nsenter(pinned, "ip", "-o", "-4", "addr", "show", "lo")
        # the host's UTS namespace is the pod's: its hostname must not have changed
        assert socket.gethostname() == hostname
    finally:
        asyncio.run(unpin_namespaces(pinned))
    assert_nothing_left(pin_dir)


def test_uts_only_sets_the_hostname_there_only(pin_dir: Path) -> None:
    hostname = socket.gethostname()
    pinned = asyncio.run(
        pin_namespaces(PinRequest("sb-uts", pin_dir, net=False, ipc=False, hostname="pod-u"))
    )
    try:
        assert pinned == PinnedNamespaces(None, None, str(pin_dir / "uts" / "sb-uts"))
        assert nsenter(pinned, "hostname") == "pod-u"
        assert socket.gethostname() == hostname
    finally:
        asyncio.run(unpin_namespaces(pinned))
    assert_nothing_left(pin_dir)


def test_none_pins_nothing(pin_dir: Path) -> None:
    request = PinRequest("sb-none", pin_dir, net=False, ipc=False, uts=False)
    pinned = asyncio.run(pin_namespaces(request))
    assert pinned == PinnedNamespaces(None, None, None)
    assert not pin_dir.exists()
    asyncio.run(unpin_namespaces(pinned))


def test_value_the_kernel_refuses_leaves_nothing(pin_dir: Path) -> None:
    port_start = host_sysctl("net/ipv4/ip_unprivileged_port_start")
    request = PinRequest(
        "sb-bad",
        pin_dir,
        hostname="pod-bad",
        sysctls={"net.ipv4.ip_unprivileged_port_start": "notanumber"},
    )
    with pytest.raises(InvalidSysctl) as caught:
        asyncio.run(pin_namespaces(request))
    message = str(caught.value)
    assert "net.ipv4.ip_unprivileged_port_start" in message
    assert "EINVAL" in message
    assert status_of(caught.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert host_sysctl("net/ipv4/ip_unprivileged_port_start") == port_start
    assert_nothing_left(pin_dir)


def test_sysctl_this_kernel_lacks_leaves_nothing(pin_dir: Path) -> None:
    request = PinRequest("sb-nosuch", pin_dir, sysctls={"net.ipv4.no_such_sysctl_xyz": "1"})
    with pytest.raises(InvalidSysctl, match=r"net\.ipv4\.no_such_sysctl_xyz does not exist"):
        asyncio.run(pin_namespaces(request))
    assert_nothing_left(pin_dir)


def test_existing_pin_file_is_neither_taken_over_nor_removed(pin_dir: Path) -> None:
    pinned = asyncio.run(pin_namespaces(PinRequest("sb-dup", pin_dir)))
    try:
        with pytest.raises(NamespaceError, match="already exists"):
            asyncio.run(pin_namespaces(PinRequest("sb-dup", pin_dir, net=False)))
        # the first pin is untouched, including the kinds the failed call did not reach
        for path in pinned.paths():
            assert namespace_alive(path)
    finally:
        asyncio.run(unpin_namespaces(pinned))
    assert_nothing_left(pin_dir)


def test_failure_after_some_mounts_undoes_them(
    pin_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Make the last mount (uts) fail after net and ipc are mounted: the uts target is
    # swapped for a symlink to a directory, and a file cannot be bound on a directory.
    create = namespaces._create_targets
    elsewhere = pin_dir.parent / "a-directory"

    def create_then_spoil(root: Path, targets: list[Path], created: list[Path]) -> None:
        create(root, targets, created)
        uts = root / "uts" / "sb-spoilt"
        uts.unlink()
        elsewhere.mkdir()
        uts.symlink_to(elsewhere)

    monkeypatch.setattr(namespaces, "_create_targets", create_then_spoil)
    with pytest.raises(NamespaceError, match="cannot bind-mount the uts namespace"):
        asyncio.run(pin_namespaces(PinRequest("sb-spoilt", pin_dir)))
    assert_nothing_left(pin_dir)
    assert mounts_under(elsewhere) == []


def test_helper_overrunning_its_time_is_killed_and_undone(pin_dir: Path) -> None:
    # A helper cannot even start in a millisecond: this is the kill path.
    with pytest.raises(NamespaceError, match=r"did not finish in 0\.001s"):
        asyncio.run(pin_namespaces(PinRequest("sb-slow", pin_dir), timeout=0.001))
    assert_nothing_left(pin_dir)


@pytest.mark.parametrize("delay", [0.0, 0.005, 0.015])
def test_cancelled_pin_leaves_nothing(pin_dir: Path, delay: float) -> None:
    async def main() -> None:
        task = asyncio.create_task(pin_namespaces(PinRequest("sb-cancel", pin_dir)))
        await asyncio.sleep(delay)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            # The pin may have won the race; then it is a normal pin to undo.
            await unpin_namespaces(await task)

    asyncio.run(main())
    assert_nothing_left(pin_dir)


def test_unpin_of_missing_files_is_fine(pin_dir: Path) -> None:
    gone = PinnedNamespaces(
        str(pin_dir / "net" / "never"), None, str(pin_dir / "nowhere" / "never")
    )
    asyncio.run(unpin_namespaces(gone))
    assert not namespace_alive(str(gone.net))


def test_namespace_alive_is_false_for_plain_files_and_proc_links(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.touch()
    assert not namespace_alive(str(plain))
    assert not namespace_alive(str(tmp_path / "missing"))
    assert not namespace_alive("/proc/self/ns/net")  # a symlink, not a pin


def test_fifty_cycles_leak_nothing(pin_dir: Path) -> None:
    async def main() -> None:
        for i in range(50):
            pinned = await pin_namespaces(
                PinRequest(
                    f"sb-cycle-{i}",
                    pin_dir,
                    hostname=f"pod-{i}",
                    sysctls={"net.ipv4.ip_forward": "1", "kernel.shmmni": "4000"},
                )
            )
            assert all(namespace_alive(p) for p in pinned.paths())
            await unpin_namespaces(pinned)

    asyncio.run(main())
    assert_nothing_left(pin_dir)
