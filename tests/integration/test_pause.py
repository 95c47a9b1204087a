"""The pause process of a pod-wide PID namespace, on the real kernel. Needs root.

Every test uses sandbox ids of its own (random suffix) and, whatever happens, kills by
pid (after checking the start time) every pause it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from runtime import pause as pause_module
from runtime.pause import PauseError, PauseProcess, is_running, start_pause, stop_pause

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="PID namespaces need root")

REPO = Path(__file__).resolve().parents[2]
HELPER = REPO / "runtime" / "pause_process.py"


# --- looking at processes ---------------------------------------------------------------


def stat_fields(pid: int) -> list[str]:
    """Fields 3.. of /proc/<pid>/stat (state first)."""
    data = Path(f"/proc/{pid}/stat").read_text()
    return data[data.rindex(")") + 2 :].split()


def status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def argv_of(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]


def all_pids() -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]


def children_of(pid: int) -> dict[int, str]:
    """pid -> state of the processes whose parent is ``pid``."""
    found = {}
    for child in all_pids():
        try:
            fields = stat_fields(child)
        except OSError:
            continue
        if int(fields[1]) == pid:
            found[child] = fields[0]
    return found


def processes_naming(sandbox_ids: list[str]) -> list[str]:
    """Processes with one of the sandbox ids as a word of their command line: a pause
    or pause helper left over by these tests."""
    wanted = set(sandbox_ids)
    found = []
    for pid in all_pids():
        try:
            argv = argv_of(pid)
        except OSError:
            continue
        if wanted & set(argv):
            found.append(f"{pid}: {' '.join(argv)}")
    return found


def pid_ns_of(pid: int) -> tuple[int, int]:
    st = os.stat(f"/proc/{pid}/ns/pid")
    return st.st_dev, st.st_ino


def in_namespace(ns: tuple[int, int]) -> list[int]:
    found = []
    for pid in all_pids():
        try:
            if pid_ns_of(pid) == ns:
                found.append(pid)
        except OSError:
            continue
    return found


def wait_until(check: Callable[[], bool], limit: float = 5.0) -> bool:
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def kill_if_same(pid: int, start_time: int) -> None:
    try:
        fields = stat_fields(pid)
    except OSError:
        return
    if int(fields[19]) == start_time:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# --- fixtures -------------------------------------------------------------------------------


class Pauses:
    """Starts pauses for the test and records every sandbox id and pause it made."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.started: list[PauseProcess] = []

    def new_id(self) -> str:
        sid = f"test-pause-{secrets.token_hex(5)}"
        self.ids.append(sid)
        return sid

    def start(self, sid: str | None = None) -> PauseProcess:
        pause = asyncio.run(start_pause(sid or self.new_id()))
        self.started.append(pause)
        return pause


@pytest.fixture
def pauses() -> Iterator[Pauses]:
    made = Pauses()
    try:
        yield made
    finally:
        for pause in made.started:
            kill_if_same(pause.pid, pause.start_time)
        # Anything else a failed test left (say a pause whose pid it never learnt).
        for line in processes_naming(made.ids):
            pid = int(line.split(":")[0])
            with contextlib.suppress(OSError):
                kill_if_same(pid, int(stat_fields(pid)[19]))


