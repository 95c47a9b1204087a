"""Resolving a container's user from the CRI security context, the image's USER and the
container's own /etc/passwd and /etc/group, in a fake rootfs."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import grpc
import pytest

from cri.errors import status_of
from runtime.users import MAX_FILE_BYTES, ResolvedUser, UserError, resolve_user

PASSWD = """\
# a comment, then a blank line

root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
app:x:1000:1000:App:/home/app:/bin/sh
app:x:1999:1999:shadowed by the first app:/nowhere:/bin/sh
nohome:x:1001:1001::
short:x:1002
badid:x:notanumber:1:::
+nisuser::::::
numbered:x:2000:2000::/home/numbered:/bin/sh
"""

GROUP = """\
# groups
root:x:0:
daemon:x:1:app
app:x:1000:
video:x:44:app,other
audio:x:29:other
staff:x:50: app ,nohome
broken:x
wheel:x:10:root,app
"""


def make_rootfs(tmp_path: Path, passwd: str | None = PASSWD, group: str | None = GROUP) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    if passwd is not None:
        (root / "etc" / "passwd").write_text(passwd)
    if group is not None:
        (root / "etc" / "group").write_text(group)
    return root


def resolve(
    root: Path,
    image_user: str = "",
    *,
    run_as_user: int | None = None,
    run_as_username: str = "",
    run_as_group: int | None = None,
    supplemental_groups: Sequence[int] = (),
    strict: bool = False,
) -> ResolvedUser:
    return resolve_user(
        root,
        image_user=image_user,
        run_as_user=run_as_user,
        run_as_username=run_as_username,
        run_as_group=run_as_group,
        supplemental_groups=supplemental_groups,
        strict_supplemental=strict,
    )


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_rootfs(tmp_path)


# --- the image's USER ------------------------------------------------------------------


def test_empty_user_is_root(root: Path) -> None:
    assert resolve(root) == ResolvedUser(0, 0, (10,), "/root")
    assert resolve(root, "  ") == ResolvedUser(0, 0, (10,), "/root")


def test_name_resolves_through_passwd(root: Path) -> None:
    # Merge policy: every group listing "app" as a member, in file order.
    assert resolve(root, "app") == ResolvedUser(1000, 1000, (1, 44, 50, 10), "/home/app")


def test_first_entry_of_a_name_wins(root: Path) -> None:
    assert resolve(root, "app").uid == 1000


def test_uid_with_passwd_entry_takes_its_gid_home_and_groups(root: Path) -> None:
    assert resolve(root, "1000") == ResolvedUser(1000, 1000, (1, 44, 50, 10), "/home/app")


def test_uid_without_passwd_entry_is_fine(root: Path) -> None:
    assert resolve(root, "4242") == ResolvedUser(4242, 0, (), "/")


def test_name_colon_group_name(root: Path) -> None:
    user = resolve(root, "app:video")
    assert (user.uid, user.gid) == (1000, 44)
    assert user.additional_gids == (1, 50, 10)  # the primary gid is not repeated


def test_uid_colon_gid(root: Path) -> None:
    assert resolve(root, "4242:4343") == ResolvedUser(4242, 4343, (), "/")


def test_name_colon_gid(root: Path) -> None:
    user = resolve(root, "app:7777")
    assert (user.uid, user.gid, user.home) == (1000, 7777, "/home/app")


def test_uid_colon_group_name(root: Path) -> None:
    assert resolve(root, "4242:audio") == ResolvedUser(4242, 29, (), "/")


def test_empty_group_part_falls_back_to_passwd(root: Path) -> None:
    assert resolve(root, "app:").gid == 1000


def test_empty_user_part_with_group_is_root(root: Path) -> None:
    assert (resolve(root, ":video").uid, resolve(root, ":video").gid) == (0, 44)


def test_unknown_name_names_user_and_file(root: Path) -> None:
    with pytest.raises(UserError, match=r"user 'ghost' not found in the container's /etc/passwd"):
        resolve(root, "ghost")


def test_unknown_group_names_group_and_file(root: Path) -> None:
    with pytest.raises(UserError, match=r"group 'ghosts' not found in the container's /etc/group"):
        resolve(root, "app:ghosts")


def test_error_is_invalid_argument() -> None:
    assert status_of(UserError("no such user")) == grpc.StatusCode.INVALID_ARGUMENT


def test_out_of_range_uid_string_is_taken_as_a_name(root: Path) -> None:
    with pytest.raises(UserError, match="'4294967296' not found"):
        resolve(root, "4294967296")


def test_unicode_digits_are_not_a_uid(root: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        resolve(root, "\u00b2")


# --- the security context --------------------------------------------------------------


def test_run_as_user_wins(root: Path) -> None:
    user = resolve(root, "app:video", run_as_user=1001, run_as_username="daemon")
    # The image's ":video" goes with the image's user, which was replaced.
    assert user == ResolvedUser(1001, 1001, (50,), "/")


def test_run_as_user_root(root: Path) -> None:
    assert resolve(root, "app", run_as_user=0).uid == 0


def test_run_as_username_wins_over_image_user(root: Path) -> None:
    user = resolve(root, "app:video", run_as_username="daemon")
    assert user == ResolvedUser(1, 1, (), "/usr/sbin")


def test_run_as_username_unknown(root: Path) -> None:
    with pytest.raises(UserError, match="user 'ghost' not found in the container's /etc/passwd"):
        resolve(root, "app", run_as_username="ghost")


def test_run_as_group_wins(root: Path) -> None:
    assert resolve(root, "app:video", run_as_username="app", run_as_group=5).gid == 5
    user = resolve(root, run_as_user=4242, run_as_group=5)
    assert (user.uid, user.gid) == (4242, 5)


def test_run_as_group_without_a_user_is_an_error(root: Path) -> None:
    with pytest.raises(UserError, match="run_as_group 5 is set without run_as_user"):
        resolve(root, "app", run_as_group=5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"run_as_user": -1},
        {"run_as_user": 2**32 - 1},
        {"run_as_user": 1, "run_as_group": 2**32},
        {"supplemental_groups": [-5]},
    ],
)
def test_ids_out_of_range(root: Path, kwargs: dict[str, object]) -> None:
    with pytest.raises(UserError, match="out of range"):
        resolve(root, **kwargs)  # type: ignore[arg-type]


# --- supplemental groups ---------------------------------------------------------------


def test_merge_adds_config_groups_after_file_groups(root: Path) -> None:
    user = resolve(root, "app", supplemental_groups=[500, 44, 1000, 500, 3])
    # File groups first, then the config's; no duplicates, no primary gid.
    assert user.additional_gids == (1, 44, 50, 10, 500, 3)


def test_strict_takes_only_the_config_groups(root: Path) -> None:
    user = resolve(root, "app", supplemental_groups=[500, 44, 1000, 500], strict=True)
    assert user.additional_gids == (500, 44)


def test_strict_without_config_groups_is_empty(root: Path) -> None:
    assert resolve(root, "app", strict=True).additional_gids == ()


def test_merge_for_uid_without_entry_has_only_config_groups(root: Path) -> None:
    assert resolve(root, "4242", supplemental_groups=[7, 0]).additional_gids == (7,)


def test_member_lists_tolerate_spaces(root: Path) -> None:
    assert 50 in resolve(root, "nohome").additional_gids


# --- parsing ---------------------------------------------------------------------------


def test_short_and_broken_lines_are_skipped(root: Path) -> None:
    assert resolve(root, "nohome") == ResolvedUser(1001, 1001, (50,), "/")
    for name in ("short", "badid", "+nisuser", "nisuser"):
        with pytest.raises(UserError):
            resolve(root, name)


def test_crlf_files(tmp_path: Path) -> None:
    root = make_rootfs(
        tmp_path,
        "app:x:7:8::/home/app:/bin/sh\r\n",
        "g:x:9:app\r\n",
    )
    assert resolve(root, "app") == ResolvedUser(7, 8, (9,), "/home/app")


def test_garbage_bytes_do_not_break_parsing(tmp_path: Path) -> None:
    root = make_rootfs(tmp_path, None, None)
    (root / "etc" / "passwd").write_bytes(b"\xff\xfe\x00junk\napp:x:7:8::/h:\n\x00")
    assert resolve(root, "app").uid == 7


def test_large_passwd_is_read_up_to_the_cap(tmp_path: Path) -> None:
    filler = "".join(f"user{i}:x:{10000 + i}:1::/:\n" for i in range(MAX_FILE_BYTES // 20))
    assert len(filler) > MAX_FILE_BYTES
    root = make_rootfs(tmp_path, "early:x:7:7::/e:\n" + filler + "late:x:8:8::/l:\n")
    assert resolve(root, "early").uid == 7
    with pytest.raises(UserError, match=r"'late' not found .*first 1048576 bytes"):
        resolve(root, "late")


# --- a missing or odd /etc/passwd ------------------------------------------------------


def test_missing_passwd_only_breaks_names(tmp_path: Path) -> None:
    root = make_rootfs(tmp_path, None, None)
    assert resolve(root) == ResolvedUser(0, 0, (), "/")
    assert resolve(root, "1234:5") == ResolvedUser(1234, 5, (), "/")
    with pytest.raises(UserError, match=r"user 'app' not found: the container's /etc/passwd"):
        resolve(root, "app")
    with pytest.raises(UserError, match=r"group 'video' not found: the container's /etc/group"):
        resolve(root, "1:video")


def test_missing_etc(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    root.mkdir()
    assert resolve(root, "5") == ResolvedUser(5, 0, (), "/")
    with pytest.raises(UserError, match="/etc/passwd is missing"):
        resolve(root, "app")


def test_passwd_that_is_a_directory(tmp_path: Path) -> None:
    root = make_rootfs(tmp_path, None)
    (root / "etc" / "passwd").mkdir()
    with pytest.raises(UserError, match=r"/etc/passwd cannot be read"):
        resolve(root, "app")


def test_passwd_that_is_a_fifo_is_not_opened(tmp_path: Path) -> None:
    root = make_rootfs(tmp_path, None)
    os.mkfifo(root / "etc" / "passwd")
    # Opening it would block forever with no writer.
    with pytest.raises(UserError, match=r"not a regular file"):
        resolve(root, "app")


# --- symlinks stay inside the rootfs ---------------------------------------------------


def test_absolute_link_resolves_inside_rootfs(tmp_path: Path) -> None:
    root = make_rootfs(tmp_path, None, None)
    (root / "data").mkdir()
    (root / "data" / "passwd").write_text("app:x:7:8::/inside:\n")
    (root / "etc" / "passwd").symlink_to("/data/passwd")
    assert resolve(root, "app") == ResolvedUser(7, 8, (), "/inside")


def test_relative_link(tmp_path: Path) -> None:
    root = make_rootfs(tmp_path, None)
    (root / "data").mkdir()
    (root / "data" / "passwd").write_text("app:x:7:8::/inside:\n")
    (root / "etc" / "passwd").symlink_to("../data/passwd")
    assert resolve(root, "app").uid == 7


@pytest.mark.parametrize("target", ["../../passwd", "../../../../../../../../passwd"])
def test_dotdot_link_cannot_climb_out(tmp_path: Path, target: str) -> None:
    # On the host, ../../passwd from rootfs/etc is tmp_path/passwd.
    (tmp_path / "passwd").write_text("app:x:666:666::/host:\n")
    root = make_rootfs(tmp_path, None)
    (root / "passwd").write_text("app:x:7:8::/inside:\n")
    (root / "etc" / "passwd").symlink_to(target)
    assert resolve(root, "app").uid == 7


def test_etc_itself_a_link(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "private" / "etc").mkdir(parents=True)
    (root / "private" / "etc" / "passwd").write_text("app:x:7:8::/inside:\n")
    (root / "private" / "etc" / "group").write_text("g:x:9:app\n")
    (root / "etc").symlink_to("../../../private/etc")
    assert resolve(root, "app") == ResolvedUser(7, 8, (9,), "/inside")


def test_chain_of_links(tmp_path: Path) -> None:
    root = make_rootfs(tmp_path, None)
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "real").write_text("app:x:7:8::/inside:\n")
    (root / "x").symlink_to("a/./b/../b")
    (root / "etc" / "passwd").symlink_to("/x/link")
    (root / "a" / "b" / "link").symlink_to("real")
    assert resolve(root, "app").uid == 7


def test_link_to_a_host_only_path_is_missing(tmp_path: Path) -> None:
    root = make_rootfs(tmp_path, None)
    host_file = tmp_path / "host-passwd"
    host_file.write_text("app:x:666:666::/host:\n")
    (root / "etc" / "passwd").symlink_to(host_file)  # absolute host path
    with pytest.raises(UserError, match="/etc/passwd is missing"):
        resolve(root, "app")


def test_link_to_the_host_passwd_reads_the_rootfs_one(tmp_path: Path) -> None:
    root = make_rootfs(tmp_path, None)
    (root / "etc" / "real").write_text("app:x:7:8::/inside:\n")
    (root / "etc" / "passwd").symlink_to("/etc/real")
    # On the host /etc/passwd has root; here only the rootfs's file counts.
    assert resolve(root, "app").uid == 7
    with pytest.raises(UserError):
        resolve(root, "root")


def test_link_loop(tmp_path: Path) -> None:
    root = make_rootfs(tmp_path, None)
    (root / "etc" / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(UserError, match="cannot be read"):
        resolve(root, "app")
    assert resolve(root, "5").uid == 5


def test_link_through_a_file_component(tmp_path: Path) -> None:
    root = make_rootfs(tmp_path, None)
    (root / "file").write_text("")
    (root / "etc" / "passwd").symlink_to("/file/passwd")
    with pytest.raises(UserError, match="/etc/passwd is missing"):
        resolve(root, "app")
