"""Removing trees of any depth (base/trees.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from base.trees import remove_tree


def _deep(root: Path, levels: int) -> Path:
    """A chain of `levels` directories, made relative to each one (its full path is
    longer than PATH_MAX), with a file at the bottom."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(levels):
            os.mkdir("d" * 8, dir_fd=fd)
            child = os.open("d" * 8, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        os.close(os.open("bottom", os.O_CREAT | os.O_WRONLY, dir_fd=fd))
    finally:
        os.close(fd)
    return root


def test_a_tree_deeper_than_recursion_and_path_max_goes(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    _deep(tree, 2500)
    (tmp_path / "kept").write_text("beside it")
    remove_tree(tree)
    assert not tree.exists()
    assert (tmp_path / "kept").read_text() == "beside it"


def test_symlinks_are_removed_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("x")
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "link").symlink_to(outside)
    remove_tree(tree)
    assert not tree.exists() and (outside / "precious").exists()


def test_missing_is_fine_unless_asked(tmp_path: Path) -> None:
    remove_tree(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError):
        remove_tree(tmp_path / "nothing", missing_ok=False)