def join(pause: PauseProcess, *command: str) -> subprocess.Popen[bytes]:
    """``command`` run by nsenter in the pause's PID namespace: nsenter forks (it always
    does for --pid), and its child is in it."""
    return subprocess.Popen(
        ["nsenter", f"--pid={pause.pid_namespace}", "--", *command],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def the_child(proc: subprocess.Popen[bytes]) -> int:
    kids: dict[int, str] = {}

    def found() -> bool:
        kids.update(children_of(proc.pid))
        return bool(kids)

    assert wait_until(found), "nsenter did not start its child"
    (child,) = kids
    return child


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


# --- tests ----------------------------------------------------------------------------------


def test_start_makes_a_pid_namespace_with_the_pause_as_init(pauses: Pauses) -> None:
    sid = pauses.new_id()
    pause = pauses.start(sid)
    assert is_running(pause)
    assert pause.pid_namespace == f"/proc/{pause.pid}/ns/pid"
    assert pid_ns_of(pause.pid) != pid_ns_of(os.getpid())
    assert int(stat_fields(pause.pid)[19]) == pause.start_time

    info = status(pause.pid)
    assert info["NSpid"].split() == [str(pause.pid), "1"]  # PID 1 in its namespace
    assert info["Name"] == "skiff-pause"
    assert argv_of(pause.pid)[-2:] == ["skiff-pause", sid]
    assert argv_of(pause.pid)[-3] == str(HELPER)
    # Not our child: the helper exited and it went to the host's init (or a subreaper).
    assert int(info["PPid"]) != os.getpid()
    assert processes_naming([sid]) == [f"{pause.pid}: {' '.join(argv_of(pause.pid))}"]
    # Its own session, / as cwd, nothing open but /dev/null, an empty environment.
    assert int(stat_fields(pause.pid)[3]) == pause.pid
    assert os.readlink(f"/proc/{pause.pid}/cwd") == "/"
    fds = {
        fd: os.readlink(f"/proc/{pause.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pause.pid}/fd")
    }
    assert fds == {"0": "/dev/null", "1": "/dev/null", "2": "/dev/null"}
    assert Path(f"/proc/{pause.pid}/environ").read_bytes() == b""
    # The same mount namespace as ours: it mounts nothing.
    assert os.stat(f"/proc/{pause.pid}/ns/mnt").st_ino == os.stat("/proc/self/ns/mnt").st_ino

    rss_kib = int(info["VmRSS"].split()[0])
    print(f"pause RSS: {rss_kib} KiB")
    assert rss_kib < 32 * 1024


def test_a_process_joins_the_namespace(pauses: Pauses) -> None:
    pause = pauses.start()
    member = join(pause, "sleep", "60")
    try:
        child = the_child(member)
        # Two pids: the host's and the one inside the pause's namespace (not 1: the pause).
        host_pid, inner_pid = status(child)["NSpid"].split()
        assert int(host_pid) == child
        assert int(inner_pid) > 1
        assert pid_ns_of(child) == pid_ns_of(pause.pid)
    finally:
        stop(member)


def test_orphans_are_reaped(pauses: Pauses) -> None:
    pause = pauses.start()
    # Each ( ... &) leaves a sleep whose parent exits at once: it is re-parented to the
    # namespace's init, which has to reap it when it exits.
    script = "for i in 1 2 3 4 5 6 7 8 9 10 11; do (sleep 1 &); done; exit 0"
    maker = join(pause, "sh", "-c", script)
    assert maker.wait(10) == 0
    assert len(children_of(pause.pid)) == 11, "the orphans were not re-parented to the pause"
    assert wait_until(lambda: not children_of(pause.pid)), (
        f"children left: {children_of(pause.pid)}"
    )
    # Still there after its last child is gone, and still reaping.
    time.sleep(0.2)
    assert is_running(pause)
    maker = join(pause, "sh", "-c", "(true &); exit 0")
    assert maker.wait(10) == 0
    assert wait_until(lambda: not children_of(pause.pid))
    assert is_running(pause)


def test_stop_ends_the_pause_and_its_namespace(pauses: Pauses) -> None:
    pause = pauses.start()
    ns = pid_ns_of(pause.pid)
    member = join(pause, "sleep", "60")
    try:
        child = the_child(member)
        assert in_namespace(ns) == sorted([pause.pid, child])
        started = time.monotonic()
        asyncio.run(stop_pause(pause))
        assert time.monotonic() - started < 2  # SIGTERM was enough
        assert not is_running(pause)
        # The kernel killed what was left in the namespace with it.
        assert member.wait(10) != 0
        # Nothing left in the namespace but, maybe, the pause as a zombie: reaping it is
        # the host init's business, and some take their time.
        assert wait_until(lambda: in_namespace(ns) in ([], [pause.pid])), in_namespace(ns)
    finally:
        stop(member)
    asyncio.run(stop_pause(pause))  # idempotent


def test_signals(pauses: Pauses) -> None:
    pause = pauses.start()
    os.kill(pause.pid, signal.SIGHUP)
    # From a process of the pod itself, neither TERM nor KILL takes it down.
    for sig in ("TERM", "INT", "KILL"):
        killer = join(pause, "sh", "-c", f"kill -{sig} 1")
        assert killer.wait(10) == 0
    time.sleep(0.3)
    assert is_running(pause)
    # SIGINT from the node does.
    os.kill(pause.pid, signal.SIGINT)
    assert wait_until(lambda: not is_running(pause))


def test_it_outlives_the_process_that_started_it(pauses: Pauses) -> None:
    sid = pauses.new_id()
    code = (
        "import asyncio, sys\n"
        "from runtime.pause import start_pause\n"
        "p = asyncio.run(start_pause(sys.argv[1]))\n"
        "print(p.pid, p.start_time)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, sid],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    pid, start_time = map(int, done.stdout.split())
    pause = PauseProcess(pid, start_time)
    pauses.started.append(pause)
    time.sleep(0.2)
    assert is_running(pause)
    assert int(status(pid)["PPid"]) != os.getpid()
    asyncio.run(stop_pause(pause))
    assert not is_running(pause)


def test_a_reused_pid_is_never_signalled(pauses: Pauses) -> None:
    pause = pauses.start()
    impostor = PauseProcess(pause.pid, pause.start_time + 1)
    assert not is_running(impostor)
    asyncio.run(stop_pause(impostor, timeout=0.5))
    assert is_running(pause)

    # Any process: one whose start time differs is left alone, the right one is stopped.
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        start_time = int(stat_fields(sleeper.pid)[19])
        asyncio.run(stop_pause(PauseProcess(sleeper.pid, start_time - 1), timeout=0.5))
        time.sleep(0.2)
        assert sleeper.poll() is None
        asyncio.run(stop_pause(PauseProcess(sleeper.pid, start_time), timeout=5))
        # Stopped counts once it is a zombie (we have not reaped it yet).
        assert stat_fields(sleeper.pid)[0] == "Z"
        assert sleeper.wait(5) == -signal.SIGTERM
    finally:
        stop(sleeper)

    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    for pid in (0, -1, pid_max + 1):
        assert not is_running(PauseProcess(pid, 0))
    asyncio.run(stop_pause(PauseProcess(pid_max + 1, 0)))


def test_stop_falls_back_to_sigkill() -> None:
    # A process that ignores SIGTERM stands in for a pause that is stuck.
    stubborn = subprocess.Popen(["sh", "-c", "trap '' TERM; exec sleep 60"])
    try:
        time.sleep(0.2)  # until the trap is set and sleep runs
        started = time.monotonic()
        asyncio.run(stop_pause(PauseProcess(stubborn.pid, int(stat_fields(stubborn.pid)[19])), 0.3))
        assert 0.3 <= time.monotonic() - started < 3
        assert stubborn.wait(5) == -signal.SIGKILL
    finally:
        stop(stubborn)


def test_start_and_stop_leave_nothing_behind(pauses: Pauses) -> None:
    times = []
    for _ in range(30):
        started = time.monotonic()
        pause = pauses.start()
        times.append(time.monotonic() - started)
        assert is_running(pause)
        asyncio.run(stop_pause(pause))
        assert not is_running(pause)
    assert processes_naming(pauses.ids) == []
    print(
        f"start_pause: mean {sum(times) / len(times) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms"
    )


@pytest.mark.parametrize("limit", [0.0, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04])
def test_timed_out_start_leaves_nothing(pauses: Pauses, limit: float) -> None:
    sid = pauses.new_id()
    try:
        pause = asyncio.run(start_pause(sid, timeout=limit))
    except PauseError as exc:
        assert "did not finish" in str(exc)
    else:  # fast enough after all
        pauses.started.append(pause)
        asyncio.run(stop_pause(pause))
    assert processes_naming([sid]) == []


@pytest.mark.parametrize("delay", [0.0, 0.005, 0.01, 0.015, 0.02, 0.03])
def test_cancelled_start_leaves_nothing(pauses: Pauses, delay: float) -> None:
    sid = pauses.new_id()

    async def main() -> PauseProcess | None:
        task = asyncio.create_task(start_pause(sid))
        await asyncio.sleep(delay)
        task.cancel()
        try:
            return await task
        except asyncio.CancelledError:
            return None

    pause = asyncio.run(main())
    if pause is not None:  # it was done before the cancel came
        pauses.started.append(pause)
        asyncio.run(stop_pause(pause))
    assert processes_naming([sid]) == []


@pytest.mark.parametrize("sid", ["", "a\0b"])
def test_unusable_sandbox_id(sid: str) -> None:
    with pytest.raises(PauseError, match="sandbox id"):
        asyncio.run(start_pause(sid))


def test_helper_refuses_bad_arguments() -> None:
    done = subprocess.run(
        [sys.executable, "-I", "-S", str(HELPER)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1
    assert "usage" in done.stderr


def test_a_failed_start_looks_again_for_a_pause_caught_mid_exec(
    pauses: Pauses, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A helper's child in the middle of its exec has no command line for a moment: the
    one search after a failed start missed it, and a pause outlived the failure."""
    sid = pauses.new_id()
    pause = asyncio.run(start_pause(sid))
    pauses.started.append(pause)
    real = pause_module.running_pauses
    looks: list[int] = []

    def first_look_misses() -> dict[str, list[PauseProcess]]:
        looks.append(1)
        return {} if len(looks) == 1 else real()

    monkeypatch.setattr(pause_module, "running_pauses", first_look_misses)
    asyncio.run(pause_module._kill_what_the_helper_made(sid))
    assert not is_running(pause)
    assert len(looks) >= 3
