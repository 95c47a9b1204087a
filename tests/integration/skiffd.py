"""Running the real skiffd for a test: a temp root, runroot and socket, a gRPC client,
and a clean stop checked at the end."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import yaml

from api.runtime.v1 import api_pb2 as pb
from api.runtime.v1 import api_pb2_grpc
from cri.daemon import MAX_MESSAGE_BYTES

SKIFFD = str(Path(sys.executable).parent / "skiffd")
START_TIMEOUT = 20.0
STOP_TIMEOUT = 20.0


def short_tempdir(tag: str) -> Path:
    # Unix socket paths are limited to 107 bytes: keep test dirs short, under /tmp.
    return Path(tempfile.mkdtemp(prefix=f"skiff-{tag}-", dir="/tmp"))


def run_skiffd(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SKIFFD, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


class Skiffd:
    """One skiffd process and its files; `base` holds everything it writes."""

    def __init__(self, base: Path, config: dict[str, Any] | None = None) -> None:
        self.base = base
        self.root = base / "root"
        self.runroot = base / "run"
        self.socket = base / "skiff.sock"
        self.cni_dir = base / "cni"
        self.cni_dir.mkdir(exist_ok=True)
        self.config_path = base / "skiff.yaml"
        self.dropin_dir = base / "skiff.d"
        self.dropin_dir.mkdir(exist_ok=True)
        self.log_path = base / "skiffd.log"
        settings: dict[str, Any] = {
            "root": str(self.root),
            "runroot": str(self.runroot),
            "listen": str(self.socket),
            "log_level": "debug",
            "network": {"cni_config_dir": str(self.cni_dir)},
            "image": {
                "registries_conf": str(base / "registries.conf"),
                "certs_dir": str(base / "certs.d"),
                "auth_file": str(base / "auth.json"),
            },
        }
        for key, value in (config or {}).items():
            if isinstance(value, dict) and isinstance(settings.get(key), dict):
                settings[key] = {**settings[key], **value}
            else:
                settings[key] = value
        self.write_config(settings)
        self.proc: subprocess.Popen[bytes] | None = None
        self._channel: grpc.Channel | None = None

    def write_config(self, settings: dict[str, Any]) -> None:
        self.config_path.write_text(yaml.safe_dump(settings))

    def args(self) -> list[str]:
        return ["--config", str(self.config_path), "--config-dir", str(self.dropin_dir)]

    def start(
        self, wait: bool = True, failpoints: tuple[str, ...] = (), trace: Path | None = None
    ) -> None:
        """Start skiffd; `failpoints` arms those (base/failpoints.py): skiffd kills itself
        with SIGKILL when it reaches one. `trace` gets every failpoint passed."""
        log = self.log_path.open("ab")
        env = dict(os.environ)
        env.pop("SKIFF_FAILPOINTS", None)
        env.pop("SKIFF_FAILPOINTS_TRACE", None)
        if failpoints:
            env["SKIFF_FAILPOINTS"] = ",".join(failpoints)
        if trace is not None:
            env["SKIFF_FAILPOINTS_TRACE"] = str(trace)
        self.proc = subprocess.Popen(
            [SKIFFD, *self.args()], stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env
        )
        log.close()
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"skiffd exited with {self.proc.returncode} while starting:\n{self.logs()}"
                )
            if self.socket.exists():
                try:
                    self.runtime().Version(pb.VersionRequest(), timeout=2)
                    return
                except grpc.RpcError:
                    pass
            time.sleep(0.05)
        raise AssertionError(f"skiffd did not answer within {START_TIMEOUT}s:\n{self.logs()}")

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def channel(self) -> grpc.Channel:
        if self._channel is None:
            # What the kubelet reads (its CRI client's limit), not gRPC's default 4 MiB.
            self._channel = grpc.insecure_channel(
                f"unix://{self.socket}",
                options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)],
            )
        return self._channel

    def runtime(self) -> api_pb2_grpc.RuntimeServiceStub:
        return api_pb2_grpc.RuntimeServiceStub(self.channel())

    def images(self) -> api_pb2_grpc.ImageServiceStub:
        return api_pb2_grpc.ImageServiceStub(self.channel())

    def close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def send_signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal skiffd and wait for it; returns its exit status."""
        self.close_channel()
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"skiffd ignored {sig} for {STOP_TIMEOUT}s:\n{self.logs()}"
            ) from None

    def wait_killed(self, timeout: float = 20.0) -> None:
        """Wait for a skiffd that reached an armed failpoint to be gone (SIGKILL)."""
        assert self.proc is not None
        self.close_channel()
        status = self.proc.wait(timeout)
        assert status == -9, f"skiffd exited with {status}, not by SIGKILL:\n{self.logs()}"

    def kill(self) -> None:
        """End the process by pid whatever its state (test cleanup)."""
        self.close_channel()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@contextmanager
