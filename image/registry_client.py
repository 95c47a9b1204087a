"""A client for the registry HTTP API v2 (the OCI distribution spec), blocking, meant
to run on worker threads.

- TLS is verified against the system trust store plus `certs.d/<host[:port]>/*.crt`;
  `*.cert`/`*.key` pairs there are client certificates. A registry marked insecure is
  tried over HTTPS without verification, then over plain HTTP.
- Auth follows the registry's 401 challenge: Bearer (a token from the realm, anonymous
  or with credentials, reused until it expires) or Basic.
- Redirects are followed by hand so that a redirect to another host (blob storage,
  CDNs) never carries our Authorization header.
- Connection errors and 5xx answers are retried with backoff; a read that waits longer
  than the progress timeout fails (a stalled pull ends with a message).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import queue
import re
import socket
import ssl
import threading
import time
import urllib.parse
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import ReadTimeoutError
from urllib3.response import HTTPResponse

from base.errors import Cancelled, InvalidArgument, NotFound, Unauthenticated, Unavailable, Unknown
from image.auth import Credentials, header_safe
from image.registries import Endpoint

log = logging.getLogger("skiff.image.registry")

_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')
REDIRECTS = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 5
#: What a registry answers to /v2/ (the spec's 200, or 401 to ask for credentials); a
#: TLS server sent plain HTTP answers 400 at best.
_REGISTRY_ANSWERS = (200, 401)


class RegistryError(Unknown):
    pass


class RegistryNotFound(NotFound, RegistryError):
    pass


class RegistryBlobMissing(RegistryNotFound):
    """The registry has the manifest but not a blob it names: a broken image there."""


class ManifestTooLarge(InvalidArgument, RegistryError):
    """A manifest past the size skiff reads: no image skiff can pull."""


class RegistryAuthError(Unauthenticated, RegistryError):
    pass


class RegistryUnavailable(Unavailable, RegistryError):
    pass


class PullCancelled(Cancelled):
    pass


class PullWatch(threading.Event):
    """One pull's cancel flag and its progress clock.

    Set when the pull's callers are gone. Setting it shuts down the responses open under
    it: a thread blocked on a silent registry returns at once, not at its socket
    timeout, and holds no connection after the call ended.

    The clock is the time since the pull last received a byte: a retry loop gives up
    once that reaches the progress timeout, so retries cannot multiply the time a
    stalled pull takes (three attempts of a stalled layer took three timeouts)."""

    def __init__(self, progress_timeout: float) -> None:
        super().__init__()
        self.progress_timeout = progress_timeout
        self.last_progress = time.monotonic()
        self._open: weakref.WeakSet[urllib3.BaseHTTPResponse] = weakref.WeakSet()
        self._open_lock = threading.Lock()
        self.awaited = _AwaitedConnections()

    def progressed(self) -> None:
        self.last_progress = time.monotonic()

    def out_of_patience(self) -> bool:
        """True once the pull went the progress timeout without a byte."""
        return time.monotonic() - self.last_progress >= self.progress_timeout

    def watch(self, response: urllib3.BaseHTTPResponse) -> None:
        with self._open_lock:
            self._open.add(response)
        if self.is_set():
            _shut(response)

    def set(self) -> None:
        super().set()
        with self._open_lock:
            responses = list(self._open)
        for response in responses:
            _shut(response)
        self.awaited.shut_all()


#: The pull a thread is sending a request for, so the connection waiting for the
#: answer's headers can be shut down when the pull is cancelled (before there is a
#: response to shut down, a registry that accepts and never answers held the thread
#: and the connection for the whole progress timeout).
_requesting = threading.local()


class _AwaitedConnections:
    """Connections of one pull waiting for a response's headers."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.waiting: set[HTTPConnection] = set()

    def shut_all(self) -> None:
        with self.lock:
            waiting = list(self.waiting)
        for connection in waiting:
            _shut_socket(getattr(connection, "sock", None))


