"""Checking that runc, crun and conmon are there and run."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from runtime.programs import ProgramProber, find_program


def _script(path: Path, body: str) -> Path:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def test_real_runc_is_usable() -> None:
    status = asyncio.run(ProgramProber().probe("runc"))
    assert status.usable, status.problem
    assert status.path == find_program("runc")
    assert status.version.startswith("runc version")


def test_missing_program() -> None:
    status = asyncio.run(ProgramProber().probe("no-such-runtime-xyz"))
    assert not status.usable
    assert status.problem == "no-such-runtime-xyz not found in PATH"
    status = asyncio.run(ProgramProber().probe("/nonexistent/runc"))
    assert status.problem == "/nonexistent/runc not found at that path"


def test_not_executable(tmp_path: Path) -> None:
    path = tmp_path / "runc"
    path.write_text("#!/bin/sh\n")
    path.chmod(0o644)
    # Root may execute a file only when some execute bit is set.
    status = asyncio.run(ProgramProber().probe(str(path)))
    assert not status.usable
    assert "not executable" in status.problem


def test_failing_version_is_reported_with_its_output(tmp_path: Path) -> None:
    path = _script(tmp_path / "runc", "echo 'libseccomp.so.2: cannot open' >&2; exit 127")
    status = asyncio.run(ProgramProber().probe(str(path)))
    assert not status.usable
    assert "exit status 127" in status.problem
    assert "libseccomp" in status.problem


def test_hanging_program_times_out(tmp_path: Path) -> None:
    path = _script(tmp_path / "runc", "exec sleep 30")
    status = asyncio.run(ProgramProber(timeout=0.3).probe(str(path)))
    assert not status.usable
    assert "did not answer" in status.problem


def test_answers_are_cached_until_the_file_changes(tmp_path: Path) -> None:
    marker = tmp_path / "calls"
    path = _script(tmp_path / "runc", f"echo x >> {marker}; echo 'runc version 1'")

    async def probe_three_times() -> list[bool]:
        prober = ProgramProber()
        first = await prober.probe(str(path))
        second = await prober.probe(str(path))
        _script(path, "exit 1")
        os.utime(path, ns=(0, 12345))
        third = await prober.probe(str(path))
        return [first.usable, second.usable, third.usable]

    assert asyncio.run(probe_three_times()) == [True, True, False]
    assert marker.read_text().count("x") == 1


def test_mount_options_come_from_the_runtimes_features(tmp_path: Path) -> None:
    marker = tmp_path / "calls"
    features = '{"ociVersionMin": "1.0.0", "mountOptions": ["ro", "rro", "rbind"]}'
    runc = _script(
        tmp_path / "runc",
        f"echo x >> {marker}; [ \"$1\" = features ] && echo '{features}' || exit 9",
    )
    old = _script(tmp_path / "crun", "echo 'unknown command features' >&2; exit 1")
    garbled = _script(tmp_path / "other", "echo '[not an object'")

    async def probe() -> list[frozenset[str]]:
        prober = ProgramProber()
        return [
            await prober.mount_options(str(runc)),
            await prober.mount_options(str(runc)),
            await prober.mount_options(str(old)),
            await prober.mount_options(str(garbled)),
            await prober.mount_options("no-such-runtime-xyz"),
        ]

    first, again, *nothing = asyncio.run(probe())
    assert first == again == frozenset({"ro", "rro", "rbind"})
    assert marker.read_text().count("x") == 1  # asked once, then cached
    assert nothing == [frozenset(), frozenset(), frozenset()]


def test_real_runc_knows_recursive_read_only() -> None:
    # Debian 12's runc 1.1.5 has `runc features` and the rro mount option.
    assert "rro" in asyncio.run(ProgramProber().mount_options("runc"))
