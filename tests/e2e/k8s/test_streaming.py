"""logs, exec, attach and port-forward as a user runs them: client → API server →
kubelet → skiff's streaming server, over the Python client's WebSocket transport."""

from __future__ import annotations

import time

from kubernetes.stream import portforward

from tests.e2e.images import WEB_PAGE, WEB_PORT
from tests.e2e.kube import StreamSession
from tests.e2e.workloads import Pods, container, container_status, shell


def test_logs_and_previous_logs_after_a_restart(pods: Pods) -> None:
    script = (
        "if [ -e /state/ran ]; then echo second run; sleep 3600; fi;"
        " touch /state/ran; echo first run; echo to stderr >&2; exit 1"
    )
    main = shell(
        "main", pods.images.busybox, script, volumeMounts=[{"name": "state", "mountPath": "/state"}]
    )
    name = pods.create(
        "logs", [main], restartPolicy="OnFailure", volumes=[{"name": "state", "emptyDir": {}}]
    )
    pods.wait(
        name,
        "running again after one failure",
        lambda p: (
            container_status(p, "main").get("restartCount") == 1
            and "running" in container_status(p, "main").get("state", {})
        ),
    )
    deadline = time.monotonic() + 30
    while pods.logs(name) != "second run\n":
        assert time.monotonic() < deadline, pods.logs(name)
        time.sleep(0.2)
    assert pods.logs(name, previous=True) == "first run\nto stderr\n"


def test_exec_without_a_tty_keeps_streams_and_exit_code(pods: Pods) -> None:
    name, _ = pods.run("exec", [container("main", pods.images.busybox, "sleep", "3600")])
    result = pods.kube.exec(pods.namespace, name, ["sh", "-c", "echo out; echo err >&2; exit 5"])
    assert (result.stdout, result.stderr, result.exit_code) == ("out\n", "err\n", 5)
    echoed = pods.kube.exec(pods.namespace, name, ["cat"], stdin="line one\nline two\n")
    assert (echoed.stdout, echoed.exit_code) == ("line one\nline two\n", 0)


def _read_until(session: StreamSession, text: str, timeout: float = 20.0) -> str:
    """What the session's stdout brings until `text` has come (or the time is up)."""
    output = ""
    deadline = time.monotonic() + timeout
    while text not in output and time.monotonic() < deadline:
        session.update(timeout=1)
        output += session.read_stdout() or ""
    return output


def test_exec_with_a_tty(pods: Pods) -> None:
    name, _ = pods.run("tty", [container("main", pods.images.busybox, "sleep", "3600")])
    session = pods.kube.exec_session(
        pods.namespace, name, ["sh", "-c", "tty; read line; echo got $line"], stdin=True, tty=True
    )
    try:
        output = _read_until(session, "/dev/pts/")
        session.write_stdin("hello\n")
        output += _read_until(session, "got hello")
    finally:
        session.close()
    assert "/dev/pts/" in output
    # The terminal echoes the input and ends lines with CR LF.
    assert "got hello\r\n" in output, output


def test_attach_to_a_running_container(pods: Pods) -> None:
    echo = shell(
        "main",
        pods.images.busybox,
        'while read line; do echo "attached: $line"; done',
        stdin=True,
    )
    name, _ = pods.run("attach", [echo])
    session = pods.kube.attach_session(pods.namespace, name)
    try:
        session.write_stdin("ping\n")
        output = _read_until(session, "attached: ping")
    finally:
        session.close()
    assert "attached: ping\n" in output
    # The attached stream's output is the container's, so it is in its log too.
    assert "attached: ping" in pods.logs(name)


def test_port_forward_to_the_pod(pods: Pods) -> None:
    name, _ = pods.run("portfwd", [container("web", pods.images.web)])
    forward = portforward(
        pods.kube.core.connect_get_namespaced_pod_portforward,
        name,
        pods.namespace,
        ports=str(WEB_PORT),
    )
    try:
        sock = forward.socket(WEB_PORT)
        sock.setblocking(True)
        sock.settimeout(20)
        sock.sendall(b"GET / HTTP/1.0\r\nHost: pod\r\n\r\n")
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
        sock.close()
        assert forward.error(WEB_PORT) is None
    finally:
        forward.close()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0], head
    assert body.decode() == WEB_PAGE