class _WatchedHTTPConnection(HTTPConnection):
    def getresponse(self) -> HTTPResponse:  # type: ignore[override]
        awaited: _AwaitedConnections | None = getattr(_requesting, "awaited", None)
        if awaited is None:
            return super().getresponse()
        with awaited.lock:
            awaited.waiting.add(self)
        try:
            return super().getresponse()
        finally:
            with awaited.lock:
                awaited.waiting.discard(self)


class _WatchedHTTPSConnection(_WatchedHTTPConnection, HTTPSConnection):
    pass


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


def _shut_socket(sock: object) -> None:
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _shut(response: urllib3.BaseHTTPResponse) -> None:
    # Both ways: a blocked read returns, and the connection, which the reader then
    # releases to the pool, is over (the pool drops it) instead of held open there. A
    # response already released has no connection (it may serve another pull now).
    _shut_socket(getattr(response.connection, "sock", None))


def _discard(response: urllib3.BaseHTTPResponse) -> None:
    """Let go of a response whose body is not wanted, without reading it: an error body
    can be endless (reading it to reuse the connection kept a pull alive forever)."""
    response.close()
    response.release_conn()


@dataclass
class _Token:
    value: str
    expires: float


class _Ping:
    """One GET /v2/ to a registry, over TLS or plain HTTP, that another thread can call
    off at any point (in the TLS handshake too)."""

    def __init__(self, host: str, scheme: str, timeout: float, tls: ssl.SSLContext | None) -> None:
        self.host = host
        self.scheme = scheme
        self.timeout = timeout
        self.tls = tls
        self.status: int | None = None
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._called_off = False

    def run(self, answers: queue.SimpleQueue[_Ping]) -> None:
        try:
            self.status = self._ask()
        except (OSError, ValueError):
            self.status = None
        answers.put(self)

    def call_off(self) -> None:
        with self._lock:
            self._called_off = True
            sock = self._sock
        _shut_socket(sock)

    def _ask(self) -> int | None:
        address = urllib.parse.urlsplit(f"//{self.host}")
        hostname = address.hostname or ""
        port = address.port or (443 if self.tls else 80)
        # The TLS socket takes over the connection's descriptor before its handshake;
        # a duplicate of it stays in hand to shut the connection down meanwhile.
        with (
            socket.create_connection((hostname, port), timeout=self.timeout) as connection,
            connection.dup() as handle,
        ):
            with self._lock:
                if self._called_off:
                    return None
                self._sock = handle
            stream = connection
            if self.tls:
                stream = self.tls.wrap_socket(connection, server_hostname=hostname)
            request = f"GET /v2/ HTTP/1.1\r\nHost: {self.host}\r\nConnection: close\r\n\r\n"
            with stream, stream.makefile("rb") as answer:
                stream.sendall(request.encode())
                status_line = answer.readline(256).split()
            if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/"):
                return None
            return int(status_line[1])


