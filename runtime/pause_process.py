"""skiff's own "pause": the init (PID 1) of a pod's PID namespace, and the helper that
starts it. Run by :func:`runtime.pause.start_pause`, never imported by skiffd for code::

    python -I -S runtime/pause_process.py SANDBOX_ID               # the helper
    python -I -S runtime/pause_process.py skiff-pause SANDBOX_ID   # the pause itself

A PID namespace dies with its init, so a pod whose containers share one needs a process
that lives as long as the pod. skiffd is multi-threaded (asyncio, gRPC) and must not fork
or unshare, so a short-lived helper does it (like ``network/pin.py``):

1. ``unshare(CLONE_NEWPID)`` through ctypes: the helper's *next child* is PID 1 of a new
   PID namespace (the helper itself stays where it is).
2. fork. The child calls setsid, moves to ``/``, puts /dev/null on stdin, the pipe to
   the helper on stdout, keeps the helper's stderr (so a failing start-up is reported),
   closes every other fd and execs this file again as ``skiff-pause SANDBOX_ID`` with an
   empty environment. Exec rather than staying in the fork: the pause then carries none
   of the helper's imports (ctypes), and its command line names it for
   :func:`runtime.pause.start_pause`'s clean-up and for anyone looking at ``ps``.
3. The helper writes ``<host pid> <start time>`` on stdout at once, waits until the
   pause says it is ready (or dies), then writes ``ready`` and exits 0, leaving the
   pause to be re-parented to the host's init. On failure: it kills and reaps the pause
   (its own child, so the pid cannot have been reused), one line on stderr, exit 1.

The pause blocks SIGCHLD, SIGTERM and SIGINT and waits for them with sigwaitinfo;
SIGHUP is ignored. SIGCHLD: reap every child that has exited (processes of the pod whose
parent died are re-parented to it). SIGTERM/SIGINT sent from outside the namespace
(skiffd, an admin on the node: the kernel reports their pid as 0 there) make it exit 0;
the kernel then kills everything left in the namespace. The same signals sent from a
container of the pod itself are ignored, so a ``kill 1`` in a container cannot tear down
the pod's namespace (signals it has no use for are dropped by the kernel anyway: it is
an init; SIGKILL from inside is never delivered, from the host always is). It never exits
for want of children.

The pause is a whole Python interpreter, so it keeps its footprint down: it runs with
-I -S and imports nothing beyond what the interpreter has loaded before running a script
(``posix`` and ``_signal`` are built in; even ``os`` and ``signal`` would add modules,
``signal`` the whole of ``enum``). The helper's imports (``os``, ``ctypes``) are made
inside its own function for that reason.
"""

import posix
import sys

# Not typing.TYPE_CHECKING: importing typing would cost the pause ~30 modules. Type
# checkers treat any constant of this name the same way.
TYPE_CHECKING = False
if TYPE_CHECKING:  # typeshed has no stub for _signal, the built-in module behind signal
    import signal as _signal
else:
    import _signal

# The first argument of the pause's command line; runtime/pause.py matches on it.
PAUSE_MARKER = "skiff-pause"
CLONE_NEWPID = 0x20000000
READY = b"ready\n"
# Children a single SIGCHLD may stand for are all reaped, so one pending SIGCHLD (the
# kernel does not queue more) is enough; TERM and INT stop the pause.
_WAITED = {_signal.SIGCHLD, _signal.SIGTERM, _signal.SIGINT}


# --- the pause (PID 1 of the pod's PID namespace) --------------------------------------


