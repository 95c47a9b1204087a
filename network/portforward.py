"""Port forwarding: a TCP connection to a port inside a pod's network namespace, the
network side of the CRI ``PortForward`` streaming call.

A socket belongs to the network namespace it was *created* in, whatever thread later
binds or connects it. So the socket is created inside the pod's namespace on one of
the namespace worker threads (`network.netns_thread`), and the connect then runs on
the event loop like any other.

Kubelet semantics: "localhost" (the default) means 127.0.0.1, then ::1 if that fails,
as containerd and cri-o do; any other host must be an IP address literal (names are not
resolved: the pod's resolver is not ours to use).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import socket

from base.errors import Unavailable
from network.netns_thread import NetnsThreadError, run_in_netns


class PortForwardError(Unavailable):
    pass


async def _new_socket(netns_path: str, family: int) -> socket.socket:
    """A non-blocking TCP socket created inside ``netns_path``."""

    def create() -> socket.socket:
        return socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)

    try:
        sock = await run_in_netns(netns_path, create, discard=socket.socket.close)
    except NetnsThreadError as exc:
        raise PortForwardError(str(exc)) from exc
    sock.setblocking(False)
    return sock


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