class RegistryClient:
    """Shared by all pulls: connection pools, TLS settings and tokens per registry."""

    def __init__(
        self,
        certs_dir: Path,
        connect_timeout: float = 10.0,
        progress_timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.25,
    ) -> None:
        self.certs_dir = certs_dir
        self.timeout = urllib3.Timeout(connect=connect_timeout, read=progress_timeout)
        self.connect_timeout = connect_timeout
        self.progress_timeout = progress_timeout
        self.retries = retries
        self.backoff = backoff
        self._lock = threading.Lock()
        self._pools: dict[tuple[str, bool], urllib3.PoolManager] = {}
        self._schemes: dict[str, str] = {}
        self._tokens: dict[tuple[str, str, str, str], _Token] = {}

    # --- TLS and connections ----------------------------------------------------------

    def _tls_context(self, host: str, verify: bool) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if not verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        host_dir = self.certs_dir / host
        if host_dir.is_dir():
            for path in sorted(host_dir.iterdir()):
                if path.suffix == ".crt" and verify:
                    context.load_verify_locations(cafile=str(path))
                elif path.suffix == ".cert":
                    key = path.with_suffix(".key")
                    if key.exists():
                        context.load_cert_chain(str(path), str(key))
        return context

    def _pool(self, host: str, verify: bool) -> urllib3.PoolManager:
        with self._lock:
            pool = self._pools.get((host, verify))
            if pool is None:
                pool = urllib3.PoolManager(
                    num_pools=4,
                    maxsize=8,
                    ssl_context=self._tls_context(host, verify),
                    retries=False,
                    timeout=self.timeout,
                )
                pool.pool_classes_by_scheme = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}
                self._pools[(host, verify)] = pool
            return pool

    def _scheme(self, endpoint: Endpoint) -> str:
        if not endpoint.insecure:
            return "https"
        with self._lock:
            known = self._schemes.get(endpoint.api_host)
        if known:
            return known
        scheme = self._probe_scheme(endpoint.api_host)
        with self._lock:
            self._schemes[endpoint.api_host] = scheme
        return scheme

    def _probe_scheme(self, host: str) -> str:
        """HTTPS when the registry speaks TLS, else plain HTTP. Both are asked at once:
        a plain-HTTP server handed a TLS hello may wait for a line that never comes,
        for the whole connect timeout, while its plain answer to /v2/ settles it."""
        tls = _Ping(host, "https", self.connect_timeout, self._tls_context(host, verify=False))
        plain = _Ping(host, "http", self.connect_timeout, None)
        answers: queue.SimpleQueue[_Ping] = queue.SimpleQueue()
        for ping in (tls, plain):
            threading.Thread(
                target=ping.run, args=(answers,), name=f"skiff-ping-{ping.scheme}", daemon=True
            ).start()
        while True:
            ping = answers.get()
            if ping is tls:
                plain.call_off()
                return "https" if tls.status is not None and tls.status < 500 else "http"
            if plain.status in _REGISTRY_ANSWERS:
                tls.call_off()
                return "http"

    def clear_tokens(self) -> None:
        with self._lock:
            self._tokens.clear()

    def repository(self, endpoint: Endpoint, credentials: Credentials) -> Repository:
        return Repository(self, endpoint, credentials, self._scheme(endpoint))

    # --- tokens ----------------------------------------------------------------------

    def _cached_token(self, key: tuple[str, str, str, str]) -> str | None:
        with self._lock:
            token = self._tokens.get(key)
            if token is not None and token.expires > time.monotonic():
                return token.value
            self._tokens.pop(key, None)
        return None

    @staticmethod
    def token_key(
        challenge: dict[str, str], scope: str, credentials: Credentials
    ) -> tuple[str, str, str, str]:
        return (
            challenge.get("realm", ""),
            challenge.get("service", ""),
            scope,
            credentials.identity(),
        )

    def forget_token(self, key: tuple[str, str, str, str]) -> None:
        """A token the registry refused (revoked, or expired before it said): the next
        request asks the token server again."""
        with self._lock:
            self._tokens.pop(key, None)

    def token(self, challenge: dict[str, str], scope: str, credentials: Credentials) -> str:
        realm = challenge.get("realm", "")
        service = challenge.get("service", "")
        if credentials.registry_token:
            return credentials.registry_token
        key = self.token_key(challenge, scope, credentials)
        cached = self._cached_token(key)
        if cached is not None:
            return cached
        if not realm.startswith(("https://", "http://")):
            raise RegistryError(f"registry asked for a token from an unusable realm {realm!r}")
        server = urllib.parse.urlsplit(realm).netloc
        status, answer = self._ask_token_server(realm, server, service, scope, credentials)
        value, expires_in = _token_from_answer(server, scope, status, answer)
        # Renew a little early so a token never expires in the middle of a request.
        lifetime = max(expires_in - 10, expires_in / 2)
        with self._lock:
            self._tokens[key] = _Token(value, time.monotonic() + lifetime)
        return value

    def _ask_token_server(
        self, realm: str, server: str, service: str, scope: str, credentials: Credentials
    ) -> tuple[int, bytes]:
        """The token server's HTTP status, and its answer when that is 200."""
        pool = self._pool(server, verify=True)
        try:
            response = _request_token(pool, realm, service, scope, credentials)
        except Urllib3Error as exc:
            raise RegistryUnavailable(
                f"token server {server} cannot be reached: {type(exc).__name__}"
            ) from None
        try:
            status = response.status
            # Read only as much as a token can take (a response of 512 MiB was read whole).
            answer = (
                b""
                if status != 200
                else _read_limited(response, MAX_TOKEN_RESPONSE, f"the token from {server}")
            )
        finally:
            response.release_conn()
        return status, answer


