"""Pod-wide PID namespaces, held by skiff's own tiny "pause" process.

A pod whose containers share one PID namespace (Kubernetes ``shareProcessNamespace``,
CRI ``NamespaceMode.POD`` for pid) needs that namespace to outlive any one container.
Unlike the network, IPC and UTS namespaces, a PID namespace cannot be kept by a bind
mount: it dies with its init. So each such pod gets an init of its own, the pause
process (``runtime/pause_process.py``): PID 1 of a new PID namespace that reaps zombies
and exits on SIGTERM/SIGINT from the node. It needs no image, mounts nothing (runc mounts
each container's /proc in the container's own mount namespace) and stays in the host's
other namespaces. Containers join it through :attr:`PauseProcess.pid_namespace`.

skiffd must not fork or unshare (it is multi-threaded), so a short-lived helper
does both and hands back the pause's pid; see ``runtime/pause_process.py``. The pause
is then re-parented to the host's init and outlives skiffd; its command line is
``<python> -I -S <...>/runtime/pause_process.py skiff-pause <sandbox id>``.

pids are reused, so a pause is known by its pid *and* its start time (field 22 of
``/proc/<pid>/stat``): nothing here ever signals a pid whose start time is not the
recorded one. Signals go through a pidfd opened before that check, so the process
checked is the process signalled.

Starting either completes or leaves nothing: on any failure (helper error, timeout,
cancellation) the helper is killed and every process it made for that sandbox id, found
by its command line, is killed and waited for before the error is raised.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from base import failpoints, processes
from base.errors import Internal
from base.processes import Finished, ProgramTimedOut, finish_even_if_cancelled
from runtime.pause_process import PAUSE_MARKER

# How long a process takes over its exec, at most, for the stray search to wait out.
_EXEC_MOMENT = 0.05
_STRAY_LOOKS = 10
# The helper runs as a script (see start_pause), so by file, not by module name.
_HELPER = str(Path(__file__).resolve().with_name("pause_process.py"))
# How long to wait for a process to go after SIGKILL (it cannot refuse; only a task
# stuck in the kernel takes longer).
_KILL_GRACE = 5.0


@dataclass(frozen=True)
class PauseProcess:
    pid: int  # host pid of the namespace's init
    start_time: int  # field 22 of /proc/<pid>/stat, in clock ticks since boot

    @property
    def pid_namespace(self) -> str:
        return f"/proc/{self.pid}/ns/pid"


class PauseError(Internal):
    pass


# --- identity -------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, start time) of ``pid``, or None when there is no such process."""
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The name (field 2) may hold spaces and parentheses: count from the last ')'.
    fields = data[data.rindex(b")") + 2 :].split()
    return fields[0].decode(), int(fields[19])


def is_running(pause: PauseProcess) -> bool:
    """Whether the pause still runs: its pid is alive, not a zombie, and has the recorded
    start time (so it is not another process that got the pid later)."""
    stat = _stat(pause.pid)
    return stat is not None and stat[1] == pause.start_time and stat[0] not in ("Z", "X")


def _pidfd(pid: int) -> int:
    """A pidfd for ``pid``; -1 when there are none here (old kernel, seccomp) or the
    process is gone."""
    try:
        return os.pidfd_open(pid)
    except OSError:
        return -1


def _signal_if_same(pause: PauseProcess, sig: int) -> bool:
    """Send ``sig`` to the pause if it still runs; False when it does not (nothing sent)."""
    if pause.pid <= 0:
        return False
    # Without a pidfd (none here, or the process is gone): check, then kill by pid.
    pidfd = _pidfd(pause.pid)
    try:
        # With a pidfd, the process it names held the pid at the check too (a process
        # started before the pidfd was opened and alive after it cannot have changed),
        # so no reused pid can be signalled.
        if not is_running(pause):
            return False
        if pidfd >= 0:
            signal.pidfd_send_signal(pidfd, sig)
        else:
            os.kill(pause.pid, sig)
    except ProcessLookupError:
        return False
    finally:
        if pidfd >= 0:
            os.close(pidfd)
    return True


