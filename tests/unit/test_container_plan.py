"""The container plan: request checks and the merge with pod and image, without root,
files or processes."""

from __future__ import annotations

import signal
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from base.errors import FailedPrecondition, InvalidArgument, NotFound
from cri.container_plan import (
    DEFAULT_PATH,
    POD_PID,
    ContainerRequest,
    check_request,
    plan,
)
from cri.container_record import Container, CriMount
from cri.sandboxes import Sandbox
from image.store import ImageRecord
from runtime.cgroups import CgroupResources
from runtime.container_spec import HOST, NEW, MountSpec, SecuritySpec
from runtime.users import ResolvedUser
from tests.unit.records import container_record, sandbox_record

CONTAINERS = Path("/var/lib/skiff/containers")
ROOT = ResolvedUser(uid=1000, gid=100, additional_gids=(10, 100), home="/home/app")


def _request(**fields: Any) -> ContainerRequest:
    return replace(
        ContainerRequest(sandbox_id="p" * 64, name="web", attempt=0, image="web:1"), **fields
    )


def _image(**config: Any) -> ImageRecord:
    return ImageRecord(
        id="sha256:" + "1" * 64,
        repo_tags=["example/web:1"],
        repo_digests=["example/web@sha256:" + "2" * 64],
        size=1,
        chain_ids=["sha256:" + "3" * 64, "sha256:" + "4" * 64],
        manifest_digest="sha256:" + "2" * 64,
        config_digest="sha256:" + "1" * 64,
        config={"config": config},
    )


def _sandbox(**fields: Any) -> Sandbox:
    pod = replace(
        sandbox_record(),
        cgroup_parent="/kubepods/pod1",
        files_dir="/run/skiff/pods/p/files",
        shm_path="/run/skiff/pods/p/shm",
        log_directory="/var/log/pods/prod_shop_u1",
    )
    return replace(pod, **fields)


def _plan(
    request: ContainerRequest | None = None,
    image: ImageRecord | None = None,
    sandbox: Sandbox | None = None,
    pid_target: Container | None = None,
) -> Any:
    return plan(
        request or _request(command=("sh",)),
        sandbox or _sandbox(),
        image or _image(),
        container_id="c" * 64,
        containers_dir=CONTAINERS,
        image_name="example/web:1",
        pid_target=pid_target,
    )


# --- check_request ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "kind", "words"),
    [
        ({"name": ""}, InvalidArgument, "name must not be empty"),
        ({"name": "a/b"}, InvalidArgument, "without '/'"),
        ({"log_path": "../up.log"}, InvalidArgument, "log_path"),
        ({"log_path": "web:0.log"}, InvalidArgument, "must not contain ':'"),
        ({"command": ("sh\0",)}, InvalidArgument, "command"),
        ({"working_dir": "/a\0"}, InvalidArgument, "working_dir"),
        ({"envs": (("A=B", "1"),)}, InvalidArgument, "environment variable"),
        ({"envs": (("A", "x\0y"),)}, InvalidArgument, "environment variable"),
        ({"apparmor_localhost": "localhost/p"}, FailedPrecondition, "AppArmor"),
        ({"security": SecuritySpec(masked_paths=("/proc",))}, InvalidArgument, "cannot cover"),
        ({"security": SecuritySpec(readonly_paths=("rel",))}, InvalidArgument, "absolute"),
        (
            {"resources": CgroupResources(memory_swap=1 << 20)},
            InvalidArgument,
            "needs a memory limit",
        ),
        ({"mounts": (CriMount("rel", "/h"),)}, InvalidArgument, "must be absolute"),
        ({"mounts": (CriMount("/", "/h"),)}, InvalidArgument, "cannot replace"),
        ({"mounts": (CriMount("/d", "h"),)}, InvalidArgument, "absolute path"),
        ({"mounts": (CriMount("/d", "", image="i"),)}, InvalidArgument, "read-only"),
        (
            {"mounts": (CriMount("/d", "", True, image="i", image_sub_path="a/../.."),)},
            InvalidArgument,
            "stay inside the image",
        ),
        (
            {"mounts": (CriMount("/d", "/h", False, recursive_read_only=True),)},
            InvalidArgument,
            "must be readonly",
        ),
        (
            {"mounts": (CriMount("/d", "/h", True, "slave", recursive_read_only=True),)},
            InvalidArgument,
            "private propagation",
        ),
    ],
)
def test_a_bad_request_is_refused_naming_the_problem(
    fields: dict[str, Any], kind: type[Exception], words: str
) -> None:
    with pytest.raises(kind, match=words):
        check_request(_request(**fields))


def test_a_good_request_passes() -> None:
    check_request(
        _request(
            command=("sh", "-c", "true"),
            envs=(("A", "1"),),
            log_path="web/0.log",
            mounts=(CriMount("/data", "/srv/data", True, "slave"),),
            resources=CgroupResources(memory_limit=1 << 26, memory_swap=1 << 27),
        )
    )


# --- plan --------------------------------------------------------------------------------


def test_command_and_args_replace_the_images_entrypoint_and_cmd() -> None:
    image = _image(Entrypoint=["/entry"], Cmd=["--default"])
    assert _plan(_request(), image).args == ("/entry", "--default")
    assert _plan(_request(args=("--mine",)), image).args == ("/entry", "--mine")
    assert _plan(_request(command=("/bin/sh",)), image).args == ("/bin/sh",)


