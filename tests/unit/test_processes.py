"""Running a program with a deadline (base/processes.py), with real child processes."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from base import processes
from base.errors import DeadlineExceeded, kind_of
from base.processes import ProgramTimedOut


def _gone(pid: int) -> bool:
    """No such process, not even a zombie (signal 0 reaches a zombie too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _pid_in(path: Path) -> int:
    """The pid a test program wrote to ``path`` (it writes it first thing)."""
    for _ in range(200):
        text = path.read_text() if path.exists() else ""
        if text.endswith("\n"):
            return int(text)
        time.sleep(0.01)
    raise AssertionError(f"nothing wrote a pid to {path}")


def _dies(pid: int) -> bool:
    """Whether ``pid`` dies within a moment. An orphan counts once it is a zombie:
    reaping it is its new parent's business (init, or a subreaper), in its own time."""
    for _ in range(200):
        try:
            stat = Path(f"/proc/{pid}/stat").read_bytes()
        except FileNotFoundError:
            return True
        if stat[stat.rfind(b")") + 2 :].startswith(b"Z"):
            return True
        time.sleep(0.01)
    return False


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_output_and_status_are_returned() -> None:
    done = asyncio.run(processes.run(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=10))
    assert (done.returncode, done.stdout, done.stderr) == (3, b"out\n", b"err\n")
    assert done.status() == "exited with status 3"


def test_stderr_can_be_merged_into_stdout() -> None:
    done = asyncio.run(
        processes.run(["sh", "-c", "echo out; echo err >&2"], timeout=10, merge_stderr=True)
    )
    assert (done.stdout, done.stderr) == (b"out\nerr\n", b"")


def test_stdin_is_fed() -> None:
    data = b"x" * 300_000  # more than a pipe holds: written while the output is read
    done = asyncio.run(processes.run(["cat"], timeout=10, stdin=data))
    assert done.stdout == data


def test_stdin_is_empty_without_input() -> None:
    done = asyncio.run(processes.run(["cat"], timeout=10))
    assert done.stdout == b""


def test_output_is_capped_and_the_rest_drained() -> None:
    async def main() -> processes.Finished:
        child = await processes.start(["head", "-c", "1000000", "/dev/zero"], max_output=10)
        async with child:
            return await child.wait(10)

    done = asyncio.run(main())
    assert (done.returncode, done.stdout) == (0, b"\0" * 10)


def test_deadline_kills_and_reaps() -> None:
    started = time.monotonic()
    with pytest.raises(ProgramTimedOut) as caught:
        asyncio.run(processes.run(["sleep", "30"], timeout=0.2))
    assert time.monotonic() - started < 5
    late = caught.value
    assert late.finished.returncode == -signal.SIGKILL
    assert late.finished.status() == "was killed by signal 9"
    assert _gone(late.finished.pid)
    assert str(late) == f"sleep did not finish in 0.2s and was killed (pid {late.finished.pid})"
    assert kind_of(ProgramTimedOut) is DeadlineExceeded


def test_deadline_kills_the_group_of_a_program_in_its_own_session(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    script = f"sleep 30 & echo $! > {pid_file}; wait"
    with pytest.raises(ProgramTimedOut):
        asyncio.run(processes.run(["sh", "-c", script], timeout=0.5, new_session=True))
    assert _dies(_pid_in(pid_file))


def test_deadline_covers_output_held_by_what_the_program_left(tmp_path: Path) -> None:
    """The program exits at once, its background child keeps the pipe: the deadline
    still comes, and takes the child (same group) along."""
    pid_file = tmp_path / "pid"
    script = f"sleep 30 & echo $! > {pid_file}"
    with pytest.raises(ProgramTimedOut) as caught:
        asyncio.run(processes.run(["sh", "-c", script], timeout=0.5, new_session=True))
    assert caught.value.finished.returncode == 0
    assert _dies(_pid_in(pid_file))


def test_output_grace_answers_without_waiting_for_a_left_daemon(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    script = f"echo hello; sleep 30 & echo $! > {pid_file}"

    async def main() -> tuple[processes.Finished, set[str]]:
        before = _open_fds()
        child = await processes.start(["sh", "-c", script])
        async with child:
            done = await child.wait(20, output_grace=0.2)
        # The daemon still holds the other ends; ours are closed all the same.
        return done, _open_fds() - before

    started = time.monotonic()
    try:
        done, leaked = asyncio.run(main())
    finally:
        os.kill(_pid_in(pid_file), signal.SIGKILL)
    assert time.monotonic() - started < 10
    assert (done.returncode, done.stdout) == (0, b"hello\n")
    assert not leaked, f"descriptors of ours left open: {sorted(leaked)}"


def test_cancelling_the_waiter_kills_and_reaps(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"

    async def main() -> None:
        waiter = asyncio.ensure_future(
            processes.run(["sh", "-c", f"echo $$ > {pid_file}; exec sleep 30"], timeout=None)
        )
        await asyncio.to_thread(_pid_in, pid_file)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert _gone(_pid_in(pid_file))

    asyncio.run(main())


def test_a_second_cancellation_does_not_cut_the_reap_short() -> None:
    stopped: list[int] = []

    async def slow_stop(child: processes.Child) -> None:
        await asyncio.sleep(0.3)
        stopped.append(child.pid)

    async def main() -> int:
        child = await processes.start(["sleep", "30"], stop=slow_stop)

        async def use() -> None:
            async with child:
                await child.wait(None)

        waiter = asyncio.ensure_future(use())
        await asyncio.sleep(0.1)
        waiter.cancel()
        await asyncio.sleep(0.1)  # in the stop now
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        return child.pid

    pid = asyncio.run(main())
    assert stopped == [pid]
    assert _gone(pid)


def test_stop_comes_before_the_kill() -> None:
    seen: list[int | None] = []

    async def stop(child: processes.Child) -> None:
        os.kill(child.pid, signal.SIGTERM)
        assert await child.exited_within(5)
        seen.append(child.returncode)

    async def main() -> processes.Finished:
        child = await processes.start(["sleep", "30"], stop=stop)
        async with child:
            try:
                return await child.wait(0.2)
            except ProgramTimedOut as late:
                return late.finished

    done = asyncio.run(main())
    assert seen == [-signal.SIGTERM]
    assert done.returncode == -signal.SIGTERM


def test_leaving_the_block_early_ends_the_program() -> None:
    async def main() -> int:
        child = await processes.start(["sleep", "30"])
        async with child:
            pass
        return child.pid

    assert _gone(asyncio.run(main()))


def test_a_program_that_cannot_start_raises_the_exec_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        asyncio.run(processes.run([str(tmp_path / "missing")], timeout=10))


def test_finish_even_if_cancelled_finishes_then_raises() -> None:
    finished: list[bool] = []

    async def step() -> None:
        await asyncio.sleep(0.2)
        finished.append(True)

    async def main() -> None:
        task = asyncio.ensure_future(processes.finish_even_if_cancelled(step()))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert finished == [True]
