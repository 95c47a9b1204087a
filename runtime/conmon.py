"""conmon 2.1.x, the per-container monitor: its command line, its sync-pipe messages,
the files it leaves in a container's state directory, and its control fifo.

What conmon does (read from its 2.1.6 source, checked on this machine):

- It is started with ``_OCI_SYNCPIPE=<fd>`` and ``_OCI_STARTPIPE=<fd>`` in its
  environment (fds it inherits). It blocks on the start pipe until the parent writes
  a byte (or closes it), so the parent can move it into a cgroup before it forks.
  Then it forks once more (unless ``--sync``): the first process writes the monitor's
  pid to ``-P`` and exits 0; the monitor calls setsid, dups /dev/null over its stdio,
  becomes a child subreaper and runs ``<runtime> [--runtime-arg...] create --bundle <b>
  --pid-file <p> <id>`` (``--console-socket`` too with ``-t``).
- On success it writes ``{"pid": N}\\n`` to the sync pipe (the container's init pid
  read from ``-p``). When the runtime fails it writes ``{"pid": -1, "message":
  "<first 8 KiB of the runtime's stderr>"}\\n`` and exits; if the runtime said nothing,
  it exits without writing (the parent sees EOF).
- When the container's init exits it drains stdio into the log, fsyncs it and writes
  the exit code (``128+signal`` for a signal) as text to ``<persist-dir>/exit``
  (write-temp-and-rename), then exits itself.
- On cgroup v1 it registers an eventfd on the container's ``memory.oom_control``; on an
  OOM event it creates ``<persist-dir>/oom`` and ``./oom`` (relative to its cwd, so the
  cwd is the state directory too). The event is handled in its main loop, which stops
  when the init exits, so an OOM kill of the init itself can race the exit: the
  driver also reads the cgroup's ``oom_kill`` counter (see ``oci_runtime``).
- ``<bundle>/ctl`` and ``<bundle>/winsz`` are fifos it reads; a line
  ``"<type> <h> <w>\\n"`` on ``ctl`` with type 1 resizes the tty, type 2 reopens the
  log (it opens ``<log>.tmp`` with O_TRUNC and renames it over ``<log>``: a reopen
  *replaces* the file, so the caller renames the old one away first).
- The attach socket is ``<bundle>/attach`` (SOCK_SEQPACKET), bound through
  ``/proc/self/fd`` so its length never matters to conmon; ``<socket-dir>/<cuuid>`` is
  made a symlink to the bundle so clients have a short path. ``--cuuid`` is used for
  nothing else (k8s-file logging names the container by ``--cid``), so the driver
  passes the state directory as socket dir and ``io`` as cuuid: ``<state>/io`` ->
  bundle, and ``<state>/io/{ctl,winsz,attach}`` are all reachable from the state dir.
- k8s-file logs: ``<RFC3339Nano local time with offset> <stdout|stderr> <F|P> <text>``
  per line; every read that ends without a newline gives a ``P`` line (``F`` for
  each complete line). ``--log-size-max`` N>0 *truncates* the file (reopen) when the
  next write would pass N bytes.
- It tries to write -1000 to its own ``oom_score_adj`` unconditionally, and 0 in the
  runtime's child; without CAP_SYS_RESOURCE the first write fails with only a debug
  message and conmon carries on (it keeps its parent's value).
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass
from pathlib import Path

#: Names inside a container's state directory (``<state_dir>/<id>/``).
CONMON_PID_FILE = "conmon.pid"
CONTAINER_PID_FILE = "pidfile"
EXIT_FILE = "exit"
OOM_FILE = "oom"
#: ``--cuuid``: conmon's symlink ``<state>/io`` -> bundle (see the module docstring).
IO_LINK = "io"
CTL_FIFO = "ctl"
WINSZ_FIFO = "winsz"
ATTACH_SOCKET = "attach"
#: What conmon makes inside the bundle directory.
BUNDLE_FILES = (CTL_FIFO, WINSZ_FIFO, ATTACH_SOCKET)

WIN_RESIZE_EVENT = 1
REOPEN_LOGS_EVENT = 2

#: The environment conmon is started with (besides the pipes): nothing of the daemon's
#: own (no NOTIFY_SOCKET or LISTEN_PID for runc to act on).
CONMON_PATH_ENV = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class ConmonOptions:
    """One container's conmon command line."""

    container_id: str
    runtime_path: str
    runtime_root: str
    bundle: Path
    state: Path  # the container's state directory: pid files, exit/oom files, io link
    log_path: str
    terminal: bool = False
    stdin: bool = False
    stdin_once: bool = False
    log_size_max: int = -1
    log_level: str = "info"

    def argv(self, conmon_path: str) -> list[str]:
        args = [
            conmon_path,
            "--cid",
            self.container_id,
            "--cuuid",
            IO_LINK,
            "--name",
            self.container_id,
            "--runtime",
            self.runtime_path,
            "--runtime-arg",
            f"--root={self.runtime_root}",
            "--bundle",
            str(self.bundle),
            "--container-pidfile",
            str(self.state / CONTAINER_PID_FILE),
            "--conmon-pidfile",
            str(self.state / CONMON_PID_FILE),
            "--persist-dir",
            str(self.state),
            "--socket-dir-path",
            str(self.state),
            "--log-path",
            f"k8s-file:{self.log_path}",
            "--log-level",
            self.log_level,
        ]
        if self.log_size_max > 0:
            args += ["--log-size-max", str(self.log_size_max)]
        if self.terminal:
            args.append("--terminal")
        elif self.stdin:
            # conmon closes the container's stdin when the first attached client
            # leaves unless told otherwise; stdin_once is that default.
            args.append("--stdin")
            if not self.stdin_once:
                args.append("--leave-stdin-open")
        return args


