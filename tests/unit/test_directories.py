"""base/directories: exact modes and the trail a rollback follows."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from base.directories import make_directories, make_directory, remove_made


def test_a_directory_gets_exactly_its_mode_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        assert make_directory(tmp_path / "d", 0o755)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755
    assert not make_directory(tmp_path / "d", 0o700)  # there already: left as it is
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755


def test_a_file_or_symlink_in_the_way_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    for name in ("file", "link"):
        with pytest.raises(NotADirectoryError, match=name):
            make_directory(tmp_path / name, 0o755)


def test_the_trail_names_what_was_made_outermost_first(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    made = make_directories(tmp_path / "a" / "b" / "c" / "d")
    assert made == [tmp_path / "a" / "b", tmp_path / "a" / "b" / "c", tmp_path / "a/b/c/d"]
    assert make_directories(tmp_path / "a" / "b") == []


def test_removal_takes_what_was_made_and_stops_where_something_moved_in(tmp_path: Path) -> None:
    made = make_directories(tmp_path / "a" / "b" / "c")
    (tmp_path / "a" / "other").mkdir()
    remove_made(made)
    assert not (tmp_path / "a" / "b").exists()
    assert (tmp_path / "a" / "other").is_dir()
    remove_made(made)  # twice is fine