def skiffd_process(tag: str, config: dict[str, Any] | None = None) -> Iterator[Skiffd]:
    """A started skiffd; on exit it must stop cleanly (status 0, socket removed)."""
    base = short_tempdir(tag)
    daemon = Skiffd(base, config)
    try:
        daemon.start()
        yield daemon
        if daemon.proc is not None and daemon.proc.poll() is None:
            status = daemon.stop()
            assert status == 0, f"skiffd exited with {status}:\n{daemon.logs()}"
            assert not daemon.socket.exists(), "skiffd left its socket behind"
    finally:
        daemon.kill()
        shutil.rmtree(base, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def mounts_below(path: Path) -> list[str]:
    """Mount points at or under `path` (from /proc/self/mountinfo)."""
    prefix = str(path)
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(prefix)]


def unmount_below(path: Path) -> None:
    """Lazily unmount everything under `path`, deepest first (test cleanup)."""
    for mount in sorted(mounts_below(path), reverse=True):
        subprocess.run(["umount", "-l", mount], check=False)


def processes_mentioning(text: str) -> list[int]:
    """Pids (not this process) whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and int(entry.name) != os.getpid():
            found.append(int(entry.name))
    return found


def release_leftovers(daemon: Skiffd) -> None:
    """Test clean-up once skiffd is dead, for what a failed test left running: the
    runtime's containers (``delete --force`` kills their processes, which name nothing
    of the test), conmons and other processes naming the test's directory, pause
    processes of its pods, and its pods' cgroups of skiff's own making."""
    runtimes = daemon.runroot / "runtimes"
    for root in sorted(runtimes.iterdir()) if runtimes.is_dir() else []:
        program = shutil.which(root.name)
        for container in sorted(root.iterdir()) if program else []:
            if container.is_dir():
                subprocess.run(
                    [str(program), "--root", str(root), "delete", "--force", container.name],
                    capture_output=True,
                    check=False,
                )
    sandboxes = daemon.runroot / "sandboxes"
    pods = {d.name for d in sandboxes.iterdir()} if sandboxes.is_dir() else set()
    if (daemon.root / "state.db").exists():  # a removal that failed half-way keeps these
        with contextlib.closing(sqlite3.connect(daemon.root / "state.db")) as db:
            pods.update(
                row[0] for row in db.execute("SELECT id FROM records WHERE kind = 'sandbox'")
            )
    doomed = processes_mentioning(str(daemon.base))
    for pod in pods:
        doomed += processes_mentioning(f"skiff-pause {pod}")
    for pid in doomed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pod in pods:
        for hierarchy in Path("/sys/fs/cgroup").iterdir():
            tree = hierarchy / "skiff" / f"pod-{pod[:12]}"
            for directory in sorted(tree.rglob("*"), reverse=True) if tree.is_dir() else []:
                if directory.is_dir():
                    rmdir_when_empty(directory)
            if tree.is_dir():
                rmdir_when_empty(tree)
            if (hierarchy / "skiff").is_dir():
                rmdir_when_empty(hierarchy / "skiff")  # another test's pods may hold it


def rmdir_when_empty(directory: Path) -> None:
    # Killed processes leave their cgroups a moment later; child cgroups are someone
    # else's to remove.
    for _ in range(50):
        try:
            directory.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            if any(child.is_dir() for child in directory.iterdir()):
                return
            time.sleep(0.05)
