"""Streaming exec and attach with the real conmon, runc and crun on this machine.

The containers are the busybox bundles of ``bundles.py`` run by the OCI runtime driver;
each test works in its own temp directory and cgroup prefix (``make_env`` of
``test_oci_runtime``), which it cleans up whatever happens. The test bundles have no
``stty``/``tty`` applets: ``busybox stty`` and ``busybox tty`` call them.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from runtime import conmon
from runtime.attach import AttachContainerNotFound, AttachError, AttachSession, attach
from runtime.exec_session import (
    ExecContainerNotFound,
    ExecError,
    ExecOptions,
    ExecSession,
    start_exec,
)
from runtime.oci_runtime import OciRuntime
from tests.integration import test_oci_runtime as oci
from tests.integration.test_oci_runtime import Env, eventually, make_env, run

pytestmark = oci.pytestmark

MIB = 1 << 20
WITHIN = 30.0  # seconds for any one step


@pytest.fixture
def env() -> Iterator[Env]:
    yield from make_env("runc")


@pytest.fixture(params=["runc", "crun"])
def any_env(request: pytest.FixtureRequest) -> Iterator[Env]:
    yield from make_env(request.param)


async def read_all(read: Callable[[], Awaitable[bytes]]) -> bytes:
    data = bytearray()
    async with asyncio.timeout(WITHIN):
        while chunk := await read():
            data += chunk
    return bytes(data)


async def outcome(session: ExecSession) -> tuple[bytes, bytes, int]:
    """stdout, stderr (both to EOF) and the exit code."""
    out, err = await asyncio.gather(read_all(session.read_stdout), read_all(session.read_stderr))
    async with asyncio.timeout(WITHIN):
        code = await session.wait()
    return out, err, code


async def exec_(
    env: Env, cid: str, *command: str, tty: bool = False, stdin: bool = False
) -> ExecSession:
    return await start_exec(env.runtime, cid, ExecOptions(tuple(command), tty=tty, stdin=stdin))


async def read_until(read: Callable[[], Awaitable[bytes]], needle: bytes) -> bytes:
    """Read until ``needle`` was seen (or fail after WITHIN s)."""
    data = bytearray()
    try:
        async with asyncio.timeout(WITHIN):
            while needle not in data:
                chunk = await read()
                assert chunk, f"EOF before {needle!r}; got {bytes(data)!r}"
                data += chunk
    except TimeoutError:
        raise AssertionError(f"no {needle!r} within {WITHIN}s; got {bytes(data)!r}") from None
    return bytes(data)


# A shell that runs the lines it reads, without an interactive shell's line editing
# (whose terminal queries and mode switches race with what a test types ahead).
SHELL = ("sh", "-c", 'while read -r line; do eval "$line"; done')


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


async def assert_fds_back_to(before: set[str], seconds: float = 3.0) -> None:
    """The test process holds the descriptors it held before. A leaked one stays open;
    another thread's (a server fixture's connection) comes and goes, so a difference
    is given a moment to pass."""
    for _ in range(int(seconds / 0.05)):
        if open_fds() == before:
            return
        await asyncio.sleep(0.05)
    now = open_fds()
    opened = {fd: _fd_target(fd) for fd in now - before}
    assert now == before, f"opened {opened}, closed {sorted(before - now)}"


def _fd_target(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"


def exec_files(env: Env, cid: str) -> list[Path]:
    return list((env.state_dir / cid).glob("exec-*"))


# ---- exec without a tty -----------------------------------------------------------------


def test_exec_output_exit_codes_and_errors(any_env: Env) -> None:
    env = any_env

    async def body() -> None:
        cid, _ = await env.started(["sleep", "1000"])
        fds = open_fds()

        session = await exec_(env, cid, "echo", "hi")
        assert session.pid > 0
        assert await outcome(session) == (b"hi\n", b"", 0)

        session = await exec_(env, cid, "sh", "-c", "exit 7")
        assert await outcome(session) == (b"", b"", 7)

        session = await exec_(env, cid, "sh", "-c", "echo out; echo err >&2; echo out2")
        assert await outcome(session) == (b"out\nout2\n", b"err\n", 0)

        session = await exec_(env, cid, "sh", "-c", "kill -9 $$")
        assert (await outcome(session))[2] == 137

        # Without stdin the command reads EOF at once, and writing is refused.
        session = await exec_(env, cid, "cat")
        with pytest.raises(ExecError, match="without stdin"):
            await session.write_stdin(b"x")
        assert await outcome(session) == (b"", b"", 0)

        # Failures before the command runs are the start's, in the runtime's words.
        with pytest.raises(ExecError, match="no-such-cmd"):
            await exec_(env, cid, "no-such-cmd")
        with pytest.raises(ExecError, match="empty command"):
            await exec_(env, cid)
        with pytest.raises(ExecContainerNotFound):
            await exec_(env, "no-such-container", "true")
        with pytest.raises(ExecError, match="invalid container id"):
            await exec_(env, "../x", "true")

        assert not exec_files(env, cid)
        await assert_fds_back_to(fds)

        await env.runtime.stop(cid, signal.SIGKILL, 0)
        with pytest.raises(ExecError, match=cid):
            await exec_(env, cid, "true")
        assert not exec_files(env, cid)
        await env.runtime.delete(cid)

    run(body())


def test_exec_stdin_round_trip(env: Env) -> None:
    async def body() -> None:
        cid, _ = await env.started(["sleep", "1000"])
        session = await exec_(env, cid, "cat", stdin=True)
        await session.write_stdin(b"hello\n")
        assert await read_until(session.read_stdout, b"hello\n") == b"hello\n"
        await session.write_stdin(b"world\n")
        assert await read_until(session.read_stdout, b"world\n") == b"world\n"
        await session.close_stdin()
        await session.close_stdin()  # idempotent
        with pytest.raises(ExecError, match="stdin is closed"):
            await session.write_stdin(b"late")
        assert await outcome(session) == (b"", b"", 0)
        await session.close()
        assert not exec_files(env, cid)

    run(body())


def test_exec_ten_mib_through_stdin_and_stdout(env: Env) -> None:
    """10 MiB written to ``cat`` come back intact while both directions are flow
    controlled; and a generator's 10 MiB arrive intact on their own."""

    async def body() -> None:
        cid, _ = await env.started(["sleep", "1000"])
        payload = os.urandom(10 * MIB)
        session = await exec_(env, cid, "cat", stdin=True)

        async def feed() -> None:
            for start in range(0, len(payload), 100_000):
                await session.write_stdin(payload[start : start + 100_000])
            await session.close_stdin()

        _, (out, err, code) = await asyncio.gather(feed(), outcome(session))
        assert (len(out), err, code) == (len(payload), b"", 0)
        assert hashlib.sha256(out).digest() == hashlib.sha256(payload).digest()

        line = b"0123456789abcdef\n"
        session = await exec_(env, cid, "sh", "-c", "yes 0123456789abcdef | head -c 10485760")
        out, err, code = await outcome(session)
        expected = (line * (10 * MIB // len(line) + 1))[: 10 * MIB]
        assert (len(out), err, code) == (10 * MIB, b"", 0)
        assert hashlib.sha256(out).digest() == hashlib.sha256(expected).digest()

    run(body())


def test_exec_output_is_not_read_ahead(env: Env) -> None:
    """A consumer that does not read holds the command up: skiff buffers a bounded
    amount, not the command's whole output."""

    async def body() -> None:
        cid, _ = await env.started(["sleep", "1000"])
        total = 50 * MIB
        session = await exec_(env, cid, "sh", "-c", f"yes | head -c {total}; echo done >&2")
        errors = asyncio.ensure_future(read_all(session.read_stderr))
        await asyncio.sleep(1.5)
        # stdout not read: the writer is blocked and has not said "done" yet.
        assert not errors.done()
        out = await read_all(session.read_stdout)
        assert out == b"y\n" * (total // 2)
        assert await errors == b"done\n"
        assert await session.wait() == 0

    run(body())


def test_exec_kill(any_env: Env) -> None:
    env = any_env

    async def body() -> None:
        cid, _ = await env.started(["sleep", "1000"])
        fds = open_fds()
        session = await exec_(env, cid, "sh", "-c", "sleep 200 & sleep 100", stdin=True)
        pid = session.pid
        assert conmon.process_running(pid)
        await session.kill()
        async with asyncio.timeout(10):
            assert await session.wait() == 137
        # The command and what it started are gone (its group was killed too; the
        # container's init, sleep, reaps nothing, so a zombie may be left of the
        # background sleep, but nothing runs).
        assert not conmon.process_running(pid)
        ps = env.runtime_exec(cid, "ps", "-o", "pid,stat,args").splitlines()
        assert not [line for line in ps if line.endswith((" sleep 100", " sleep 200"))], ps
        await session.kill()  # idempotent
        await session.close()
        assert not exec_files(env, cid)
        await assert_fds_back_to(fds)

        # close() on a running exec kills it too, and releases everything.
        session = await exec_(env, cid, "sh", "-c", "while :; do echo x; sleep 0.01; done")
        pid = session.pid
        await read_until(session.read_stdout, b"x")
        await session.close()
        assert not conmon.process_running(pid)
        assert await session.read_stdout() == b""
        assert not exec_files(env, cid)

        # close() ends reads that wait, with and without a tty.
        for tty in (False, True):
            session = await exec_(env, cid, "sleep", "100", tty=tty)
            pending = asyncio.ensure_future(session.read_stdout())
            await asyncio.sleep(0.2)
            assert not pending.done()
            await session.close()
            assert await asyncio.wait_for(pending, 5) == b""
        await assert_fds_back_to(fds)

    run(body())


# ---- exec with a tty --------------------------------------------------------------------


def test_exec_tty(any_env: Env) -> None:
    env = any_env

    async def body() -> None:
        cid, _ = await env.started(["sleep", "1000"])
        fds = open_fds()
        session = await exec_(env, cid, *SHELL, tty=True, stdin=True)
        await session.resize(100, 40)
        await session.write_stdin(b"busybox stty size; busybox tty; echo err >&2\n")
        # (The terminal echoes the command line: "\r\nerr\r\n" is only the output.)
        out = await read_until(session.read_stdout, b"\r\nerr\r\n")
        assert b"\r\n40 100\r\n/dev/pts/" in out
        # stderr is the terminal too.
        assert await session.read_stderr() == b""

        # A resize while the command runs reaches it.
        await session.resize(120, 50)
        await session.write_stdin(b"busybox stty size\n")
        assert b"50 120" in await read_until(session.read_stdout, b"50 120")

        await session.write_stdin(b"exit 3\n")
        rest, _, code = await outcome(session)
        assert code == 3
        # The terminal's CRLF.
        assert b"\r\n" in out + rest
        await session.close()
        assert not exec_files(env, cid)
        await assert_fds_back_to(fds)

    run(body())


def test_exec_tty_close_stdin_and_kill(any_env: Env) -> None:
    env = any_env

    async def body() -> None:
        cid, _ = await env.started(["sleep", "1000"])
        fds = open_fds()

        # close_stdin sends the terminal's EOF: cat ends.
        session = await exec_(env, cid, "cat", tty=True, stdin=True)
        await session.write_stdin(b"hello\n")
        await read_until(session.read_stdout, b"hello\r\n")
        await session.close_stdin()
        _, _, code = await outcome(session)
        assert code == 0

        # Output in bulk through the terminal arrives whole.
        session = await exec_(env, cid, "sh", "-c", "yes abcdefgh | head -n 100000", tty=True)
        out, _, code = await outcome(session)
        assert code == 0
        # runc may turn the first lines' "\r\n" into "\r\r\n" (see exec_session).
        assert out.replace(b"\r\r\n", b"\r\n") == b"abcdefgh\r\n" * 100000

        session = await exec_(env, cid, "sleep", "100", tty=True, stdin=True)
        pid = session.pid
        await session.kill()
        async with asyncio.timeout(10):
            assert await session.wait() == 137
        assert not conmon.process_running(pid)
        assert await read_all(session.read_stdout) == b""
        await session.close()
        with pytest.raises(ExecError):
            await session.write_stdin(b"x")

        with pytest.raises(ExecError, match="no-such-cmd"):
            await exec_(env, cid, "no-such-cmd", tty=True)
        assert not exec_files(env, cid)
        await assert_fds_back_to(fds)

    run(body())


# ---- attach -----------------------------------------------------------------------------


async def created(
    env: Env,
    args: list[str],
    *,
    stdin: bool = False,
    stdin_once: bool = False,
    terminal: bool = False,
) -> str:
    cid = env.new_id()
    bundle = env.bundle(cid, args, terminal=terminal)
    await env.runtime.create(
        cid, bundle, env.log(cid), stdin=stdin, stdin_once=stdin_once, terminal=terminal
    )
    await env.runtime.start(cid)
    return cid


async def read_record_until(session: AttachSession, stream: str, needle: bytes) -> bytes:
    data = bytearray()
    async with asyncio.timeout(WITHIN):
        while needle not in data:
            record = await session.read()
            assert record is not None, f"attach ended before {needle!r}; got {bytes(data)!r}"
            if record[0] == stream:
                data += record[1]
    return bytes(data)


async def running(env: Env, cid: str) -> bool:
    state = await env.runtime.state(cid)
    return (
        state is not None
        and state["status"] == "running"
        and env.runtime.conmon_pid(cid) is not None
        and env.runtime.exit_status(cid) is None
    )


def test_attach_output_and_detach(env: Env) -> None:
    async def body() -> None:
        cid = await created(
            env, ["sh", "-c", "while true; do echo tick; echo tock >&2; sleep 0.2; done"]
        )
        session = await attach(env.runtime, cid)
        assert not session.stdin and not session.terminal
        await read_record_until(session, "stdout", b"tick")
        await read_record_until(session, "stderr", b"tock")
        with pytest.raises(AttachError, match="without stdin"):
            await session.write_stdin(b"x")
        await session.resize(80, 24)  # no terminal: nothing to do
        await session.detach()
        await session.detach()
        assert await session.read() is None
        await asyncio.sleep(0.5)
        assert await running(env, cid)

        # Two clients at once both see the output.
        async with await attach(env.runtime, cid) as one, await attach(env.runtime, cid) as two:
            await read_record_until(one, "stdout", b"tick")
            await read_record_until(two, "stdout", b"tick")
        assert await running(env, cid)

        # The container exits: the attached client's read ends.
        session = await attach(env.runtime, cid)
        await env.runtime.kill(cid, signal.SIGKILL)
        async with asyncio.timeout(WITHIN):
            while await session.read() is not None:
                pass
        await session.detach()
        assert await env.runtime.wait_exit(cid, WITHIN) is not None
        with pytest.raises(AttachError, match="not running"):
            await attach(env.runtime, cid)
        await env.runtime.delete(cid)
        with pytest.raises(AttachContainerNotFound):
            await attach(env.runtime, cid)

    run(body())


def test_attach_stdin(env: Env) -> None:
    async def body() -> None:
        # stdin kept open across clients (not stdin_once).
        cid = await created(env, ["cat"], stdin=True)
        session = await attach(env.runtime, cid)
        assert session.stdin and not session.stdin_once
        await session.write_stdin(b"hello\n")
        assert await read_record_until(session, "stdout", b"hello\n") == b"hello\n"
        # More than one conmon record's worth (32 KiB) goes through whole.
        big = b"".join(b"%07d\n" % i for i in range(20000))
        await session.write_stdin(big)
        assert await read_record_until(session, "stdout", b"0019999\n") == big
        await session.close_stdin()  # ends only this client's input
        with pytest.raises(AttachError, match="stdin is closed"):
            await session.write_stdin(b"x")
        await session.detach()
        await asyncio.sleep(0.3)
        assert await running(env, cid)
        async with await attach(env.runtime, cid) as again:
            await again.write_stdin(b"again\n")
            await read_record_until(again, "stdout", b"again\n")
        assert await running(env, cid)

        # A detach ends a read that waits for output.
        session = await attach(env.runtime, cid)
        pending = asyncio.ensure_future(session.read())
        await asyncio.sleep(0.2)
        assert not pending.done()
        await session.detach()
        assert await asyncio.wait_for(pending, 5) is None
        assert await running(env, cid)

        # stdin_once: closing our input closes the container's stdin; cat exits.
        cid = await created(env, ["cat"], stdin=True, stdin_once=True)
        session = await attach(env.runtime, cid)
        assert session.stdin and session.stdin_once
        await session.write_stdin(b"once\n")
        await read_record_until(session, "stdout", b"once\n")
        await session.close_stdin()
        async with asyncio.timeout(WITHIN):
            while await session.read() is not None:
                pass
        status = await env.runtime.wait_exit(cid, WITHIN)
        assert status is not None and status.exit_code == 0
        await session.detach()

    run(body())


def test_attach_terminal_resize(env: Env) -> None:
    async def body() -> None:
        cid = await created(env, list(SHELL), terminal=True)
        session = await attach(env.runtime, cid)
        assert session.terminal and session.stdin
        await session.resize(100, 40)
        await session.write_stdin(b"busybox stty size\n")
        # Everything through a terminal is stdout.
        assert b"40 100" in await read_record_until(session, "stdout", b"40 100")
        # Resizes in a quick row: the last one wins (conmon merges nothing).
        for width in range(60, 90):
            await session.resize(width, 30)
        await session.write_stdin(b"busybox stty size\n")
        await read_record_until(session, "stdout", b"30 89")
        await session.detach()
        await asyncio.sleep(0.3)
        assert await running(env, cid)

        async with await attach(env.runtime, cid) as again:
            await again.write_stdin(b"exit 4\n")
            async with asyncio.timeout(WITHIN):
                while await again.read() is not None:
                    pass
        status = await env.runtime.wait_exit(cid, WITHIN)
        assert status is not None and status.exit_code == 4
        await eventually(lambda: env.runtime.conmon_pid(cid) is None)
        with pytest.raises(AttachError, match="not running"):
            await attach(env.runtime, cid)

    run(body())


def test_attach_through_a_long_socket_path(env: Env) -> None:
    """A state directory deep enough that the attach socket's path does not fit in
    sun_path: the connect goes through the directory's /proc/self/fd entry."""

    async def body() -> None:
        deep = env.top / ("d" * 60) / ("e" * 60)
        runtime = OciRuntime(env.handler, env.runtime.conmon_path, deep, timeout=30)
        cid = env.new_id()
        await runtime.create(cid, env.bundle(cid, ["cat"]), env.log(cid), stdin=True)
        await runtime.start(cid)
        assert len(os.fsencode(runtime.attach_socket_path(cid))) > 108
        async with await attach(runtime, cid) as session:
            await session.write_stdin(b"deep\n")
            await read_record_until(session, "stdout", b"deep\n")
        await runtime.delete(cid)

    run(body())
