"""skiff's RuntimeDefault seccomp profile and the loading of profiles.

The profile is checked as data: the OCI shape runc and crun read, what it allows and
what it refuses. Where libseccomp is installed (runc needs it, so on every node),
every syscall name is also checked to be one libseccomp knows on some architecture
the profile lists, since runc silently skips names it cannot resolve: a typo would
quietly deny a call.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import pytest

from cri.errors import status_of
from runtime.seccomp import (
    ALWAYS_DENIED,
    CAPABILITY_SYSCALLS,
    DEFAULT_PROFILE_PATH,
    SeccompError,
    load_profile,
    profile_problem,
    with_capabilities,
)

ALLOW = "SCMP_ACT_ALLOW"
ENOSYS = 38
CLONE_NEW_FLAGS = 0x7E020000  # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET


@pytest.fixture(scope="module")
def profile() -> dict[str, Any]:
    loaded = load_profile("runtime/default", "", DEFAULT_PROFILE_PATH)
    assert loaded is not None
    return loaded


def plainly_allowed(profile: dict[str, Any]) -> set[str]:
    return {
        name
        for entry in profile["syscalls"]
        if entry["action"] == ALLOW and not entry.get("args")
        for name in entry["names"]
    }


def allowed_somehow(profile: dict[str, Any]) -> set[str]:
    return {
        name for entry in profile["syscalls"] if entry["action"] == ALLOW for name in entry["names"]
    }


def test_default_profile_is_found_next_to_the_code() -> None:
    assert DEFAULT_PROFILE_PATH.is_file()
    assert DEFAULT_PROFILE_PATH.parts[-3:] == ("deploy", "seccomp", "default.json")


def test_default_profile_has_the_oci_shape(profile: dict[str, Any]) -> None:
    assert profile_problem(profile) == ""
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    assert profile["defaultErrnoRet"] == 1
    assert set(profile["architectures"]) == {
        "SCMP_ARCH_X86_64",
        "SCMP_ARCH_X86",
        "SCMP_ARCH_X32",
        "SCMP_ARCH_AARCH64",
        "SCMP_ARCH_ARM",
    }
    for entry in profile["syscalls"]:
        assert set(entry) <= {"names", "action", "args", "errnoRet"}
        assert entry["names"] and all(isinstance(n, str) and n for n in entry["names"])
        assert entry["action"] in (ALLOW, "SCMP_ACT_ERRNO")
        for arg in entry.get("args", []):
            assert set(arg) == {"index", "value", "valueTwo", "op"}
            assert arg["op"].startswith("SCMP_CMP_")


def test_no_syscall_is_listed_twice_without_an_argument_filter(profile: dict[str, Any]) -> None:
    plain = Counter(
        name for entry in profile["syscalls"] if not entry.get("args") for name in entry["names"]
    )
    assert [name for name, count in plain.items() if count > 1] == []
    filtered = {n for e in profile["syscalls"] if e.get("args") for n in e["names"]}
    assert filtered.isdisjoint(plain)


@pytest.mark.parametrize(
    "name",
    [
        "read",
        "write",
        "openat",
        "close",
        "execve",
        "mmap",
        "futex",
        "wait4",
        "rt_sigaction",
        "socketpair",
        "bind",
        "accept4",
        "epoll_wait",
        "ptrace",
        "capset",
        "setgroups",
        "prctl",
        "chroot",
        "statx",
        "getdents64",
    ],
)
def test_ordinary_calls_are_allowed(profile: dict[str, Any], name: str) -> None:
    assert name in plainly_allowed(profile)


@pytest.mark.parametrize(
    "name",
    sorted(
        ALWAYS_DENIED
        | {"mount", "umount2", "setns", "pivot_root", "bpf", "perf_event_open", "reboot"}
        | {"init_module", "finit_module", "delete_module", "swapon", "acct", "settimeofday"}
        | {"clock_settime", "syslog", "iopl"}
    ),
)
def test_dangerous_calls_are_denied(profile: dict[str, Any], name: str) -> None:
    assert name not in allowed_somehow(profile)


def test_clone_and_unshare_only_without_namespace_flags(profile: dict[str, Any]) -> None:
    for name in ("clone", "unshare"):
        entries = [e for e in profile["syscalls"] if name in e["names"]]
        assert len(entries) == 1
        assert entries[0]["action"] == ALLOW
        assert entries[0]["args"] == [
            {"index": 0, "value": CLONE_NEW_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}
        ]


def test_clone3_answers_enosys_so_glibc_falls_back_to_clone(profile: dict[str, Any]) -> None:
    entries = [e for e in profile["syscalls"] if "clone3" in e["names"]]
    assert entries == [{"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS}]


def test_socket_refuses_only_vsock(profile: dict[str, Any]) -> None:
    entries = [e for e in profile["syscalls"] if "socket" in e["names"]]
    assert [e["args"] for e in entries] == [
        [{"index": 0, "value": 40, "valueTwo": 0, "op": "SCMP_CMP_NE"}]
    ]


def test_personality_only_for_ordinary_values(profile: dict[str, Any]) -> None:
    values = {
        arg["value"]
        for e in profile["syscalls"]
        if "personality" in e["names"]
        for arg in e["args"]
    }
    assert values == {0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF}


def _libseccomp() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("seccomp")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def test_every_name_is_a_syscall_libseccomp_knows(profile: dict[str, Any]) -> None:
    lib = _libseccomp()
    if lib is None:
        pytest.skip("libseccomp is not installed")
    lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
    lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_syscall_resolve_name_arch.argtypes = [ctypes.c_uint32, ctypes.c_char_p]
    arches = [
        lib.seccomp_arch_resolve_name(a.encode())
        for a in ("x86_64", "x86", "x32", "aarch64", "arm")
    ]
    names = {n for e in profile["syscalls"] for n in e["names"]}
    names |= {n for calls in CAPABILITY_SYSCALLS.values() for n in calls}
    # Calls newer than the libseccomp of the node cannot be checked here.
    too_new = {"cachestat", "fchmodat2", "futex_wake", "futex_wait", "futex_requeue"}
    too_new |= {"set_mempolicy_home_node"}
    unknown = sorted(
        name
        for name in names - too_new
        if all(lib.seccomp_syscall_resolve_name_arch(a, name.encode()) < 0 for a in arches)
    )
    assert unknown == []


# ---- capabilities widen the default -------------------------------------------------


def test_no_capability_adds_nothing(profile: dict[str, Any]) -> None:
    assert with_capabilities(profile, ["CAP_CHOWN", "CAP_KILL"]) == profile


def test_sys_admin_allows_mounting_and_lifts_the_namespace_filter(
    profile: dict[str, Any],
) -> None:
    before = json.dumps(profile, sort_keys=True)
    widened = with_capabilities(profile, ["CAP_SYS_ADMIN"])
    assert json.dumps(profile, sort_keys=True) == before  # the input is left alone
    plain = plainly_allowed(widened)
    assert {"mount", "umount2", "setns", "clone", "unshare", "sethostname"} <= plain
    # clone and unshare keep one rule only: the unconditional one.
    for name in ("clone", "unshare"):
        assert [e for e in widened["syscalls"] if name in e["names"] and e.get("args")] == []
    names = Counter(n for e in widened["syscalls"] if not e.get("args") for n in e["names"])
    assert [n for n, c in names.items() if c > 1] == []
    assert not ALWAYS_DENIED & allowed_somehow(widened)


def test_each_capability_adds_its_own_calls(profile: dict[str, Any]) -> None:
    assert "reboot" in plainly_allowed(with_capabilities(profile, ["CAP_SYS_BOOT"]))
    assert "settimeofday" in plainly_allowed(with_capabilities(profile, ["CAP_SYS_TIME"]))
    widened = with_capabilities(profile, ["CAP_SYS_TIME"])
    assert "mount" not in allowed_somehow(widened)
    assert len(widened["syscalls"]) == len(profile["syscalls"]) + 1


def test_always_denied_stays_denied_with_every_capability(profile: dict[str, Any]) -> None:
    widened = with_capabilities(profile, list(CAPABILITY_SYSCALLS))
    assert not ALWAYS_DENIED & allowed_somehow(widened)
    assert "clone3" not in allowed_somehow(widened)


# ---- loading ------------------------------------------------------------------------


def test_unconfined_is_none() -> None:
    assert load_profile("unconfined", "", DEFAULT_PROFILE_PATH) is None


def test_localhost_profile_is_read(tmp_path: Path) -> None:
    file = tmp_path / "profile.json"
    own = {"defaultAction": "SCMP_ACT_LOG", "syscalls": []}
    file.write_text(json.dumps(own))
    assert load_profile("localhost", str(file), DEFAULT_PROFILE_PATH) == own


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "must be a JSON object"),
        ('{"syscalls": []}', "no defaultAction"),
        (
            '{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"action": "x"}]}',
            r"syscalls\[0\] without",
        ),
        ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": {}}', "not a list"),
    ],
)
def test_bad_localhost_profile_is_refused_naming_the_file(
    tmp_path: Path, content: str, message: str
) -> None:
    file = tmp_path / "bad.json"
    file.write_text(content)
    with pytest.raises(SeccompError, match=message) as info:
        load_profile("localhost", str(file), DEFAULT_PROFILE_PATH)
    assert str(file) in str(info.value)
    assert status_of(info.value) == grpc.StatusCode.INVALID_ARGUMENT


def test_localhost_profile_must_exist_and_be_absolute(tmp_path: Path) -> None:
    with pytest.raises(SeccompError, match="does not exist") as info:
        load_profile("localhost", str(tmp_path / "nope.json"), DEFAULT_PROFILE_PATH)
    assert status_of(info.value) == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(SeccompError, match="absolute"):
        load_profile("localhost", "profiles/p.json", DEFAULT_PROFILE_PATH)
    with pytest.raises(SeccompError, match="localhost_ref"):
        load_profile("localhost", "", DEFAULT_PROFILE_PATH)


def test_missing_default_profile_is_an_internal_error(tmp_path: Path) -> None:
    with pytest.raises(SeccompError, match="installation is incomplete") as info:
        load_profile("runtime/default", "", tmp_path / "default.json")
    assert status_of(info.value) == grpc.StatusCode.INTERNAL


def test_broken_default_profile_is_an_internal_error(tmp_path: Path) -> None:
    file = tmp_path / "default.json"
    file.write_text("{}")
    with pytest.raises(SeccompError, match="defaultAction") as info:
        load_profile("runtime/default", "", file)
    assert status_of(info.value) == grpc.StatusCode.INTERNAL


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(SeccompError, match="unknown seccomp profile type 'docker/default'"):
        load_profile("docker/default", "", DEFAULT_PROFILE_PATH)


def test_a_profile_that_is_no_regular_file_is_refused_without_reading_it(
    tmp_path: Path,
) -> None:
    """A FIFO would block the reader until a writer came (it stalled every call), and a
    device would never end."""
    fifo = tmp_path / "profile.json"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero"), tmp_path):
        with pytest.raises(SeccompError, match="not a regular file"):
            load_profile("localhost", str(path), DEFAULT_PROFILE_PATH)


def test_a_profile_too_big_or_too_deep_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    big.write_text('{"defaultAction": "SCMP_ACT_ALLOW", "pad": "' + "x" * (2 << 20) + '"}')
    with pytest.raises(SeccompError, match="the limit is"):
        load_profile("localhost", str(big), DEFAULT_PROFILE_PATH)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(SeccompError, match="nested too deeply") as err:
        load_profile("localhost", str(deep), DEFAULT_PROFILE_PATH)
    assert status_of(err.value) == grpc.StatusCode.INVALID_ARGUMENT
