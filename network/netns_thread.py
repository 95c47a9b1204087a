"""Run a short piece of work inside a pod's network namespace, on a worker thread.

``setns(2)`` with ``CLONE_NEWNET`` moves only the calling thread, which is what makes
this safe in a threaded process: a worker thread enters the namespace, runs the work
(create a socket, read ``/proc/thread-self/net/dev``), and goes straight back to the
namespace it came from. No thread ever blocks inside a pod.

The workers form a small dedicated pool, never shared with other work. Each task checks
that its thread starts in the host's network namespace (the one the pool was made in)
and returns it there before it ends. If switching back fails, the thread must not be
used again: the pool is retired (shut down without waiting; a retired pool's idle
threads exit, and a fresh pool serves the next calls) and the call raises
NetnsThreadError. Work already queued on the retired pool still runs (every task sets
its own namespace and checks where it starts), then its threads exit.

Port forwarding (sockets) and pod network stats (interface counters) both use it.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from base.errors import Unavailable

CLONE_NEWNET = 0x40000000
_WORKERS = 4
_SELF_NETNS = "/proc/thread-self/ns/net"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.setns.restype = ctypes.c_int

T = TypeVar("T")


class NetnsThreadError(Unavailable):
    """The worker thread could not be returned to the host namespace."""


class _Pool:
    """The worker pool and the identity (st_dev, st_ino) of the namespace its threads
    must live in."""

    def __init__(self) -> None:
        st = os.stat(_SELF_NETNS)
        self.home = (st.st_dev, st.st_ino)
        self.executor = ThreadPoolExecutor(_WORKERS, thread_name_prefix="skiff-netns")


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


def _identity_of_thread() -> tuple[int, int]:
    st = os.stat(_SELF_NETNS)
    return st.st_dev, st.st_ino


class _PoisonedThread(Exception):
    """This worker thread is (or may be) outside the host's network namespace."""


def _go_home(pool: _Pool, own: int) -> None:
    """Back to the host namespace, or _PoisonedThread when the thread cannot be."""
    try:
        _setns(own)
        if _identity_of_thread() != pool.home:
            raise OSError(errno.EINVAL, "the thread is still in another namespace")
    except OSError as exc:
        raise _PoisonedThread(
            f"cannot return the worker thread to the host network namespace: {exc}"
        ) from exc


def _open_home(pool: _Pool) -> int:
    own = os.open(_SELF_NETNS, os.O_RDONLY | os.O_CLOEXEC)
    if _identity(own) != pool.home:
        os.close(own)
        raise _PoisonedThread("the worker thread is not in the host network namespace")
    return own


def _call_in_netns(
    pool: _Pool, netns_path: str, work: Callable[[], T], discard: Callable[[T], None] | None
) -> T:
    """On a pool thread: ``work()`` run inside ``netns_path``, then back home.

    Whatever ``work`` raises is raised once the thread is back; opening the namespace
    file raises as it is (FileNotFoundError when the namespace is gone)."""
    target = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        own = _open_home(pool)
        try:
            _setns(target)  # on failure nothing changed
            try:
                result = work()
            except BaseException:
                _go_home(pool, own)
                raise
            try:
                _go_home(pool, own)
            except _PoisonedThread:
                if discard is not None:
                    discard(result)
                raise
            return result
        finally:
            os.close(own)
    finally:
        os.close(target)


def _call_in_each(pool: _Pool, netns_paths: list[str], work: Callable[[], T]) -> list[T | OSError]:
    """On a pool thread: ``work()`` run inside each of ``netns_paths`` in turn, back
    home after each; a namespace that cannot be entered, or an OSError of ``work``,
    is that namespace's result. Anything else ``work`` raises stops the round, once
    the thread is back."""
    results: list[T | OSError] = []
    own = _open_home(pool)
    try:
        for path in netns_paths:
            try:
                target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                results.append(exc)
                continue
            try:
                _setns(target)  # on failure nothing changed
            except OSError as exc:
                results.append(exc)
                continue
            finally:
                os.close(target)
            try:
                results.append(work())
            except OSError as exc:
                results.append(exc)
            finally:
                _go_home(pool, own)
    finally:
        os.close(own)
    return results


async def run_in_each_netns(netns_paths: list[str], work: Callable[[], T]) -> list[T | OSError]:
    """``work()``'s result in each network namespace of ``netns_paths`` (in order), all
    on one worker thread: one hand-off for many pods. A namespace that is gone or
    cannot be entered gives its OSError instead of a result. ``work`` must be short,
    must not block and must hold nothing that needs releasing. Raises NetnsThreadError
    when the thread could not get back (the pool is replaced)."""
    if not netns_paths:
        return []
    return await _on_worker(
        "entering network namespaces",
        lambda pool: pool.executor.submit(_call_in_each, pool, list(netns_paths), work),
    )


async def run_in_netns(
    netns_path: str, work: Callable[[], T], discard: Callable[[T], None] | None = None
) -> T:
    """``work()``'s result, run on a worker thread inside the network namespace at
    ``netns_path`` (a pinned namespace file or ``/proc/<pid>/ns/net``).

    ``work`` must be short and must not block. ``discard`` releases a result nobody
    will take (the caller was cancelled, or the thread could not return). Raises
    NetnsThreadError when the thread could not get back (the pool is replaced; a retry
    may work), and OSError from opening the namespace or from ``work``.
    """
    return await _on_worker(
        f"entering network namespace {netns_path}",
        lambda pool: pool.executor.submit(_call_in_netns, pool, netns_path, work, discard),
        discard,
    )


async def _on_worker(
    what: str,
    submit: Callable[[_Pool], Future[T]],
    discard: Callable[[T], None] | None = None,
) -> T:
    """The result of the job ``submit`` hands to the current pool. A pool retired by a
    concurrent call just now ("cannot schedule new futures after shutdown") is replaced
    by the next, fresh one; a thread that could not get home retires its pool."""
    for attempt in (1, 2):
        pool = _current_pool()
        try:
            job = submit(pool)
        except RuntimeError as exc:
            if attempt == 2:
                raise NetnsThreadError(f"{what}: {exc}") from exc
            continue
        try:
            return await asyncio.wrap_future(job)
        except _PoisonedThread as exc:
            _retire(pool)
            raise NetnsThreadError(
                f"{what}: {exc}; the worker pool was replaced, try again"
            ) from exc
        except asyncio.CancelledError:
            if discard is not None:
                job.add_done_callback(lambda done: _discard_result(done, discard))
            raise
    raise AssertionError("unreachable")


def _discard_result(job: Future[T], discard: Callable[[T], None]) -> None:
    if not job.cancelled() and job.exception() is None:
        discard(job.result())
