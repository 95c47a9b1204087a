"""The streaming server over TLS (`streaming.tls_cert` / `streaming.tls_key`): the URLs
are https and exec works over both transports; a certificate or key skiffd cannot use
stops it at start with a message naming the setting and the file."""

from __future__ import annotations

import asyncio
import shutil
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from api.runtime.v1 import api_pb2 as pb
from tests.integration.nodes import MakeNode
from tests.integration.registry import TestCA
from tests.integration.skiffd import Skiffd, short_tempdir, unmount_below
from tests.integration.test_streaming import spdy_exec, ws_exec

EXIT_STARTUP_TIMEOUT = 20.0


@dataclass(frozen=True)
class ServerCert:
    """A CA, and a server certificate and key it issued for 127.0.0.1, as PEM files."""

    ca: TestCA
    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts only the test CA and checks the address."""
        return ssl.create_default_context(cadata=self.ca.cert_pem().decode())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_server_cert(directory: Path) -> ServerCert:
    ca = TestCA.create("skiff streaming test CA")
    key, cert = ca.issue("skiff streaming", dns_names=("localhost",), ip_addresses=("127.0.0.1",))
    cert_path, key_path = directory / "stream.pem", directory / "stream-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(_key_pem(key))
    key_path.chmod(0o600)
    return ServerCert(ca, cert_path, key_path)


@pytest.fixture
def certs() -> Iterator[ServerCert]:
    directory = short_tempdir("tls")
    try:
        yield make_server_cert(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_exec_over_tls_with_spdy_and_websocket(make_node: MakeNode, certs: ServerCert) -> None:
    node = make_node(config={"streaming": {"tls_cert": str(certs.cert), "tls_key": str(certs.key)}})
    cid = node.run("target", command=["sleep", "2000"])
    context = certs.client_context()

    def url(cmd: list[str], stdin: bool = False) -> str:
        answer: str = node.runtime.Exec(
            pb.ExecRequest(container_id=cid, cmd=cmd, stdin=stdin, stdout=True, stderr=True)
        ).url
        assert answer.startswith("https://127.0.0.1:"), answer
        return answer

    result = asyncio.run(spdy_exec(url(["echo", "over spdy"]), ssl_context=context))
    assert result.stdout == b"over spdy\n"
    assert result.status["status"] == "Success"

    result = asyncio.run(
        ws_exec(url(["cat"], stdin=True), stdin=b"over websocket\n", ssl_context=context)
    )
    assert result.stdout == b"over websocket\n"
    assert result.status["status"] == "Success"

    result = asyncio.run(spdy_exec(url(["sh", "-c", "exit 3"]), ssl_context=context))
    assert result.status["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]

    # A client that does not trust the certificate gets no stream, and the token is
    # not spent by the failed handshake: nothing was requested over HTTP yet.
    plain_url = url(["echo", "after a bad handshake"])
    with pytest.raises(ssl.SSLCertVerificationError):
        asyncio.run(spdy_exec(plain_url, ssl_context=ssl.create_default_context()))
    result = asyncio.run(spdy_exec(plain_url, ssl_context=context))
    assert result.stdout == b"after a bad handshake\n"

    # Plain HTTP on the TLS port is not an exec either; the server keeps serving.
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        asyncio.run(spdy_exec(url(["true"]).replace("https://", "http://", 1)))
    assert asyncio.run(spdy_exec(url(["echo", "still"]), ssl_context=context)).stdout == b"still\n"


def _start_fails(settings: dict[str, str]) -> str:
    """Start skiffd with these streaming settings; it must exit non-zero. Its output."""
    base = short_tempdir("tlsbad")
    daemon = Skiffd(base, {"streaming": settings})
    try:
        daemon.start(wait=False)
        assert daemon.proc is not None
        status = daemon.proc.wait(EXIT_STARTUP_TIMEOUT)
        assert status != 0, f"skiffd started with {settings}:\n{daemon.logs()}"
        assert not daemon.socket.exists()
        return daemon.logs()
    finally:
        daemon.kill()
        unmount_below(base)
        shutil.rmtree(base, ignore_errors=True)


def test_unusable_certificate_or_key_stops_skiffd_at_start(certs: ServerCert) -> None:
    directory = certs.cert.parent
    missing = directory / "missing.pem"
    output = _start_fails({"tls_cert": str(missing), "tls_key": str(certs.key)})
    assert f"streaming.tls_cert {missing}: cannot read it: No such file or directory" in output

    output = _start_fails({"tls_cert": str(certs.cert), "tls_key": str(directory)})
    assert f"streaming.tls_key {directory}: cannot read it: Is a directory" in output

    garbage = directory / "garbage.pem"
    garbage.write_text("not a certificate\n")
    output = _start_fails({"tls_cert": str(garbage), "tls_key": str(certs.key)})
    assert f"streaming.tls_cert {garbage}: not a PEM certificate" in output

    # A key of another certificate.
    other = make_server_cert(short_tempdir("tlsother"))
    try:
        output = _start_fails({"tls_cert": str(certs.cert), "tls_key": str(other.key)})
        assert "unusable: the key does not belong to the certificate" in output, output
    finally:
        shutil.rmtree(other.cert.parent, ignore_errors=True)

    # One without the other is a config error, before anything starts.
    output = _start_fails({"tls_cert": str(certs.cert)})
    assert "tls_cert and tls_key go together" in output
