"""The OCI runtime driver with the real conmon, runc and crun on this machine.

Every test works in its own short ``/tmp/skiff-oci-*`` directory (state dir, runtime
root, bundles, logs) and its own ``/skiff-test-*`` cgroup prefix; whatever happens it
deletes its containers with the runtime, kills any conmon left for its state dir,
removes the directory and every cgroup under the prefix in every hierarchy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from runtime import conmon
from runtime.cgroups import Cgroupfs, cgroup_version
from runtime.oci_runtime import (
    ContainerExists,
    ContainerNotFound,
    ExitStatus,
    OciRuntime,
    OciRuntimeError,
    RuntimeHandlerPaths,
)
from tests.integration import bundles

RUNTIMES = {"runc": shutil.which("runc"), "crun": shutil.which("crun")}
CONMON = shutil.which("conmon")
CGROUP = Path("/sys/fs/cgroup")
REPO = Path(__file__).resolve().parents[2]
MIB = 1 << 20

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or CONMON is None or RUNTIMES["runc"] is None or cgroup_version(CGROUP) != 1,
    reason="needs root, conmon, runc and cgroup v1",
)

T = TypeVar("T")

# "<RFC3339Nano with offset> <stream> <F|P> <text>", conmon's k8s-file line.
CRI_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}(?:Z|[+-]\d\d:\d\d)) (stdout|stderr) ([FP]) (.*)$"
)
# Exits on SIGTERM within 0.1 s once it said "ready" (PID 1 of a pid namespace needs a
# handler for that: before the trap is set, the kernel drops the signal).
TERM_EXITS = ["sh", "-c", "trap 'exit 7' TERM; echo ready; while :; do sleep 0.1; done"]


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


@dataclass
class Env:
    """One test's directory, cgroup prefix and driver for one handler."""

    top: Path
    handler: RuntimeHandlerPaths
    runtime: OciRuntime
    prefix: str
    ids: list[str] = field(default_factory=list)

    @property
    def state_dir(self) -> Path:
        return self.runtime.state_dir

    def new_id(self, stem: str = "c") -> str:
        cid = f"{stem}-{uuid.uuid4().hex[:8]}"
        self.ids.append(cid)
        return cid

    def bundle(
        self,
        cid: str,
        args: Sequence[str],
        *,
        terminal: bool = False,
        resources: dict[str, Any] | None = None,
    ) -> Path:
        return bundles.make_bundle(
            self.top / "b" / cid,
            args,
            self.cgroups_path(cid),
            terminal=terminal,
            resources=resources,
        )

    def cgroups_path(self, cid: str) -> str:
        return f"{self.prefix}/{cid}"

    def log(self, cid: str) -> str:
        return str(self.top / "logs" / f"{cid}.log")

    async def started(self, args: Sequence[str], **kwargs: Any) -> tuple[str, int]:
        """A created and started container: (id, pid)."""
        cid = self.new_id()
        bundle = self.bundle(cid, args, **kwargs)
        pid = await self.runtime.create(cid, bundle, self.log(cid))
        await self.runtime.start(cid)
        return cid, pid

    async def ready(self, cid: str) -> None:
        """Wait for the container to log "ready"."""
        log = Path(self.log(cid))
        await eventually(lambda: log.exists() and ("stdout", "F", "ready") in log_entries(str(log)))

    def runtime_list(self) -> list[str]:
        out = subprocess.run(
            [self.handler.runtime_path, "--root", self.handler.runtime_root, "list", "-q"],
            capture_output=True,
            text=True,
            check=False,
        )
        return out.stdout.split()

    def runtime_exec(self, cid: str, *args: str) -> str:
        out = subprocess.run(
            [self.handler.runtime_path, "--root", self.handler.runtime_root, "exec", cid, *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return out.stdout


def runtime_path(name: str, top: Path) -> str:
    """The runtime's path, or for crun on a hybrid host whose cgroup2 mount has
    controllers (here: hugetlb, which no v1 hierarchy takes) a wrapper that runs it in
    a private mount namespace without /sys/fs/cgroup/unified. crun 1.8 refuses every
    container on such a host ("cgroups in hybrid mode not supported, drop all
    controllers from cgroupv2"), whatever its cgroup manager; runc just uses v1."""
    path = RUNTIMES[name]
    assert path is not None
    unified = CGROUP / "unified" / "cgroup.controllers"
    if name != "crun" or not unified.exists() or not unified.read_text().strip():
        return path
    wrapper = top / name
    wrapper.write_text(
        "#!/bin/sh\n"
        "exec /usr/bin/unshare --mount --propagation private /bin/sh -c "
        f'\'umount /sys/fs/cgroup/unified && exec {path} "$@"\' {name} "$@"\n'
    )
    wrapper.chmod(0o755)
    return str(wrapper)


def make_env(name: str) -> Iterator[Env]:
    if RUNTIMES[name] is None or CONMON is None:
        pytest.skip(f"{name} is not installed")
    top = Path(tempfile.mkdtemp(prefix="skiff-oci-"))
    (top / "logs").mkdir()
    handler = RuntimeHandlerPaths(name, runtime_path(name, top), str(top / "rt"))
    env = Env(
        top=top,
        handler=handler,
        runtime=OciRuntime(handler, CONMON, top / "ctr", timeout=30),
        prefix=bundles.cgroup_prefix(),
    )
    try:
        yield env
    finally:
        cleanup(env)


def cleanup(env: Env) -> None:
    for cid in env.ids:
        subprocess.run(
            [env.handler.runtime_path, "--root", env.handler.runtime_root, "delete", "-f", cid],
            capture_output=True,
            check=False,
            timeout=60,
        )
    for pid in processes_mentioning(str(env.top)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while processes_mentioning(str(env.top)) and time.monotonic() < deadline:
        time.sleep(0.05)
    shutil.rmtree(env.top, ignore_errors=True)
    deadline = time.monotonic() + 10
    while bundles.remove_cgroup_tree(env.prefix) and time.monotonic() < deadline:
        time.sleep(0.1)


@pytest.fixture
def env() -> Iterator[Env]:
    yield from make_env("runc")


@pytest.fixture(params=["runc", "crun"])
def any_env(request: pytest.FixtureRequest) -> Iterator[Env]:
    yield from make_env(request.param)


def processes_mentioning(text: str) -> list[int]:
    """Live (non-zombie) processes with ``text`` in their command line."""
    found = []
    wanted = text.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path("/proc", entry, "cmdline").read_bytes()
        except OSError:
            continue
        if wanted in cmdline and conmon.process_running(int(entry)):
            found.append(int(entry))
    return found


def exists(path: str | Path) -> bool:
    return os.path.lexists(path)


def oom_score_adj(pid: int) -> int:
    return int(Path(f"/proc/{pid}/oom_score_adj").read_text())


def ppid_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    return int(stat[stat.rfind(b")") + 2 :].split()[1])


def log_entries(path: str) -> list[tuple[str, str, str]]:
    """(stream, tag, text) of every line, each checked against the CRI format."""
    entries = []
    # split on "\n" only: a tty's lines end in "\r\n" and the "\r" is content.
    for line in Path(path).read_bytes().decode().split("\n")[:-1]:
        match = CRI_LINE.match(line)
        assert match, f"not a CRI log line: {line!r}"
        entries.append((match.group(2), match.group(3), match.group(4)))
    return entries


async def eventually(check: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def assert_gone(env: Env, cid: str, conmon_pid: int | None = None) -> None:
    state = env.state_dir / cid
    assert not state.exists(), sorted(p.name for p in state.iterdir())
    assert cid not in env.runtime_list()
    assert not (Path(env.handler.runtime_root) / cid).exists()
    assert not conmon.find_conmons(state)
    if conmon_pid is not None:
        assert not conmon.process_running(conmon_pid) or not conmon.is_conmon_of(conmon_pid, state)
    bundle = env.top / "b" / cid
    for name in conmon.BUNDLE_FILES:
        assert not (bundle / name).exists(), name


# ---- create, start, exit, logs ----------------------------------------------------------


def test_exit_code_and_cri_log(any_env: Env) -> None:
    env = any_env

    async def body() -> None:
        cid = env.new_id()
        bundle = env.bundle(
            cid, ["sh", "-c", "echo out; echo err >&2; printf 'no newline'; exit 3"]
        )
        pid = await env.runtime.create(cid, bundle, env.log(cid))
        assert pid > 0
        state = await env.runtime.state(cid)
        assert state is not None
        assert state["status"] == "created" and state["pid"] == pid
        conmon_pid = env.runtime.conmon_pid(cid)
        assert conmon_pid is not None
        assert env.runtime.exit_status(cid) is None
        assert await env.runtime.wait_exit(cid, 0.1) is None

        before = time.time_ns()
        await env.runtime.start(cid)
        status = await env.runtime.wait_exit(cid, 20)
        assert status is not None
        assert status.exit_code == 3 and not status.oom_killed
        assert before - 1_000_000_000 <= status.finished_ns <= time.time_ns()
        assert env.runtime.exit_status(cid) == status

        entries = log_entries(env.log(cid))
        assert ("stdout", "F", "out") in entries
        assert ("stderr", "F", "err") in entries
        # conmon 2.1.6 writes each read that ends without a newline as a P line.
        assert ("stdout", "P", "no newline") in entries

        await eventually(lambda: env.runtime.conmon_pid(cid) is None)
        state = await env.runtime.state(cid)
        assert state is not None and state["status"] == "stopped"
        # stop and kill on an exited container are fine and change nothing.
        await env.runtime.kill(cid, signal.SIGTERM)
        assert await env.runtime.stop(cid, signal.SIGTERM, 1) == status

        await env.runtime.delete(cid)
        assert_gone(env, cid, conmon_pid)
        assert await env.runtime.state(cid) is None
        assert env.runtime.exit_status(cid) is None
        await env.runtime.delete(cid)  # idempotent

    run(body())


def test_terminal_output_is_logged(env: Env) -> None:
    async def body() -> None:
        cid = env.new_id()
        bundle = env.bundle(cid, ["sh", "-c", "echo tty-out; exit 2"], terminal=True)
        await env.runtime.create(cid, bundle, env.log(cid), terminal=True)
        await env.runtime.start(cid)
        status = await env.runtime.wait_exit(cid, 20)
        assert status is not None and status.exit_code == 2
        # One stream through the pty, with the pty's CRLF.
        assert ("stdout", "F", "tty-out\r") in log_entries(env.log(cid))
        await env.runtime.delete(cid)
        assert_gone(env, cid)

    run(body())


def test_unknown_and_duplicate_containers(env: Env) -> None:
    async def body() -> None:
        assert await env.runtime.state("nope") is None
        assert env.runtime.exit_status("nope") is None
        assert await env.runtime.wait_exit("nope", 1) is None
        assert env.runtime.conmon_pid("nope") is None
        await env.runtime.delete("nope")
        with pytest.raises(ContainerNotFound, match="nope"):
            await env.runtime.kill("nope", signal.SIGTERM)
        with pytest.raises(ContainerNotFound, match="nope"):
            await env.runtime.start("nope")
        with pytest.raises(OciRuntimeError, match="invalid container id"):
            await env.runtime.state("../etc")

        cid, _ = await env.started(["sleep", "1000"])
        with pytest.raises(ContainerExists, match=cid):
            await env.runtime.create(cid, env.top / "b" / cid, env.log(cid))
        # The failed second create took nothing of the first container away.
        state = await env.runtime.state(cid)
        assert state is not None and state["status"] == "running"
        assert env.runtime.conmon_pid(cid) is not None
        await env.runtime.delete(cid)
        assert_gone(env, cid)

    run(body())


# ---- stop and delete --------------------------------------------------------------------


def test_stop_with_a_signal_the_container_handles(env: Env) -> None:
    async def body() -> None:
        cid, pid = await env.started(TERM_EXITS)
        await env.ready(cid)
        state = await env.runtime.state(cid)
        assert state is not None and state["status"] == "running"
        conmon_pid = env.runtime.conmon_pid(cid)
        assert conmon_pid is not None
        began = time.monotonic()
        status = await env.runtime.stop(cid, signal.SIGTERM, 2)
        assert time.monotonic() - began < 1.5
        assert status.exit_code == 7
        assert not conmon.process_running(pid)
        await eventually(lambda: env.runtime.conmon_pid(cid) is None)
        await env.runtime.delete(cid)
        assert_gone(env, cid, conmon_pid)

    run(body())


@pytest.mark.parametrize(
    "args",
    [
        ["sh", "-c", "trap '' TERM; sleep 1000"],
        # PID 1 of a pid namespace: the kernel drops signals it has no handler for.
        ["sleep", "1000"],
    ],
    ids=["trap-ignore", "pid1-no-handler"],
)
def test_stop_escalates_to_sigkill(env: Env, args: list[str]) -> None:
    async def body() -> None:
        cid, pid = await env.started(args)
        conmon_pid = env.runtime.conmon_pid(cid)
        began = time.monotonic()
        status = await env.runtime.stop(cid, signal.SIGTERM, 2)
        elapsed = time.monotonic() - began
        assert 2 <= elapsed < 10
        assert status.exit_code == 137 and not status.oom_killed
        assert not conmon.process_running(pid)
        await env.runtime.delete(cid)
        assert_gone(env, cid, conmon_pid)

    run(body())


def test_delete_kills_a_running_container(env: Env) -> None:
    async def body() -> None:
        cid, pid = await env.started(["sleep", "1000"])
        conmon_pid = env.runtime.conmon_pid(cid)
        assert conmon_pid is not None
        await env.runtime.delete(cid)
        assert not conmon.process_running(pid)
        assert_gone(env, cid, conmon_pid)

    run(body())


def test_a_created_container_can_be_stopped(env: Env) -> None:
    async def body() -> None:
        cid = env.new_id()
        await env.runtime.create(cid, env.bundle(cid, ["sleep", "1000"]), env.log(cid))
        # runc's init, waiting to be started, dies of SIGTERM with exit status 2.
        status = await env.runtime.stop(cid, signal.SIGTERM, 1)
        assert status.exit_code != 0
        state = await env.runtime.state(cid)
        assert state is not None and state["status"] == "stopped"
        await env.runtime.delete(cid)
        assert_gone(env, cid)

    run(body())


# ---- create failures --------------------------------------------------------------------


def test_create_failure_leaves_nothing(any_env: Env) -> None:
    env = any_env

    async def body() -> None:
        cid = env.new_id()
        bundle = env.bundle(cid, ["/no/such/binary", "arg"])
        with pytest.raises(OciRuntimeError) as caught:
            await env.runtime.create(cid, bundle, env.log(cid))
        message = str(caught.value)
        assert cid in message
        assert "/no/such/binary" in message
        assert re.search(r"no such file|not found", message, re.IGNORECASE), message
        assert_gone(env, cid)
        assert not exists(env.log(cid))
        assert not processes_mentioning(str(env.top))
        assert not [d for d in bundles.cgroup_dirs(env.cgroups_path(cid)) if d.exists()]
        # The id is free again.
        good = env.bundle(cid + "x", ["true"])
        env.ids.append(cid + "x")
        await env.runtime.create(cid + "x", good, env.log(cid + "x"))
        await env.runtime.delete(cid + "x")

    run(body())


def test_create_with_a_bad_bundle(env: Env) -> None:
    async def body() -> None:
        cid = env.new_id()
        bundle = env.bundle(cid, ["true"])
        spec = json.loads((bundle / "config.json").read_text())
        spec["mounts"].append({"destination": "/x", "type": "nosuchfs", "source": "none"})
        (bundle / "config.json").write_text(json.dumps(spec))
        with pytest.raises(OciRuntimeError, match=cid) as caught:
            await env.runtime.create(cid, bundle, env.log(cid))
        assert "nosuchfs" in str(caught.value) or "no such device" in str(caught.value)
        assert_gone(env, cid)

        with pytest.raises(OciRuntimeError, match=r"no config\.json"):
            await env.runtime.create(env.new_id(), env.top, env.log(cid))

    run(body())


def test_create_reports_conmon_failures(env: Env) -> None:
    async def body() -> None:
        cid = env.new_id()
        bundle = env.bundle(cid, ["true"])
        # conmon cannot open the log file: it says so before it forks.
        with pytest.raises(OciRuntimeError, match="conmon failed") as caught:
            await env.runtime.create(cid, bundle, str(env.top / "no" / "dir" / "x.log"))
        assert "log file" in str(caught.value)
        assert_gone(env, cid)

    run(body())


def test_cancelled_create_leaves_nothing(env: Env) -> None:
    async def body() -> None:
        cid = env.new_id()
        bundle = env.bundle(cid, ["sleep", "1000"])
        task = asyncio.ensure_future(env.runtime.create(cid, bundle, env.log(cid)))
        await asyncio.sleep(0.05)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if task.cancelled():
            assert_gone(env, cid)
            assert not processes_mentioning(str(env.top))
        else:  # create won the race; that is fine too
            await env.runtime.delete(cid)
            assert_gone(env, cid)

    run(body())


# ---- exec -------------------------------------------------------------------------------


def test_exec_sync(any_env: Env) -> None:
    env = any_env

    async def body() -> None:
        cid, _ = await env.started(["sleep", "1000"])
        rt = env.runtime

        result = await rt.exec_sync(cid, ["echo", "hi"], 10)
        assert (result.exit_code, result.stdout, result.stderr, result.timed_out) == (
            0,
            b"hi\n",
            b"",
            False,
        )
        result = await rt.exec_sync(cid, ["sh", "-c", "echo oops >&2; exit 5"], 10)
        assert (result.exit_code, result.stdout, result.stderr) == (5, b"", b"oops\n")
        result = await rt.exec_sync(cid, ["sh", "-c", "kill -9 $$"], 10)
        assert result.exit_code == 137

        # Output beyond the cap is read and dropped: the command is not blocked by it.
        result = await rt.exec_sync(cid, ["head", "-c", "3000000", "/dev/zero"], 20, 1000)
        assert result.exit_code == 0 and result.stdout == b"\0" * 1000
        result = await rt.exec_sync(cid, ["sh", "-c", "yes | head -c 100000"], 20)
        assert result.stdout == b"y\n" * 50000

        began = time.monotonic()
        result = await rt.exec_sync(cid, ["sleep", "100"], 1)
        assert result.timed_out
        assert time.monotonic() - began < 6
        # Gone; at most a zombie "[sleep]" is left, as the container's init (sleep)
        # reaps no orphans.
        ps = env.runtime_exec(cid, "ps", "-o", "pid,args").splitlines()
        assert not [line for line in ps if line.endswith(" sleep 100")], ps
        # Nothing left in the state dir of the exec.
        assert not list((env.state_dir / cid).glob("exec-*"))

        # A command that forks a child which keeps the pipes: killed with its group.
        result = await rt.exec_sync(cid, ["sh", "-c", "sleep 200 & sleep 300"], 1)
        assert result.timed_out
        ps = env.runtime_exec(cid, "ps", "-o", "pid,args").splitlines()
        assert not [line for line in ps if line.endswith((" sleep 200", " sleep 300"))], ps

        if env.handler.name == "crun":
            # A command that leaves a daemon holding the pipes: answered once the runtime
            # exits (and a moment more for the output), not at the deadline. (runc
            # itself stays until the pipes close, so there the deadline still decides.)
            began = time.monotonic()
            result = await rt.exec_sync(cid, ["sh", "-c", "echo started; sleep 250 &"], 20)
            assert (result.exit_code, result.stdout, result.timed_out) == (
                0,
                b"started\n",
                False,
            )
            assert time.monotonic() - began < 10

        with pytest.raises(OciRuntimeError, match="no-such-cmd"):
            await rt.exec_sync(cid, ["no-such-cmd"], 10)

        await rt.stop(cid, signal.SIGKILL, 1)
        with pytest.raises(OciRuntimeError, match=cid):
            await rt.exec_sync(cid, ["echo", "hi"], 10)
        await rt.delete(cid)
        with pytest.raises(ContainerNotFound):
            await rt.exec_sync(cid, ["echo", "hi"], 10)

    run(body())


# ---- update -----------------------------------------------------------------------------


def test_update_resources(any_env: Env) -> None:
    env = any_env

    async def body() -> None:
        cid, _ = await env.started(
            ["sleep", "1000"],
            resources={"pids": {"limit": 100}, "memory": {"limit": 64 * MIB}},
        )
        rel = env.cgroups_path(cid).lstrip("/")
        pids_max = CGROUP / "pids" / rel / "pids.max"
        memory_limit = CGROUP / "memory" / rel / "memory.limit_in_bytes"
        assert pids_max.read_text().strip() == "100"
        assert int(memory_limit.read_text()) == 64 * MIB

        await env.runtime.update(cid, {"pids": {"limit": 50}, "memory": {"limit": 128 * MIB}})
        assert pids_max.read_text().strip() == "50"
        assert int(memory_limit.read_text()) == 128 * MIB
        assert not list((env.state_dir / cid).glob("resources-*"))

        with pytest.raises(OciRuntimeError, match=cid):
            await env.runtime.update(cid, {"cpu": {"cpus": "no-such-cpu-list"}})
        await env.runtime.delete(cid)
        with pytest.raises(ContainerNotFound):
            await env.runtime.update(cid, {"pids": {"limit": 10}})

    run(body())


# ---- logs -------------------------------------------------------------------------------


def test_reopen_log(env: Env) -> None:
    async def body() -> None:
        cid, _ = await env.started(
            ["sh", "-c", "i=0; while :; do echo line $i; i=$((i+1)); sleep 0.2; done"]
        )
        log = Path(env.log(cid))
        await eventually(lambda: log.exists() and len(log_entries(str(log))) >= 2)
        rotated = log.with_name(log.name + ".1")
        os.rename(log, rotated)
        await env.runtime.reopen_log(cid)
        assert exists(log)
        await eventually(lambda: len(log_entries(str(log))) >= 2)
        assert all(stream == "stdout" and tag == "F" for stream, tag, _ in log_entries(str(log)))
        old = log_entries(str(rotated))
        new = log_entries(str(log))
        last_old = int(old[-1][2].split()[1])
        first_new = int(new[0][2].split()[1])
        assert first_new == last_old + 1  # nothing lost, nothing doubled
        await asyncio.sleep(0.5)
        assert log_entries(str(rotated)) == old  # the old file gets nothing more

        await env.runtime.stop(cid, signal.SIGKILL, 0)
        await eventually(lambda: env.runtime.conmon_pid(cid) is None)
        with pytest.raises(OciRuntimeError, match="not running"):
            await env.runtime.reopen_log(cid)
        await env.runtime.delete(cid)

    run(body())


def test_log_size_max_truncates(env: Env) -> None:
    async def body() -> None:
        cid = env.new_id()
        bundle = env.bundle(
            cid, ["sh", "-c", "i=0; while [ $i -lt 200 ]; do echo line $i; i=$((i+1)); done"]
        )
        await env.runtime.create(cid, bundle, env.log(cid), log_size_max=2000)
        await env.runtime.start(cid)
        assert await env.runtime.wait_exit(cid, 20) is not None
        # conmon reopens (empties) the file whenever the next write would pass the max.
        assert 0 < os.stat(env.log(cid)).st_size <= 2000
        assert log_entries(env.log(cid))[-1] == ("stdout", "F", "line 199")
        await env.runtime.delete(cid)

    run(body())


# ---- conmon's independence and placement --------------------------------------------------


def test_conmon_outlives_its_parent(env: Env) -> None:
    """A separate Python process creates and starts the container and exits; the
    container and its conmon stay, and this process can still stop and delete it."""
    cid = env.new_id()
    bundle = env.bundle(cid, ["sleep", "1000"])
    script = textwrap.dedent(
        f"""
        import asyncio
        from pathlib import Path
        from runtime.oci_runtime import OciRuntime, RuntimeHandlerPaths

        async def main() -> None:
            handler = RuntimeHandlerPaths(
                {env.handler.name!r}, {env.handler.runtime_path!r}, {env.handler.runtime_root!r}
            )
            rt = OciRuntime(handler, {CONMON!r}, Path({str(env.state_dir)!r}))
            await rt.create({cid!r}, Path({str(bundle)!r}), {env.log(cid)!r})
            await rt.start({cid!r})
            print(rt.conmon_pid({cid!r}))

        asyncio.run(main())
        """
    )
    parent = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    conmon_pid = int(parent.stdout.strip())

    async def body() -> None:
        assert env.runtime.conmon_pid(cid) == conmon_pid
        assert ppid_of(conmon_pid) != os.getpid()
        assert os.getsid(conmon_pid) == conmon_pid  # its own session
        state = await env.runtime.state(cid)
        assert state is not None and state["status"] == "running"
        # conmon could not lower its oom_score_adj (no CAP_SYS_RESOURCE) and lived on.
        assert oom_score_adj(conmon_pid) >= 0
        status = await env.runtime.stop(cid, signal.SIGKILL, 0)
        assert status.exit_code == 137
        await env.runtime.delete(cid)
        assert_gone(env, cid, conmon_pid)

    run(body())


def test_conmon_cgroup(env: Env) -> None:
    """The runtime makes conmon's cgroup, puts conmon in it and removes it with the
    container, or with a create that failed."""

    async def body() -> None:
        fs = Cgroupfs()
        monitor = f"{env.prefix}/conmon"
        cid = env.new_id()
        bundle = env.bundle(cid, ["sleep", "1000"])
        await env.runtime.create(cid, bundle, env.log(cid), conmon_cgroup=monitor)
        conmon_pid = env.runtime.conmon_pid(cid)
        assert conmon_pid is not None
        assert conmon_pid in fs.pids(monitor)
        await env.runtime.delete(cid)
        assert not fs.exists(monitor)

        failing = env.new_id()
        unrunnable = env.bundle(failing, ["/no/such/program"])
        with pytest.raises(OciRuntimeError, match="no/such/program"):
            await env.runtime.create(
                failing, unrunnable, env.log(failing), conmon_cgroup=f"{monitor}-failing"
            )
        assert not fs.exists(f"{monitor}-failing")
        assert_gone(env, failing)

    run(body())


# ---- OOM --------------------------------------------------------------------------------


def test_oom_kill_is_reported(env: Env) -> None:
    async def body() -> None:
        cid, _ = await env.started(
            ["sh", "-c", "x=$(yes | head -c 400000000); echo ${#x}"],
            resources={"memory": {"limit": 32 * MIB, "swap": 32 * MIB}},
        )
        status = await env.runtime.wait_exit(cid, 60)
        assert status is not None
        assert status.exit_code == 137
        assert status.oom_killed
        await env.runtime.delete(cid)

    run(body())


# ---- leaks ------------------------------------------------------------------------------


def test_no_leaks_over_many_cycles(env: Env) -> None:
    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    async def cycle() -> ExitStatus:
        cid, _ = await env.started(TERM_EXITS)
        await env.ready(cid)
        status = await env.runtime.stop(cid, signal.SIGTERM, 5)
        await env.runtime.delete(cid)
        return status

    async def body() -> None:
        await cycle()  # warm-up (the event loop's own fds)
        before = fds()
        for _ in range(20):
            status = await cycle()
            assert status.exit_code == 7
        assert fds() == before
        assert not processes_mentioning(str(env.top))
        assert os.listdir(env.state_dir) == []
        assert os.listdir(env.handler.runtime_root) == []
        assert env.runtime_list() == []
        # runc made the prefix as a parent and leaves it; nothing is left below it.
        top = env.prefix.strip("/")
        assert all(d.name == top for d in bundles.cgroup_dirs(env.prefix))
        for cid in env.ids:
            assert not bundles.cgroup_dirs(env.cgroups_path(cid)), cid
            for name in conmon.BUNDLE_FILES:
                assert not (env.top / "b" / cid / name).exists()

    run(body())
