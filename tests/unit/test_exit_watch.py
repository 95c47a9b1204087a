"""The exit watcher on real directories: a renamed-in exit file is reported once, an
exit file already there is reported at once, a removed directory drops its watch."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from runtime.exit_watch import ExitWatcher, ExitWatchError


def _write_exit(state: Path, code: str = "0") -> None:
    # As conmon does: write a temp file, rename it into place.
    temp = state / "exit.tmp"
    temp.write_text(code)
    os.rename(temp, state / "exit")


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0.01)


def test_exit_file_renamed_into_place_is_reported_once(tmp_path: Path) -> None:
    async def main() -> None:
        seen: list[str] = []
        watcher = ExitWatcher(seen.append)
        watcher.start()
        try:
            one, two = tmp_path / "one", tmp_path / "two"
            one.mkdir()
            two.mkdir()
            watcher.watch("one", one)
            watcher.watch("two", two)
            (one / "oom").write_text("")  # other files are not exits
            await _settle()
            assert seen == []
            _write_exit(one, "137")
            await _settle()
            assert seen == ["one"]
            assert watcher.watching() == 1
            _write_exit(one, "0")
            await _settle()
            assert seen == ["one"]
        finally:
            watcher.close()

    asyncio.run(main())


def test_exit_file_already_there_is_reported(tmp_path: Path) -> None:
    async def main() -> None:
        seen: list[str] = []
        watcher = ExitWatcher(seen.append)
        watcher.start()
        try:
            _write_exit(tmp_path)
            watcher.watch("early", tmp_path)
            await _settle()
            assert seen == ["early"]
        finally:
            watcher.close()

    asyncio.run(main())


def test_removed_directory_and_unwatch_forget_the_container(tmp_path: Path) -> None:
    async def main() -> None:
        seen: list[str] = []
        watcher = ExitWatcher(seen.append)
        watcher.start()
        try:
            gone, kept = tmp_path / "gone", tmp_path / "kept"
            gone.mkdir()
            kept.mkdir()
            watcher.watch("gone", gone)
            watcher.watch("kept", kept)
            gone.rmdir()
            watcher.unwatch("kept")
            await _settle()
            assert watcher.watching() == 0
            _write_exit(kept)
            await _settle()
            assert seen == []
        finally:
            watcher.close()

    asyncio.run(main())


def test_watching_a_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    async def main() -> None:
        watcher = ExitWatcher(lambda _: None)
        watcher.start()
        try:
            with pytest.raises(ExitWatchError, match=r"container ghost.*No such file"):
                watcher.watch("ghost", tmp_path / "missing")
        finally:
            watcher.close()

    asyncio.run(main())
