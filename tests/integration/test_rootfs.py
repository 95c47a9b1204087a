"""Container root filesystems on the real kernel: overlays of layer dirs shaped like the
image store's (whiteouts as 0:0 char devices, opaque dirs as trusted.overlay.opaque),
mounted through the new mount API and through the mount(2) fallback. Needs root.

Every test works in its own ``/tmp/skiff-rootfs-*`` directory and, whatever happens,
unmounts and removes everything under it and nothing else.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime import rootfs
from runtime.rootfs import Rootfs, RootfsError, mount_rootfs, rootfs_usage, unmount_rootfs

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting overlays needs root")

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


@pytest.fixture
def work() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="skiff-rootfs-"))
    try:
        yield path
    finally:
        for _ in range(8):
            points = mounts_under(path)
            if not points:
                break
            for point in points:
                _libc.umount2(point.encode(), MNT_DETACH)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(params=["new-api", "mount2"])
def api(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each mounting test runs through both ways of passing the layers."""
    if request.param == "new-api":
        if not rootfs._kernel_takes_lowerdir_add():
            pytest.skip("the kernel has no lowerdir+ (Linux < 6.8)")
        monkeypatch.setattr(rootfs._mount_api, "use_new", True)
    else:
        monkeypatch.setattr(rootfs._mount_api, "use_new", False)
    return str(request.param)


def whiteout(path: Path) -> None:
    os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(0, 0))


def make_layers(work: Path) -> list[Path]:
    """Three layers, base first, as the image store unpacks them."""
    base, middle, top = (work / "layers" / name / "diff" for name in ("base", "mid", "top"))
    for layer in (base, middle, top):
        layer.mkdir(parents=True)
    (base / "a").mkdir()
    (base / "a" / "file").write_text("base")
    (base / "a" / "keep").write_text("keep")
    (base / "deleted").write_text("gone above")
    (base / "opaque").mkdir()
    (base / "opaque" / "hidden").write_text("hidden above")
    (base / "shown").mkdir()
    (base / "shown" / "old").write_text("old")

    (middle / "a").mkdir()
    (middle / "a" / "file").write_text("middle")
    whiteout(middle / "deleted")
    (middle / "opaque").mkdir()
    os.setxattr(middle / "opaque", "trusted.overlay.opaque", b"y")
    (middle / "opaque" / "new").write_text("new")
    (middle / "shown").mkdir()  # not opaque: merges with the base's
    (middle / "shown" / "added").write_text("added")

    (top / "c").mkdir()
    (top / "c" / "top").write_text("top")
    whiteout(top / "shown-later")  # a whiteout of nothing is harmless
    return [base, middle, top]


def tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


def assert_gone(container_dir: Path) -> None:
    assert mounts_under(container_dir) == []
    assert not container_dir.exists()


# --- the merged view -------------------------------------------------------------------


def test_layers_merge_with_whiteouts_and_opaque_dirs(work: Path, api: str) -> None:
    layers = make_layers(work)
    container_dir = work / "containers" / "c1"
    fs = mount_rootfs(layers, container_dir)
    assert fs == Rootfs(
        merged=container_dir / "merged",
        upper=container_dir / "upper",
        work=container_dir / "work",
    )
    assert mounts_under(container_dir) == [str(fs.merged)]
    assert tree(fs.merged) == {
        "a",
        "a/file",
        "a/keep",
        "opaque",
        "opaque/new",
        "shown",
        "shown/old",
        "shown/added",
        "c",
        "c/top",
    }
    assert (fs.merged / "a" / "file").read_text() == "middle"
    assert (fs.merged / "a" / "keep").read_text() == "keep"
    unmount_rootfs(container_dir)
    assert_gone(container_dir)


