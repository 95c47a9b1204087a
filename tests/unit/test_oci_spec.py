"""Capabilities and the OCI runtime spec built from a ContainerSpec, on fake hosts.

No runc here: the spec is checked as data. A fake bounding set stands for a host
whose kernel (or parent container) lacks some capabilities; /dev/null stands for a
device on every machine.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from cri.errors import status_of
from runtime.capabilities import (
    ALL_CAPABILITIES,
    CAPABILITY_NUMBERS,
    DEFAULT_CAPABILITIES,
    UnknownCapability,
    decode_mask,
    effective_capabilities,
    host_bounding_set,
)
from runtime.cgroups import CgroupResources
from runtime.container_spec import (
    HOST,
    NEW,
    ContainerSpec,
    DeviceSpec,
    MountSpec,
    SecuritySpec,
    UserSpec,
)
from runtime.oci_spec import (
    DEFAULT_MASKED_PATHS,
    DEFAULT_READONLY_PATHS,
    HostFacts,
    SpecError,
    build_spec,
    host_devices,
    host_facts,
)
from runtime.seccomp import DEFAULT_PROFILE_PATH, SeccompError

# A host like ours: everything but CAP_SYS_RESOURCE.
BOUNDING = ALL_CAPABILITIES - {"CAP_SYS_RESOURCE"}
HOST_FACTS = HostFacts(
    bounding_set=BOUNDING,
    cgroup_version=1,
    min_oom_score_adj=None,
    seccomp_default_path=DEFAULT_PROFILE_PATH,
)
NULL = os.stat("/dev/null")


def container(**changes: Any) -> ContainerSpec:
    spec = ContainerSpec(
        id="c1",
        rootfs="/var/lib/skiff/containers/c1/rootfs",
        args=("/bin/sh", "-c", "echo hi"),
        env=("PATH=/bin", "HOME=/root"),
        cwd="/work",
        user=UserSpec(1000, 1000, (10, 20)),
        hostname="pod-a",
        namespaces={
            "network": "/run/skiff/netns/pod-a",
            "ipc": "/run/skiff/ipcns/pod-a",
            "uts": "/run/skiff/utsns/pod-a",
            "mount": NEW,
        },
        cgroups_path="/kubepods/pod-a/c1",
        annotations={"io.kubernetes.pod.name": "a"},
    )
    return replace(spec, **changes)


def secure(**changes: Any) -> SecuritySpec:
    return replace(SecuritySpec(), **changes)


def mount_of(oci: dict[str, Any], destination: str) -> list[dict[str, Any]]:
    return [m for m in oci["mounts"] if m["destination"] == destination]


# ---- capabilities -------------------------------------------------------------------


def test_capability_table_is_complete_and_numbered() -> None:
    assert sorted(CAPABILITY_NUMBERS.values()) == list(range(41))
    assert CAPABILITY_NUMBERS["CAP_CHOWN"] == 0
    assert CAPABILITY_NUMBERS["CAP_SYS_ADMIN"] == 21
    assert CAPABILITY_NUMBERS["CAP_CHECKPOINT_RESTORE"] == 40


def test_default_capabilities_are_cri_o_s() -> None:
    assert set(DEFAULT_CAPABILITIES) == {
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_KILL",
    }


def test_mask_decoding_keeps_only_set_bits() -> None:
    assert decode_mask(0) == frozenset()
    assert decode_mask(0b1001) == {"CAP_CHOWN", "CAP_FOWNER"}
    assert decode_mask(0x1FFFEFFFFFF) == BOUNDING
    assert decode_mask((1 << 63) | 1) == {"CAP_CHOWN"}  # bits the table lacks are ignored


def test_bounding_set_is_read_from_status(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapInh:\t0000000000000000\nCapBnd:\t0000000000002001\n")
    assert host_bounding_set(status) == {"CAP_CHOWN", "CAP_NET_RAW"}
    assert host_bounding_set() <= ALL_CAPABILITIES  # this process's own


def test_defaults_when_nothing_is_asked() -> None:
    caps = effective_capabilities(False, [], [], BOUNDING)
    assert set(caps) == set(DEFAULT_CAPABILITIES)
    assert caps == sorted(caps, key=CAPABILITY_NUMBERS.__getitem__)


def test_names_with_or_without_prefix_in_any_case() -> None:
    caps = effective_capabilities(
        False, ["net_raw", "CAP_sys_time", "Sys_Nice"], ["kill"], BOUNDING
    )
    assert {"CAP_NET_RAW", "CAP_SYS_TIME", "CAP_SYS_NICE"} <= set(caps)
    assert "CAP_KILL" not in caps


def test_add_all_gives_the_bounding_set_minus_drops() -> None:
    caps = effective_capabilities(False, ["ALL"], ["NET_RAW"], BOUNDING)
    assert set(caps) == BOUNDING - {"CAP_NET_RAW"}
    assert "CAP_SYS_RESOURCE" not in caps


def test_drop_all_starts_empty_then_adds() -> None:
    assert effective_capabilities(False, [], ["all"], BOUNDING) == []
    assert effective_capabilities(False, ["NET_BIND_SERVICE"], ["ALL"], BOUNDING) == [
        "CAP_NET_BIND_SERVICE"
    ]


def test_drop_wins_over_add_of_the_same_name() -> None:
    assert "CAP_CHOWN" not in effective_capabilities(False, ["CHOWN"], ["CAP_CHOWN"], BOUNDING)


def test_privileged_is_the_whole_bounding_set() -> None:
    caps = effective_capabilities(True, [], ["ALL"], BOUNDING)
    assert set(caps) == BOUNDING
    assert len(caps) == 40


def test_never_beyond_the_bounding_set() -> None:
    small = frozenset({"CAP_CHOWN", "CAP_KILL", "CAP_NET_RAW"})
    assert effective_capabilities(False, [], [], small) == ["CAP_CHOWN", "CAP_KILL"]
    # A known capability the host lacks is no error, just left out.
    assert effective_capabilities(False, ["SYS_ADMIN", "NET_RAW"], [], small) == [
        "CAP_CHOWN",
        "CAP_KILL",
        "CAP_NET_RAW",
    ]
    assert set(effective_capabilities(True, [], [], small)) == small


@pytest.mark.parametrize(("add", "drop"), [(["NET_FOO"], []), ([], ["CAP_BOGUS"]), (["ALLL"], [])])
def test_unknown_names_are_refused(add: list[str], drop: list[str]) -> None:
    with pytest.raises(UnknownCapability, match="unknown capability") as info:
        effective_capabilities(False, add, drop, BOUNDING)
    assert (add + drop)[0] in str(info.value)
    assert status_of(info.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert isinstance(info.value, ValueError)
    with pytest.raises(UnknownCapability):
        effective_capabilities(True, add, drop, BOUNDING)


# ---- build_spec: a plain container --------------------------------------------------


def test_plain_container_process() -> None:
    oci = build_spec(container(), HOST_FACTS)
    assert oci["ociVersion"] == "1.0.2"
    process = oci["process"]
    assert process["args"] == ["/bin/sh", "-c", "echo hi"]
    assert process["env"] == ["PATH=/bin", "HOME=/root"]
    assert process["cwd"] == "/work"
    assert process["terminal"] is False
    assert process["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [10, 20]}
    assert process["noNewPrivileges"] is False
    caps = process["capabilities"]
    assert set(caps["bounding"]) == set(DEFAULT_CAPABILITIES)
    assert caps["effective"] == caps["permitted"] == caps["bounding"]
    assert caps["inheritable"] == [] and caps["ambient"] == []
    assert process["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 1048576, "soft": 1048576}]
    assert "oomScoreAdj" not in process
    assert oci["root"] == {"path": "/var/lib/skiff/containers/c1/rootfs", "readonly": False}
    assert oci["annotations"] == {"io.kubernetes.pod.name": "a"}


def test_default_capabilities_are_cut_to_the_bounding_set() -> None:
    host = replace(HOST_FACTS, bounding_set=frozenset({"CAP_CHOWN", "CAP_KILL"}))
    oci = build_spec(container(), host)
    assert oci["process"]["capabilities"]["bounding"] == ["CAP_CHOWN", "CAP_KILL"]


def test_unknown_capability_is_a_spec_error() -> None:
    spec = container(security=secure(capabilities_add=("CAP_TELEPORT",)))
    with pytest.raises(SpecError, match="CAP_TELEPORT") as info:
        build_spec(spec, HOST_FACTS)
    assert status_of(info.value) == grpc.StatusCode.INVALID_ARGUMENT


def test_nofile_limit_follows_the_host() -> None:
    oci = build_spec(container(), replace(HOST_FACTS, nofile_limit=20000))
    assert oci["process"]["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 20000, "soft": 20000}]


def test_oom_score_adj_is_raised_to_the_minimum() -> None:
    spec = container(oom_score_adj=-997)
    assert build_spec(spec, replace(HOST_FACTS, min_oom_score_adj=0))["process"]["oomScoreAdj"] == 0
    assert build_spec(spec, HOST_FACTS)["process"]["oomScoreAdj"] == -997
    higher = container(oom_score_adj=1000)
    assert (
        build_spec(higher, replace(HOST_FACTS, min_oom_score_adj=0))["process"]["oomScoreAdj"]
        == 1000
    )
    with pytest.raises(SpecError, match="oom_score_adj"):
        build_spec(container(oom_score_adj=-1001), HOST_FACTS)


def test_masked_and_readonly_paths_default_or_as_given() -> None:
    linux = build_spec(container(), HOST_FACTS)["linux"]
    assert linux["maskedPaths"] == list(DEFAULT_MASKED_PATHS)
    assert linux["readonlyPaths"] == list(DEFAULT_READONLY_PATHS)
    assert {"/proc/kcore", "/proc/keys", "/sys/firmware"} <= set(linux["maskedPaths"])
    assert "/proc/sys" in linux["readonlyPaths"]
    given = container(security=secure(masked_paths=("/proc/x",), readonly_paths=()))
    linux = build_spec(given, HOST_FACTS)["linux"]
    assert linux["maskedPaths"] == ["/proc/x"]
    assert "readonlyPaths" not in linux


def test_runtime_default_seccomp_is_the_default_profile() -> None:
    seccomp = build_spec(container(), HOST_FACTS)["linux"]["seccomp"]
    assert seccomp["defaultAction"] == "SCMP_ACT_ERRNO"
    allowed = {
        n for e in seccomp["syscalls"] if e["action"] == "SCMP_ACT_ALLOW" for n in e["names"]
    }
    assert "execve" in allowed and "mount" not in allowed


def test_runtime_default_seccomp_follows_the_capabilities() -> None:
    spec = container(security=secure(capabilities_add=("SYS_ADMIN",)))
    seccomp = build_spec(spec, HOST_FACTS)["linux"]["seccomp"]
    allowed = {
        n for e in seccomp["syscalls"] if e["action"] == "SCMP_ACT_ALLOW" for n in e["names"]
    }
    assert "mount" in allowed


def test_unconfined_and_localhost_seccomp(tmp_path: Path) -> None:
    unconfined = container(security=secure(seccomp="unconfined"))
    assert "seccomp" not in build_spec(unconfined, HOST_FACTS)["linux"]
    file = tmp_path / "p.json"
    file.write_text('{"defaultAction": "SCMP_ACT_ALLOW"}')
    local = container(security=secure(seccomp="localhost", seccomp_profile_path=str(file)))
    assert build_spec(local, HOST_FACTS)["linux"]["seccomp"] == {"defaultAction": "SCMP_ACT_ALLOW"}
    missing = container(security=secure(seccomp="localhost", seccomp_profile_path="/nope.json"))
    with pytest.raises(SeccompError, match=r"/nope\.json"):
        build_spec(missing, HOST_FACTS)


def test_missing_default_profile_fails_clearly(tmp_path: Path) -> None:
    host = replace(HOST_FACTS, seccomp_default_path=tmp_path / "gone.json")
    with pytest.raises(SeccompError, match=r"gone\.json") as info:
        build_spec(container(), host)
    assert status_of(info.value) == grpc.StatusCode.INTERNAL


def test_readonly_rootfs_and_no_new_privileges() -> None:
    oci = build_spec(
        container(security=secure(readonly_rootfs=True, no_new_privileges=True)), HOST_FACTS
    )
    assert oci["root"]["readonly"] is True
    assert oci["process"]["noNewPrivileges"] is True


def test_sysctls_and_cgroups_path() -> None:
    oci = build_spec(container(sysctls={"net.ipv4.ip_unprivileged_port_start": "0"}), HOST_FACTS)
    assert oci["linux"]["sysctl"] == {"net.ipv4.ip_unprivileged_port_start": "0"}
    assert oci["linux"]["cgroupsPath"] == "/kubepods/pod-a/c1"
    assert "sysctl" not in build_spec(container(), HOST_FACTS)["linux"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"args": ()}, "no command"),
        ({"cwd": "work"}, "must be absolute"),
    ],
)
def test_bad_process_is_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        build_spec(container(**changes), HOST_FACTS)


# ---- namespaces and hostname --------------------------------------------------------


def test_namespaces_new_joined_or_host() -> None:
    oci = build_spec(container(), HOST_FACTS)
    assert oci["linux"]["namespaces"] == [
        {"type": "pid"},
        {"type": "network", "path": "/run/skiff/netns/pod-a"},
        {"type": "ipc", "path": "/run/skiff/ipcns/pod-a"},
        {"type": "uts", "path": "/run/skiff/utsns/pod-a"},
        {"type": "mount"},
    ]
    assert oci["hostname"] == "pod-a"


def test_host_namespaces_are_left_out_and_then_no_hostname() -> None:
    spec = container(namespaces={"network": HOST, "ipc": HOST, "uts": HOST, "pid": HOST})
    oci = build_spec(spec, HOST_FACTS)
    assert oci["linux"]["namespaces"] == [{"type": "mount"}]
    assert "hostname" not in oci


def test_mount_namespace_is_always_new_and_cgroup_only_when_asked() -> None:
    spec = container(namespaces={"mount": HOST, "cgroup": NEW})
    types = build_spec(spec, HOST_FACTS)["linux"]["namespaces"]
    assert {"type": "mount"} in types and {"type": "cgroup"} in types
    assert {"type": "uts"} in types  # left out means new
    spec = container(namespaces={})
    assert "cgroup" not in {
        ns["type"] for ns in build_spec(spec, HOST_FACTS)["linux"]["namespaces"]
    }


def test_no_hostname_when_empty() -> None:
    assert "hostname" not in build_spec(container(hostname=""), HOST_FACTS)


@pytest.mark.parametrize(
    ("namespaces", "message"),
    [
        ({"user": NEW}, "unknown namespace kind 'user'"),
        ({"pid": "pod"}, "pid namespace 'pod'"),
        ({"network": ""}, "network namespace ''"),
    ],
)
def test_bad_namespaces_are_refused(namespaces: dict[str, str], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        build_spec(container(namespaces=namespaces), HOST_FACTS)


# ---- mounts -------------------------------------------------------------------------


def test_default_mounts() -> None:
    oci = build_spec(container(), HOST_FACTS)
    by_destination = {m["destination"]: m for m in oci["mounts"]}
    assert set(by_destination) == {
        "/proc",
        "/dev",
        "/dev/pts",
        "/dev/shm",
        "/dev/mqueue",
        "/sys",
        "/sys/fs/cgroup",
    }
    assert by_destination["/proc"]["type"] == "proc"
    assert by_destination["/dev"]["options"] == ["nosuid", "strictatime", "mode=755", "size=65536k"]
    pts = by_destination["/dev/pts"]["options"]
    assert {"newinstance", "ptmxmode=0666", "mode=0620", "gid=5"} <= set(pts)
    assert by_destination["/dev/mqueue"]["type"] == "mqueue"
    assert "ro" in by_destination["/sys"]["options"]
    assert "ro" in by_destination["/sys/fs/cgroup"]["options"]
    destinations = [m["destination"] for m in oci["mounts"]]
    assert destinations.index("/dev") < destinations.index("/dev/pts")
    assert destinations.index("/sys") < destinations.index("/sys/fs/cgroup")


def test_requested_mounts_follow_and_shm_replaces_the_default() -> None:
    shm = MountSpec("/dev/shm", "/run/skiff/shm/pod-a", "bind", ("rbind", "rprivate"))
    hosts = MountSpec("/etc/hosts", "/run/skiff/pod-a/hosts", "bind", ("rbind", "ro"))
    oci = build_spec(container(mounts=(hosts, shm)), HOST_FACTS)
    assert mount_of(oci, "/dev/shm") == [
        {
            "destination": "/dev/shm",
            "type": "bind",
            "source": "/run/skiff/shm/pod-a",
            "options": ["rbind", "rprivate"],
        }
    ]
    assert mount_of(oci, "/etc/hosts")[0]["source"] == "/run/skiff/pod-a/hosts"
    destinations = [m["destination"] for m in oci["mounts"]]
    assert destinations.index("/dev") < destinations.index("/dev/shm")
    assert destinations.index("/etc/hosts") < destinations.index("/dev/shm")  # given order


def test_a_parent_mount_goes_before_its_children() -> None:
    cache = MountSpec("/data/cache", "/host/cache")
    data = MountSpec("/data", "/host/data")
    oci = build_spec(container(mounts=(cache, data)), HOST_FACTS)
    destinations = [m["destination"] for m in oci["mounts"]]
    assert destinations.index("/data") < destinations.index("/data/cache")


def test_destination_is_normalized_before_replacing_a_default() -> None:
    oci = build_spec(container(mounts=(MountSpec("/dev/shm/", "/x"),)), HOST_FACTS)
    assert [m["source"] for m in mount_of(oci, "/dev/shm")] == ["/x"]


def test_relative_mount_destination_is_refused() -> None:
    with pytest.raises(SpecError, match="'data' must be absolute"):
        build_spec(container(mounts=(MountSpec("data", "/host/data"),)), HOST_FACTS)


# ---- resources ----------------------------------------------------------------------


STANDARD_RULES = [
    {"allow": False, "type": "a", "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 7, "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 8, "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 9, "access": "rwm"},
    {"allow": True, "type": "c", "major": 5, "minor": 0, "access": "rwm"},
    {"allow": True, "type": "c", "major": 5, "minor": 1, "access": "rwm"},
    {"allow": True, "type": "c", "major": 5, "minor": 2, "access": "rwm"},
    {"allow": True, "type": "c", "major": 136, "access": "rwm"},
]


def test_no_resources_still_restricts_devices() -> None:
    resources = build_spec(container(), HOST_FACTS)["linux"]["resources"]
    assert resources == {"devices": STANDARD_RULES}


def test_resources_map_to_oci_fields() -> None:
    r = CgroupResources(
        cpu_shares=512,
        cpu_quota=50000,
        cpu_period=100000,
        cpuset_cpus="0-1",
        cpuset_mems="0",
        memory_limit=64 << 20,
        memory_swap=128 << 20,
        pids_limit=100,
        hugepage_limits={"2MB": 4 << 20, "1GB": -1},
    )
    resources = build_spec(container(resources=r), HOST_FACTS)["linux"]["resources"]
    assert resources["cpu"] == {
        "shares": 512,
        "quota": 50000,
        "period": 100000,
        "cpus": "0-1",
        "mems": "0",
    }
    assert resources["memory"] == {"limit": 64 << 20, "swap": 128 << 20}
    assert resources["pids"] == {"limit": 100}
    # -1 (unlimited) has no unsigned OCI value, and is what a new cgroup has anyway.
    assert resources["hugepageLimits"] == [{"pageSize": "2MB", "limit": 4 << 20}]
    assert "unified" not in resources


def test_unlimited_values_pass_as_minus_one() -> None:
    r = CgroupResources(cpu_quota=-1, memory_limit=-1, pids_limit=-1)
    resources = build_spec(container(resources=r), HOST_FACTS)["linux"]["resources"]
    assert resources["cpu"] == {"quota": -1}
    assert resources["memory"] == {"limit": -1}
    assert resources["pids"] == {"limit": -1}


def test_only_given_fields_appear() -> None:
    r = CgroupResources(memory_limit=1 << 30)
    resources = build_spec(container(resources=r), HOST_FACTS)["linux"]["resources"]
    assert set(resources) == {"devices", "memory"}


def test_swap_is_left_out_without_swap_accounting() -> None:
    r = CgroupResources(memory_limit=64 << 20, memory_swap=64 << 20)
    host = replace(HOST_FACTS, swap_accounting=False)
    assert build_spec(container(resources=r), host)["linux"]["resources"]["memory"] == {
        "limit": 64 << 20
    }


def test_unified_passes_through_on_v2_and_is_refused_on_v1() -> None:
    r = CgroupResources(cpu_shares=1024, unified={"memory.high": "1073741824"})
    v2 = replace(HOST_FACTS, cgroup_version=2)
    resources = build_spec(container(resources=r), v2)["linux"]["resources"]
    assert resources["unified"] == {"memory.high": "1073741824"}
    assert resources["cpu"] == {"shares": 1024}  # runc converts shares to weight itself
    with pytest.raises(SpecError, match="cgroup v2"):
        build_spec(container(resources=r), HOST_FACTS)


def test_invalid_resources_are_a_spec_error() -> None:
    with pytest.raises(SpecError, match="cpu_shares") as info:
        build_spec(container(resources=CgroupResources(cpu_shares=1)), HOST_FACTS)
    assert status_of(info.value) == grpc.StatusCode.INVALID_ARGUMENT


# ---- devices ------------------------------------------------------------------------


def test_requested_device_is_created_and_allowed() -> None:
    spec = container(devices=(DeviceSpec("/dev/mynull", "/dev/null", "rw"),))
    linux = build_spec(spec, HOST_FACTS)["linux"]
    assert linux["devices"] == [
        {
            "path": "/dev/mynull",
            "type": "c",
            "major": 1,
            "minor": 3,
            "fileMode": NULL.st_mode & 0o7777,
            "uid": NULL.st_uid,
            "gid": NULL.st_gid,
        }
    ]
    assert linux["resources"]["devices"] == [
        *STANDARD_RULES,
        {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"},
    ]


def test_device_symlink_is_followed(tmp_path: Path) -> None:
    link = tmp_path / "by-id-null"
    link.symlink_to("/dev/null")
    spec = container(devices=(DeviceSpec("/dev/x", str(link)),))
    assert build_spec(spec, HOST_FACTS)["linux"]["devices"][0]["minor"] == 3


def test_missing_device_is_refused_naming_it() -> None:
    spec = container(devices=(DeviceSpec("/dev/gpu0", "/dev/no-such-gpu0"),))
    with pytest.raises(SpecError, match="/dev/no-such-gpu0") as info:
        build_spec(spec, HOST_FACTS)
    assert status_of(info.value) == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("device", "message"),
    [
        (DeviceSpec("/dev/x", "/etc/hostname"), "not a character or block device"),
        (DeviceSpec("dev/x", "/dev/null"), "must be absolute"),
        (DeviceSpec("/dev/x", "/dev/null", "rwx"), "permissions 'rwx'"),
        (DeviceSpec("/dev/x", "/dev/null", ""), "permissions ''"),
        # A directory means every device below it: not the node's whole tree.
        (DeviceSpec("/dev/all", "/"), "is a directory outside /dev"),
        (DeviceSpec("/dev/all", "/etc"), "is a directory outside /dev"),
    ],
)
def test_bad_devices_are_refused(device: DeviceSpec, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        build_spec(container(devices=(device,)), HOST_FACTS)


def test_host_devices_skip_symlinks_and_own_directories() -> None:
    found = {path for path, _st in host_devices(Path("/dev"))}
    assert "/dev/null" in found
    assert not any(p.startswith(("/dev/pts/", "/dev/shm/", "/dev/fd/")) for p in found)
    assert "/dev/ptmx" not in found and "/dev/console" not in found
    assert all(not os.path.islink(p) for p in found)


# ---- privileged ---------------------------------------------------------------------


def test_privileged_container() -> None:
    spec = container(
        security=secure(privileged=True, masked_paths=("/proc/x",), seccomp="runtime/default"),
        devices=(DeviceSpec("/dev/null", "/dev/zero", "r"),),
    )
    oci = build_spec(spec, HOST_FACTS)
    caps = oci["process"]["capabilities"]
    assert set(caps["bounding"]) == BOUNDING
    assert caps["inheritable"] == []
    linux = oci["linux"]
    assert "seccomp" not in linux
    assert "maskedPaths" not in linux and "readonlyPaths" not in linux
    assert linux["resources"]["devices"] == [{"allow": True, "type": "a", "access": "rwm"}]
    by_path = {d["path"]: d for d in linux["devices"]}
    # The requested device keeps its place; the host's /dev/null does not replace it.
    assert (by_path["/dev/null"]["major"], by_path["/dev/null"]["minor"]) == (1, 5)
    assert [d["path"] for d in linux["devices"]].count("/dev/null") == 1
    assert "/dev/zero" in by_path
    assert not any(p.startswith("/dev/pts/") for p in by_path)
    for destination in ("/sys", "/sys/fs/cgroup"):
        assert "rw" in mount_of(oci, destination)[0]["options"]


def test_privileged_devices_come_from_the_host_dev_root(tmp_path: Path) -> None:
    # An empty fake /dev: no host devices beyond what was asked for.
    host = replace(HOST_FACTS, dev_root=tmp_path)
    oci = build_spec(container(security=secure(privileged=True)), host)
    assert "devices" not in oci["linux"]


# ---- host facts ---------------------------------------------------------------------


def test_host_facts_of_this_machine() -> None:
    facts = host_facts(restrict_oom_score_adj=True)
    assert facts.bounding_set == host_bounding_set()
    assert facts.cgroup_version in (1, 2)
    assert facts.min_oom_score_adj == int(Path("/proc/self/oom_score_adj").read_text())
    assert facts.seccomp_default_path == DEFAULT_PROFILE_PATH
    assert 0 < facts.nofile_limit <= 1048576
    assert host_facts(restrict_oom_score_adj=False).min_oom_score_adj is None


@pytest.mark.parametrize(
    ("resources", "problem"),
    [
        (CgroupResources(cpuset_cpus="0-999999"), "cpuset_cpus '0-999999' names CPU 2"),
        (CgroupResources(cpuset_cpus="1,3"), "names CPU 3"),
        (CgroupResources(cpuset_mems="1"), "cpuset_mems '1' names memory node 1"),
    ],
)
def test_cpusets_name_only_what_the_node_has(resources: CgroupResources, problem: str) -> None:
    host = dataclasses.replace(
        HOST_FACTS, online_cpus=frozenset({0, 1}), online_mems=frozenset({0})
    )
    with pytest.raises(SpecError, match=problem):
        build_spec(container(resources=resources), host)
    fine = CgroupResources(cpuset_cpus="0-1", cpuset_mems="0")
    assert build_spec(container(resources=fine), host)["linux"]["resources"]["cpu"]["cpus"] == "0-1"


def test_hugepage_limits_follow_the_node() -> None:
    limits = CgroupResources(hugepage_limits={"2MB": 0})
    host = dataclasses.replace(HOST_FACTS, hugepage_sizes=frozenset({"2MB"}))
    resources = build_spec(container(resources=limits), host)["linux"]["resources"]
    assert resources["hugepageLimits"] == [{"pageSize": "2MB", "limit": 0}]
    # Without the hugetlb controller runc cannot write them (the kubelet sends a limit of
    # 0 for every size the node has): left out, as cri-o does.
    no_controller = dataclasses.replace(host, hugetlb_controller=False)
    assert (
        "hugepageLimits"
        not in build_spec(container(resources=limits), no_controller)["linux"]["resources"]
    )
    with pytest.raises(SpecError, match="hugepage size '1GB' is not one this node has"):
        build_spec(container(resources=CgroupResources(hugepage_limits={"1GB": 0})), host)
