"""Streaming exec: ``<runtime> exec`` with live stdio, the runtime side of the CRI
``Exec`` streaming call (the HTTP/SPDY/WebSocket server that drives it lives in ``cri/``).

Without a tty the runtime runs as ``<runtime> --root <root> exec --pid-file <f> <id>
<cmd...>`` with three pipes of ours, which it hands to the command as its stdio: what
the command writes is read straight from them.

With a tty the runtime runs *attached*, ``<runtime> ... exec --tty --pid-file <f> <id>
<cmd...>``, with a pseudo-terminal of ours as its stdin and stdout (its stderr stays a
pipe, for the runtime's own messages). ``--console-socket`` is not an option here: runc
refuses it unless it also detaches ("cannot use console socket if runc will not detach
or allocate tty"), and a detached runc exits at once, its status no longer the
command's, which is reparented away from us (only a subreaper could wait for it: that
is conmon's exec mode). So skiff does what cri-o does: the runtime makes the container's
terminal, copies between it and our pty (which it puts in raw mode; we do too, before
it starts, so nothing is ever echoed or line-buffered on our side) and exits with the
command's status. We read and write our pty's master, non-blocking, on the event loop.

A resize sets the size of our pty (``TIOCSWINSZ`` on the master; runc and crun copy it
onto the container's terminal when they start) and of the container's terminal itself,
opened as the command's stdin, stdout or stderr through ``/proc/<pid>/fd/`` (only a pty
slave, checked by its device number, is opened). runc would also copy our size over on
``SIGWINCH``, but crun 1.8 copies it only once, at the start; ``SIGWINCH`` goes to the
runtime only when the command holds no pty any more.

Line ends: runc follows its console library's model, where the container's terminal
does no ``\n`` -> ``\r\n`` (runc clears ``onlcr`` on it as soon as it has it) and the
outer terminal does (its "raw" mode keeps ``opost``, with our ``onlcr``): the output
has ``\r\n``, like a terminal's. What the command writes in the instant before runc
cleared ``onlcr`` already has ``\r\n``; if runc copies it out after it set our pty
"raw", it arrives as ``\r\r\n`` (harmless on a screen). crun 1.8 instead leaves the
container's terminal as it is (``onlcr``) and makes ours fully raw: the same output,
without that race.

:func:`start_exec` returns once the runtime wrote the pid file, i.e. the command's
process exists. A runtime failure before that (container not running, executable not
found) raises :class:`ExecError` with the runtime's own words.

Flow control: nothing is read ahead of the consumer by more than a bounded buffer
(stdout/stderr pipes: at most 2 x 64 KiB in the reader; the pty: nothing, it is read
only when :meth:`ExecSession.read_stdout` is called). A consumer that stops reading
stops the command once the kernel's pipe or pty buffer is full. Stdin writes wait
while the pipe (or pty) is full.

End of output: a stream reaches EOF when every holder of it is gone, which can be after
the command exited (a background process it left holds the pipes). :meth:`wait`
returns when the command itself exits. Resources (pipes, the pty, the pid file) are
released when the streams reach EOF and the runtime exited, or at :meth:`close`, which
a caller that stops early should call (``async with`` does).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import signal as signals
import stat
import struct
import termios
import time
import tty as ttys
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from base.errors import NotFound, Unknown
from runtime import conmon
from runtime.oci_runtime import OciRuntime, OciRuntimeError

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024  # the most one read returns, and the readers' buffer limit
_POLL = 0.01  # how often start_exec looks for the pid file
_KILL_WAIT = 5.0  # how long kill() waits for the runtime to exit before killing it
_ERR_TAIL = 4000
_EOT = b"\x04"  # the terminal's end-of-file character (VEOF, ^D)
_PTY_SLAVE_MAJORS = range(136, 144)  # UNIX98_PTY_SLAVE_MAJOR .. + 7


@dataclass(frozen=True)
class ExecOptions:
    command: tuple[str, ...]
    tty: bool = False
    stdin: bool = False


class ExecError(Unknown):
    pass


class ExecContainerNotFound(NotFound, ExecError):
    pass


class _PipeReader:
    """Reads one pipe through an asyncio read transport of our own (so it can be closed
    whatever the state of the process). The transport pauses once ``2 * _CHUNK`` bytes
    are buffered and closes itself at EOF."""

    def __init__(self, reader: asyncio.StreamReader, transport: asyncio.ReadTransport) -> None:
        self.reader = reader
        self.transport = transport
        self.closed = False

    @classmethod
    async def open(cls, fd: int) -> _PipeReader:
        """Takes ownership of ``fd`` (closed on failure too)."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=_CHUNK, loop=loop)
        pipe = os.fdopen(fd, "rb", buffering=0)
        try:
            transport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader, loop=loop), pipe
            )
        except BaseException:
            pipe.close()
            raise
        return cls(reader, transport)

    async def read(self) -> bytes:
        if self.closed:
            return b""
        return await self.reader.read(_CHUNK)

    async def read_all(self, limit: int, timeout: float | None) -> bytes:  # noqa: ASYNC109
        """Up to ``limit`` bytes (the rest is read and dropped) until EOF or ``timeout``
        s (None: no limit)."""
        data = bytearray()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while chunk := await self.read():
                    data += chunk[: max(0, limit - len(data))]
        return bytes(data)

    def close(self) -> None:
        self.closed = True
        self.transport.close()
        if not self.reader.at_eof():
            self.reader.feed_eof()  # wakes a pending read


