"""base/files.py: atomic writes, with and without durability, and the temp files a
write cut short leaves."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from base.files import is_unfinished, remove_unfinished, temp_path, write_atomic


def _fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record what is fsynced (a directory or a file) while still syncing it."""
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


def test_a_durable_write_syncs_the_file_then_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced = _fsyncs(monkeypatch)
    target = tmp_path / "record.json"
    write_atomic(target, b'{"a": 1}')
    assert target.read_bytes() == b'{"a": 1}'
    assert len(synced) == 2
    assert is_unfinished(Path(synced[0]).name)  # the temp file, before its rename
    assert synced[1] == str(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]


def test_a_volatile_write_syncs_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced = _fsyncs(monkeypatch)
    write_atomic(tmp_path / "hostname", b"pod\n", durable=False)
    assert (tmp_path / "hostname").read_bytes() == b"pod\n"
    assert synced == []


def test_a_write_replaces_the_file_with_exactly_the_mode_asked(tmp_path: Path) -> None:
    target = tmp_path / "resolv.conf"
    target.write_bytes(b"old and longer\n")
    old_umask = os.umask(0o077)  # the mode is what the caller asks, not the umask's
    try:
        write_atomic(target, b"new\n", mode=0o644, durable=False)
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == b"new\n"
    assert target.stat().st_mode & 0o777 == 0o644
    write_atomic(target, b"private\n")
    assert target.stat().st_mode & 0o777 == 0o600


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "entry"
    target.write_bytes(b"old")

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]


def test_a_write_into_a_missing_directory_fails_and_makes_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "gone" / "entry", b"x")
    assert list(tmp_path.iterdir()) == []


def test_temp_files_are_hidden_beside_their_target_and_unique(tmp_path: Path) -> None:
    target = tmp_path / "blob"
    first, second = temp_path(target), temp_path(target)
    assert first != second
    assert first.parent == tmp_path
    assert first.name.startswith(".blob.") and is_unfinished(first.name)
    for name in ("blob", "abc.json", ".hidden", "x.tmp", "abc.bad-1700000000"):
        assert not is_unfinished(name), name


def test_remove_unfinished_removes_the_temp_files_and_keeps_the_rest(tmp_path: Path) -> None:
    finished = tmp_path / "entry.json"
    write_atomic(finished, b"{}")
    cut_short = [temp_path(finished), temp_path(tmp_path / "other")]
    for path in cut_short:
        path.write_bytes(b"{")
    (tmp_path / "x.tmp").write_bytes(b"not ours")
    assert remove_unfinished(tmp_path) == sorted(path.name for path in cut_short)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry.json", "x.tmp"]
    assert remove_unfinished(tmp_path) == []
    assert remove_unfinished(tmp_path / "missing") == []
