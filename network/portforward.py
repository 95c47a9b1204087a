"""Port forwarding: a TCP connection to a port inside a pod's network namespace, the
network side of the CRI ``PortForward`` streaming call.

A socket belongs to the network namespace it was *created* in, whatever thread later
binds or connects it. So a worker thread enters the pod's namespace with ``setns(2)``
(``CLONE_NEWNET`` affects only the calling thread, which is what makes this safe in a
threaded process), creates the socket, and goes straight back to the namespace it came
from; the connect then runs on the event loop like any other. No thread ever blocks,
or runs anything but ``socket(2)``, inside a pod.

The workers form a small dedicated pool, never shared with other work. Each task checks
that its thread starts in the host's network namespace (the one the pool was made in)
and returns it there before it ends. If switching back fails, the thread must not be
used again: the pool is retired (shut down without waiting; a retired pool's idle
threads exit, and a fresh pool serves the next calls) and the call raises
PortForwardError. Work already queued on the retired pool still runs (every task sets
its own namespace and checks where it starts), then its threads exit.

Kubelet semantics: "localhost" (the default) means 127.0.0.1, then ::1 if that fails,
as containerd and cri-o do; any other host must be an IP address literal (names are not
resolved: the pod's resolver is not ours to use).
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import ipaddress
import os
import socket
import threading
from concurrent.futures import Future, ThreadPoolExecutor

CLONE_NEWNET = 0x40000000
_WORKERS = 4
_SELF_NETNS = "/proc/thread-self/ns/net"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.setns.restype = ctypes.c_int


class PortForwardError(Exception):
    grpc_status = "UNAVAILABLE"


class _Pool:
    """The worker pool and the identity (st_dev, st_ino) of the namespace its threads
    must live in."""

    def __init__(self) -> None:
        st = os.stat(_SELF_NETNS)
        self.home = (st.st_dev, st.st_ino)
        self.executor = ThreadPoolExecutor(_WORKERS, thread_name_prefix="skiff-portforward")


_pool: _Pool | None = None
_pool_lock = threading.Lock()


def _current_pool() -> _Pool:
    global _pool  # noqa: PLW0603
    with _pool_lock:
        if _pool is None:
            _pool = _Pool()
        return _pool


def _retire(pool: _Pool) -> None:
    global _pool  # noqa: PLW0603
    with _pool_lock:
        if _pool is pool:
            _pool = None
    pool.executor.shutdown(wait=False)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def _identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


class _PoisonedThread(Exception):
    """This worker thread is (or may be) outside the host's network namespace."""


def _socket_in_netns(pool: _Pool, netns_path: str, family: int) -> socket.socket:
    """On a pool thread: a non-blocking TCP socket created inside ``netns_path``."""
    target = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        own = os.open(_SELF_NETNS, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if _identity(own) != pool.home:
                raise _PoisonedThread("the worker thread is not in the host network namespace")
            _setns(target)  # on failure nothing changed
            sock: socket.socket | None = None
            failed: OSError | None = None
            try:
                sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            except OSError as exc:
                failed = exc
            try:
                _setns(own)
                if _identity_of_thread() != pool.home:
                    raise OSError(errno.EINVAL, "the thread is still in another namespace")
            except OSError as exc:
                if sock is not None:
                    sock.close()
                raise _PoisonedThread(
                    f"cannot return the worker thread to the host network namespace: {exc}"
                ) from exc
        finally:
            os.close(own)
    finally:
        os.close(target)
    if failed is not None:
        raise failed
    assert sock is not None
    sock.setblocking(False)
    return sock


def _identity_of_thread() -> tuple[int, int]:
    st = os.stat(_SELF_NETNS)
    return st.st_dev, st.st_ino


async def _new_socket(netns_path: str, family: int) -> socket.socket:
    for attempt in (1, 2):
        pool = _current_pool()
        try:
            job = pool.executor.submit(_socket_in_netns, pool, netns_path, family)
        except RuntimeError as exc:
            # "cannot schedule new futures after shutdown": a concurrent call retired
            # this pool just now; the next one is fresh.
            if attempt == 2:
                raise PortForwardError(f"entering network namespace {netns_path}: {exc}") from exc
            continue
        try:
            return await asyncio.wrap_future(job)
        except _PoisonedThread as exc:
            _retire(pool)
            raise PortForwardError(
                f"entering network namespace {netns_path}: {exc}; the worker pool was "
                "replaced, try again"
            ) from exc
        except asyncio.CancelledError:
            job.add_done_callback(_close_result)  # the socket nobody will take
            raise
    raise AssertionError("unreachable")


def _close_result(job: Future[socket.socket]) -> None:
    if not job.cancelled() and job.exception() is None:
        job.result().close()


def _addresses(host: str) -> list[str]:
    if host == "localhost":
        return ["127.0.0.1", "::1"]
    try:
        return [str(ipaddress.ip_address(host.strip("[]")))]
    except ValueError:
        raise PortForwardError(
            f"port forward to {host!r}: give 'localhost' or an IP address"
        ) from None


async def open_in_netns(
    netns_path: str,
    port: int,
    host: str = "localhost",
    timeout: float = 10,  # noqa: ASYNC109
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to ``host:port`` inside the network namespace at ``netns_path`` (a pinned
    namespace file or ``/proc/<pid>/ns/net``) within ``timeout`` s, and return the
    connection as asyncio streams. Raises PortForwardError (connection refused, no such
    namespace, timeout)."""
    if not 0 < port < 65536:
        raise PortForwardError(f"port forward: invalid port {port}")
    if not netns_path:
        raise PortForwardError("port forward: the pod has no network namespace")
    addresses = _addresses(host)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    failures: list[str] = []
    for address in addresses:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        try:
            sock = await _new_socket(netns_path, family)
        except FileNotFoundError:
            raise PortForwardError(
                f"port forward to port {port}: the pod's network namespace {netns_path} is gone"
            ) from None
        except OSError as exc:
            if exc.errno == errno.EAFNOSUPPORT:  # no IPv6 in this kernel
                failures.append(f"{address}: {exc.strerror}")
                continue
            raise PortForwardError(
                f"port forward to port {port}: entering network namespace {netns_path}: "
                f"{exc.strerror or exc}"
            ) from exc
        try:
            async with asyncio.timeout_at(deadline):
                await loop.sock_connect(sock, (address, port))
            return await asyncio.open_connection(sock=sock)
        except TimeoutError:
            sock.close()
            failures.append(f"{address}: no connection within {timeout:g}s")
            break
        except OSError as exc:
            sock.close()
            # asyncio's message is "Connect call failed (...)": name the errno instead.
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            failures.append(f"{_bracket(address)}:{port}: {reason}")
        except BaseException:
            sock.close()
            raise
    raise PortForwardError(
        f"port forward to port {port} in network namespace {netns_path}: " + "; ".join(failures)
    )


def _bracket(address: str) -> str:
    return f"[{address}]" if ":" in address else address
