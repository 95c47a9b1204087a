"""image/unpack.py: layers built in memory with tarfile, fed through one-way readers.

These run as root on a filesystem with xattrs, device nodes and ns timestamps (ext4).
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import stat
import tarfile
import tracemalloc
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, cast

import grpc
import pytest

from cri.errors import status_of
from image.unpack import UnpackStats, UnsafeLayerError, _next_member, unpack_layer

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

Member = tuple[tarfile.TarInfo, bytes | None]
MTIME = 1_600_000_000
OPAQUE = b"trusted.overlay.opaque"


class OneWayReader(io.RawIOBase):
    """A source that cannot seek and counts every byte handed out."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self.count = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def seek(self, offset: int, whence: int = 0) -> int:
        raise io.UnsupportedOperation("one-way stream")

    def tell(self) -> int:
        raise io.UnsupportedOperation("one-way stream")

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        n = min(len(view), len(self._data) - self.count)
        view[:n] = self._data[self.count : self.count + n]
        self.count += n
        return n


PATTERN = bytes(range(256)) * 256


class SyntheticLayer(io.RawIOBase):
    """A tar of one big file, generated as it is read so the test itself holds none of it."""

    def __init__(self, size: int) -> None:
        info = tarfile.TarInfo("big.bin")
        info.size = size
        info.mtime = MTIME
        self._header = info.tobuf(format=tarfile.PAX_FORMAT)
        self._size = size
        self.total = len(self._header) + size + (-size % 512) + 2 * 512
        self.count = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        pos, head = self.count, len(self._header)
        if pos < head:
            chunk = self._header[pos : pos + len(view)]
        elif pos < head + self._size:
            offset = (pos - head) % len(PATTERN)
            room = min(len(view), head + self._size - pos, len(PATTERN) - offset)
            chunk = PATTERN[offset : offset + room]
        else:
            chunk = bytes(min(len(view), self.total - pos))
        view[: len(chunk)] = chunk
        self.count += len(chunk)
        return len(chunk)


def entry(
    name: str,
    kind: bytes = tarfile.REGTYPE,
    *,
    data: bytes | None = None,
    linkname: str = "",
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    mtime: int = MTIME,
    dev: tuple[int, int] = (0, 0),
    pax: dict[str, str] | None = None,
) -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.mtime = mtime
    info.devmajor, info.devminor = dev
    info.pax_headers = dict(pax or {})
    if data is not None:
        info.size = len(data)
    return info, data


def directory(
    name: str,
    *,
    mode: int = 0o755,
    uid: int = 0,
    gid: int = 0,
    mtime: int = MTIME,
    pax: dict[str, str] | None = None,
) -> Member:
    return entry(name, tarfile.DIRTYPE, mode=mode, uid=uid, gid=gid, mtime=mtime, pax=pax)


def symlink(name: str, target: str) -> Member:
    return entry(name, tarfile.SYMTYPE, linkname=target, mode=0o777)


def hardlink(name: str, target: str) -> Member:
    return entry(name, tarfile.LNKTYPE, linkname=target)