def _reap() -> None:
    while True:
        try:
            pid, _ = posix.waitpid(-1, posix.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def pause_main() -> int:
    _signal.signal(_signal.SIGHUP, _signal.SIG_IGN)
    # Blocked, a signal is queued for sigwaitinfo even though an init's default action
    # would otherwise have the kernel drop it; nothing else is unblocked.
    _signal.pthread_sigmask(_signal.SIG_SETMASK, _WAITED)
    try:
        # "skiff-pause" as the process name (comm) too, for ps -o comm, top, the OOM log.
        # /proc is the host's, and /proc/self resolves in its namespace: that is us.
        fd = posix.open("/proc/self/comm", posix.O_WRONLY)
        try:
            posix.write(fd, PAUSE_MARKER.encode())
        finally:
            posix.close(fd)
    except OSError:
        pass
    null = posix.open("/dev/null", posix.O_RDWR)
    # stderr first: the caller's pipe stays open until the last holder lets go of it.
    posix.dup2(null, 2)
    posix.close(null)
    # If the helper is gone (killed by a timed-out or cancelled caller), this raises
    # EPIPE and the pause exits: nobody would know about it.
    posix.write(1, READY)
    # Last: the helper waits for this end of the pipe to close, and then the pause holds
    # nothing but /dev/null (its stdin, set by the helper) on 0, 1 and 2.
    posix.dup2(0, 1)
    _reap()
    while True:
        info = _signal.sigwaitinfo(_WAITED)
        if info.si_signo == _signal.SIGCHLD:
            _reap()
        elif info.si_pid == 0:
            # From an ancestor namespace (the node), or the kernel.
            posix._exit(0)


# --- the helper ---------------------------------------------------------------------------


def _fail(message: str) -> int:
    sys.stderr.write(f"skiff-pause helper: {message}\n")
    return 1


def _start_time(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    # Field 22; the name (field 2) may hold spaces and parentheses, so count from the last ')'.
    return int(data[data.rindex(b")") + 2 :].split()[19])


def helper_main(sandbox_id: str) -> int:
    import ctypes  # noqa: PLC0415 -- only the helper pays for these (see the docstring)
    import os  # noqa: PLC0415

    # CDLL(None): the libc already loaded; find_library would spawn processes.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.unshare.argtypes = [ctypes.c_int]
    if libc.unshare(CLONE_NEWPID) != 0:
        err = ctypes.get_errno()
        return _fail(f"unshare(CLONE_NEWPID) failed: {os.strerror(err)}")

    script = os.path.abspath(__file__)
    argv = [sys.executable, "-I", "-S", script, PAUSE_MARKER, sandbox_id]
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        # The child: PID 1 of the new namespace. Nothing here may return.
        try:
            os.setsid()
            os.chdir("/")
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, 0)
            os.dup2(wfd, 1)
            # closerange ignores fds that are not open (the one listdir used, say).
            os.closerange(3, max(int(fd) for fd in os.listdir("/proc/self/fd")) + 1)
            os.execve(sys.executable, argv, {})
        except BaseException as exc:
            try:
                os.write(2, f"skiff-pause helper: cannot start the pause: {exc}\n".encode())
            finally:
                os._exit(127)

    os.close(wfd)
    answer = b""
    try:
        # At once, so that whoever reads the output learns which process was made even
        # if the start fails later (the caller's clean-up finds it by command line).
        os.write(1, f"{pid} {_start_time(pid)}\n".encode())
        while chunk := os.read(rfd, 64):
            answer += chunk
    finally:
        os.close(rfd)
    if answer == READY:
        os.write(1, READY)
        return 0

    # It died, or (a bug) closed its stdout without a word. It is our child and
    # unreaped, so this pid is still it, and kill cannot fail (a zombie takes signals).
    os.kill(pid, 9)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) != 9:
        how = f"was killed by signal {os.WTERMSIG(status)}"
    elif os.WIFEXITED(status):
        how = f"exited with status {os.WEXITSTATUS(status)}"
    else:
        how = "did not say it was ready and was killed"
    return _fail(f"the pause process {how} before it was ready")


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == PAUSE_MARKER:
        return pause_main()
    if len(argv) == 1 and argv[0]:
        return helper_main(argv[0])
    return _fail("usage: pause_process.py SANDBOX_ID (see runtime/pause_process.py)")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
