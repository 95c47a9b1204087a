"""Running a program with a deadline: the one way skiff runs runc, conmon, CNI plugins
and its own helpers.

What every way out guarantees (a return, the deadline, an error, the awaiting task
cancelled):

- A program still running is SIGKILLed: with its whole process group when it was
  started in a session of its own (``new_session``), so what it started goes too;
  otherwise by a pidfd (``Process.kill`` polls first, which can reap the child under
  asyncio's child watcher, which then logs "Unknown child process" and reports 255).
- It is reaped before the call returns or raises, however long that takes (a warning
  is logged after ``REAP_WARN`` seconds): no zombie, and the caller's cleanup cannot
  race with a program still at work. A cancellation that arrives meanwhile is raised
  once it is reaped.
- None of our ends of its pipes stays open, even when something it started still
  holds the other end.
- Its output is read as it comes, so it never blocks on a full pipe; ``max_output``
  keeps the first bytes of each stream and drops the rest.

A program that overruns raises :class:`ProgramTimedOut` (a DeadlineExceeded);
callers usually say so in their own error, naming their object. A program that
cannot be started raises the OSError of the exec.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from base.errors import DeadlineExceeded

log = logging.getLogger(__name__)

T = TypeVar("T")

REAP_WARN = 5.0  # seconds after SIGKILL before a program still there is worth a warning
_CHUNK = 65536


@dataclass(frozen=True)
class Finished:
    """A program that ran and was reaped."""

    pid: int
    returncode: int  # negative: killed by that signal
    stdout: bytes  # with stderr too when merged
    stderr: bytes

    def status(self) -> str:
        """How it ended, as a sentence ends: "exited with status 1"."""
        if self.returncode < 0:
            return f"was killed by signal {-self.returncode}"
        return f"exited with status {self.returncode}"


class ProgramTimedOut(DeadlineExceeded):
    """The program ran past its deadline and has been killed and reaped; ``finished``
    holds what it wrote until then."""

    def __init__(self, program: str, limit: float, finished: Finished) -> None:
        super().__init__(
            f"{program} did not finish in {limit:g}s and was killed (pid {finished.pid})"
        )
        self.limit = limit
        self.finished = finished


class _Protocol(asyncio.subprocess.SubprocessStreamProtocol):
    """Tells when the program exited and was reaped. (In Python 3.11 Process.wait()
    waits for the pipes to close too, which a daemon the program left may never do.)"""

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit, loop)
        self.exited: asyncio.Future[None] = loop.create_future()

    def process_exited(self) -> None:
        super().process_exited()
        if not self.exited.done():
            self.exited.set_result(None)


class Child:
    """A started program; use it as ``async with child:``, which ends it (see the
    module) unless :meth:`wait` returned, and closes its pipes."""

    def __init__(
        self,
        argv: Sequence[str],
        process: asyncio.subprocess.Process,
        transport: asyncio.SubprocessTransport,
        exited: asyncio.Future[None],
        *,
        new_session: bool,
        stdin: bytes | None,
        max_output: int | None,
        stop: Stop | None,
    ) -> None:
        self.pid = process.pid
        self._program = argv[0]
        self._process = process
        self._transport = transport
        self._exited = exited
        self._new_session = new_session
        self._stop = stop
        self._settled = False
        self._pidfd = _pidfd(process.pid)
        self._stdout = bytearray()
        self._stderr = bytearray()
        self._readers = [
            asyncio.ensure_future(_collect(stream, into, max_output))
            for stream, into in ((process.stdout, self._stdout), (process.stderr, self._stderr))
            if stream is not None
        ]
        self._tasks = list(self._readers)
        if process.stdin is not None:
            self._tasks.append(asyncio.ensure_future(_feed(process.stdin, stdin or b"")))

    @property
    def returncode(self) -> int | None:
        """Its exit status once it exited and was reaped (negative: killed by that
        signal), None before."""
        return self._process.returncode if self._exited.done() else None

    async def exited_within(self, seconds: float | None) -> bool:
        """Whether it exits (and is reaped) within ``seconds``."""
        await asyncio.wait({self._exited}, timeout=seconds)
        return self._exited.done()

    async def wait(
        self,
        timeout: float | None,  # noqa: ASYNC109
        *,
        output_grace: float | None = None,
    ) -> Finished:
        """Wait for the program to exit and its output to end, up to ``timeout``
        seconds (None: no limit); ProgramTimedOut past it.

        ``output_grace``: the deadline covers only the exit, and the output is read
        for at most that long after it (or after the kill), so that a daemon the
        program left holding its pipes does not hold up the answer. None: the end of
        the output is part of the deadline."""
        try:
            async with asyncio.timeout(timeout):
                await asyncio.wait({self._exited})
                if output_grace is None:
                    await asyncio.wait(self._readers)
        except TimeoutError:
            assert timeout is not None
            await self.end()
            await self._read_on(output_grace)
            raise ProgramTimedOut(self._program, timeout, self._finished()) from None
        self._settled = True
        await self._read_on(output_grace)
        return self._finished()

    async def end(self) -> None:
        """``stop`` (if given), SIGKILL, reap: see the module. Finishes even if the
        awaiting task is cancelled meanwhile, and raises that cancellation after."""
        self._settled = True
        await finish_even_if_cancelled(self._end())

    async def _end(self) -> None:
        try:
            if self._stop is not None and self.returncode is None:
                await self._stop(self)
        finally:
            self._kill()
        if not await self.exited_within(REAP_WARN):
            log.warning(
                "%s (pid %d) still runs %gs after SIGKILL; waiting for it",
                self._program,
                self.pid,
                REAP_WARN,
            )
            await self.exited_within(None)

    def _kill(self) -> None:
        if self._new_session:
            # Even when the leader is gone: what it started may hold the pipes.
            try:
                os.killpg(self.pid, signal.SIGKILL)
                return
            except (ProcessLookupError, PermissionError):
                pass  # no group left, or none we may signal: the leader alone, below
        if self.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            if self._pidfd >= 0:
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            else:
                self._process.kill()

    async def _read_on(self, grace: float | None) -> None:
        reading = [task for task in self._readers if not task.done()]
        if reading and grace:
            await asyncio.wait(reading, timeout=grace)

    def _finished(self) -> Finished:
        assert self.returncode is not None
        return Finished(self.pid, self.returncode, bytes(self._stdout), bytes(self._stderr))

    async def __aenter__(self) -> Child:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if not self._settled:
                await self.end()
        finally:
            # Closed before anything else is awaited, so that a second cancellation
            # cannot leave a descriptor open.
            self._transport.close()
            if self._pidfd >= 0:
                os.close(self._pidfd)
                self._pidfd = -1
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)


async def start(
    argv: Sequence[str],
    *,
    stdin: bytes | None = None,
    merge_stderr: bool = False,
    new_session: bool = False,
    max_output: int | None = None,
    stop: Stop | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    pass_fds: Sequence[int] = (),
) -> Child:
    """Start ``argv`` with stdout and stderr captured (stderr into stdout with
    ``merge_stderr``), ``stdin`` fed to it (None: /dev/null). Enter the result with
    ``async with`` at once: only that ends and reaps it."""
    loop = asyncio.get_running_loop()
    # loop.subprocess_exec rather than create_subprocess_exec: its transport is what
    # closes our ends of the pipes.
    transport, protocol = await loop.subprocess_exec(
        lambda: _Protocol(limit=_CHUNK, loop=loop),
        *argv,
        stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT if merge_stderr else asyncio.subprocess.PIPE,
        start_new_session=new_session,
        env=env,
        cwd=cwd,
        pass_fds=pass_fds,
    )
    process = asyncio.subprocess.Process(transport, protocol, loop)
    return Child(
        argv,
        process,
        transport,
        protocol.exited,
        new_session=new_session,
        stdin=stdin,
        max_output=max_output,
        stop=stop,
    )


async def run(
    argv: Sequence[str],
    *,
    timeout: float | None,  # noqa: ASYNC109
    stdin: bytes | None = None,
    merge_stderr: bool = False,
    new_session: bool = False,
    env: Mapping[str, str] | None = None,
) -> Finished:
    """Start ``argv`` (see :func:`start`) and wait for it (see :meth:`Child.wait`)."""
    child = await start(
        argv, stdin=stdin, merge_stderr=merge_stderr, new_session=new_session, env=env
    )
    async with child:
        return await child.wait(timeout)


async def finish_even_if_cancelled(aw: Awaitable[T]) -> T:
    """Await ``aw`` to its end even if we are cancelled meanwhile, then re-raise.

    A thread or a killed process cannot be stopped halfway, and a rollback that runs
    before the step it undoes has finished would miss what that step makes.
    """
    task = asyncio.ensure_future(aw)
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            # wait() neither cancels the task nor raises its error; only our own
            # cancellation comes out of it.
            await asyncio.wait({task})
        except asyncio.CancelledError as exc:
            cancelled = exc
    if cancelled is not None:
        if not task.cancelled() and task.exception() is not None:
            cancelled.add_note(f"while finishing a step that then failed: {task.exception()}")
        raise cancelled
    return task.result()


async def _collect(stream: asyncio.StreamReader, into: bytearray, limit: int | None) -> None:
    while chunk := await stream.read(_CHUNK):
        room = len(chunk) if limit is None else limit - len(into)
        if room > 0:
            into += chunk[:room]


async def _feed(writer: asyncio.StreamWriter, data: bytes) -> None:
    # A program that exits without reading all of its input is not an error here.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        writer.write(data)
        await writer.drain()
        writer.close()


#: Ends a program its own way before the SIGKILL that follows (the program may be
#: gone by then).
Stop = Callable[[Child], Awaitable[None]]


def _pidfd(pid: int) -> int:
    try:
        return os.pidfd_open(pid)
    except OSError:
        return -1