@dataclass(frozen=True)
class SyncMessage:
    """One line conmon wrote to the sync pipe."""

    value: int  # the container pid (or -1 on failure); an exit code for exec
    message: str


def parse_sync_message(line: bytes) -> SyncMessage:
    """``{"pid": N}`` / ``{"pid": -1, "message": "..."}`` (``data``/``exit_code`` are
    the keys of conmon's exec modes). Raises ValueError on anything else."""
    try:
        doc = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON: {line[:200]!r}") from exc
    if not isinstance(doc, dict):
        raise ValueError(f"not a JSON object: {line[:200]!r}")
    for key in ("pid", "data", "exit_code"):
        value = doc.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            message = doc.get("message")
            return SyncMessage(value, message if isinstance(message, str) else "")
    raise ValueError(f"no pid in {line[:200]!r}")


def ctl_message(event: int, height: int = 0, width: int = 0) -> bytes:
    return f"{event} {height} {width}\n".encode()


def write_ctl(state: Path, message: bytes) -> None:
    """Write one message to conmon's control fifo without ever blocking: with no
    reader (conmon gone) the open fails with ENXIO, raised as ProcessLookupError."""
    path = state / IO_LINK / CTL_FIFO
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            raise ProcessLookupError(f"nobody reads {path}: conmon is not running") from exc
        raise
    try:
        os.write(fd, message)
    finally:
        os.close(fd)


def read_pid_file(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        pid = int(text)
    except ValueError:
        return None
    return pid if pid > 0 else None


def read_exit_file(state: Path) -> tuple[int, int] | None:
    """(exit code, the file's mtime in ns) from ``<state>/exit``, None while absent.
    conmon writes it with a rename, so a present file is complete."""
    path = state / EXIT_FILE
    try:
        with open(path, "rb") as f:
            text = f.read()
            mtime = os.fstat(f.fileno()).st_mtime_ns
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        return int(text.strip()), mtime
    except ValueError:
        return None


def process_running(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie (dead conmons linger as zombies
    until whatever init they were reparented to reaps them)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # "pid (comm) S ...": the comm may hold spaces or parentheses, the state follows
    # the last ')'.
    state = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]
    return state not in (b"Z", b"X", b"")


def _argv(pid: int) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return []


def _is_conmon_for(argv: list[bytes], state: Path) -> bool:
    if not argv or not os.path.basename(argv[0]).startswith(b"conmon"):
        return False
    wanted = os.fsencode(state)
    return any(
        argv[i] in (b"--persist-dir", b"-0") and argv[i + 1] == wanted for i in range(len(argv) - 1)
    )


def is_conmon_of(pid: int, state: Path) -> bool:
    """True when ``pid`` is a running conmon started for the container whose state
    directory is ``state`` (a guard against pid reuse before signalling a pid read
    from a file)."""
    return _is_conmon_for(_argv(pid), state) and process_running(pid)


def find_conmons(state: Path) -> list[int]:
    """Every running conmon of the container whose state directory is ``state``
    (found through /proc: for a create that failed before conmon.pid was written)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and is_conmon_of(int(entry), state):
            found.append(int(entry))
    return found