def test_a_container_with_nothing_to_run_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="no Entrypoint or Cmd"):
        _plan(_request(), _image())
    with pytest.raises(InvalidArgument, match="program to run is empty"):
        _plan(_request(command=("",)), _image())


def test_environment_merges_the_image_and_request_and_adds_defaults() -> None:
    image = _image(Env=["A=image", "B=image", "PATH=/opt/bin"])
    env = _plan(_request(command=("sh",), envs=(("B", "pod"),)), image).env
    assert env == ("A=image", "B=pod", "PATH=/opt/bin", "HOSTNAME=shop")
    assert DEFAULT_PATH in _plan().env


def test_home_comes_from_the_user_unless_set() -> None:
    planned = _plan()
    assert "HOME=/home/app" in planned.spec("/rootfs", ROOT, (), NEW).env
    mine = _plan(_request(command=("sh",), envs=(("HOME", "/mine"),)))
    assert [e for e in mine.spec("/rootfs", ROOT, (), NEW).env if e.startswith("HOME=")] == [
        "HOME=/mine"
    ]


def test_working_directory_stop_signal_and_log_path() -> None:
    image = _image(WorkingDir="/srv", StopSignal="SIGQUIT")
    planned = _plan(_request(command=("sh",), log_path="web/0.log"), image)
    assert planned.cwd == "/srv"
    assert planned.stop_signal == signal.SIGQUIT
    assert planned.log_path == "/var/log/pods/prod_shop_u1/web/0.log"
    own = _plan(_request(command=("sh",), working_dir="/w", stop_signal=9), image)
    assert (own.cwd, own.stop_signal) == ("/w", 9)
    assert _plan().log_path == f"{CONTAINERS}/{'c' * 64}/container.log"


def test_the_pods_files_are_mounted_unless_the_request_mounts_its_own() -> None:
    destinations = [m.destination for m in _plan().pod_mounts]
    assert destinations == ["/etc/hosts", "/etc/resolv.conf", "/etc/hostname", "/dev/shm"]
    request = _request(command=("sh",), mounts=(CriMount("/etc/hosts", "/mine"),))
    assert "/etc/hosts" not in [m.destination for m in _plan(request).pod_mounts]


def test_bind_mounts_carry_propagation_and_read_only_options() -> None:
    mounts = (
        CriMount("/a", "/h/a", True, "slave"),
        CriMount("/b", "/h/b", True, recursive_read_only=True),
    )
    spec = _plan(_request(command=("sh",), mounts=mounts)).spec("/rootfs", ROOT, mounts, NEW)
    assert spec.mounts[-2:] == (
        MountSpec("/a", "/h/a", "bind", ("rbind", "rslave", "ro")),
        MountSpec("/b", "/h/b", "bind", ("rbind", "rprivate", "ro", "rro")),
    )
    assert spec.rootfs_propagation == "rslave"


def test_namespaces_follow_the_pod_and_the_pid_mode() -> None:
    planned = _plan()
    assert planned.namespaces == {
        "network": "/run/netns/x",
        "ipc": HOST,
        "uts": HOST,
        "mount": NEW,
        "pid": NEW,
    }
    assert _plan(_request(command=("sh",), pid_mode="node")).namespaces["pid"] == HOST
    assert _plan(_request(command=("sh",), pid_mode="pod")).namespaces["pid"] == POD_PID
    target = container_record(id="t" * 64, pid=4321)
    by_target = _plan(_request(command=("sh",), pid_mode="target"), pid_target=target)
    assert by_target.namespaces["pid"] == "/proc/4321/ns/pid"
    spec = by_target.spec("/rootfs", ROOT, (), "/proc/4321/ns/pid")
    assert spec.namespaces["pid"] == "/proc/4321/ns/pid"


@pytest.mark.parametrize("target", [None, container_record(state="exited")])
def test_a_pid_target_that_is_not_running_is_not_found(target: Container | None) -> None:
    with pytest.raises(NotFound, match="target container"):
        _plan(_request(command=("sh",), pid_mode="target", pid_target="t"), pid_target=target)


def test_cgroups_sit_under_the_pods() -> None:
    planned = _plan()
    assert planned.cgroups_path == f"/kubepods/pod1/skiff-{'c' * 12}"
    assert planned.conmon_cgroup == f"/kubepods/pod1/skiff-conmon-{'c' * 12}"
    # Under a systemd slice conmon stays where skiffd is.
    assert _plan(sandbox=_sandbox(cgroup_parent="kubepods.slice")).conmon_cgroup == ""


def test_the_user_decides_the_groups_with_the_primary_first() -> None:
    spec = _plan().spec("/rootfs", ROOT, (), NEW)
    assert (spec.user.uid, spec.user.gid, spec.user.additional_gids) == (1000, 100, (100, 10))


def test_the_record_keeps_what_was_made_and_survives_the_store() -> None:
    volume = CriMount(
        "/v", "/vol/0", True, volume_image="tools:1", volume_image_id="sha256:" + "9" * 64
    )
    request = _request(
        command=("sh",), resources=CgroupResources(cpu_shares=512), labels={"app": "web"}
    )
    container = _plan(request).record(ROOT, (volume,), pid=77)
    assert container.state == "created"
    assert (container.pid, container.uid, container.groups) == (77, 1000, [100, 10])
    assert container.volume_image_ids == ["sha256:" + "9" * 64]
    assert container.image_ref == "example/web@sha256:" + "2" * 64
    restored = Container.from_record(container.to_record())
    assert restored == container
    assert restored.resources == CgroupResources(cpu_shares=512)
    assert restored.mounts == [volume]
