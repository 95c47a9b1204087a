"""Real OCI registries on loopback for the image integration tests.

- `TestRegistry` runs the distribution registry (`docker-registry serve`, Debian's
  distribution 2.8) on 127.0.0.1 in one of four modes: ``insecure`` (plain HTTP), ``tls``
  (HTTPS, server cert from a fresh test CA), ``basic`` (htpasswd, HTTP by default) and
  ``token`` (Bearer tokens from `TokenServer`, a small JWT issuer in a thread).
- `FaultyProxy` sits in front of a registry and misbehaves on purpose: tampered or
  truncated bodies, dropped connections, error statuses and cross-host redirects.
- `BlobHost` serves blobs straight from a registry's storage directory on another
  port: the target of `FaultyProxy` redirects, like a CDN or presigned S3 URL.

Everything listens on 127.0.0.1 only, lives in its own ``/tmp/skiff-reg-*`` directory and
is torn down by ``stop()`` (or the ``with`` block), whatever the test did.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import datetime as dt
import http.client
import io
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import socketserver
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import weakref
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REGISTRY_BINARY = "/usr/bin/docker-registry"
LOOPBACK = "127.0.0.1"

Mode = Literal["insecure", "tls", "basic", "token"]
MODES: tuple[Mode, ...] = ("insecure", "tls", "basic", "token")


class RegistryError(RuntimeError):
    """The test registry (or its token server) could not be started."""


# --------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind port 0, release)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def basic_auth_header(username: str, password: str) -> str:
    """The value of an ``Authorization: Basic ...`` header."""
    raw = f"{username}:{password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def parse_www_authenticate(value: str) -> tuple[str, dict[str, str]]:
    """Split ``Bearer realm="x",service="y",scope="z"`` into ("bearer", {...})."""
    scheme, _, rest = value.strip().partition(" ")
    params: dict[str, str] = {}
    for m in re.finditer(r'([A-Za-z_][A-Za-z0-9_-]*)=(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))', rest):
        raw = m.group(2) if m.group(2) is not None else m.group(3)
        params[m.group(1).lower()] = re.sub(r"\\(.)", r"\1", raw)
    return scheme.lower(), params


# --------------------------------------------------------------------------------------
# Test PKI
# --------------------------------------------------------------------------------------

_ONE_DAY = dt.timedelta(days=1)


@dataclass
class TestCA:
    """A throwaway certificate authority (ECDSA P-256) for one registry."""

    __test__ = False  # not a pytest test class

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, name: str = "skiff test CA") -> TestCA:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _ONE_DAY)
            .not_valid_after(now + 30 * _ONE_DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cls(key=key, cert=cert)

    def issue(
        self,
        common_name: str,
        *,
        dns_names: tuple[str, ...] = (),
        ip_addresses: tuple[str, ...] = (),
        server: bool = True,
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        """A leaf key and certificate signed by this CA."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _ONE_DAY)
            .not_valid_after(now + 7 * _ONE_DAY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return key, builder.sign(self.key, hashes.SHA256())

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


# --------------------------------------------------------------------------------------
# Token server
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenRequest:
    """One request the token server answered (or refused)."""

    method: str
    service: str
    scopes: tuple[str, ...]
    subject: str  # the authenticated user, "" for anonymous
    status: int
    granted: tuple[tuple[str, tuple[str, ...]], ...]  # (repository, actions)
    authorization: str | None


class _BackgroundServer:
    """A socketserver answering on a daemon thread, on a free loopback port."""

    _server: socketserver.TCPServer | None
    _thread: threading.Thread | None

    def start(self) -> None:
        raise NotImplementedError

    def _serve(self, server: socketserver.TCPServer, name: str) -> None:
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, f"{type(self).__name__} not started"
        port: int = self._server.server_address[1]
        return port


class TokenServer(_BackgroundServer):
    """A docker/distribution-style token issuer on 127.0.0.1 (own thread, plain HTTP).

    ``GET /token?service=S&scope=repository:NAME:pull,push`` (and the OAuth2
    ``POST /token`` password grant). Valid HTTP Basic credentials get every action they
    ask for; no credentials get ``pull`` on repositories under ``public_prefix`` and
    nothing else (an empty ``access`` list, which the registry then refuses); wrong
    credentials get 401. Tokens are ES256 JWTs with the signing certificate in ``x5c``;
    the registry trusts them through ``rootcertbundle`` = `ca_cert_path`.
    """

    def __init__(
        self,
        directory: Path,
        *,
        service: str = "skiff-test-registry",
        issuer: str = "skiff-test-token-issuer",
        username: str = "skiff",
        password: str = "skiff-pass",
        public_prefix: str | None = "public/",
        expires_in: int = 300,
    ) -> None:
        self.directory = directory
        self.service = service
        self.issuer = issuer
        self.username = username
        self.password = password
        self.public_prefix = public_prefix
        self.expires_in = expires_in
        self.fail_next = 0  # answer this many next requests with 503
        # Tokens the registry stops taking this many seconds after issue, whatever
        # expires_in says (a token revoked, or a clock that runs ahead); None: expires_in.
        self.token_lifetime: int | None = None
        # Pad the token answers with this many bytes (a server gone wrong).
        self.padding = 0
        # An OAuth2 refresh token (docker's "identity token") standing for the user.
        self.refresh_token = "refresh-" + secrets.token_hex(8)
        self.tokens_issued = 0
        self.requests: list[TokenRequest] = []
        self._lock = threading.Lock()
        self._ca = TestCA.create("skiff token CA")
        self._key, self._cert = self._ca.issue("skiff token signer", server=False)
        self.ca_cert_path = directory / "token-ca.pem"
        self.ca_cert_path.write_bytes(self._ca.cert_pem())
        self._x5c = [base64.b64encode(self._cert.public_bytes(serialization.Encoding.DER))]
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        server = ThreadingHTTPServer((LOOPBACK, 0), _make_token_handler(self))
        server.daemon_threads = True
        self._serve(server, "skiff-token-server")

    @property
    def realm(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/token"

    # -- policy and signing ------------------------------------------------------------

    def authorize(self, subject: str, scopes: list[str]) -> list[dict[str, object]]:
        access: list[dict[str, object]] = []
        for scope in scopes:
            # repository:NAME:ACTIONS where NAME may hold ':' only in "host:port/x" form
            kind, _, rest = scope.partition(":")
            name, _, actions_s = rest.rpartition(":")
            if kind not in ("repository", "repository(plugin)") or not name:
                continue
            asked = [a for a in actions_s.split(",") if a]
            if subject:
                actions = asked
            elif self.public_prefix is not None and name.startswith(self.public_prefix):
                actions = [a for a in asked if a == "pull"]
            else:
                actions = []
            if actions:
                access.append({"type": "repository", "name": name, "actions": actions})
        return access

    def issue(self, subject: str, access: list[dict[str, object]]) -> str:
        now = int(time.time())
        header = {"typ": "JWT", "alg": "ES256", "x5c": [c.decode() for c in self._x5c]}
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": now
            + (self.token_lifetime if self.token_lifetime is not None else self.expires_in),
            "nbf": now - 5,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        signing_input = (
            _b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        der = self._key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)  # JWS wants r || s, 32 bytes each
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return signing_input + "." + _b64url(sig)

    def _record(self, req: TokenRequest) -> None:
        with self._lock:
            self.requests.append(req)
            if req.status == 200:
                self.tokens_issued += 1

    def _take_failure(self) -> bool:
        with self._lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                return True
            return False

    def reset_counters(self) -> None:
        with self._lock:
            self.tokens_issued = 0
            self.requests.clear()


def _make_token_handler(ts: TokenServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _reply(self, status: int, body: dict[str, object], extra: dict[str, str]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in extra.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def _handle(self, params: dict[str, list[str]], user: str | None, pw: str | None) -> None:
            auth_header = self.headers.get("Authorization")
            service = (params.get("service") or [""])[0]
            scopes: list[str] = []
            for s in params.get("scope", []):
                scopes.extend(s.split(" "))  # OAuth2 form joins scopes with spaces
            scopes = [s for s in scopes if s]

            def record(status: int, subject: str, access: list[dict[str, object]]) -> None:
                granted = tuple(
                    (str(a["name"]), tuple(str(x) for x in a["actions"]))  # type: ignore[attr-defined]
                    for a in access
                )
                ts._record(
                    TokenRequest(
                        self.command, service, tuple(scopes), subject, status, granted, auth_header
                    )
                )

            if ts._take_failure():
                record(503, "", [])
                self._reply(503, {"errors": [{"code": "UNAVAILABLE"}]}, {})
                return
            if urllib.parse.urlsplit(self.path).path != "/token":
                record(404, "", [])
                self._reply(404, {"details": "not found"}, {})
                return
            subject = ""
            if user is not None:
                if user != ts.username or pw != ts.password:
                    record(401, "", [])
                    self._reply(
                        401,
                        {"details": "incorrect username or password"},
                        {"WWW-Authenticate": 'Basic realm="skiff-token"'},
                    )
                    return
                subject = user
            if service and service != ts.service:
                record(400, subject, [])
                self._reply(400, {"details": f"unknown service {service!r}"}, {})
                return
            access = ts.authorize(subject, scopes)
            token = ts.issue(subject, access)
            record(200, subject, access)
            issued_at = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            self._reply(
                200,
                {
                    "token": token,
                    "access_token": token,
                    "expires_in": ts.expires_in,
                    "issued_at": issued_at,
                    **({"padding": "x" * ts.padding} if ts.padding else {}),
                },
                {},
            )

        def do_GET(self) -> None:
            params = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            user: str | None = None
            pw: str | None = None
            auth = self.headers.get("Authorization", "")
            if auth.lower().startswith("basic "):
                try:
                    raw = base64.b64decode(auth[6:].strip()).decode()
                except (ValueError, UnicodeDecodeError):
                    raw = ":"
                user, _, pw = raw.partition(":")
            self._handle(params, user, pw)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            form = urllib.parse.parse_qs(self.rfile.read(length).decode())
            grant = (form.get("grant_type") or [""])[0]
            if grant == "refresh_token":
                token = (form.get("refresh_token") or [""])[0]
                if token != ts.refresh_token:
                    self._reply(401, {"error": "invalid_grant"}, {})
                    return
                self._handle(form, ts.username, ts.password)
                return
            if grant != "password":
                self._reply(400, {"error": "unsupported_grant_type"}, {})
                return
            user = (form.get("username") or [""])[0]
            pw = (form.get("password") or [""])[0]
            self._handle(form, user, pw)

    return Handler


# --------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------


_LIVE: weakref.WeakSet[TestRegistry] = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:
    """Safety net: a registry a test forgot to stop dies with the test process."""
    for reg in list(_LIVE):
        reg.stop()


class TestRegistry:
    """The real distribution registry on 127.0.0.1:<free port>.

    ``mode``: ``insecure`` | ``tls`` | ``basic`` | ``token``. ``tls`` forces HTTPS on (and
    is the default for mode ``tls`` only); ``basic``/``token`` are plain HTTP unless
    ``tls=True``. Use as a context manager, or call ``start()`` and ``stop()``.
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        mode: Mode = "insecure",
        *,
        tls: bool | None = None,
        username: str = "skiff",
        password: str = "skiff-pass",
        public_prefix: str | None = "public/",
        token_expires_in: int = 300,
        startup_timeout: float = 15.0,
        client_certs: bool = False,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown registry mode {mode!r}; use one of {MODES}")
        self.mode: Mode = mode
        self.tls = (mode == "tls") if tls is None else tls
        # Demand a client certificate signed by the test CA (TLS only).
        self.client_certs = client_certs and self.tls
        if mode == "tls" and not self.tls:
            raise ValueError("mode 'tls' needs tls=True")
        self.username: str | None = username if mode in ("basic", "token") else None
        self.password: str | None = password if mode in ("basic", "token") else None
        self._public_prefix = public_prefix
        self._token_expires_in = token_expires_in
        self._startup_timeout = startup_timeout
        self.dir: Path | None = None
        self.port = 0
        self.ca: TestCA | None = None
        self.ca_cert_path: Path | None = None
        self.token_server: TokenServer | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Path | None = None

    # -- public properties ---------------------------------------------------------------

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    @property
    def storage_dir(self) -> Path:
        assert self.dir is not None, "registry not started"
        return self.dir / "storage"

    @property
    def log_path(self) -> Path:
        assert self.dir is not None, "registry not started"
        return self.dir / "registry.log"

    @property
    def tokens_issued(self) -> int:
        """Tokens the token server handed out (0 unless mode == "token")."""
        return self.token_server.tokens_issued if self.token_server else 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client SSL context trusting this registry's CA (None for plain HTTP)."""
        if not self.tls:
            return None
        assert self.ca_cert_path is not None
        context = ssl.create_default_context(cafile=str(self.ca_cert_path))
        if self.client_certs:
            assert self.dir is not None
            # The tests' own client (readiness probe, pushes) presents a certificate too.
            own = self.write_client_cert(self.dir / "own-client")
            context.load_cert_chain(own / "client.cert", own / "client.key")
        return context

    def write_client_cert(self, certs_dir: Path) -> Path:
        """A client key pair signed by the test CA, as certs.d's client.cert/client.key."""
        assert self.ca is not None, "registry has no TLS"
        key, cert = self.ca.issue("skiff test client", server=False)
        host_dir = certs_dir / self.host
        host_dir.mkdir(parents=True, exist_ok=True)
        (host_dir / "client.cert").write_bytes(_cert_pem(cert))
        (host_dir / "client.key").write_bytes(_key_pem(key))
        os.chmod(host_dir / "client.key", 0o600)
        return host_dir

    def write_certs_d(self, certs_dir: Path) -> Path:
        """Write ``<certs_dir>/<host:port>/ca.crt`` (containers certs.d layout)."""
        if self.ca_cert_path is None:
            raise ValueError(f"registry {self.host} has no TLS")
        d = certs_dir / self.host
        d.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.ca_cert_path, d / "ca.crt")
        return d / "ca.crt"

    def blob_path(self, digest: str) -> Path:
        """Where the filesystem storage driver keeps a blob's bytes."""
        algo, _, hexpart = digest.partition(":")
        return self.storage_dir / "docker/registry/v2/blobs" / algo / hexpart[:2] / hexpart / "data"

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        if self.dir is not None:
            raise RuntimeError("registry already started")
        self.dir = Path(tempfile.mkdtemp(prefix="skiff-reg-"))
        _LIVE.add(self)
        try:
            self._prepare()
            last: RegistryError | None = None
            for _ in range(5):
                self.port = free_port()
                try:
                    self._launch()
                    return
                except _PortInUse as e:
                    last = RegistryError(str(e))
                    continue
            raise last or RegistryError("could not start registry")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            _terminate(proc)
        if self.token_server is not None:
            self.token_server.stop()
            self.token_server = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        _LIVE.discard(self)

    # -- internals -----------------------------------------------------------------------

    def _prepare(self) -> None:
        assert self.dir is not None
        (self.dir / "storage").mkdir()
        if self.tls:
            self.ca = TestCA.create()
            key, cert = self.ca.issue(
                "skiff test registry", dns_names=("localhost",), ip_addresses=(LOOPBACK,)
            )
            self.ca_cert_path = self.dir / "ca.pem"
            self.ca_cert_path.write_bytes(self.ca.cert_pem())
            (self.dir / "server.pem").write_bytes(_cert_pem(cert))
            (self.dir / "server-key.pem").write_bytes(_key_pem(key))
            os.chmod(self.dir / "server-key.pem", 0o600)
        if self.mode == "basic":
            assert self.username is not None and self.password is not None
            out = subprocess.run(
                ["htpasswd", "-Bbn", self.username, self.password],
                check=True,
                capture_output=True,
                timeout=30,
            ).stdout
            (self.dir / "htpasswd").write_bytes(out)
        if self.mode == "token":
            assert self.username is not None and self.password is not None
            self.token_server = TokenServer(
                self.dir,
                username=self.username,
                password=self.password,
                public_prefix=self._public_prefix,
                expires_in=self._token_expires_in,
            )
            self.token_server.start()

    def _config(self) -> str:
        assert self.dir is not None
        lines = [
            "version: 0.1",
            "log:",
            "  level: info",
            "  formatter: text",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {self.dir / 'storage'}",
            "  delete:",
            "    enabled: true",
            "  maintenance:",
            "    uploadpurging:",
            "      enabled: false",
            "http:",
            f"  addr: {self.host}",
            f"  secret: {secrets.token_hex(16)}",
            "  headers:",
            "    X-Content-Type-Options: [nosniff]",
        ]
        if self.tls:
            lines += [
                "  tls:",
                f"    certificate: {self.dir / 'server.pem'}",
                f"    key: {self.dir / 'server-key.pem'}",
            ]
            if self.client_certs:
                lines += ["    clientcas:", f"      - {self.ca_cert_path}"]
        if self.mode == "basic":
            lines += [
                "auth:",
                "  htpasswd:",
                "    realm: skiff-basic-realm",
                f"    path: {self.dir / 'htpasswd'}",
            ]
        elif self.mode == "token":
            ts = self.token_server
            assert ts is not None
            lines += [
                "auth:",
                "  token:",
                f"    realm: {ts.realm}",
                f"    service: {ts.service}",
                f"    issuer: {ts.issuer}",
                f"    rootcertbundle: {ts.ca_cert_path}",
            ]
        lines += [
            "health:",
            "  storagedriver:",
            "    enabled: false",
        ]
        return "\n".join(lines) + "\n"

    def _launch(self) -> None:
        assert self.dir is not None
        config = self.dir / "config.yml"
        config.write_text(self._config())
        log_path = self.log_path
        # A clean environment: REGISTRY_* variables would override the config file.
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
        with open(log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [REGISTRY_BINARY, "serve", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + self._startup_timeout
        ctx = self.ssl_context()
        while True:
            rc = self._proc.poll()
            if rc is not None:
                self._proc = None
                tail = _tail(log_path)
                if "address already in use" in tail:
                    log_path.rename(self.dir / f"registry-port-{self.port}.log")
                    raise _PortInUse(f"port {self.port} taken:\n{tail}")
                raise RegistryError(
                    f"docker-registry ({self.mode}) exited with {rc} during startup; "
                    f"log tail:\n{tail}"
                )
            status = _probe(f"{self.url}/v2/", ctx)
            if status in (200, 401):
                return
            if time.monotonic() > deadline:
                raise RegistryError(
                    f"docker-registry ({self.mode}) on {self.host} not ready after "
                    f"{self._startup_timeout}s (last /v2/ status {status}); "
                    f"log tail:\n{_tail(log_path)}"
                )
            time.sleep(0.05)


class _PortInUse(Exception):
    pass


def _probe(url: str, ctx: ssl.SSLContext | None) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2, context=ctx) as resp:
            status: int = resp.status
            return status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, http.client.HTTPException):
        return None


def _terminate(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Stop one child we started, by its pid: SIGTERM, then SIGKILL."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)


# --------------------------------------------------------------------------------------
# Faulty proxy
# --------------------------------------------------------------------------------------

FaultKind = Literal["tamper", "truncate", "drop", "redirect", "status", "stall"]
_BLOB_PATH = re.compile(r"^/v2/(?P<name>.+)/blobs/(?P<digest>[a-z0-9]+:[A-Fa-f0-9]+)$")


@dataclass
class Fault:
    """One misbehaviour of `FaultyProxy`, matched per request.

    Matching: ``digest`` (a blob GET/HEAD of that digest) and/or ``path`` (a regex
    searched in the request path), and ``method`` (None = any). ``times``: apply to
    this many matching requests, then stop (None = forever).

    Kinds:
    - ``tamper``: the real body with ``count`` bytes XOR-flipped starting at ``offset``
      (negative = from the end, needs Content-Length); same length, same headers.
    - ``truncate``: send the real headers (Content-Length unchanged) but only
      ``nbytes`` body bytes (default: half), then close the connection cleanly.
    - ``drop``: send ``nbytes`` body bytes (default 0) then reset the connection (RST);
      with ``go_down=True`` the proxy also refuses every later connection until
      `FaultyProxy.set_down` (False) - "the registry died mid-pull".
    - ``redirect``: answer ``307`` with ``Location: <redirect_to>/blobs/<digest>``
      (for a path match: ``<redirect_to><path>``), e.g. to a `BlobHost`.
    - ``status``: answer ``status`` (e.g. 503) with a small JSON error body.
    - ``stall``: send ``nbytes`` body bytes (default 0), then hold the connection open
      without sending more until `FaultyProxy.release_stalls` or the proxy stops.
    """

    kind: FaultKind
    digest: str | None = None
    path: str | None = None
    method: str | None = "GET"
    times: int | None = None
    offset: int = 0
    count: int = 1
    nbytes: int | None = None
    go_down: bool = False
    redirect_to: str | None = None
    status: int = 503
    hits: int = 0

    def __post_init__(self) -> None:
        if self.digest is None and self.path is None:
            raise ValueError("a Fault needs a digest or a path pattern to match")
        if self.kind == "redirect" and not self.redirect_to:
            raise ValueError("a redirect Fault needs redirect_to (a base URL)")

    def matches(self, method: str, path: str) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.method is not None and method != self.method:
            return False
        bare = path.split("?", 1)[0]
        if self.digest is not None:
            m = _BLOB_PATH.match(bare)
            if not m or m.group("digest") != self.digest:
                return False
        return self.path is None or re.search(self.path, bare) is not None


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    fault: FaultKind | None = None


@dataclass
class _Req:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None


class _ClientGone(Exception):
    pass


class FaultyProxy(_BackgroundServer):
    """An HTTP/1.1 reverse proxy on 127.0.0.1 in front of one registry.

    Clients talk plain HTTP to `url`; the proxy forwards to ``upstream`` (http or
    https; for https give ``ssl_context``). Every request is recorded in ``requests``
    (with the fault applied, if any). Add misbehaviours with `add_fault`.
    """

    def __init__(self, upstream: str, *, ssl_context: ssl.SSLContext | None = None) -> None:
        u = urllib.parse.urlsplit(upstream)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"bad upstream URL {upstream!r}")
        self._up_scheme = u.scheme
        self._up_host = u.hostname
        self._up_port = u.port or (443 if u.scheme == "https" else 80)
        self._up_netloc = u.netloc
        self._ssl = ssl_context
        self.faults: list[Fault] = []
        self.requests: list[RecordedRequest] = []
        self._down = False
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._server: socketserver.ThreadingTCPServer | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def for_registry(cls, registry: TestRegistry) -> FaultyProxy:
        return cls(registry.url, ssl_context=registry.ssl_context())

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._serve_connection(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._serve(Server((LOOPBACK, 0), Handler), "skiff-faulty-proxy")

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def scheme(self) -> str:
        return "http"

    # -- configuration -------------------------------------------------------------------

    def add_fault(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        """Remove every fault, forget recorded requests, come back up."""
        with self._lock:
            self.faults.clear()
            self.requests.clear()
            self._down = False

    def release_stalls(self) -> None:
        """Let every stalled response end (its connection closes)."""
        self._released.set()

    def stop(self) -> None:
        self._released.set()
        super().stop()

    def set_down(self, down: bool) -> None:
        """While down, every new connection is closed at once (nothing listens)."""
        with self._lock:
            self._down = down

    @property
    def is_down(self) -> bool:
        return self._down

    def requests_for(self, pattern: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if re.search(pattern, r.path)]

    # -- serving -------------------------------------------------------------------------

    def _pick_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if f.matches(method, path):
                    f.hits += 1
                    return f
        return None

    def _serve_connection(self, sock: socket.socket) -> None:
        if self._down:
            _reset(sock)
            return
        rfile: io.BufferedIOBase = sock.makefile("rb")
        try:
            while not self._down:
                req = _read_request(rfile)
                if req is None:
                    return
                body = _read_request_body(rfile, req)
                fault = self._pick_fault(req.method, req.target)
                with self._lock:
                    self.requests.append(
                        RecordedRequest(
                            req.method,
                            req.target,
                            {k.lower(): v for k, v in req.headers},
                            fault.kind if fault else None,
                        )
                    )
                keep = self._answer(sock, req, body, fault)
                if not keep:
                    return
        except (_ClientGone, OSError, http.client.HTTPException):
            return
        finally:
            with contextlib.suppress(OSError):
                rfile.close()
            with contextlib.suppress(OSError):
                sock.close()

    def _answer(self, sock: socket.socket, req: _Req, body: bytes, fault: Fault | None) -> bool:
        """Answer one request; False when the connection must end."""
        client_close = (req.header("Connection") or "").lower() == "close"
        if fault is not None and fault.kind == "status":
            data = json.dumps(
                {"errors": [{"code": "UNAVAILABLE", "message": "injected by FaultyProxy"}]}
            ).encode()
            _send_head(
                sock,
                fault.status,
                [("Content-Type", "application/json"), ("Content-Length", str(len(data)))],
            )
            sock.sendall(data)
            return not client_close
        if fault is not None and fault.kind == "redirect":
            base = (fault.redirect_to or "").rstrip("/")
            m = _BLOB_PATH.match(req.target.split("?", 1)[0])
            location = f"{base}/blobs/{m.group('digest')}" if m else base + req.target
            _send_head(sock, 307, [("Location", location), ("Content-Length", "0")])
            return not client_close

        conn: http.client.HTTPConnection
        if self._up_scheme == "https":
            conn = http.client.HTTPSConnection(
                self._up_host, self._up_port, context=self._ssl, timeout=60
            )
        else:
            conn = http.client.HTTPConnection(self._up_host, self._up_port, timeout=60)
        try:
            headers = {
                k: v
                for k, v in req.headers
                if k.lower() not in ("host", "connection", "keep-alive", "proxy-connection")
            }
            headers["Host"] = self._up_netloc
            conn.request(req.method, req.target, body=body or None, headers=headers)
            resp = conn.getresponse()
            out_headers = [
                (k, v)
                for k, v in resp.getheaders()
                if k.lower() not in ("connection", "keep-alive", "transfer-encoding")
            ]
            length_s = resp.getheader("Content-Length")
            length = int(length_s) if length_s is not None else None
            no_body = req.method == "HEAD" or resp.status in (204, 304) or resp.status < 200
            chunked = length is None and not no_body
            if chunked:
                out_headers.append(("Transfer-Encoding", "chunked"))
            _send_head(sock, resp.status, out_headers)
            if no_body:
                return not client_close
            limit: int | None = None
            if fault is not None and fault.kind == "truncate":
                limit = fault.nbytes if fault.nbytes is not None else (length or 0) // 2
            elif fault is not None and fault.kind in ("drop", "stall"):
                limit = fault.nbytes or 0
            flip_at: int | None = None
            if fault is not None and fault.kind == "tamper":
                flip_at = fault.offset if fault.offset >= 0 else (length or 0) + fault.offset
            sent = 0
            while True:
                chunk = resp.read(65536)
                if not chunk:
                    break
                if flip_at is not None and fault is not None:
                    chunk = _flip(chunk, sent, flip_at, fault.count)
                if limit is not None and sent + len(chunk) >= limit:
                    chunk = chunk[: limit - sent]
                    _send_body(sock, chunk, chunked)
                    sent += len(chunk)
                    break
                _send_body(sock, chunk, chunked)
                sent += len(chunk)
            if fault is not None and fault.kind == "truncate":
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                return False
            if fault is not None and fault.kind == "stall":
                self._released.wait(120)
                return False
            if fault is not None and fault.kind == "drop":
                if fault.go_down:
                    self.set_down(True)
                _reset(sock)
                return False
            if chunked:
                sock.sendall(b"0\r\n\r\n")
            return not client_close
        finally:
            conn.close()


def _flip(chunk: bytes, chunk_start: int, flip_at: int, count: int) -> bytes:
    lo = max(flip_at, chunk_start)
    hi = min(flip_at + count, chunk_start + len(chunk))
    if lo >= hi:
        return chunk
    b = bytearray(chunk)
    for i in range(lo - chunk_start, hi - chunk_start):
        b[i] ^= 0xFF
    return bytes(b)


def _reset(sock: socket.socket) -> None:
    """Close with RST instead of FIN (SO_LINGER 0)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    with contextlib.suppress(OSError):
        sock.close()


def _read_request(reader: io.BufferedIOBase) -> _Req | None:
    line = reader.readline(65537)
    while line in (b"\r\n", b"\n"):
        line = reader.readline(65537)
    if not line:
        return None
    parts = line.decode("latin-1").strip().split(" ")
    if len(parts) != 3:
        raise _ClientGone(f"bad request line {line!r}")
    req = _Req(parts[0], parts[1], parts[2])
    while True:
        h = reader.readline(65537)
        if not h:
            raise _ClientGone("EOF in headers")
        if h in (b"\r\n", b"\n"):
            break
        k, _, v = h.decode("latin-1").partition(":")
        req.headers.append((k.strip(), v.strip()))
    return req


def _read_request_body(reader: io.BufferedIOBase, req: _Req) -> bytes:
    if (req.header("Transfer-Encoding") or "").lower() == "chunked":
        out = bytearray()
        while True:
            size_line = reader.readline(65537)
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while reader.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass
                return bytes(out)
            out += reader.read(size)
            reader.readline(65537)
    n = int(req.header("Content-Length") or 0)
    return reader.read(n) if n else b""


_REASONS = {200: "OK", 201: "Created", 202: "Accepted", 307: "Temporary Redirect"}


def _send_head(sock: socket.socket, status: int, headers: list[tuple[str, str]]) -> None:
    reason = _REASONS.get(status) or http.client.responses.get(status, "Status")
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in headers]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))


def _send_body(sock: socket.socket, chunk: bytes, chunked: bool) -> None:
    if not chunk:
        return
    if chunked:
        sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
    else:
        sock.sendall(chunk)


# --------------------------------------------------------------------------------------
# Blob host (redirect target)
# --------------------------------------------------------------------------------------


class BlobHost(_BackgroundServer):
    """Serves ``GET /blobs/<digest>`` from a registry's filesystem storage, on its own
    127.0.0.1 port, without any auth, recording each request's headers (lower-case) in
    ``requests``: what a client sends after a cross-host redirect."""

    def __init__(self, registry: TestRegistry, *, hostname: str = LOOPBACK) -> None:
        self._registry = registry
        self._hostname = hostname
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        host = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _serve(self, with_body: bool) -> None:
                with host._lock:
                    host.requests.append(
                        RecordedRequest(
                            self.command, self.path, {k.lower(): v for k, v in self.headers.items()}
                        )
                    )
                m = re.match(r"^/blobs/([a-z0-9]+:[a-f0-9]+)$", self.path.split("?", 1)[0])
                path = host._registry.blob_path(m.group(1)) if m else None
                if path is None or not path.is_file():
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                size = path.stat().st_size
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(size))
                self.end_headers()
                if with_body:
                    with open(path, "rb") as f:
                        shutil.copyfileobj(f, self.wfile, 65536)

            def do_GET(self) -> None:
                self._serve(True)

            def do_HEAD(self) -> None:
                self._serve(False)

        server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        server.daemon_threads = True
        self._serve(server, "skiff-blob-host")

    @property
    def url(self) -> str:
        """``http://<hostname>:<port>``; pass hostname="localhost" to differ by name too."""
        return f"http://{self._hostname}:{self.port}"