def _request_token(
    pool: urllib3.PoolManager, realm: str, service: str, scope: str, credentials: Credentials
) -> urllib3.BaseHTTPResponse:
    """An identity token is traded for a registry token (OAuth2 refresh grant); otherwise
    the token is asked for with the username and password, if any."""
    headers = {"User-Agent": "skiff"}
    if credentials.identity_token:
        body = urllib.parse.urlencode(
            {
                "grant_type": "refresh_token",
                "refresh_token": credentials.identity_token,
                "service": service,
                "scope": scope,
                "client_id": "skiff",
            }
        )
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        return pool.request(
            "POST", realm, body=body, headers=headers, redirect=True, preload_content=False
        )
    if credentials.username or credentials.password:
        headers["Authorization"] = _basic(credentials)
    query = {"service": service, "scope": scope} if service else {"scope": scope}
    url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
    return pool.request("GET", url, headers=headers, redirect=True, preload_content=False)


def _token_from_answer(server: str, scope: str, status: int, answer: bytes) -> tuple[str, float]:
    """The token and its lifetime in seconds, from the token server's answer."""
    if status in (401, 403):
        raise RegistryAuthError(
            f"token server {server} refused the credentials for {scope} (HTTP {status})"
        )
    if status >= 500:
        raise RegistryUnavailable(f"token server {server} answered HTTP {status}")
    if status != 200:
        raise RegistryError(f"token server {server} answered HTTP {status}")
    try:
        data = json.loads(answer)
        value = str(data.get("token") or data.get("access_token") or "")
        expires_in = float(data.get("expires_in") or 60)
    except (ValueError, TypeError, AttributeError):
        raise RegistryAuthError(f"token server {server} sent no usable token") from None
    if not value:
        raise RegistryAuthError(f"token server {server} sent no usable token")
    if not header_safe(value):
        raise RegistryAuthError(f"token server {server} sent a token an HTTP header cannot carry")
    return value, expires_in


def _basic(credentials: Credentials) -> str:
    pair = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(pair).decode()


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(_CHALLENGE_PARAM.findall(rest))


