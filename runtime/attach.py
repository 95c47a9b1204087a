"""Attach: a live connection to a running container's stdio through its conmon, the
runtime side of the CRI ``Attach`` streaming call.

conmon's attach protocol (2.1.6 ``src/conn_sock.c``, ``src/ctr_stdio.c``, ``src/ctrl.c``):

- The socket is ``<bundle>/attach``, reached as ``<state_dir>/<id>/io/attach`` (see
  :mod:`runtime.conmon`): ``AF_UNIX``, ``SOCK_SEQPACKET``, listen backlog 10, any
  number of clients. A path longer than ``sun_path`` (107 bytes) is reached through
  ``/proc/self/fd/<O_PATH fd of its directory>/attach``.
- Output: every read conmon makes from the container's stdout or stderr (up to 8192
  bytes; with a terminal, everything is stdout) goes to every client as one record whose
  first byte names the pipe (``2`` stdout, ``3`` stderr; ``1`` would be stdin, unused)
  followed by the data, *after* it went to the log. There is no replay: a client sees
  what is read after it connected. conmon writes with blocking ``write(2)`` calls, so a
  client that does not read stalls the container's output (and its log) once the
  socket's buffer is full, as it does with cri-o: read, or detach.
- Input: the bytes of each record a client sends are written to the container's stdin
  (its terminal with ``--terminal``; the stdin pipe with ``--stdin``; dropped without
  either), unframed. conmon reads a record into a 32 KiB buffer, so a longer one would be
  truncated: records are sent in chunks of at most 32 KiB. It reads the next record only
  once the last one was written to the container, so a full stdin holds the client up.
- End of input: when a client shuts down its sending side or goes away, conmon closes
  the container's stdin *if* the container was made with ``--stdin`` and without
  ``--leave-stdin-open`` (the CRI's ``stdin_once``); otherwise only that client's input
  ends. So with ``stdin_once`` the first client to leave, even one that only read,
  ends the container's stdin.
- When the container exits, conmon drains its output to the clients and closes them
  (our reads return None), then removes the ``io`` link.
- Resize: a line ``"1 <height> <width>\\n"`` on the ``ctl`` fifo; conmon passes it on
  to its ``winsz`` fifo and sets the terminal's size (``TIOCSWINSZ``). Nothing happens
  without a terminal. conmon's parser has a flaw: when one read from the fifo returns
  several lines it handles the *first* line once per line (``process_*_line(ctlbuf)``),
  so two resizes read together apply the first size twice and lose the second (the same
  goes for the ``winsz`` fifo it writes them on to). A resize here therefore waits
  (up to a second) until both fifos are empty before writing its line.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import socket
import struct
import termios
from pathlib import Path
from types import TracebackType

from base.errors import FailedPrecondition, NotFound
from runtime import conmon
from runtime.oci_runtime import OciRuntime, OciRuntimeError

log = logging.getLogger(__name__)

STDOUT_PIPE = 2
STDERR_PIPE = 3
_PIPES = {STDOUT_PIPE: "stdout", STDERR_PIPE: "stderr"}
_MAX_RECORD_IN = 32768  # conmon's CONN_SOCK_BUF_SIZE
_RECV = 65536  # conmon sends at most 8192 + 1 bytes per record; room to spare
_SUN_PATH_MAX = 107
_CTL_DRAIN = 1.0  # how long a resize waits for conmon to empty its ctl fifo
_CTL_POLL = 0.005


class AttachError(FailedPrecondition):
    pass


class AttachContainerNotFound(NotFound, AttachError):
    pass


class AttachSession:
    """One connection to a container's conmon. Made by :func:`attach`.

    Reads, writes, resizes and :meth:`detach` may run concurrently (reads and writes
    are each serialized).
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        runtime: OciRuntime,
        container_id: str,
        state: Path,
        terminal: bool,
        stdin: bool,
        stdin_once: bool,
    ) -> None:
        self.runtime = runtime
        self.container_id = container_id
        self.terminal = terminal  # made with a terminal (conmon --terminal)
        self.stdin = stdin  # has an input: a terminal, or conmon --stdin
        self.stdin_once = stdin_once  # conmon closes its stdin when a client leaves
        self._sock: socket.socket | None = sock
        self._state = state
        self._stdin_closed = False
        self._resize_lock = asyncio.Lock()
        self._read_lock = asyncio.Lock()
        self._write_lock = asyncio.Lock()
        self._waiters: set[asyncio.Future[None]] = set()
        self._what = f"attach to container {container_id}"

    async def read(self) -> tuple[str, bytes] | None:
        """The next output record, ("stdout" | "stderr", data); None once conmon
        closed the connection (the container exited) or after :meth:`detach` (which
        also ends a read that is waiting)."""
        async with self._read_lock:
            while (sock := self._sock) is not None:
                try:
                    record = sock.recv(_RECV)
                except BlockingIOError:
                    await self._ready(sock, write=False)
                    continue
                except OSError as exc:
                    if self._sock is None or exc.errno in (errno.ECONNRESET, errno.EPIPE):
                        return None
                    raise AttachError(f"{self._what}: reading from conmon: {exc}") from exc
                if not record:
                    return None
                name = _PIPES.get(record[0])
                if name is None:
                    log.debug("%s: a record for pipe %d dropped", self._what, record[0])
                    continue
                if len(record) > 1:
                    return name, record[1:]
            return None

    async def write_stdin(self, data: bytes) -> None:
        """Send ``data`` to the container's stdin; waits while conmon cannot take
        more. Raises AttachError when the container has no stdin, after
        :meth:`close_stdin` or :meth:`detach`, or when conmon is gone."""
        if not self.stdin:
            raise AttachError(
                f"{self._what}: the container was created without stdin or a terminal"
            )
        view = memoryview(data)
        async with self._write_lock:
            start = 0
            while start < len(view):
                sock = self._sock
                if sock is None or self._stdin_closed:
                    raise AttachError(f"{self._what}: stdin is closed")
                try:
                    # A SOCK_SEQPACKET record goes whole or not at all.
                    sent = sock.send(view[start : start + _MAX_RECORD_IN])
                except BlockingIOError:
                    await self._ready(sock, write=True)
                    continue
                except OSError as exc:
                    raise AttachError(
                        f"{self._what}: conmon no longer takes input ({exc})"
                    ) from exc
                start += sent

    async def _ready(self, sock: socket.socket, write: bool) -> None:
        """Wait until ``sock`` is readable (writable), or the session detached."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not future.done():
                future.set_result(None)

        fd = sock.fileno()
        (loop.add_writer if write else loop.add_reader)(fd, wake)
        self._waiters.add(future)
        try:
            await future
        finally:
            self._waiters.discard(future)
            if self._sock is sock:
                (loop.remove_writer if write else loop.remove_reader)(fd)

    async def close_stdin(self) -> None:
        """End this session's input (shutdown of our sending side). For a container
        created with ``stdin_once`` conmon then closes the container's stdin (the
        process reads EOF); otherwise, and with a terminal, the container's input stays
        open for the next client. Idempotent."""
        if self._stdin_closed:
            return
        self._stdin_closed = True
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_WR)

    async def resize(self, width: int, height: int) -> None:
        """Set the container terminal's size (columns, rows) through conmon's ``ctl``
        fifo. Ignored for a container without a terminal."""
        if not (0 <= width <= 0xFFFF and 0 <= height <= 0xFFFF):
            raise AttachError(f"{self._what}: invalid terminal size {width}x{height}")
        if not self.terminal:
            return
        message = conmon.ctl_message(conmon.WIN_RESIZE_EVENT, height, width)
        io = self._state / conmon.IO_LINK
        async with self._resize_lock:
            fds: list[int] = []
            try:
                for name in (conmon.CTL_FIFO, conmon.WINSZ_FIFO):
                    fds.append(os.open(io / name, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC))
                ctl, winsz = fds
                # conmon passes the line on from ctl to winsz: both must be empty.
                await _fifos_drained((ctl, winsz), _CTL_DRAIN)
                os.write(ctl, message)
            except OSError as exc:
                if exc.errno in (errno.ENXIO, errno.ENOENT):
                    raise AttachError(f"{self._what}: the container is not running") from exc
                raise AttachError(f"{self._what}: writing to conmon's {io}/ctl: {exc}") from exc
            finally:
                for fd in fds:
                    os.close(fd)

    async def detach(self) -> None:
        """Close the connection; the container keeps running (for ``stdin_once``
        containers conmon closes their stdin, see :meth:`close_stdin`). A read or write
        that is waiting ends (None; AttachError). Idempotent."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        loop = asyncio.get_running_loop()
        loop.remove_reader(sock.fileno())
        loop.remove_writer(sock.fileno())
        sock.close()
        for future in self._waiters:
            if not future.done():
                future.set_result(None)

    async def __aenter__(self) -> AttachSession:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.detach()