def test_writes_go_to_the_upper_dir(work: Path, api: str) -> None:
    layers = make_layers(work)
    before = {layer: tree(layer) for layer in layers}
    fs = mount_rootfs(layers, work / "c")
    (fs.merged / "new").write_text("written")
    (fs.merged / "a" / "file").write_text("changed")  # copied up
    (fs.merged / "a" / "keep").unlink()  # whited out
    shutil.rmtree(fs.merged / "shown")
    assert (fs.upper / "new").read_text() == "written"
    assert (fs.upper / "a" / "file").read_text() == "changed"
    assert os.stat(fs.upper / "a" / "keep").st_rdev == os.makedev(0, 0)
    assert stat.S_ISCHR(os.stat(fs.upper / "a" / "keep").st_mode)
    assert not (fs.merged / "shown").exists()
    # The layers, shared by every container of the image, are untouched.
    assert {layer: tree(layer) for layer in layers} == before
    assert (layers[1] / "a" / "file").read_text() == "middle"
    assert (layers[0] / "a" / "keep").read_text() == "keep"
    unmount_rootfs(work / "c")
    assert_gone(work / "c")


def test_root_dir_takes_the_top_layers_mode_and_owner(work: Path, api: str) -> None:
    layers = make_layers(work)
    os.chmod(layers[-1], 0o750)
    os.chown(layers[-1], 123, 456)
    fs = mount_rootfs(layers, work / "c")
    st = os.stat(fs.merged)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o750, 123, 456)
    # And the container dir keeps host users away from the image's files.
    assert stat.S_IMODE(os.stat(work / "c").st_mode) == 0o700


def test_image_without_layers(work: Path, api: str) -> None:
    fs = mount_rootfs([], work / "c")
    assert list(fs.merged.iterdir()) == []
    (fs.merged / "etc").mkdir()
    assert (fs.upper / "etc").is_dir()
    unmount_rootfs(work / "c")
    assert_gone(work / "c")


def test_128_layers_with_long_paths(work: Path, api: str) -> None:
    long = work / ("a-long-store-path-" + "x" * 60)
    layers = []
    for i in range(128):
        layer = long / f"{i:064x}" / "diff"
        layer.mkdir(parents=True)
        (layer / f"file{i}").write_text(str(i))
        (layer / "shared").write_text(str(i))
        layers.append(layer)
    # Far beyond what one page of mount(2) options takes as absolute paths.
    assert sum(len(str(p)) + 1 for p in layers) > 4096 * 3
    fs = mount_rootfs(layers, work / "c")
    names = {p.name for p in fs.merged.iterdir()}
    assert names == {f"file{i}" for i in range(128)} | {"shared"}
    assert (fs.merged / "shared").read_text() == "127"  # the top layer wins
    assert (fs.merged / "file0").read_text() == "0"
    unmount_rootfs(work / "c")
    assert_gone(work / "c")


def test_readonly_keeps_the_overlay_writable_for_the_oci_runtime(work: Path, api: str) -> None:
    """readonly is left to the OCI runtime's remount inside the container's mount
    namespace (root.readonly): the runtime still has to create mount points first."""
    layers = make_layers(work)
    fs = mount_rootfs(layers, work / "c", readonly=True)
    assert fs.readonly
    (fs.merged / "proc").mkdir()  # what runc does before the remount
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) not installed")
    # What runc does for root.readonly, in a mount namespace of its own.
    script = 'mount -o remount,bind,ro "$1" && ! touch "$1/x" 2>/dev/null && echo ro'
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", fs.merged],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.stdout.strip() == "ro", result.stderr
    # The host's view, and so every other user of the mount, is unaffected.
    (fs.merged / "y").write_text("still writable")
    unmount_rootfs(work / "c")
    assert_gone(work / "c")


def test_existing_upper_is_reused(work: Path, api: str) -> None:
    layers = make_layers(work)
    fs = mount_rootfs(layers, work / "c")
    (fs.merged / "kept").write_text("across mounts")
    _libc.umount2(str(fs.merged).encode(), 0)
    assert mounts_under(work / "c") == []
    fs = mount_rootfs(layers, work / "c")
    assert (fs.merged / "kept").read_text() == "across mounts"


# --- unmounting ------------------------------------------------------------------------