class Repository:
    """One repository on one endpoint, with the credentials of one pull."""

    def __init__(
        self, client: RegistryClient, endpoint: Endpoint, credentials: Credentials, scheme: str
    ) -> None:
        self.client = client
        self.endpoint = endpoint
        self.credentials = credentials
        self.base = f"{scheme}://{endpoint.api_host}"
        self.verify = not endpoint.insecure
        self._authorization: str | None = None
        self._token_key: tuple[str, str, str, str] | None = None
        self.where = f"{endpoint.host}/{endpoint.repository}"

    def _url(self, kind: str, ref: str) -> str:
        return f"{self.base}/v2/{self.endpoint.repository}/{kind}/{ref}"

    def _authorize(self, challenge_header: str) -> None:
        scheme, params = parse_challenge(challenge_header)
        if scheme == "bearer":
            scope = f"repository:{self.endpoint.repository}:pull"
            token = self.client.token(params, scope, self.credentials)
            self._authorization = f"Bearer {token}"
            self._token_key = self.client.token_key(params, scope, self.credentials)
        elif scheme == "basic":
            if not (self.credentials.username or self.credentials.password):
                raise RegistryAuthError(f"{self.where} requires credentials and none were given")
            self._authorization = _basic(self.credentials)
        else:
            raise RegistryAuthError(f"{self.where} asks for unsupported auth scheme {scheme!r}")

    def request(
        self,
        url: str,
        headers: dict[str, str],
        cancel: PullWatch | None = None,
        stream: bool = False,
    ) -> urllib3.BaseHTTPResponse:
        """GET with auth, redirects and retries; the caller releases the response."""
        attempt = 0
        while True:
            if cancel is not None and cancel.is_set():
                raise PullCancelled(f"pull from {self.where} was cancelled")
            _requesting.awaited = cancel.awaited if cancel is not None else None
            try:
                try:
                    response = self._get_following(url, headers, stream)
                finally:
                    _requesting.awaited = None
                if cancel is not None and cancel.is_set():
                    _discard(response)
                    raise PullCancelled(f"pull from {self.where} was cancelled")
            except (Urllib3Error, OSError) as exc:
                silent = cancel is not None and cancel.out_of_patience()
                if isinstance(exc, ReadTimeoutError) and silent:
                    raise RegistryUnavailable(
                        f"registry {self.endpoint.host} stopped sending: nothing came "
                        f"for {self.client.progress_timeout:g} s"
                    ) from None
                # A TLS setup the registry refuses will not change on a retry.
                if attempt >= self.client.retries or _tls_hint(str(exc)):
                    raise RegistryUnavailable(
                        f"registry {self.endpoint.host} cannot be reached: "
                        f"{_describe_network_error(exc)}"
                    ) from None
            else:
                if cancel is not None:
                    cancel.progressed()
                    cancel.watch(response)
                if response.status < 500 or attempt >= self.client.retries:
                    return response
                _discard(response)
            if cancel is not None and cancel.is_set():
                raise PullCancelled(f"pull from {self.where} was cancelled")
            delay = self.client.backoff * (2**attempt)
            attempt += 1
            log.info(
                "registry request failed, retrying",
                extra={"registry": self.endpoint.host, "attempt": attempt, "delay_s": delay},
            )
            time.sleep(delay)

    def _get_following(
        self, url: str, headers: dict[str, str], stream: bool
    ) -> urllib3.BaseHTTPResponse:
        origin = urllib.parse.urlsplit(url).netloc
        renewed = False
        for _ in range(MAX_REDIRECTS + 1):
            netloc = urllib.parse.urlsplit(url).netloc
            send = dict(headers, **{"User-Agent": "skiff"})
            same_origin = netloc == origin
            if same_origin and self._authorization:
                send["Authorization"] = self._authorization
            pool = self.client._pool(netloc, self.verify if same_origin else True)
            response = pool.request(
                "GET",
                url,
                headers=send,
                redirect=False,
                preload_content=False,
                decode_content=False,
            )
            stale = self._token_key is not None and not renewed and "Authorization" in send
            if response.status == 401 and same_origin and ("Authorization" not in send or stale):
                challenge = response.headers.get("WWW-Authenticate", "")
                _discard(response)
                if not challenge:
                    raise RegistryAuthError(f"{self.where} refused access (HTTP 401)")
                if stale and self._token_key is not None:
                    # A token refused once it was sent: forget it, get a new one, once.
                    self.client.forget_token(self._token_key)
                    renewed = True
                self._authorize(challenge)
                continue
            if response.status in REDIRECTS:
                location = response.headers.get("Location", "")
                _discard(response)
                if not location:
                    raise RegistryError(f"{self.where} sent a redirect without a location")
                url = urllib.parse.urljoin(url, location)
                continue
            return response
        raise RegistryUnavailable(f"{self.where}: too many redirects")

    def manifest(
        self, reference: str, accept: tuple[str, ...], limit: int, cancel: PullWatch | None = None
    ) -> tuple[bytes, str]:
        """The manifest bytes and their media type (from Content-Type)."""
        response = self.request(
            self._url("manifests", reference), {"Accept": ", ".join(accept)}, cancel=cancel
        )
        try:
            self._check_status(response, f"manifest {reference}")
            data = _read_limited(
                response,
                limit,
                f"manifest {reference} from {self.where}",
                ManifestTooLarge,
                cancel,
            )
            media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
            return data, media_type
        finally:
            response.release_conn()

    def blob(self, digest: str, cancel: PullWatch | None = None) -> urllib3.BaseHTTPResponse:
        response = self.request(self._url("blobs", digest), {}, cancel=cancel, stream=True)
        try:
            self._check_status(response, f"blob {digest}")
        except RegistryNotFound as exc:
            response.release_conn()
            raise RegistryBlobMissing(
                f"the image in {self.where} is incomplete: its manifest names {exc}"
            ) from None
        except BaseException:
            response.release_conn()
            raise
        return response

    def _check_status(self, response: urllib3.BaseHTTPResponse, what: str) -> None:
        status = response.status
        if status == 200:
            return
        detail = _error_detail(response)
        _discard(response)
        if status == 404:
            raise RegistryNotFound(f"{what} not found in {self.where}{detail}")
        if status in (401, 403):
            raise RegistryAuthError(
                f"{self.where} refused access to {what} (HTTP {status}); "
                f"check the credentials{detail}"
            )
        if status == 429:
            raise RegistryUnavailable(f"{self.where} is rate limiting pulls (HTTP 429)")
        if status >= 500:
            # Still failing after the retries: the registry is not serving.
            raise RegistryUnavailable(f"{self.where} answered HTTP {status} for {what}{detail}")
        raise RegistryError(f"{self.where} answered HTTP {status} for {what}{detail}")