def layer(*members: Member) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def unpack(data: bytes, dest: Path) -> tuple[UnpackStats, OneWayReader]:
    reader = OneWayReader(data)
    return unpack_layer(cast(BinaryIO, reader), dest), reader


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    path = tmp_path / "layer"
    path.mkdir()
    return path


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A writable directory beside the layer that an escaping entry would reach."""
    path = tmp_path / "outside"
    path.mkdir()
    return path


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


# --- what a layer may contain -------------------------------------------------------------


def test_files_directories_and_missing_parents(dest: Path) -> None:
    old_umask = os.umask(0o077)
    try:
        stats, _ = unpack(
            layer(
                directory("etc", mode=0o750),
                entry("etc/hostname", data=b"skiff\n", mode=0o600),
                entry("./bin/sh", data=b"#!shell", mode=0o755),
                entry("usr/lib/deep/file", data=b"x" * 3000),
                entry("empty", data=b""),
            ),
            dest,
        )
    finally:
        os.umask(old_umask)
    assert (dest / "etc/hostname").read_bytes() == b"skiff\n"
    assert mode_of(dest / "etc") == 0o750
    assert mode_of(dest / "etc/hostname") == 0o600
    assert (dest / "bin/sh").read_bytes() == b"#!shell"
    assert mode_of(dest / "bin/sh") == 0o755
    assert (dest / "usr/lib/deep/file").read_bytes() == b"x" * 3000
    assert (dest / "empty").read_bytes() == b""
    # Parents the layer never listed are made like tar does, whatever our umask.
    for implicit in ("bin", "usr", "usr/lib", "usr/lib/deep"):
        st = (dest / implicit).lstat()
        assert stat.S_ISDIR(st.st_mode)
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o755, 0, 0)
    assert sorted(os.listdir(dest)) == ["bin", "empty", "etc", "usr"]
    assert stats.bytes == 6 + 7 + 3000


def test_stats_count_bytes_and_inodes(dest: Path) -> None:
    stats, _ = unpack(
        layer(
            directory("etc"),  # 1
            entry("etc/a", data=b"abc"),  # 1
            entry("usr/lib/b", data=b"12345"),  # usr, usr/lib and the file: 3
            symlink("etc/l", "a"),  # 1
            hardlink("etc/h", "etc/a"),  # shares etc/a's inode: 0
            entry("dev/null", tarfile.CHRTYPE, dev=(1, 3)),  # dev and the node: 2
            entry("etc/.wh.gone"),  # 1
        ),
        dest,
    )
    assert stats == UnpackStats(bytes=8, inodes=9)


def test_root_entry_sets_the_layer_root(dest: Path) -> None:
    unpack(layer(directory(".", mode=0o711, uid=1234, mtime=1_000_000)), dest)
    st = dest.lstat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_mtime_ns) == (0o711, 1234, 10**15)


def test_symlinks_are_made_as_given_and_never_followed(dest: Path, outside: Path) -> None:
    unpack(
        layer(
            symlink("bin/sh", "busybox"),
            symlink("etc/mtab", "/proc/mounts"),
            symlink("escape", str(outside)),
            entry("link-owned", tarfile.SYMTYPE, linkname="../../nowhere", uid=1234, gid=99),
        ),
        dest,
    )
    assert os.readlink(dest / "bin/sh") == "busybox"
    assert os.readlink(dest / "etc/mtab") == "/proc/mounts"
    assert os.readlink(dest / "escape") == str(outside)
    st = (dest / "link-owned").lstat()
    assert stat.S_ISLNK(st.st_mode)
    assert (st.st_uid, st.st_gid, st.st_mtime_ns) == (1234, 99, MTIME * 10**9)
    assert os.readlink(dest / "link-owned") == "../../nowhere"


def test_hardlinks_share_the_inode(dest: Path) -> None:
    unpack(
        layer(
            entry("bin/busybox", data=b"ELF", mode=0o755),
            hardlink("bin/ls", "bin/busybox"),
            hardlink("./bin/cat", "./bin/busybox"),
            symlink("bin/sh", "busybox"),
            hardlink("bin/sh2", "bin/sh"),
        ),
        dest,
    )
    busybox = (dest / "bin/busybox").lstat()
    assert busybox.st_nlink == 3
    assert (dest / "bin/ls").lstat().st_ino == busybox.st_ino
    assert (dest / "bin/cat").lstat().st_ino == busybox.st_ino
    # A hardlink to a symlink links the symlink, not what it points to.
    assert (dest / "bin/sh2").lstat().st_ino == (dest / "bin/sh").lstat().st_ino
    assert os.readlink(dest / "bin/sh2") == "busybox"


def test_devices_and_fifos(dest: Path) -> None:
    unpack(
        layer(
            entry("dev/null", tarfile.CHRTYPE, mode=0o666, dev=(1, 3)),
            entry("dev/loop0", tarfile.BLKTYPE, mode=0o660, gid=6, dev=(7, 0)),
            entry("run/fifo", tarfile.FIFOTYPE, mode=0o620),
        ),
        dest,
    )
    null = (dest / "dev/null").lstat()
    assert stat.S_ISCHR(null.st_mode)
    assert (os.major(null.st_rdev), os.minor(null.st_rdev)) == (1, 3)
    assert stat.S_IMODE(null.st_mode) == 0o666
    loop = (dest / "dev/loop0").lstat()
    assert stat.S_ISBLK(loop.st_mode)
    assert (os.major(loop.st_rdev), os.minor(loop.st_rdev), loop.st_gid) == (7, 0, 6)
    fifo = (dest / "run/fifo").lstat()
    assert stat.S_ISFIFO(fifo.st_mode)
    assert stat.S_IMODE(fifo.st_mode) == 0o620


def test_ownership_and_special_mode_bits(dest: Path) -> None:
    unpack(
        layer(
            directory("tmp", mode=0o1777),
            directory("srv", mode=0o2775, uid=1234, gid=1234),
            entry("srv/data", data=b"d", uid=1234, gid=1234, mode=0o640),
            entry("usr/bin/su", data=b"su", uid=1234, gid=1234, mode=0o4755),
            entry("usr/bin/wall", data=b"w", gid=5, mode=0o2755),
            entry("dev/tty", tarfile.CHRTYPE, uid=1234, gid=5, mode=0o6620, dev=(5, 0)),
        ),
        dest,
    )
    assert mode_of(dest / "tmp") == 0o1777
    srv = (dest / "srv").lstat()
    assert (stat.S_IMODE(srv.st_mode), srv.st_uid, srv.st_gid) == (0o2775, 1234, 1234)
    data = (dest / "srv/data").lstat()
    assert (stat.S_IMODE(data.st_mode), data.st_uid, data.st_gid) == (0o640, 1234, 1234)
    # chown clears setuid, so these survive only if the mode is applied after the owner.
    su = (dest / "usr/bin/su").lstat()
    assert (stat.S_IMODE(su.st_mode), su.st_uid, su.st_gid) == (0o4755, 1234, 1234)
    assert mode_of(dest / "usr/bin/wall") == 0o2755
    tty = (dest / "dev/tty").lstat()
    assert (stat.S_IMODE(tty.st_mode), tty.st_uid, tty.st_gid) == (0o6620, 1234, 5)


# cap_setuid + cap_net_bind_service, effective: the 0x80 byte is not UTF-8, so tarfile
# hands it over surrogate-escaped, and the file's owner is changed, which clears it.
CAPABILITY = b"\x01\x00\x00\x02\x80\x04\x00\x00" + bytes(12)


def test_xattrs_from_pax_headers(dest: Path) -> None:
    cap = CAPABILITY.decode("utf-8", "surrogateescape")
    unpack(
        layer(
            directory("d", pax={"SCHILY.xattr.user.dir": "on a dir"}),
            entry(
                "d/ping",
                data=b"ping",
                uid=1234,
                gid=1234,
                mode=0o4755,
                pax={"SCHILY.xattr.user.foo": "bar", "SCHILY.xattr.security.capability": cap},
            ),
            entry("d/utf8", data=b"", pax={"SCHILY.xattr.user.name": "grüße"}),
        ),
        dest,
    )
    assert os.getxattr(dest / "d/ping", "user.foo") == b"bar"
    assert os.getxattr(dest / "d/ping", "security.capability") == CAPABILITY
    assert mode_of(dest / "d/ping") == 0o4755
    assert os.getxattr(dest / "d", "user.dir") == b"on a dir"
    assert os.getxattr(dest / "d/utf8", "user.name") == "grüße".encode()


def test_layer_cannot_forge_overlay_xattrs(dest: Path) -> None:
    unpack(
        layer(
            directory(
                "forged",
                pax={
                    "SCHILY.xattr.trusted.overlay.opaque": "y",
                    "SCHILY.xattr.user.overlay.opaque": "y",
                    "SCHILY.xattr.trusted.overlay.redirect": "/etc",
                    "SCHILY.xattr.user.kept": "1",
                },
            ),
        ),
        dest,
    )
    assert os.listxattr(dest / "forged") == ["user.kept"]


def test_mtimes_with_nanoseconds_and_directories_last(dest: Path) -> None:
    unpack(
        layer(
            directory("d", pax={"mtime": "1000000000.5"}),
            directory("plain", mtime=1_200_000_000),
            entry("d/f", data=b"f", pax={"mtime": "1700000000.123456789"}),
            entry("plain/sub/file", data=b"x", mtime=1_300_000_000),
            entry("d/old", data=b"o", pax={"mtime": "-1.25"}),
            entry("d/node", tarfile.FIFOTYPE, mtime=1_400_000_000),
        ),
        dest,
    )
    assert (dest / "d/f").lstat().st_mtime_ns == 1_700_000_000_123_456_789
    assert (dest / "d/old").lstat().st_mtime_ns == -1_250_000_000
    assert (dest / "d/node").lstat().st_mtime_ns == 1_400_000_000 * 10**9
    assert (dest / "plain/sub/file").lstat().st_mtime_ns == 1_300_000_000 * 10**9
    # Both directories got children after their own entry.
    assert (dest / "d").lstat().st_mtime_ns == 1_000_000_000_500_000_000
    assert (dest / "plain").lstat().st_mtime_ns == 1_200_000_000 * 10**9


# --- whiteouts ----------------------------------------------------------------------------


def assert_whiteout(path: Path) -> None:
    st = path.lstat()
    assert stat.S_ISCHR(st.st_mode), f"{path} is not a character device"
    assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (0, 0)


def test_whiteouts_become_overlay_whiteouts(dest: Path) -> None:
    unpack(
        layer(
            entry("etc/.wh.gone"),
            entry(".wh.top"),
            entry("etc/shadowed", data=b"in this layer"),
            directory("etc/tree"),
            entry("etc/tree/child", data=b"c"),
            entry("etc/.wh.shadowed"),
            entry("etc/.wh.tree"),
            entry("new/.wh.x"),
        ),
        dest,
    )
    for name in ("etc/gone", "top", "etc/shadowed", "etc/tree", "new/x"):
        assert_whiteout(dest / name)
    assert sorted(os.listdir(dest / "etc")) == ["gone", "shadowed", "tree"]
    assert not (dest / "etc/.wh.gone").exists()


def test_opaque_marker_sets_the_xattr_and_keeps_this_layers_entries(dest: Path) -> None:
    unpack(
        layer(
            directory("d"),
            entry("d/before", data=b"b"),
            entry("d/.wh..wh..opq"),
            entry("d/after", data=b"a"),
            entry("missing/.wh..wh..opq"),
        ),
        dest,
    )
    assert os.getxattr(dest / "d", OPAQUE) == b"y"
    assert sorted(os.listdir(dest / "d")) == ["after", "before"]
    assert os.getxattr(dest / "missing", OPAQUE) == b"y"
    assert mode_of(dest / "missing") == 0o755
    assert os.listdir(dest / "missing") == []


def test_aufs_metadata_is_skipped(dest: Path) -> None:
    stats, _ = unpack(
        layer(
            directory(".wh..wh.plnk"),
            entry(".wh..wh.plnk/1234.5678", data=b"aufs"),
            entry(".wh..wh.aufs", data=b""),
            entry("etc/.wh..wh.orph", data=b""),
            entry("kept", data=b"k"),
        ),
        dest,
    )
    assert os.listdir(dest) == ["kept"]
    assert stats == UnpackStats(bytes=1, inodes=1)


# --- later entries replace earlier ones ---------------------------------------------------


def test_later_entries_replace_earlier_ones(dest: Path, outside: Path) -> None:
    unpack(
        layer(
            entry("file", data=b"first"),
            entry("file", data=b"second", mode=0o600),
            entry("to-dir", data=b"was a file"),
            directory("to-dir", mode=0o700),
            directory("to-file"),
            entry("to-file/child/deep", data=b"gone"),
            entry("to-file", data=b"now a file"),
            entry("to-link", data=b"x"),
            symlink("to-link", "file"),
            symlink("link-to-dir", str(outside)),
            directory("link-to-dir"),
            entry("link-to-dir/inside", data=b"i"),
            directory("kept", mode=0o700),
            entry("kept/child", data=b"c"),
            directory("kept", mode=0o750, uid=1234),
            entry("linked", data=b"old"),
            entry("source", data=b"new"),
            hardlink("linked", "source"),
        ),
        dest,
    )
    assert (dest / "file").read_bytes() == b"second"
    assert mode_of(dest / "file") == 0o600
    assert (dest / "to-dir").is_dir()
    assert mode_of(dest / "to-dir") == 0o700
    assert (dest / "to-file").read_bytes() == b"now a file"
    assert os.readlink(dest / "to-link") == "file"
    assert not (dest / "link-to-dir").is_symlink()
    assert (dest / "link-to-dir/inside").read_bytes() == b"i"
    assert os.listdir(outside) == []
    kept = (dest / "kept").lstat()
    assert (stat.S_IMODE(kept.st_mode), kept.st_uid) == (0o750, 1234)
    assert (dest / "kept/child").read_bytes() == b"c"
    assert (dest / "linked").lstat().st_ino == (dest / "source").lstat().st_ino


def test_missing_dest_is_created_in_an_existing_parent(tmp_path: Path) -> None:
    unpack(layer(entry("f", data=b"f")), tmp_path / "diff")
    assert (tmp_path / "diff/f").read_bytes() == b"f"


# --- refusals -----------------------------------------------------------------------------


def refusals(outside: Path) -> dict[str, tuple[list[Member], str]]:
    """Case id -> (entries between 'before' and 'after', text the error must contain)."""
    out = str(outside)
    return {
        "absolute": ([entry(f"{out}/abs", data=b"x")], f"'{out}/abs' is absolute"),
        "dotdot": ([entry("../outside/x", data=b"x")], "'../outside/x' escapes the layer root"),
        "inner-dotdot": (
            [entry("a/../../outside/x", data=b"x")],
            "'a/../../outside/x' escapes the layer root",
        ),
        "dotdot-dir": ([directory("../outside/d")], "escapes the layer root"),
        "symlink-parent": (
            [symlink("evil", out), entry("evil/file", data=b"x")],
            "'evil/file' goes through symlink 'evil'",
        ),
        "relative-symlink-parent": (
            [symlink("evil", "../outside"), entry("evil/file", data=b"x")],
            "'evil/file' goes through symlink 'evil'",
        ),
        "symlink-grandparent": (
            [symlink("evil", out), directory("evil/sub")],
            "'evil/sub' goes through symlink 'evil'",
        ),
        "symlink-deep": (
            [directory("a"), symlink("a/evil", out), entry("a/evil/sub/f", data=b"x")],
            "goes through symlink 'a/evil'",
        ),
        "symlink-whiteout": (
            [symlink("evil", out), entry("evil/.wh.x")],
            "'evil/.wh.x' goes through symlink 'evil'",
        ),
        "symlink-opaque": (
            [symlink("evil", out), entry("evil/.wh..wh..opq")],
            "goes through symlink 'evil'",
        ),
        "symlink-hardlink-parent": (
            [entry("t", data=b"t"), symlink("evil", out), hardlink("evil/l", "t")],
            "goes through symlink 'evil'",
        ),
        "file-parent": (
            [entry("f", data=b"f"), entry("f/x", data=b"x")],
            "goes through 'f', which is not a directory",
        ),
        "hardlink-absolute": (
            [hardlink("passwd", "/etc/passwd")],
            "'passwd' has an absolute hardlink target '/etc/passwd'",
        ),
        "hardlink-dotdot": (
            [hardlink("l", "../outside/x")],
            "'l' has a hardlink target '../outside/x' that escapes the layer root",
        ),
        "hardlink-missing": (
            [hardlink("l", "not/in/layer")],
            "'l' is a hardlink to 'not/in/layer', which is not in the layer",
        ),
        "hardlink-through-symlink": (
            [symlink("evil", "/etc"), hardlink("l", "evil/passwd")],
            "'l' has a hardlink target that goes through symlink 'evil'",
        ),
        "hardlink-directory": (
            [directory("d"), hardlink("l", "d")],
            "'l' is a hardlink to directory 'd'",
        ),
        "nul-in-name": (
            [entry("x", data=b"x", pax={"path": "a\x00b"})],
            "has a NUL byte in its name",
        ),
        "dot-file": ([entry(".", data=b"x")], "'.' is not a directory but names the layer root"),
        "empty-name": ([entry("", data=b"x")], "'' is not a directory but names the layer root"),
        "dotdot-whiteout": ([entry("d/.wh..")], "whiteout of the invalid name '.'"),
    }


REFUSAL_IDS = list(refusals(Path("/x")))


@pytest.mark.parametrize("case", REFUSAL_IDS)
def test_refused_entries_stop_the_unpack(
    case: str, dest: Path, outside: Path, tmp_path: Path
) -> None:
    members, message = refusals(outside)[case]
    data = layer(
        entry("before", data=b"b"), *members, entry("after", data=b"a"), directory("final")
    )
    with pytest.raises(UnsafeLayerError) as caught:
        unpack(data, dest)
    assert message in str(caught.value)
    assert status_of(caught.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert (dest / "before").read_bytes() == b"b"
    assert not (dest / "after").exists()
    # Nothing reached the directories beside the layer.
    assert os.listdir(outside) == []
    assert os.listxattr(outside) == []
    assert sorted(os.listdir(tmp_path)) == ["layer", "outside"]


def test_dotdot_whiteout_name_is_refused(dest: Path) -> None:
    # ".wh.." hides ".": the ".." component check must not be the only guard.
    with pytest.raises(UnsafeLayerError, match=re.escape("invalid name '.'")):
        unpack(layer(entry(".wh..")), dest)
    with pytest.raises(UnsafeLayerError, match="invalid name ''"):
        unpack(layer(entry("sub/.wh.")), dest)


def test_unsupported_entry_type_is_refused(dest: Path) -> None:
    with pytest.raises(UnsafeLayerError, match="'odd' has an unsupported type b'Z'"):
        unpack(layer(entry("odd", b"Z")), dest)


# --- the stream ---------------------------------------------------------------------------


def test_stream_is_read_to_its_end(dest: Path) -> None:
    data = layer(entry("a", data=b"a" * 700), directory("d"), entry("d/b", data=b"b"))
    # Trailing zero records past the tar's end, as some writers pad to a block size.
    data += bytes(3 * tarfile.RECORDSIZE)
    _, reader = unpack(data, dest)
    assert reader.count == len(data)
    assert (dest / "a").read_bytes() == b"a" * 700


def test_empty_archive_is_an_empty_layer(dest: Path) -> None:
    data = layer()
    stats, reader = unpack(data, dest)
    assert stats == UnpackStats(bytes=0, inodes=0)
    assert os.listdir(dest) == []
    assert reader.count == len(data) > 0


def test_empty_stream_is_refused(dest: Path) -> None:
    with pytest.raises(UnsafeLayerError, match="not a valid tar stream"):
        unpack(b"", dest)


def test_corrupt_header_after_the_first_is_refused(dest: Path) -> None:
    data = bytearray(layer(entry("a", data=b"a"), entry("b", data=b"b")))
    second = 1024  # a's header and its one block of data come first
    assert data[second : second + 2] == b"b\x00"
    data[second + 148 : second + 156] = b"0000000\x00"  # a checksum that cannot match
    with pytest.raises(UnsafeLayerError, match="not a valid tar stream"):
        unpack(bytes(data), dest)


def test_truncated_file_data_is_refused(dest: Path) -> None:
    data = layer(entry("a", data=b"a" * 5000))
    with pytest.raises(UnsafeLayerError, match="'a' cannot be read"):
        unpack(data[: 512 * 3 + 1000], dest)


def test_oversized_pax_header_is_refused(dest: Path) -> None:
    data = layer(entry("a", data=b"a", pax={"comment": "x" * (2 << 20)}))
    with pytest.raises(UnsafeLayerError, match="metadata header"):
        unpack(data, dest)


def test_invalid_mtime_is_refused(dest: Path) -> None:
    with pytest.raises(UnsafeLayerError, match="'a' has an invalid mtime '1e99'"):
        unpack(layer(entry("a", data=b"a", pax={"mtime": "1e99"})), dest)


def test_big_layer_unpacks_in_constant_memory(dest: Path) -> None:
    size = 50 * (1 << 20) + 777
    source = SyntheticLayer(size)
    tracemalloc.start()
    try:
        stats = unpack_layer(cast(BinaryIO, source), dest)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 << 20, f"peak {peak} bytes while unpacking"
    assert stats == UnpackStats(bytes=size, inodes=1)
    assert source.count == source.total
    expected = hashlib.sha256()
    full, rest = divmod(size, len(PATTERN))
    for _ in range(full):
        expected.update(PATTERN)
    expected.update(PATTERN[:rest])
    got = hashlib.sha256()
    with (dest / "big.bin").open("rb") as f:
        while chunk := f.read(1 << 20):
            got.update(chunk)
    assert got.hexdigest() == expected.hexdigest()


def test_filesystem_errors_stay_oserrors_naming_the_entry(dest: Path) -> None:
    # What the filesystem cannot hold is not an attack: the caller sees the OSError.
    name = "d/" + "n" * 300
    with pytest.raises(OSError) as caught:
        unpack(layer(entry(name, data=b"x")), dest)
    assert caught.value.errno == errno.ENAMETOOLONG
    assert f"while unpacking layer entry {name!r}" in caught.value.__notes__


def test_repeated_and_self_hardlinks_keep_the_file(dest: Path) -> None:
    unpack(
        layer(
            entry("t", data=b"target"),
            hardlink("l", "t"),
            hardlink("l", "t"),
            hardlink("t", "t"),
            hardlink("./t", "l"),
        ),
        dest,
    )
    assert (dest / "t").read_bytes() == b"target"
    assert (dest / "t").lstat().st_nlink == 2
    assert (dest / "l").lstat().st_ino == (dest / "t").lstat().st_ino


def test_streaming_keeps_no_member_history() -> None:
    # TarFile keeps every member read; over a layer of millions of entries that adds up.
    data = layer(*(entry(f"f{i}", data=b"") for i in range(50)))
    with tarfile.open(fileobj=cast(BinaryIO, OneWayReader(data)), mode="r|") as tar:
        names = []
        while (member := _next_member(tar)) is not None:
            names.append(member.name)
        assert tar.getmembers() == []
    assert names == [f"f{i}" for i in range(50)]