def test_unmount_is_idempotent(work: Path) -> None:
    fs = mount_rootfs(make_layers(work), work / "c")
    unmount_rootfs(work / "c")
    unmount_rootfs(work / "c")
    unmount_rootfs(work / "never-made")
    assert_gone(work / "c")
    assert not fs.upper.exists()


def test_unmount_of_a_busy_rootfs_detaches_it(work: Path) -> None:
    fs = mount_rootfs(make_layers(work), work / "c")
    with open(fs.merged / "a" / "file") as busy:
        unmount_rootfs(work / "c")
        assert_gone(work / "c")
        assert busy.read() == "middle"  # the detached mount lives on for its user
    # The layers were not deleted through the mount.
    assert (work / "layers" / "mid" / "diff" / "a" / "file").read_text() == "middle"


def test_unmount_takes_stacked_and_nested_mounts_too(work: Path) -> None:
    layers = make_layers(work)
    fs = mount_rootfs(layers, work / "c")
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(fs.merged / "a")], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(fs.merged)], check=True)
    unmount_rootfs(work / "c")
    assert_gone(work / "c")
    assert (layers[0] / "a" / "keep").exists()


# --- failures leave nothing ------------------------------------------------------------


def test_missing_layer_dir(work: Path, api: str) -> None:
    layers = make_layers(work)
    shutil.rmtree(layers[1])
    with pytest.raises(RootfsError, match=r"layer directory .*mid/diff is missing"):
        mount_rootfs(layers, work / "deep" / "c")
    assert_gone(work / "deep" / "c")


def test_kernel_refusal_leaves_nothing(
    work: Path, api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rootfs, "_OVERLAY_OPTIONS", ("index=off", "nosuchoption=1"))
    layers = make_layers(work)
    with pytest.raises(RootfsError, match=r"mounting the rootfs on .*/c/merged") as raised:
        mount_rootfs(layers, work / "containers" / "new" / "c")
    if api == "new-api":
        assert "nosuchoption" in str(raised.value)  # the kernel's own words
    # Not even the parents it had to make.
    assert_gone(work / "containers")
    assert sorted(p.name for p in work.iterdir()) == ["layers"]


def test_failure_keeps_a_container_dir_it_did_not_make(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (work / "c").mkdir()
    (work / "c" / "config.json").write_text("{}")
    monkeypatch.setattr(rootfs, "_OVERLAY_OPTIONS", ("nosuchoption=1",))
    with pytest.raises(RootfsError):
        mount_rootfs(make_layers(work), work / "c")
    assert sorted(p.name for p in (work / "c").iterdir()) == ["config.json"]


def test_already_mounted(work: Path) -> None:
    layers = make_layers(work)
    fs = mount_rootfs(layers, work / "c")
    (fs.merged / "mine").write_text("x")
    with pytest.raises(RootfsError, match="already mounted"):
        mount_rootfs(layers, work / "c")
    assert mounts_under(work / "c") == [str(fs.merged)]
    assert (fs.merged / "mine").exists()


# --- usage -----------------------------------------------------------------------------


def test_usage_counts_the_writable_layer(work: Path) -> None:
    fs = mount_rootfs(make_layers(work), work / "c")
    empty_bytes, empty_inodes = rootfs_usage(work / "c")
    assert empty_inodes == 1  # the upper dir itself
    (fs.merged / "big").write_bytes(os.urandom(1 << 20))
    used, inodes = rootfs_usage(work / "c")
    assert used >= empty_bytes + (1 << 20)
    assert inodes == empty_inodes + 1
    # A hard link is one inode, counted once; a symlink is itself, not its target.
    os.link(fs.merged / "big", fs.merged / "big2")
    (fs.merged / "link").symlink_to("/usr/bin")
    used2, inodes2 = rootfs_usage(work / "c")
    assert inodes2 == inodes + 1
    assert used <= used2 < used + (1 << 20)
    unmount_rootfs(work / "c")
    assert rootfs_usage(work / "c") == (0, 0)