#: An error body is read for its error codes up to this size and for this long at most
#: (one that trickles forever would hold the pull).
ERROR_BODY_BYTES = 64 * 1024
ERROR_BODY_SECONDS = 2.0


def _error_detail(response: urllib3.BaseHTTPResponse) -> str:
    try:
        data = b""
        until = time.monotonic() + ERROR_BODY_SECONDS
        while len(data) < ERROR_BODY_BYTES and time.monotonic() < until:
            chunk = response.read1(ERROR_BODY_BYTES - len(data), decode_content=True)
            if not chunk:
                break
            data += chunk
        body: Any = json.loads(data)
        errors = body.get("errors") or []
        codes = ", ".join(str(e.get("code", "")) for e in errors if isinstance(e, dict))
        return f" ({codes})" if codes else ""
    except Exception:
        return ""


#: The most a token server's answer may hold (a JWT is a few KiB).
MAX_TOKEN_RESPONSE = 1 << 20


def _read_limited(
    response: urllib3.BaseHTTPResponse,
    limit: int,
    what: str,
    too_large: type[RegistryError] = RegistryError,
    cancel: PullWatch | None = None,
) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        try:
            chunk = response.read(64 * 1024)
        except ReadTimeoutError:
            raise RegistryUnavailable(f"{what}: the registry stopped sending") from None
        except (Urllib3Error, OSError) as exc:
            raise RegistryUnavailable(f"{what}: {_describe_network_error(exc)}") from None
        if cancel is not None and cancel.is_set():
            raise PullCancelled(f"{what}: pull cancelled")
        if not chunk:
            break
        if cancel is not None:
            cancel.progressed()
        total += len(chunk)
        if total > limit:
            raise too_large(f"{what} is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _describe_network_error(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    text = str(reason or exc)
    # urllib3 messages can embed the connection object's repr; keep the useful tail.
    text = text.split(": ", 1)[-1] if "object at 0x" in text else text
    return text + _tls_hint(text)


def _tls_hint(text: str) -> str:
    """What an operator can do about the two TLS failures that are configuration."""
    if "WRONG_VERSION_NUMBER" in text:
        return (
            " (the registry answers in plain HTTP, not TLS: mark it insecure = true "
            "in registries.conf to pull from it without TLS)"
        )
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return (
            " (its certificate is not trusted: put the CA that signed it in "
            "certs.d/<host:port>/ca.crt, or mark the registry insecure in registries.conf)"
        )
    return ""
