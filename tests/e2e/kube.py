"""The e2e suite's view of a cluster: the `kubernetes` Python client behind a few typed
calls that speak plain JSON dicts, as `kubectl get -o json` shows them."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.stream import stream

Obj = dict[str, Any]


class StreamSession(Protocol):
    """The Python client's WebSocket session (exec, attach), as the suite uses it."""

    returncode: int | None

    def update(self, timeout: float = 0) -> None: ...
    def read_stdout(self, timeout: float | None = None) -> str: ...
    def read_stderr(self, timeout: float | None = None) -> str: ...
    def write_stdin(self, data: str) -> None: ...
    def close_channel(self, channel: int) -> None: ...
    def run_forever(self, timeout: float | None = None) -> None: ...
    def close(self) -> None: ...


class WaitTimeout(AssertionError):
    pass


@dataclass(frozen=True)
class ExecResult:
    stdout: str
    stderr: str
    exit_code: int


def _json(response: object) -> Obj:
    """The body of a call made with _preload_content=False (the raw response)."""
    return cast(Obj, json.loads(cast(Any, response).data))


class Kube:
    """One kubeconfig's cluster, seen as its admin."""

    def __init__(self, kubeconfig: Path, health: Callable[[], None] = lambda: None) -> None:
        """`health` raises when the cluster cannot make progress (a part of it died):
        waits call it rather than wait out their timeout."""
        self.health = health
        configuration = client.Configuration()
        config.load_kube_config(  # type: ignore[no-untyped-call]
            str(kubeconfig), client_configuration=configuration
        )
        self.api_client = client.ApiClient(configuration)
        self.core = client.CoreV1Api(self.api_client)

    # -- objects ---------------------------------------------------------------------

    def nodes(self) -> list[Obj]:
        return cast(list[Obj], _json(self.core.list_node(_preload_content=False))["items"])

    def node(self, name: str) -> Obj:
        return _json(self.core.read_node(name, _preload_content=False))

    def create_namespace(self, name: str) -> None:
        self.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))

    def delete_namespace(self, name: str) -> None:
        try:
            self.core.delete_namespace(name)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def create(self, namespace: str, manifest: Obj) -> Obj:
        kind = manifest["kind"]
        # The client takes a manifest as a dict as well as its model classes.
        calls: dict[str, Any] = {
            "Pod": self.core.create_namespaced_pod,
            "Secret": self.core.create_namespaced_secret,
            "ConfigMap": self.core.create_namespaced_config_map,
        }
        create: Callable[..., object] = calls[kind]
        return _json(create(namespace, manifest, _preload_content=False))

    def pod(self, namespace: str, name: str) -> Obj:
        return _json(self.core.read_namespaced_pod(name, namespace, _preload_content=False))

    def pods(self, namespace: str) -> list[Obj]:
        listed = _json(self.core.list_namespaced_pod(namespace, _preload_content=False))
        return cast(list[Obj], listed["items"])

    def delete_pod(self, namespace: str, name: str, grace: int | None = None) -> None:
        try:
            self.core.delete_namespaced_pod(name, namespace, grace_period_seconds=grace)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def pod_exists(self, namespace: str, name: str) -> bool:
        try:
            self.pod(namespace, name)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def events(self, namespace: str, pod: str) -> list[Obj]:
        listed = _json(
            self.core.list_namespaced_event(
                namespace,
                field_selector=f"involvedObject.kind=Pod,involvedObject.name={pod}",
                _preload_content=False,
            )
        )
        return cast(list[Obj], listed["items"])

    # -- waiting ---------------------------------------------------------------------

    def wait_pod(
        self,
        namespace: str,
        name: str,
        what: str,
        check: Callable[[Obj], bool],
        timeout: float = 60.0,
    ) -> Obj:
        """Polls the pod until `check` holds; the failure shows its last status."""
        deadline = time.monotonic() + timeout
        pod: Obj = {}
        while time.monotonic() < deadline:
            pod = self.pod(namespace, name)
            if check(pod):
                return pod
            self.health()
            time.sleep(0.25)
        raise WaitTimeout(
            f"pod {namespace}/{name}: not {what} within {timeout:.0f}s; status:\n"
            + json.dumps(pod.get("status", {}), indent=1)
            + "\nevents:\n"
            + "\n".join(
                f"  {e.get('reason')}: {e.get('message')}" for e in self.events(namespace, name)
            )
        )

    def wait_gone(self, namespace: str, name: str, timeout: float = 60.0) -> float:
        """Waits until the pod object is deleted; returns the seconds it took."""
        started = time.monotonic()
        while self.pod_exists(namespace, name):
            self.health()
            if time.monotonic() - started > timeout:
                raise WaitTimeout(f"pod {namespace}/{name} still exists after {timeout:.0f}s")
            time.sleep(0.25)
        return time.monotonic() - started

    # -- the kubelet's streaming and proxy paths -------------------------------------

    def logs(
        self, namespace: str, name: str, container: str | None = None, previous: bool = False
    ) -> str:
        response = self.core.read_namespaced_pod_log(
            name, namespace, container=container, previous=previous, _preload_content=False
        )
        return cast(bytes, cast(Any, response).data).decode(errors="replace")

    def exec(
        self,
        namespace: str,
        name: str,
        command: list[str],
        *,
        container: str | None = None,
        stdin: str | None = None,
        tty: bool = False,
        timeout: float = 30.0,
    ) -> ExecResult:
        """Runs `command` through apiserver → kubelet → skiff's streaming server."""
        session = self.exec_session(
            namespace, name, command, container=container, stdin=stdin is not None, tty=tty
        )
        try:
            if stdin is not None:
                session.write_stdin(stdin)
                session.close_channel(0)
            session.run_forever(timeout=timeout)
            stdout = session.read_stdout() or ""
            stderr = session.read_stderr() or ""
            session.update(timeout=1)
            code = session.returncode
        finally:
            session.close()
        return ExecResult(stdout, stderr, code if code is not None else -1)

    def exec_session(
        self,
        namespace: str,
        name: str,
        command: list[str],
        *,
        container: str | None = None,
        stdin: bool = False,
        tty: bool = False,
    ) -> StreamSession:
        return cast(
            StreamSession,
            stream(
                self.core.connect_get_namespaced_pod_exec,
                name,
                namespace,
                command=command,
                container=container,
                stdin=stdin,
                stdout=True,
                stderr=not tty,
                tty=tty,
                _preload_content=False,
            ),
        )

    def attach_session(
        self, namespace: str, name: str, *, container: str | None = None, tty: bool = False
    ) -> StreamSession:
        return cast(
            StreamSession,
            stream(
                self.core.connect_get_namespaced_pod_attach,
                name,
                namespace,
                container=container,
                stdin=True,
                stdout=True,
                stderr=not tty,
                tty=tty,
                _preload_content=False,
            ),
        )

    def node_proxy(self, node: str, path: str) -> Obj:
        """GET https://<node's kubelet>/<path> through the apiserver's node proxy."""
        response = self.core.connect_get_node_proxy_with_path(node, path, _preload_content=False)
        return _json(response)


__all__ = ["ApiException", "ExecResult", "Kube", "Obj", "StreamSession", "WaitTimeout"]