async def attach(runtime: OciRuntime, container_id: str) -> AttachSession:
    """Connect to the container's conmon. Raises AttachContainerNotFound for an
    unknown container and AttachError when it is not running."""
    what = f"attach to container {container_id}"
    try:
        path = runtime.attach_socket_path(container_id)  # validates the id
    except OciRuntimeError as exc:
        raise AttachError(str(exc)) from exc
    state = path.parent.parent
    if not state.is_dir():
        raise AttachContainerNotFound(f"{what}: no such container ({state} is missing)")
    conmon_pid = runtime.conmon_pid(container_id)
    if conmon_pid is None or runtime.exit_status(container_id) is not None:
        raise AttachError(f"{what}: the container is not running")
    flags = _conmon_flags(conmon_pid)
    try:
        sock = await asyncio.to_thread(_connect, path, runtime.timeout)
    except TimeoutError:
        raise AttachError(f"{what}: conmon did not accept within {runtime.timeout:g}s") from None
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise AttachError(f"{what}: the container is not running ({exc})") from exc
    except OSError as exc:
        raise AttachError(f"{what}: connecting to {path}: {exc}") from exc
    terminal = "--terminal" in flags or "-t" in flags
    stdin = "--stdin" in flags or "-i" in flags
    return AttachSession(
        sock,
        runtime=runtime,
        container_id=container_id,
        state=state,
        terminal=terminal,
        stdin=terminal or stdin,
        stdin_once=stdin and "--leave-stdin-open" not in flags,
    )


def _conmon_flags(pid: int) -> set[str]:
    """The arguments of conmon's command line (--terminal, --stdin, ...)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return {arg.decode(errors="replace") for arg in f.read().split(b"\0")}
    except OSError:
        return set()


def _connect(path: Path, timeout: float) -> socket.socket:
    """A blocking connect (it waits only while conmon's backlog is full), for a
    thread; the socket is returned non-blocking."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(timeout)
        if len(os.fsencode(path)) <= _SUN_PATH_MAX:
            sock.connect(os.fsencode(path))
        else:
            directory = os.open(path.parent, os.O_PATH | os.O_CLOEXEC)
            try:
                sock.connect(f"/proc/self/fd/{directory}/{path.name}")
            finally:
                os.close(directory)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def _fifos_drained(fds: tuple[int, ...], timeout: float) -> None:  # noqa: ASYNC109
    """Wait until the fifos hold no unread bytes, at most ``timeout`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    buf = bytearray(struct.calcsize("i"))
    while loop.time() < deadline:
        pending = 0
        for fd in fds:
            fcntl.ioctl(fd, termios.FIONREAD, buf)
            pending += struct.unpack("i", buf)[0]
        if pending == 0:
            return
        await asyncio.sleep(_CTL_POLL)
