"""The OCI runtime driver: containers run by runc (or crun) under conmon.

One :class:`OciRuntime` per runtime handler. Every container gets a state directory
``<state_dir>/<id>/`` (0700) holding what conmon and this driver leave there:

=================  ==================================================================
``conmon.pid``     the monitor's pid (conmon ``-P``)
``pidfile``        the container init's host pid (conmon ``-p``, written by the runtime)
``exit``           the init's exit code as text, written by conmon when it exits
                   (``--persist-dir``); its mtime is the finish time
``oom``            created by conmon on a memory cgroup OOM event
``io``             conmon's symlink to the bundle, where it keeps the ``ctl`` and
                   ``winsz`` fifos and the ``attach`` socket: ``io/ctl``, ``io/attach``
``container.json`` what the driver needs later: bundle, log path, memory cgroup dir
``conmon-cgroup``  the cgroup made for conmon, kept before it is made (so a create cut
                   short leaves it findable) and removed with it by ``delete``
``exec-*.pid``     transient, one per running exec_sync
=================  ==================================================================

conmon runs with the state directory as cwd (it writes a second ``oom`` file into its
cwd) and a clean environment. It double-forks, calls setsid and is reparented to init
(or the nearest subreaper): containers outlive skiffd. There is no shared exits
directory: ``exit`` is per container. :mod:`runtime.exit_watch` notices it with inotify;
:meth:`OciRuntime.wait_exit`, used while stopping one container, waits on a pidfd of
its conmon, which exits right after writing it.

Runtime commands are ``<runtime> --root <runtime_root> <verb> ...`` run as asyncio
subprocesses, each bounded by ``timeout`` seconds. Errors are :class:`OciRuntimeError`
(``ContainerNotFound`` / ``ContainerExists`` for those two cases) and carry the
container id and the runtime's (or conmon's) own words.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import re
import shutil
import signal as signals
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from base import failpoints, processes, steps
from base.errors import AlreadyExists, FailedPrecondition, NotFound, Unknown
from base.files import write_atomic
from base.processes import ProgramTimedOut
from runtime import conmon
from runtime.cgroups import CgroupError, Cgroupfs

log = logging.getLogger(__name__)

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_MAX_ID = 200
_POLL = 0.025
# While waiting on conmon's pidfd, the exit file is looked at again this often all the
# same: a conmon that outlives its container must not make a stop miss the exit.
_EXIT_RECHECK = 0.5
_OUTPUT_GRACE = 1.0  # how long exec_sync reads on after the runtime exited
_META = "container.json"
_CONMON_CGROUP = "conmon-cgroup"
# How long a delete waits for a dead conmon to leave its cgroup.
_CGROUP_DRAIN_SECONDS = 5.0
_ERR_TAIL = 4000

T = TypeVar("T")
# Told of every runtime (or conmon) call: (handler name, verb, seconds, succeeded).
# The daemon turns these into metrics; this layer does not know about them.
CallObserver = Callable[[str, str, float, bool], None]


@dataclass(frozen=True)
class RuntimeHandlerPaths:
    name: str  # handler name, e.g. "runc"
    runtime_path: str  # absolute path of runc/crun
    runtime_root: str  # state dir passed as --root, e.g. <runroot>/runtimes/<name>


@dataclass(frozen=True)
class ExitStatus:
    exit_code: int
    finished_ns: int  # wall clock, ns
    oom_killed: bool


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes
    timed_out: bool


class OciRuntimeError(Unknown):
    pass


class ContainerNotFound(NotFound, OciRuntimeError):
    pass


class ResourcesRefused(FailedPrecondition, OciRuntimeError):
    """The container cannot take the resources asked for, as it is now."""


class ContainerExists(AlreadyExists, OciRuntimeError):
    pass


def _text(data: bytes) -> str:
    text = data.decode(errors="replace").strip()
    return text if len(text) <= _ERR_TAIL else "..." + text[-_ERR_TAIL:]


class OciRuntime:
    def __init__(
        self,
        handler: RuntimeHandlerPaths,
        conmon_path: str,
        state_dir: Path,
        timeout: float = 30.0,
        observer: CallObserver | None = None,
        cgroups: Cgroupfs | None = None,
    ) -> None:
        self.handler = handler
        self.conmon_path = conmon_path
        self.state_dir = Path(state_dir)
        self.timeout = timeout
        self.observer = observer
        self.cgroups = cgroups or Cgroupfs()

    # ---- paths --------------------------------------------------------------------

    def _dir(self, container_id: str) -> Path:
        if not container_id or len(container_id) > _MAX_ID or not _ID.match(container_id):
            raise OciRuntimeError(
                f"invalid container id {container_id!r}: use 1-{_MAX_ID} letters, digits, "
                "'_', '.', '+' or '-', starting with a letter or digit"
            )
        return self.state_dir / container_id

    def state_path(self, container_id: str) -> Path:
        """The container's state directory, where conmon writes its ``exit`` file."""
        return self._dir(container_id)

    def _runtime_knows(self, container_id: str) -> bool:
        """runc and crun both keep a container's state in ``<root>/<id>``."""
        return os.path.lexists(os.path.join(self.handler.runtime_root, container_id))

    def attach_socket_path(self, container_id: str) -> Path:
        """conmon's attach socket (SOCK_SEQPACKET), through the ``io`` link. When this
        path is longer than 107 bytes, connect through an O_PATH fd of its directory."""
        return self._dir(container_id) / conmon.IO_LINK / conmon.ATTACH_SOCKET

    def _meta(self, container_id: str) -> dict[str, Any]:
        try:
            doc = json.loads((self._dir(container_id) / _META).read_text())
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    # ---- running the runtime ------------------------------------------------------

    def _observe(self, verb: str, started: float, ok: bool, ended: float | None = None) -> None:
        if self.observer is not None:
            took = (time.monotonic() if ended is None else ended) - started
            self.observer(self.handler.name, verb, took, ok)

    async def observed(self, verb: str, call: Awaitable[T]) -> T:
        """Await a call, telling the observer its duration and whether it raised
        (a cancelled call is not reported: it neither failed nor finished)."""
        started = time.monotonic()
        try:
            result = await call
        except Exception:
            self._observe(verb, started, ok=False)
            raise
        self._observe(verb, started, ok=True)
        return result

    async def _run(
        self,
        args: list[str],
        *,
        what: str,
        stdin: bytes | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
        judged_by_caller: bool = False,
    ) -> tuple[int, bytes, bytes]:
        """Run ``<runtime> --root <root> args...``; (exit status, stdout, stderr).
        ``judged_by_caller``: a non-zero exit may still be success (the caller tells
        the observer); a run that could not start or finish is reported here."""
        argv = [self.handler.runtime_path, "--root", self.handler.runtime_root, *args]
        limit = self.timeout if timeout is None else timeout
        started = time.monotonic()
        try:
            done = await processes.run(argv, timeout=limit, stdin=stdin, new_session=True)
        except OSError as exc:
            self._observe(args[0], started, ok=False)
            raise OciRuntimeError(
                f"{what}: cannot run {self.handler.runtime_path}: {exc.strerror}"
            ) from exc
        except ProgramTimedOut:
            self._observe(args[0], started, ok=False)
            raise OciRuntimeError(
                f"{what}: `{self.handler.name} {args[0]}` did not finish in {limit:g}s"
            ) from None
        if not judged_by_caller:
            self._observe(args[0], started, ok=done.returncode == 0)
        return done.returncode, done.stdout, done.stderr

    def _failure(self, what: str, verb: str, rc: int, err: bytes, out: bytes = b"") -> str:
        said = _text(err) or _text(out) or "no output"
        return f"{what}: `{self.handler.name} {verb}` failed (exit status {rc}): {said}"

    # ---- create -------------------------------------------------------------------

    async def create(
        self,
        container_id: str,
        bundle: Path,
        log_path: str,
        *,
        terminal: bool = False,
        stdin: bool = False,
        stdin_once: bool = False,
        log_size_max: int = -1,
        conmon_cgroup: str | None = None,
    ) -> int:
        """Start conmon, which runs ``<runtime> create``; return the container's pid.
        ``conmon_cgroup``: a cgroup made for conmon (and removed by `delete`).

        On any failure (or cancellation) nothing is left: the runtime's state is
        deleted, conmon is gone and so is its cgroup, the state directory and conmon's
        files in the bundle are removed, and so is the log file if this call made it.
        """
        state = self._dir(container_id)
        what = f"creating container {container_id}"
        # One trip to a worker thread for the state directory and conmon's cgroup; a
        # failure to make the cgroup is raised below, where the state dir is undone.
        (bundle, log_path, log_existed), cgroup_failed = await asyncio.to_thread(
            self._prepare_and_make_cgroup, container_id, Path(bundle), log_path, conmon_cgroup, what
        )
        steps.lap("runtime state dir + conmon cgroup")
        options = conmon.ConmonOptions(
            container_id=container_id,
            runtime_path=self.handler.runtime_path,
            runtime_root=self.handler.runtime_root,
            bundle=bundle,
            state=state,
            log_path=log_path,
            terminal=terminal,
            stdin=stdin,
            stdin_once=stdin_once,
            log_size_max=log_size_max,
        )
        try:
            if cgroup_failed is not None:
                raise cgroup_failed
            pid = await self.observed("create", self._start_conmon(options, conmon_cgroup, what))
            steps.lap("conmon + runtime create")
            failpoints.step("runtime-create")
            await asyncio.to_thread(self._write_meta, state, pid, bundle, log_path)
            steps.lap("runtime meta")
        except BaseException:
            await asyncio.shield(
                self._remove(
                    container_id, failed_create=(bundle, None if log_existed else log_path)
                )
            )
            raise
        return pid

    def _prepare_and_make_cgroup(
        self,
        container_id: str,
        bundle: Path,
        log_path: str,
        conmon_cgroup: str | None,
        what: str,
    ) -> tuple[tuple[Path, str, bool], OciRuntimeError | None]:
        """`_prepare`, then conmon's cgroup when asked for: what `_prepare` returns, and
        the error of making the cgroup (for the caller to raise after cleaning up)."""
        prepared = self._prepare(container_id, bundle, log_path, what)
        if conmon_cgroup:
            try:
                self._make_conmon_cgroup(self._dir(container_id), conmon_cgroup, what)
            except OciRuntimeError as exc:
                return prepared, exc
        return prepared, None

    def _write_meta(self, state: Path, pid: int, bundle: Path, log_path: str) -> None:
        meta = {
            "bundle": str(bundle),
            "log_path": log_path,
            "memory_cgroup": _memory_cgroup_dir(pid),
            "handler": self.handler.name,
        }
        # The state dir is under the runroot (/run): gone with a reboot, when the
        # container is too, so no fsync; skiffd's own death leaves the file whole.
        write_atomic(state / _META, json.dumps(meta).encode(), durable=False)

    def _prepare(
        self, container_id: str, bundle: Path, log_path: str, what: str
    ) -> tuple[Path, str, bool]:
        """Check the bundle and that the id is free, make the state directory.
        Returns the absolute bundle and log path (conmon's cwd is the state dir), and
        whether the log file was already there."""
        state = self._dir(container_id)
        bundle = bundle.absolute()
        if not (bundle / "config.json").is_file():
            raise OciRuntimeError(f"{what}: {bundle} has no config.json")
        if ":" in log_path:
            # conmon splits "--log-path driver:path" at every ':' (strtok).
            raise OciRuntimeError(f"{what}: conmon cannot log to a path with ':' ({log_path})")
        exists = ContainerExists(
            f"{what}: container {container_id} already exists ({state} or "
            f"{self.handler.runtime_root}/{container_id}); delete it first"
        )
        if self._runtime_knows(container_id):
            raise exists
        try:
            os.makedirs(self.handler.runtime_root, mode=0o700, exist_ok=True)
            self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            state.mkdir(mode=0o700)
        except FileExistsError:
            raise exists from None
        except OSError as exc:
            raise OciRuntimeError(f"{what}: making {state}: {exc.strerror}") from exc
        log_path = os.path.abspath(log_path)
        return bundle, log_path, os.path.lexists(log_path)

    async def _start_conmon(
        self, options: conmon.ConmonOptions, conmon_cgroup: str | None, what: str
    ) -> int:
        argv = options.argv(self.conmon_path)
        sync_r, sync_w = os.pipe2(os.O_CLOEXEC)
        start_r, start_w = os.pipe2(os.O_CLOEXEC)
        env = {
            "PATH": conmon.CONMON_PATH_ENV,
            "_OCI_SYNCPIPE": str(sync_w),
            "_OCI_STARTPIPE": str(start_r),
        }
        try:
            try:
                child = await processes.start(
                    argv,
                    cwd=options.state,
                    env=env,
                    pass_fds=(sync_w, start_r),
                    merge_stderr=True,
                    new_session=True,
                )
            except OSError as exc:
                raise OciRuntimeError(
                    f"{what}: cannot run {self.conmon_path}: {exc.strerror}"
                ) from exc
            finally:
                os.close(sync_w)
                os.close(start_r)
            async with child:
                # conmon waits on the start pipe before it forks: place it first.
                if conmon_cgroup:
                    await asyncio.to_thread(self._join_cgroup, conmon_cgroup, child.pid, what)
                with contextlib.suppress(BrokenPipeError):
                    # EPIPE: conmon already quit (a bad option, an unopenable log); its
                    # exit status and words follow.
                    os.write(start_w, b"\0")
                os.close(start_w)
                start_w = -1
                try:
                    # The first process writes conmon.pid and exits once it has forked.
                    done = await child.wait(self.timeout)
                except ProgramTimedOut:
                    raise OciRuntimeError(
                        f"{what}: conmon did not detach within {self.timeout:g}s"
                    ) from None
            if done.returncode != 0:
                raise OciRuntimeError(
                    f"{what}: conmon failed (exit status {done.returncode}): "
                    f"{_text(done.stdout) or 'no output'}"
                )
            line = await self._read_sync_line(sync_r, what)
        finally:
            if start_w >= 0:
                os.close(start_w)
            with contextlib.suppress(OSError):
                os.close(sync_r)
        if not line:
            raise OciRuntimeError(
                f"{what}: conmon exited without reporting the container's pid "
                f"(the {self.handler.name} create failed silently?)"
            )
        try:
            message = conmon.parse_sync_message(line)
        except ValueError as exc:
            raise OciRuntimeError(f"{what}: unexpected message from conmon: {exc}") from exc
        if message.value <= 0:
            said = message.message.strip() or "no message"
            raise OciRuntimeError(f"{what}: {self.handler.name} create failed: {said}")
        return message.value

    async def _read_sync_line(self, fd: int, what: str) -> bytes:
        """One line from conmon's sync pipe (b"" on EOF), within ``timeout``."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(loop=loop)
        pipe = os.fdopen(os.dup(fd), "rb", buffering=0)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader, loop=loop), pipe
        )
        try:
            return await asyncio.wait_for(reader.readline(), self.timeout)
        except TimeoutError:
            raise OciRuntimeError(f"{what}: no word from conmon within {self.timeout:g}s") from None
        finally:
            transport.close()

    # ---- lifecycle ----------------------------------------------------------------

    async def start(self, container_id: str) -> None:
        what = f"starting container {container_id}"
        self._dir(container_id)
        rc, out, err = await self._run(["start", container_id], what=what)
        steps.lap("runtime start")
        if rc != 0:
            if not self._runtime_knows(container_id):
                raise ContainerNotFound(f"{what}: no such container in {self.handler.name}")
            raise OciRuntimeError(self._failure(what, "start", rc, err, out))
        failpoints.step("runtime-start")

    async def kill(self, container_id: str, signal: int) -> None:
        """Send ``signal`` to the container's init; an already stopped one is fine."""
        what = f"signalling container {container_id}"
        state = self._dir(container_id)
        if not self._runtime_knows(container_id):
            raise ContainerNotFound(f"{what}: no such container in {self.handler.name}")
        started = time.monotonic()
        rc, out, err = await self._run(
            ["kill", container_id, str(int(signal))], what=what, judged_by_caller=True
        )
        ended = time.monotonic()
        steps.lap("runtime kill")
        try:
            stopped = rc == 0 or await self._already_stopped(container_id, state, what)
        except ContainerNotFound:
            self._observe("kill", started, ok=False, ended=ended)
            raise
        if stopped:
            # A container that has already stopped (or never ran) needs no signal:
            # runc's complaint about it is not a failed call.
            self._observe("kill", started, ok=True, ended=ended)
            failpoints.step("runtime-kill")
            return
        self._observe("kill", started, ok=False, ended=ended)
        raise OciRuntimeError(self._failure(what, "kill", rc, err, out))

    async def _already_stopped(self, container_id: str, state: Path, what: str) -> bool:
        if conmon.read_exit_file(state) is not None:
            return True
        if not self._runtime_knows(container_id):
            raise ContainerNotFound(f"{what}: no such container in {self.handler.name}")
        current = await self.state(container_id)
        return current is None or current.get("status") == "stopped"

    async def stop(
        self,
        container_id: str,
        stop_signal: int,
        timeout: float,  # noqa: ASYNC109
    ) -> ExitStatus:
        """``stop_signal``, up to ``timeout`` s for the exit, then SIGKILL. Returns once
        conmon wrote the exit file."""
        what = f"stopping container {container_id}"
        state = self._dir(container_id)
        done = self.exit_status(container_id)
        if done is not None:
            return done
        if not state.is_dir():
            raise ContainerNotFound(f"{what}: no such container ({state} is missing)")
        if timeout > 0:
            await self.kill(container_id, stop_signal)
            done = await self.wait_exit(container_id, timeout)
            steps.lap("exit awaited")
            if done is not None:
                return done
            log.info(
                "container %s did not exit within %gs of signal %d; killing it",
                container_id,
                timeout,
                stop_signal,
            )
        await self.kill(container_id, signals.SIGKILL)
        done = await self.wait_exit(container_id, self.timeout)
        if done is None:
            raise OciRuntimeError(
                f"{what}: still no exit {self.timeout:g}s after SIGKILL "
                f"(runtime state: {await self.state(container_id)})"
            )
        return done

    async def delete(self, container_id: str) -> None:
        """``<runtime> delete --force``, then conmon gone and the state dir removed.
        Deleting an unknown container is a no-op."""
        await self._remove(container_id)

    async def _remove(
        self, container_id: str, failed_create: tuple[Path, str | None] | None = None
    ) -> None:
        """Delete the runtime's container, see conmon gone, remove the state dir.
        ``failed_create`` (bundle, log file made by the create) cleans up after a create
        that did not finish: conmon is killed outright, wherever it got to."""
        what = f"deleting container {container_id}"
        state = self._dir(container_id)
        if failed_create is not None:
            pids = await asyncio.to_thread(conmon.find_conmons, state)
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signals.SIGKILL)
        else:
            recorded = conmon.read_pid_file(state / conmon.CONMON_PID_FILE)
            pids = [recorded] if recorded is not None else []
        if self._runtime_knows(container_id):
            rc, out, err = await self._run(["delete", "--force", container_id], what=what)
            steps.lap("runtime delete")
            if rc != 0 and self._runtime_knows(container_id):
                raise OciRuntimeError(self._failure(what, "delete --force", rc, err, out))
        for pid in pids:
            await self._reap_conmon(state, pid)
        steps.lap("conmon gone")
        bundle, log_path = failed_create if failed_create is not None else (None, None)
        await self._delete_conmon_cgroup_and_state(state, bundle, log_path, what)
        steps.lap("conmon cgroup + state dir removed")
        if failed_create is None:
            failpoints.step("runtime-delete")

    def _make_conmon_cgroup(self, state: Path, path: str, what: str) -> None:
        write_atomic(state / _CONMON_CGROUP, path.encode(), durable=False)
        try:
            self.cgroups.create(path)
        except CgroupError as exc:
            raise OciRuntimeError(f"{what}: conmon cgroup: {exc}") from exc

    async def _delete_conmon_cgroup_and_state(
        self, state: Path, bundle: Path | None, log_path: str | None, what: str
    ) -> None:
        """conmon's cgroup, then the state dir (which names the cgroup), in one trip to
        a worker thread unless the cgroup has to be waited for."""
        # conmon is gone by now, but a killed one may still be leaving its cgroup.
        deadline = time.monotonic() + _CGROUP_DRAIN_SECONDS
        while True:
            try:
                await asyncio.to_thread(self._delete_cgroup_and_state, state, bundle, log_path)
                return
            except CgroupError as exc:
                if time.monotonic() >= deadline:
                    raise OciRuntimeError(f"{what}: conmon cgroup: {exc}") from exc
                await asyncio.sleep(0.05)

    def _delete_cgroup_and_state(
        self, state: Path, bundle: Path | None, log_path: str | None
    ) -> None:
        try:
            path = (state / _CONMON_CGROUP).read_text()
        except FileNotFoundError:
            path = None
        if path is not None:
            self.cgroups.delete(path)
        _remove_state(state, bundle, log_path)

    def _join_cgroup(self, path: str, pid: int, what: str) -> None:
        try:
            self.cgroups.attach(path, pid)
        except CgroupError as exc:
            raise OciRuntimeError(f"{what}: conmon cgroup: {exc}") from exc

    async def _reap_conmon(self, state: Path, pid: int) -> None:
        """Wait for conmon to write the exit file and go; SIGKILL it after a while."""
        deadline = time.monotonic() + self.timeout
        pidfd = _conmon_pidfd(pid, state)
        try:
            await self._wait_conmon_gone(state, pid, pidfd, deadline)
        finally:
            if pidfd >= 0:
                os.close(pidfd)

    async def _wait_conmon_gone(self, state: Path, pid: int, pidfd: int, deadline: float) -> None:
        killed = False
        while conmon.is_conmon_of(pid, state):
            if time.monotonic() >= deadline:
                if killed:
                    raise OciRuntimeError(
                        f"deleting container {state.name}: its conmon {pid} survives SIGKILL"
                    )
                log.warning("conmon %d of %s lingers; killing it", pid, state)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signals.SIGKILL)
                killed = True
                deadline = time.monotonic() + self.timeout
            await _readable(pidfd, _POLL if pidfd < 0 else _EXIT_RECHECK)

    async def state(self, container_id: str) -> dict[str, Any] | None:
        """``<runtime> state``: the OCI state document, None for an unknown container."""
        what = f"reading the state of container {container_id}"
        self._dir(container_id)
        if not self._runtime_knows(container_id):
            return None
        rc, out, err = await self._run(["state", container_id], what=what)
        if rc != 0:
            if not self._runtime_knows(container_id):
                return None
            raise OciRuntimeError(self._failure(what, "state", rc, err))
        try:
            doc = json.loads(out)
        except ValueError as exc:
            raise OciRuntimeError(f"{what}: `{self.handler.name} state` said {out!r}") from exc
        if not isinstance(doc, dict):
            raise OciRuntimeError(f"{what}: `{self.handler.name} state` said {out!r}")
        return doc

    # ---- exits --------------------------------------------------------------------

    def exit_status(self, container_id: str) -> ExitStatus | None:
        """From conmon's exit file, None while the container runs (or is unknown).

        ``oom_killed``: conmon's ``oom`` file, or else the container's memory cgroup
        counting an OOM kill (``oom_kill`` in v1 ``memory.oom_control`` / v2
        ``memory.events``) while the cgroup is still there (until delete): conmon
        handles the OOM event in the same loop that ends on the exit, so an OOM kill
        of the init itself can leave no ``oom`` file.
        """
        state = self._dir(container_id)
        found = conmon.read_exit_file(state)
        if found is None:
            return None
        code, finished = found
        oom = (state / conmon.OOM_FILE).exists()
        if not oom:
            memory = self._meta(container_id).get("memory_cgroup")
            oom = isinstance(memory, str) and _oom_kills(memory) > 0
        return ExitStatus(exit_code=code, finished_ns=finished, oom_killed=oom)

    async def wait_exit(
        self,
        container_id: str,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> ExitStatus | None:
        """Wait for the exit file; None after ``timeout`` s or for an unknown container.
        Raises when conmon is gone without writing one.

        conmon writes the exit file and then exits: the wait is on a pidfd of conmon
        (readable once it exited), not a poll, so the exit is seen when it happens."""
        state = self._dir(container_id)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        pidfd = -1
        try:
            while True:
                done = self.exit_status(container_id)
                if done is not None:
                    return done
                if not state.is_dir():
                    return None
                pid = self.conmon_pid(container_id)
                if pid is None:
                    done = self.exit_status(container_id)
                    if done is not None:
                        return done
                    raise OciRuntimeError(
                        f"waiting for container {container_id}: its conmon is gone and wrote "
                        "no exit file; the exit code is lost"
                    )
                if pidfd < 0:
                    pidfd = _conmon_pidfd(pid, state)
                now = loop.time()
                if deadline is not None and now >= deadline:
                    return None
                pause = _EXIT_RECHECK if pidfd >= 0 else _POLL
                await _readable(pidfd, pause if deadline is None else min(pause, deadline - now))
        finally:
            if pidfd >= 0:
                os.close(pidfd)

    def conmon_pid(self, container_id: str) -> int | None:
        """The running conmon of this container, None once it is gone."""
        state = self._dir(container_id)
        pid = conmon.read_pid_file(state / conmon.CONMON_PID_FILE)
        if pid is None or not conmon.is_conmon_of(pid, state):
            return None
        return pid

    # ---- exec, update, logs -------------------------------------------------------

    async def exec_sync(
        self,
        container_id: str,
        command: list[str],
        timeout: float | None,  # noqa: ASYNC109
        max_output: int = 16 * 1024 * 1024,
    ) -> ExecResult:
        """:meth:`_exec_sync`, observed as the verb ``exec``."""
        return await self.observed(
            "exec", self._exec_sync(container_id, command, timeout, max_output)
        )

    async def _exec_sync(
        self,
        container_id: str,
        command: list[str],
        timeout: float | None,  # noqa: ASYNC109
        max_output: int = 16 * 1024 * 1024,
    ) -> ExecResult:
        """``<runtime> exec`` with stdout and stderr captured (each capped at
        ``max_output`` bytes). On timeout (None or <= 0: none) the exec'd process is
        SIGKILLed by its pid (from ``--pid-file``) together with its process group,
        and ``timed_out`` is set (``exit_code`` is then the runtime's, usually 137).

        A runtime failure before the command ran (container not running, no such
        executable) raises OciRuntimeError; a command's own exit status is returned.
        """
        what = f"exec in container {container_id}"
        pid_file = self._exec_pid_file(container_id, command, what)
        limit = timeout if timeout is not None and timeout > 0 else None
        try:
            done, timed_out = await self._run_exec(
                container_id, command, pid_file, limit, max_output, what
            )
        finally:
            ran = pid_file.exists()
            with contextlib.suppress(OSError):
                pid_file.unlink()
        # A runtime we killed ourselves (timeout) reads as 128+signal, like a shell.
        code = done.returncode if done.returncode >= 0 else 128 - done.returncode
        if not timed_out and code != 0 and not ran:
            raise OciRuntimeError(self._failure(what, "exec", code, done.stderr, done.stdout))
        return ExecResult(
            exit_code=code, stdout=done.stdout, stderr=done.stderr, timed_out=timed_out
        )

    def _exec_pid_file(self, container_id: str, command: list[str], what: str) -> Path:
        """Checks that an exec can be tried; where the runtime is to write its pid."""
        state = self._dir(container_id)
        if not command:
            raise OciRuntimeError(f"{what}: empty command")
        if not self._runtime_knows(container_id):
            raise ContainerNotFound(f"{what}: no such container in {self.handler.name}")
        if not state.is_dir():
            raise ContainerNotFound(f"{what}: no such container ({state} is missing)")
        return state / f"exec-{uuid.uuid4().hex[:12]}.pid"

    async def _run_exec(
        self,
        container_id: str,
        command: list[str],
        pid_file: Path,
        limit: float | None,
        max_output: int,
        what: str,
    ) -> tuple[processes.Finished, bool]:
        """Runs ``<runtime> exec``; how it ended, and whether it overran ``limit``."""
        argv = [
            self.handler.runtime_path,
            "--root",
            self.handler.runtime_root,
            "exec",
            "--pid-file",
            str(pid_file),
            container_id,
            *command,
        ]
        try:
            child = await processes.start(
                argv,
                new_session=True,
                max_output=max_output,
                stop=lambda runtime: self._stop_exec(runtime, pid_file),
            )
        except OSError as exc:
            raise OciRuntimeError(
                f"{what}: cannot run {self.handler.runtime_path}: {exc.strerror}"
            ) from exc
        async with child:
            try:
                # Whatever holds the pipes after the runtime exited (a daemon the command
                # left behind) does not hold up the answer for long.
                return await child.wait(limit, output_grace=_OUTPUT_GRACE), False
            except ProgramTimedOut as late:
                return late.finished, True

    async def _stop_exec(self, runtime: processes.Child, pid_file: Path) -> None:
        """SIGKILL an exec'd process with its process group, and give its runtime a
        moment to exit (base.processes then kills a runtime that lingers).

        The runtime forwards no SIGKILL (and killing it leaves the process running in
        the container), so the process goes by the pid the runtime wrote. Both runc and
        crun give it a session of its own (runc: the process leads it; crun: an
        intermediate process did), so its group holds what it started too."""
        deadline = time.monotonic() + min(self.timeout, 5.0)
        pid = conmon.read_pid_file(pid_file)
        while pid is None and runtime.returncode is None and time.monotonic() < deadline:
            # The runtime writes the pid file as soon as the process exists.
            await asyncio.sleep(_POLL)
            pid = conmon.read_pid_file(pid_file)
        if pid is not None:
            init = conmon.read_pid_file(pid_file.parent / conmon.CONTAINER_PID_FILE)
            group = _process_group(pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signals.SIGKILL)
            if group is not None and group > 1 and group not in (os.getpgrp(), init):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(group, signals.SIGKILL)
        # The runtime is the killed process's parent: let it reap it and exit, so no
        # zombie is handed to the node's init.
        await runtime.exited_within(2.0)

    async def update(self, container_id: str, resources: dict[str, Any]) -> None:
        """``<runtime> update --resources=<file>`` with the OCI ``linux.resources`` JSON
        (a file, not stdin: crun reads no ``-``)."""
        what = f"updating the resources of container {container_id}"
        state = self._dir(container_id)
        if not self._runtime_knows(container_id):
            raise ContainerNotFound(f"{what}: no such container in {self.handler.name}")
        directory = state if state.is_dir() else Path(self.handler.runtime_root)
        file = directory / f"resources-{uuid.uuid4().hex[:12]}.json"
        try:
            await asyncio.to_thread(write_atomic, file, json.dumps(resources).encode())
            rc, out, err = await self._run(
                ["update", f"--resources={file}", container_id], what=what
            )
        finally:
            with contextlib.suppress(OSError):
                file.unlink()
        if rc != 0:
            if not self._runtime_knows(container_id):
                raise ContainerNotFound(f"{what}: no such container in {self.handler.name}")
            limit = resources.get("memory", {}).get("limit")
            usage = await asyncio.to_thread(self._memory_usage, container_id)
            if isinstance(limit, int) and limit > 0 and usage is not None and usage >= limit:
                raise ResourcesRefused(
                    f"{what}: it uses {usage} bytes of memory, more than the memory limit "
                    f"of {limit} bytes asked for; ask for more, or free memory first"
                )
            raise OciRuntimeError(self._failure(what, "update", rc, err, out))

    def _memory_usage(self, container_id: str) -> int | None:
        directory = self._meta(container_id).get("memory_cgroup")
        if not directory:
            return None
        for name in ("memory.usage_in_bytes", "memory.current"):  # v1, v2
            try:
                return int(Path(str(directory), name).read_text())
            except (OSError, ValueError):
                continue
        return None

    async def reopen_log(self, container_id: str) -> None:
        """Ask conmon to reopen its log file, and wait until it did (a new file at the
        log path). conmon *replaces* the file at the log path: rename it away first."""
        what = f"reopening the log of container {container_id}"
        state = self._dir(container_id)
        if not state.is_dir():
            raise ContainerNotFound(f"{what}: no such container ({state} is missing)")
        log_path = self._meta(container_id).get("log_path")
        before = _identity(log_path) if isinstance(log_path, str) else None
        if self.conmon_pid(container_id) is None:
            # Its control fifo may outlive it by a moment: ask conmon itself.
            raise OciRuntimeError(f"{what}: the container is not running (its conmon is gone)")
        try:
            conmon.write_ctl(state, conmon.ctl_message(conmon.REOPEN_LOGS_EVENT))
        except ProcessLookupError as exc:
            raise OciRuntimeError(f"{what}: the container is not running ({exc})") from exc
        except OSError as exc:
            raise OciRuntimeError(f"{what}: writing conmon's control fifo: {exc}") from exc
        if not isinstance(log_path, str):
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while True:
            now = _identity(log_path)
            if now is not None and now != before:
                return
            if self.conmon_pid(container_id) is None:
                raise OciRuntimeError(
                    f"{what}: the container is not running (conmon exited before it "
                    f"reopened {log_path})"
                )
            if loop.time() >= deadline:
                raise OciRuntimeError(
                    f"{what}: conmon did not reopen {log_path} within {self.timeout:g}s"
                )
            await asyncio.sleep(_POLL)


# ---- helpers (blocking ones run in threads) --------------------------------------------


def _conmon_pidfd(pid: int, state: Path) -> int:
    """A pidfd of the container's conmon ``pid``; -1 when none can be had (then callers
    poll). Checked again once open: the pid read from a file may have been reused."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return -1
    if not conmon.is_conmon_of(pid, state):
        os.close(pidfd)
        return -1
    return pidfd


async def _readable(fd: int, timeout: float) -> None:  # noqa: ASYNC109
    """Until ``fd`` is readable (a pidfd: its process exited) or ``timeout`` s passed;
    no fd (-1): just the timeout."""
    if fd < 0:
        await asyncio.sleep(timeout)
        return
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await asyncio.wait({ready}, timeout=timeout)
    finally:
        loop.remove_reader(fd)


def _process_group(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    return int(fields[2]) if len(fields) > 2 else None


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _memory_cgroup_dir(pid: int) -> str | None:
    """The memory cgroup directory of ``pid`` (v1 memory hierarchy, or v2), or None."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    unified = None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if "memory" in controllers.split(","):
            return str(Path("/sys/fs/cgroup/memory") / path.lstrip("/"))
        if parts[0] == "0" and controllers == "":
            unified = path
    if unified is not None and os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        return str(Path("/sys/fs/cgroup") / unified.lstrip("/"))
    return None


def _oom_kills(memory_cgroup: str) -> int:
    """The cgroup's OOM kill count (0 when unknown or the cgroup is gone)."""
    for name in ("memory.oom_control", "memory.events"):
        try:
            text = Path(memory_cgroup, name).read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                with contextlib.suppress(ValueError):
                    return int(value)
    return 0


def _remove_state(state: Path, bundle: Path | None, log_path: str | None) -> None:
    """Remove conmon's files in the bundle (found through the io link unless given),
    the state dir and, for a failed create, the log file it made."""
    if bundle is None:
        with contextlib.suppress(OSError):
            bundle = state / os.readlink(state / conmon.IO_LINK)
    if bundle is not None:
        for name in conmon.BUNDLE_FILES:
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                (bundle / name).unlink()
    if log_path is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(log_path)
    try:
        shutil.rmtree(state)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise
