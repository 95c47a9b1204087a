"""The skiffd process: take the locks, open the store, serve CRI on the unix socket,
reload on SIGHUP, shut down cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from pathlib import Path

import grpc.aio

from base import failpoints
from cri import VERSION
from cri import config as config_mod
from cri import log as log_mod
from cri.config import Config, ConfigError, ConfigSources
from cri.containers import ContainerManager
from cri.daemon_state import DaemonState
from cri.images import ImageManager
from cri.instance_lock import InstanceLock
from cri.interceptor import CallInterceptor
from cri.metrics import Metrics
from cri.metrics_server import MetricsServer
from cri.sandboxes import SandboxManager
from cri.server.services import register
from cri.stats import StatsManager
from cri.store import StateStore
from cri.streaming.server import StreamingServer, StreamingTLSError
from runtime.cgroup_driver import driver_problem
from runtime.exit_watch import ExitWatchError

log = logging.getLogger("skiff.daemon")

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
SOCKET_MODE = 0o660
STATE_DB = "state.db"
# Settings that only take effect when skiffd starts.
RESTART_ONLY = ("root", "runroot", "listen", "runtime.cgroup_driver", "metrics")


class StartupError(Exception):
    """skiffd cannot start; the message says why and what to do."""


def _notify_systemd(message: str) -> None:
    """sd_notify(3) without libsystemd: a datagram to $NOTIFY_SOCKET, if there is one."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with (
        contextlib.suppress(OSError),
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock,
    ):
        sock.sendto(message.encode(), address)


def _flat(config: Config) -> dict[str, object]:
    out: dict[str, object] = {}

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        else:
            out[prefix] = value

    walk("", config.to_dict())
    return out


def _grpc_server(metrics: Metrics) -> grpc.aio.Server:
    return grpc.aio.server(
        interceptors=[CallInterceptor(metrics)],
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ],
    )


class Daemon:
    def __init__(self, sources: ConfigSources, config: Config) -> None:
        self.sources = sources
        self.config = config
        self._locks: list[InstanceLock] = []
        self._socket_identity: tuple[int, int] | None = None
        self._stop = asyncio.Event()
        self._force_stop = asyncio.Event()

    # --- start --------------------------------------------------------------------

    def _prepare_dirs(self) -> None:
        cfg = self.config
        for directory in (Path(cfg.root), Path(cfg.runroot)):
            directory.mkdir(mode=0o711, parents=True, exist_ok=True)
        cfg.socket_path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)

    def _lock(self) -> None:
        cfg = self.config
        wanted = [
            InstanceLock(Path(cfg.root) / "skiffd.lock", f"root {cfg.root}"),
            InstanceLock(
                cfg.socket_path.with_name(cfg.socket_path.name + ".lock"),
                f"socket {cfg.socket_path}",
            ),
        ]
        for lock in wanted:
            lock.acquire()
            self._locks.append(lock)

    def _unlock(self) -> None:
        for lock in reversed(self._locks):
            lock.release()
        self._locks.clear()

    async def _bind(self, server: grpc.aio.Server) -> None:
        path = self.config.socket_path
        # We hold the socket's lock, so a socket file still there is a crashed
        # daemon's leftover: replace it.
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        old_umask = os.umask(0o117)
        try:
            server.add_insecure_port(f"unix:{path}")
        except RuntimeError as exc:
            raise StartupError(f"cannot listen on {path}: {exc}") from None
        finally:
            os.umask(old_umask)
        await server.start()
        os.chmod(path, SOCKET_MODE)
        st = os.stat(path)
        self._socket_identity = (st.st_dev, st.st_ino)

    def _remove_socket(self) -> None:
        path = self.config.socket_path
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return
        if (st.st_dev, st.st_ino) == self._socket_identity:
            path.unlink()

    # --- signals ------------------------------------------------------------------

    def _on_stop_signal(self, signame: str) -> None:
        if self._stop.is_set():
            log.warning(
                "second stop signal: not waiting for in-flight calls", extra={"signal": signame}
            )
            self._force_stop.set()
            return
        log.info("stop signal received", extra={"signal": signame})
        self._stop.set()

    def _reload(self, state: DaemonState) -> None:
        try:
            new = config_mod.load(self.sources)
        except ConfigError as exc:
            log.error("reload failed, keeping the running config", extra={"error": str(exc)})
            return
        old_flat, new_flat = _flat(self.config), _flat(new)
        changed = sorted(
            k for k in new_flat.keys() | old_flat.keys() if old_flat.get(k) != new_flat.get(k)
        )
        pending = [k for k in changed if k.startswith(RESTART_ONLY)]
        log_mod.configure(new.log_level, new.log_format)
        state.apply(new)
        self.config = new
        log.info("config reloaded", extra={"changed": changed})
        if pending:
            log.warning("some changes take effect only after a restart", extra={"keys": pending})

    # --- run ----------------------------------------------------------------------

    async def run(self) -> None:
        cfg = self.config
        problem = driver_problem(cfg.runtime.cgroup_driver)
        if problem:
            raise StartupError(problem)
        try:
            self._prepare_dirs()
        except OSError as exc:
            raise StartupError(f"cannot create {exc.filename}: {exc.strerror}") from None
        self._lock()
        try:
            await self._serve()
        finally:
            self._unlock()

    async def _serve(self) -> None:
        # Whatever has started is stopped again, newest first, however this ends.
        async with contextlib.AsyncExitStack() as started:
            await self._serve_with(started)
        log.info("skiffd stopped")

    async def _serve_with(self, started: contextlib.AsyncExitStack) -> None:
        cfg = self.config
        store = await self._open_store(started)
        metrics = Metrics()
        images = await self._open_images(metrics)
        state = DaemonState(cfg, store, images, metrics)
        sandboxes = SandboxManager(state)
        containers = ContainerManager(state, sandboxes)
        with failpoints.operation(failpoints.STARTUP):  # a death while recovering, too
            await sandboxes.load()
            await containers.load()
        try:
            containers.start_watching()
        except ExitWatchError as exc:
            raise StartupError(f"cannot watch for container exits: {exc}") from None
        started.callback(containers.stop_watching)
        metrics.watch(images.store, sandboxes, containers)
        metrics.watch_loop(asyncio.get_running_loop())
        stats = StatsManager(sandboxes, containers, Path(cfg.root), image_dir=images.store.layers)
        stats.watch_events(state.events)
        server = _grpc_server(metrics)
        streaming = await self._start_streaming(started)
        await self._start_metrics_server(metrics, started)
        stats.start()
        started.callback(stats.stop)
        register(server, state, sandboxes, containers, streaming, stats)
        self._handle_signals(state, started)
        started.callback(self._remove_socket)
        await self._bind(server)
        self._log_ready()
        _notify_systemd("READY=1")
        await self._stop.wait()
        _notify_systemd("STOPPING=1")
        await self._drain(server)

    async def _open_store(self, started: contextlib.AsyncExitStack) -> StateStore:
        store = StateStore(Path(self.config.root) / STATE_DB)
        try:
            await store.open()
        except Exception as exc:
            raise StartupError(str(exc)) from None
        started.push_async_callback(store.close)
        return store

    async def _open_images(self, metrics: Metrics) -> ImageManager:
        try:
            images = ImageManager(self.config, metrics)
            await images.open()
        except Exception as exc:
            raise StartupError(f"image store: {exc}") from None
        return images

    async def _start_streaming(self, started: contextlib.AsyncExitStack) -> StreamingServer:
        cfg = self.config
        streaming = StreamingServer(cfg.streaming)
        try:
            await streaming.start()
        except StreamingTLSError as exc:
            raise StartupError(str(exc)) from None
        except OSError as exc:
            raise StartupError(
                f"streaming server cannot listen on {cfg.streaming.address}:"
                f"{cfg.streaming.port}: {exc.strerror}"
            ) from None
        started.push_async_callback(streaming.stop)
        return streaming

    async def _start_metrics_server(
        self, metrics: Metrics, started: contextlib.AsyncExitStack
    ) -> None:
        cfg = self.config
        metrics_server = MetricsServer(cfg.metrics, metrics.registry)
        try:
            await metrics_server.start()
        except OSError as exc:
            raise StartupError(
                f"metrics server cannot listen on {cfg.metrics.address}:{cfg.metrics.port}: "
                f"{exc.strerror}; set metrics.port (or metrics.enabled: false)"
            ) from None
        started.push_async_callback(metrics_server.stop)

    def _handle_signals(self, state: DaemonState, started: contextlib.AsyncExitStack) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal, sig.name)
        loop.add_signal_handler(signal.SIGHUP, self._reload, state)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            started.callback(loop.remove_signal_handler, sig)

    def _log_ready(self) -> None:
        cfg = self.config
        log.info(
            "skiffd ready",
            extra={
                "version": VERSION,
                "socket": str(cfg.socket_path),
                "root": cfg.root,
                "runroot": cfg.runroot,
                "pid": os.getpid(),
            },
        )

    async def _drain(self, server: grpc.aio.Server) -> None:
        """Stop taking calls; give the ones in flight shutdown_grace seconds."""
        graceful = asyncio.ensure_future(server.stop(self.config.shutdown_grace))
        forced = asyncio.ensure_future(self._force_stop.wait())
        done, _ = await asyncio.wait({graceful, forced}, return_when=asyncio.FIRST_COMPLETED)
        if graceful not in done:
            await server.stop(0)
            await graceful
        forced.cancel()