class _Pty:
    """The master side of our pty, non-blocking, read and written on the event loop.
    One reader and one writer at a time."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.eof = False
        self._waiters: set[asyncio.Future[None]] = set()
        self._read_lock = asyncio.Lock()
        self._write_lock = asyncio.Lock()

    @property
    def closed(self) -> bool:
        return self.fd < 0

    async def _ready(self, write: bool) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not future.done():
                future.set_result(None)

        fd = self.fd
        if write:
            loop.add_writer(fd, wake)
        else:
            loop.add_reader(fd, wake)
        self._waiters.add(future)
        try:
            await future
        finally:
            self._waiters.discard(future)
            if self.fd == fd:
                if write:
                    loop.remove_writer(fd)
                else:
                    loop.remove_reader(fd)

    async def read(self) -> bytes:
        async with self._read_lock:
            while not self.closed and not self.eof:
                try:
                    data = os.read(self.fd, _CHUNK)
                except BlockingIOError:
                    await self._ready(write=False)
                    continue
                except OSError as exc:
                    # EIO: no one holds the slave side any more (the runtime exited)
                    # and everything it wrote was read.
                    if exc.errno != errno.EIO:
                        log.warning("reading the exec pty: %s", exc)
                    self.eof = True
                    break
                if data:
                    return data
                self.eof = True
            return b""

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        async with self._write_lock:
            while view:
                if self.closed:
                    raise ExecError("the exec session's terminal is closed")
                try:
                    written = os.write(self.fd, view)
                except BlockingIOError:
                    await self._ready(write=True)
                    continue
                except OSError as exc:
                    raise ExecError(f"writing to the exec's terminal: {exc.strerror}") from exc
                view = view[written:]

    def resize(self, width: int, height: int) -> None:
        if not self.closed:
            fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))

    def close(self) -> None:
        if self.closed:
            return
        fd, self.fd = self.fd, -1
        loop = asyncio.get_running_loop()
        loop.remove_reader(fd)
        loop.remove_writer(fd)
        os.close(fd)
        for future in self._waiters:
            if not future.done():
                future.set_result(None)


class ExecSession:
    """One running ``<runtime> exec``. Made by :func:`start_exec`.

    One reader per stream at a time; ``write_stdin``, ``resize`` and the reads may run
    concurrently with each other and with :meth:`wait`.
    """

    def __init__(
        self,
        *,
        runtime: OciRuntime,
        container_id: str,
        options: ExecOptions,
        process: asyncio.subprocess.Process,
        pid_file: Path,
        pid: int,
        stdout: _PipeReader | None,
        stderr: _PipeReader | None,
        pty: _Pty | None,
        runtime_messages: tuple[_PipeReader, asyncio.Task[bytes]] | None,
    ) -> None:
        self.runtime = runtime
        self.container_id = container_id
        self.options = options
        self.pid = pid  # the command's host pid, from the runtime's --pid-file
        self._process = process
        self._pid_file = pid_file
        self._stdout = stdout
        self._stderr = stderr
        self._pty = pty
        # With a tty: the runtime's own stderr, drained in the background.
        self._runtime_messages = runtime_messages
        self._stdin_closed = False
        self._what = f"exec in container {container_id}"

    # ---- stdio --------------------------------------------------------------------

    async def write_stdin(self, data: bytes) -> None:
        """Write to the command's stdin (its terminal with a tty); waits while the pipe
        is full. Raises ExecError without stdin, after :meth:`close_stdin`, or once the
        command no longer reads it."""
        if not self.options.stdin:
            raise ExecError(f"{self._what}: the exec was started without stdin")
        if self._stdin_closed:
            raise ExecError(f"{self._what}: stdin is closed")
        if not data:
            return
        if self._pty is not None:
            await self._pty.write(data)
            return
        writer = self._process.stdin
        assert writer is not None
        try:
            writer.write(data)
            await writer.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise ExecError(f"{self._what}: the command closed its stdin") from exc

    async def close_stdin(self) -> None:
        """End the command's input. Without a tty: close the pipe (the command reads
        EOF). With a tty there is no such thing as closing a terminal's input short of
        hanging it up: the terminal's EOF character (^D) is sent once, which a program
        reading lines (a shell, ``cat``) takes as end of input. Idempotent."""
        if self._stdin_closed or not self.options.stdin:
            self._stdin_closed = True
            return
        self._stdin_closed = True
        if self._pty is not None:
            with contextlib.suppress(ExecError):
                await self._pty.write(_EOT)
            return
        writer = self._process.stdin
        assert writer is not None
        writer.close()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            await writer.wait_closed()

    async def read_stdout(self) -> bytes:
        """The next chunk of stdout (with a tty: of the terminal, stderr included);
        b"" at EOF."""
        if self._pty is not None:
            data = await self._pty.read()
            if not data:
                self._pty.close()
            return data
        assert self._stdout is not None
        return await self._stdout.read()

    async def read_stderr(self) -> bytes:
        """The next chunk of stderr; b"" at EOF (at once with a tty)."""
        if self._stderr is None:
            return b""
        return await self._stderr.read()

    async def resize(self, width: int, height: int) -> None:
        """Set the terminal's size (columns, rows). Ignored without a tty, and once the
        command is gone."""
        if not (0 <= width <= 0xFFFF and 0 <= height <= 0xFFFF):
            raise ExecError(f"{self._what}: invalid terminal size {width}x{height}")
        if self._pty is None or self._process.returncode is not None:
            return
        try:
            self._pty.resize(width, height)
        except OSError as exc:
            raise ExecError(f"{self._what}: resizing the terminal: {exc.strerror}") from exc
        # The command is the runtime's child and the runtime ours: while it runs (it
        # is not reaped yet), the command's pid is still the command's.
        if _resize_container_tty(self.pid, width, height):
            return
        if self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._process.pid, signals.SIGWINCH)

    # ---- the process --------------------------------------------------------------

    async def wait(self) -> int:
        """The command's exit code (the runtime's status mirrors it; 128+signal for a
        command killed by a signal)."""
        code = await self._process.wait()
        self._remove_pid_file()
        return code if code >= 0 else 128 - code

    async def kill(self) -> None:
        """SIGKILL the command and its process group (for a client that went away),
        then wait (a while) for the runtime to exit; SIGKILL the runtime if it does
        not. The runtime forwards no SIGKILL and killing it alone would leave the
        command running, so the command goes by its pid."""
        if self._process.returncode is not None:
            return
        # The command is the runtime's child (runc clones it with CLONE_PARENT): while
        # the runtime runs, its pid cannot have been reused.
        group = _process_group(self.pid)
        init = conmon.read_pid_file(self._pid_file.parent / conmon.CONTAINER_PID_FILE)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signals.SIGKILL)
        if group is not None and group > 1 and group not in (os.getpgrp(), init):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signals.SIGKILL)
        try:
            await asyncio.wait_for(asyncio.shield(self._process.wait()), _KILL_WAIT)
        except TimeoutError:
            log.warning(
                "%s: the runtime did not exit after its command was killed; killing it",
                self._what,
            )
            await _kill_runtime(self._process)
        self._remove_pid_file()

    async def close(self) -> None:
        """Kill the command if it still runs and release everything: pipes, the pty,
        the pid file. Idempotent; reads return b"" afterwards."""
        self._stdin_closed = True
        with contextlib.suppress(Exception):
            await self.kill()
        if self._process.stdin is not None and not self._process.stdin.is_closing():
            self._process.stdin.close()
        for reader in (self._stdout, self._stderr):
            if reader is not None:
                reader.close()
        if self._pty is not None:
            self._pty.close()
        if self._runtime_messages is not None:
            reader, task = self._runtime_messages
            reader.close()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._remove_pid_file()

    async def __aenter__(self) -> ExecSession:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _remove_pid_file(self) -> None:
        _unlink(self._pid_file)


async def start_exec(runtime: OciRuntime, container_id: str, options: ExecOptions) -> ExecSession:
    """Start ``options.command`` in the running container and return its session once
    the process exists. Raises ExecContainerNotFound for an unknown container and
    ExecError when the runtime cannot run the command."""
    what = f"exec in container {container_id}"
    if not options.command:
        raise ExecError(f"{what}: empty command")
    try:
        # Validates the id; the socket lives in <state_dir>/<id>/io/.
        state = runtime.attach_socket_path(container_id).parent.parent
    except OciRuntimeError as exc:
        raise ExecError(str(exc)) from exc
    _check_container(runtime, container_id, state, what)
    pid_file = state / f"exec-{uuid.uuid4().hex[:12]}.pid"
    handler = runtime.handler
    argv = [handler.runtime_path, "--root", handler.runtime_root, "exec"]
    if options.tty:
        argv.append("--tty")
    argv += ["--pid-file", str(pid_file), container_id, *options.command]
    # Timed until the command's process exists: how long the session lasts is the
    # client's business, not the runtime's.
    if options.tty:
        starting = _start_tty(runtime, container_id, options, argv, pid_file)
    else:
        starting = _start_pipes(runtime, container_id, options, argv, pid_file)
    return await runtime.observed("exec_start", starting)


async def _start_pipes(
    runtime: OciRuntime,
    container_id: str,
    options: ExecOptions,
    argv: list[str],
    pid_file: Path,
) -> ExecSession:
    what = f"exec in container {container_id}"
    fds: list[int] = []
    readers: list[_PipeReader] = []
    process: asyncio.subprocess.Process | None = None
    try:
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        fds += [out_r, out_w]
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        fds += [err_r, err_w]
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if options.stdin else asyncio.subprocess.DEVNULL,
                stdout=out_w,
                stderr=err_w,
                start_new_session=True,
            )
        except OSError as exc:
            raise ExecError(f"{what}: cannot run {argv[0]}: {exc.strerror}") from exc
        finally:
            for fd in (out_w, err_w):
                os.close(fd)
                fds.remove(fd)
        for fd in (out_r, err_r):
            fds.remove(fd)  # owned by its reader from here on, even if opening fails
            readers.append(await _PipeReader.open(fd))
        stdout, stderr = readers
        pid = await _wait_started(process, pid_file, runtime.timeout, what)
        if pid is None:
            said = await stderr.read_all(_ERR_TAIL, 5.0) or await stdout.read_all(_ERR_TAIL, 1.0)
            raise ExecError(_failure(what, runtime, process, said))
    except BaseException:
        for fd in fds:
            os.close(fd)
        if process is not None:
            await asyncio.shield(_kill_runtime(process))
        for reader in readers:
            reader.close()
        _unlink(pid_file)
        raise
    return ExecSession(
        runtime=runtime,
        container_id=container_id,
        options=options,
        process=process,
        pid_file=pid_file,
        pid=pid,
        stdout=stdout,
        stderr=stderr,
        pty=None,
        runtime_messages=None,
    )


async def _start_tty(
    runtime: OciRuntime,
    container_id: str,
    options: ExecOptions,
    argv: list[str],
    pid_file: Path,
) -> ExecSession:
    what = f"exec in container {container_id}"
    master, slave = os.openpty()  # both close-on-exec
    pty = _Pty(master)
    process: asyncio.subprocess.Process | None = None
    runtime_stderr: _PipeReader | None = None
    messages: asyncio.Task[bytes] | None = None
    try:
        process, err_r = await _spawn_on_pty(argv, master, slave, what)
        runtime_stderr = await _PipeReader.open(err_r)
        # The runtime says nothing on stderr unless it fails; read it all the time so
        # it never blocks on it.
        messages = asyncio.ensure_future(runtime_stderr.read_all(_ERR_TAIL, None))
        pid = await _wait_started(process, pid_file, runtime.timeout, what)
        if pid is None:
            try:
                said = await asyncio.wait_for(asyncio.shield(messages), 5.0)
            except TimeoutError:
                said = b""
            raise ExecError(_failure(what, runtime, process, said))
    except BaseException:
        if process is not None:
            await asyncio.shield(_kill_runtime(process))
        if messages is not None:
            messages.cancel()
        if runtime_stderr is not None:
            runtime_stderr.close()
        pty.close()
        _unlink(pid_file)
        raise
    return ExecSession(
        runtime=runtime,
        container_id=container_id,
        options=options,
        process=process,
        pid_file=pid_file,
        pid=pid,
        stdout=None,
        stderr=None,
        pty=pty,
        runtime_messages=(runtime_stderr, messages),
    )


async def _spawn_on_pty(
    argv: list[str], master: int, slave: int, what: str
) -> tuple[asyncio.subprocess.Process, int]:
    """Set the pty up (master non-blocking, slave raw) and start the runtime with the
    slave as its stdin and stdout and a pipe as its stderr; the process and the pipe's
    read end. The slave is closed here either way: the runtime holds its own copy."""
    try:
        os.set_blocking(master, False)
        ttys.setraw(slave)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=slave,
                stdout=slave,
                stderr=err_w,
                start_new_session=True,
            )
        except OSError as exc:
            os.close(err_r)
            raise ExecError(f"{what}: cannot run {argv[0]}: {exc.strerror}") from exc
        finally:
            os.close(err_w)
    finally:
        os.close(slave)
    return process, err_r


async def _wait_started(
    process: asyncio.subprocess.Process,
    pid_file: Path,
    timeout: float,  # noqa: ASYNC109
    what: str,
) -> int | None:
    """The command's pid once the runtime wrote it (it does so, with a rename, once the
    process exists), None when the runtime exited without writing it."""
    deadline = time.monotonic() + timeout
    exited = asyncio.ensure_future(process.wait())
    try:
        while True:
            pid = conmon.read_pid_file(pid_file)
            if pid is not None:
                return pid
            if exited.done():
                # It may have written the file just before it exited.
                return conmon.read_pid_file(pid_file)
            if time.monotonic() >= deadline:
                raise ExecError(
                    f"{what}: the runtime did not start the command within {timeout:g}s"
                )
            await asyncio.wait({exited}, timeout=_POLL)
    finally:
        exited.cancel()


def _failure(
    what: str, runtime: OciRuntime, process: asyncio.subprocess.Process, said: bytes
) -> str:
    text = said.decode(errors="replace").strip() or "no output"
    code = process.returncode
    return f"{what}: `{runtime.handler.name} exec` failed (exit status {code}): {text}"


async def _kill_runtime(process: asyncio.subprocess.Process) -> None:
    """SIGKILL the runtime's process group (it leads one) and reap it."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signals.SIGKILL)
    with contextlib.suppress(Exception):
        await process.wait()


def _resize_container_tty(pid: int, width: int, height: int) -> bool:
    """Set the size of the container's terminal, found as the command's stdin, stdout
    or stderr (only a pty slave is ever opened: never a fifo or another device).
    False when none of them is a pty (any more)."""
    size = struct.pack("HHHH", height, width, 0, 0)
    for n in (0, 1, 2):
        link = f"/proc/{pid}/fd/{n}"
        try:
            st = os.stat(link)
            if not stat.S_ISCHR(st.st_mode) or os.major(st.st_rdev) not in _PTY_SLAVE_MAJORS:
                continue
            fd = os.open(link, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.ioctl(fd, termios.TIOCSWINSZ, size)
            return True
        except OSError:
            continue
        finally:
            os.close(fd)
    return False


def _check_container(runtime: OciRuntime, container_id: str, state: Path, what: str) -> None:
    handler = runtime.handler
    if not os.path.lexists(os.path.join(handler.runtime_root, container_id)):
        raise ExecContainerNotFound(f"{what}: no such container in {handler.name}")
    if not state.is_dir():
        raise ExecContainerNotFound(f"{what}: no such container ({state} is missing)")


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _process_group(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    return int(fields[2]) if len(fields) > 2 else None