async def _wait_gone(pause: PauseProcess, limit: float) -> bool:
    """Poll /proc until the pause no longer runs (True) or ``limit`` seconds pass."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    delay = 0.002
    while is_running(pause):
        left = deadline - loop.time()
        if left <= 0:
            return False
        await asyncio.sleep(min(delay, left))
        delay = min(delay * 2, 0.05)
    return True


# --- start and stop ---------------------------------------------------------------------------


# The timeout is the helper's own time limit (it is killed past it), part of the API.
async def start_pause(
    sandbox_id: str,
    timeout: float = 10.0,  # noqa: ASYNC109
) -> PauseProcess:
    """Start the pause process of a new PID namespace for ``sandbox_id``.

    Raises PauseError; nothing is left running on failure or cancellation.
    """
    if not sandbox_id or "\0" in sandbox_id:
        raise PauseError(f"sandbox id {sandbox_id!r} cannot be put on a command line")
    # -I -S: the helper needs only the stdlib, and nothing in runtime/ can shadow it
    # (see network/namespaces.py's _run_helper). Running the file skips runpy.
    try:
        helper = await processes.start([sys.executable, "-I", "-S", _HELPER, sandbox_id])
    except OSError as exc:
        raise PauseError(f"sandbox {sandbox_id}: cannot start the pause helper: {exc}") from None
    try:
        # Leaving the block reaps the helper (killed if need be), before the search for
        # what it made below: it cannot fork while we look.
        async with helper:
            try:
                done = await helper.wait(timeout)
            except ProgramTimedOut:
                raise PauseError(
                    f"sandbox {sandbox_id}: the pause helper did not finish in {timeout:g}s "
                    "and was killed"
                ) from None
        pause = _parse_answer(sandbox_id, done)
        if not is_running(pause):
            raise PauseError(
                f"sandbox {sandbox_id}: the pause process {pause.pid} exited right after it started"
            )
    except BaseException as exc:
        try:
            await finish_even_if_cancelled(_kill_what_the_helper_made(sandbox_id))
        except PauseError as cleanup:
            exc.add_note(f"cleanup after the failure was incomplete too: {cleanup}")
        raise
    failpoints.step("pause-start")
    return pause


async def _kill_what_the_helper_made(sandbox_id: str) -> None:
    """By command line, not by the pid the helper printed: the helper may have been
    killed between its fork and that line. Its child has the helper's command line
    until it execs, the pause's after, and none at all for a moment in between (the
    new program is being loaded): so look until two looks a moment apart find nothing
    (one look missed a pause, found by a full test run)."""
    quiet = 0
    for _ in range(_STRAY_LOOKS):
        if await kill_strays(sandbox_id):
            quiet = 0
            continue
        quiet += 1
        if quiet == 2:
            return
        await asyncio.sleep(_EXEC_MOMENT)


def _parse_answer(sandbox_id: str, done: Finished) -> PauseProcess:
    out = done.stdout
    if done.returncode != 0:
        text = done.stderr.decode(errors="replace").strip()
        last = text.splitlines()[-1] if text else "no output"
        raise PauseError(f"sandbox {sandbox_id}: the pause helper {done.status()}: {last}")
    lines = out.decode(errors="replace").split("\n")
    try:
        pid_text, start_text = lines[0].split()
        pause = PauseProcess(int(pid_text), int(start_text))
    except ValueError:
        pause = None
    if pause is None or pause.pid <= 1 or lines[1:] != ["ready", ""]:
        raise PauseError(f"sandbox {sandbox_id}: the pause helper answered {out[:200]!r}")
    return pause


async def stop_pause(
    pause: PauseProcess,
    timeout: float = 5.0,  # noqa: ASYNC109
) -> None:
    """SIGTERM, up to ``timeout`` seconds for it to go, then SIGKILL.

    Idempotent: a pause that no longer runs (or whose pid now belongs to another
    process) is left alone. Its exit takes the PID namespace and every process still in
    it. PauseError if it is still there after SIGKILL too.
    """
    if not _signal_if_same(pause, signal.SIGTERM):
        return
    if not await _wait_gone(pause, timeout):
        if not _signal_if_same(pause, signal.SIGKILL):
            return
        if not await _wait_gone(pause, _KILL_GRACE):
            raise PauseError(
                f"the pause process {pause.pid} did not exit within "
                f"{timeout + _KILL_GRACE:g}s of SIGTERM and SIGKILL"
            )
    failpoints.step("pause-stop")


# --- rollback ---------------------------------------------------------------------------------


async def kill_strays(sandbox_id: str, keep: PauseProcess | None = None) -> list[int]:
    """Kill the pause processes (and helpers) running for ``sandbox_id`` other than
    ``keep``: what a start cut short by skiffd's death left unrecorded. Returns their
    pids once they are gone."""
    running = await asyncio.to_thread(running_pauses)
    return await kill_pauses(sandbox_id, [p for p in running.get(sandbox_id, []) if p != keep])


async def kill_pauses(sandbox_id: str, strays: list[PauseProcess]) -> list[int]:
    """SIGKILL these pause processes of ``sandbox_id`` and wait until they are gone."""
    for pause in strays:
        _signal_if_same(pause, signal.SIGKILL)
    stuck = [str(p.pid) for p in strays if not await _wait_gone(p, _KILL_GRACE)]
    if stuck:
        raise PauseError(f"sandbox {sandbox_id}: process(es) {', '.join(stuck)} would not die")
    return [p.pid for p in strays]


def running_pauses() -> dict[str, list[PauseProcess]]:
    """Running pause helpers and pause processes, by sandbox id: their command line is
    exactly one start_pause makes (or the helper's exec makes)."""
    head = [os.fsencode(sys.executable), b"-I", b"-S", os.fsencode(_HELPER)]
    middles: tuple[list[bytes], ...] = ([], [PAUSE_MARKER.encode()])  # helper's, pause's
    found: dict[str, list[PauseProcess]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")[:-1]
        except OSError:
            continue
        if len(argv) not in (5, 6) or argv[:4] != head or argv[4:-1] not in middles:
            continue
        stat = _stat(int(entry))
        if stat is not None:
            pause = PauseProcess(int(entry), stat[1])
            if is_running(pause):
                found.setdefault(os.fsdecode(argv[-1]), []).append(pause)
    return found
