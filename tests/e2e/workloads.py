"""Pods for the e2e suite: manifests as a user writes them, created in one namespace and
bound to the node under test, with waits on what the API server reports."""

from __future__ import annotations

import secrets
from typing import Any

from tests.e2e.images import E2EImages
from tests.e2e.kube import Kube, Obj

TERMINAL = ("Succeeded", "Failed")


def container(name: str, image: str, *command: str, **fields: Any) -> Obj:
    spec: Obj = {"name": name, "image": image, **fields}
    if command:
        spec["command"] = list(command)
    return spec


def shell(name: str, image: str, script: str, **fields: Any) -> Obj:
    return container(name, image, "sh", "-c", script, **fields)


def container_status(pod: Obj, name: str, init: bool = False) -> Obj:
    key = "initContainerStatuses" if init else "containerStatuses"
    for status in pod.get("status", {}).get(key) or []:
        if status["name"] == name:
            return dict(status)
    return {}


def is_running(pod: Obj) -> bool:
    return bool(pod.get("status", {}).get("phase") == "Running")


def is_ready(pod: Obj) -> bool:
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def phase_is(*phases: str) -> Any:
    return lambda pod: pod.get("status", {}).get("phase") in phases


def waiting_reason(pod: Obj, name: str) -> str:
    waiting = container_status(pod, name).get("state", {}).get("waiting") or {}
    return str(waiting.get("reason", ""))


def terminated(pod: Obj, name: str, last: bool = False) -> Obj:
    status = container_status(pod, name)
    state = status.get("lastState" if last else "state", {})
    return dict(state.get("terminated") or {})


class Pods:
    """The pods of one test module, in its own namespace, bound to one node."""

    def __init__(self, kube: Kube, namespace: str, node: str, images: E2EImages) -> None:
        self.kube = kube
        self.namespace = namespace
        self.node = node
        self.images = images

    def manifest(self, name: str, containers: list[Obj], **spec: Any) -> Obj:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": {"skiff-e2e": "yes"}},
            "spec": {
                "nodeName": self.node,
                "terminationGracePeriodSeconds": 2,
                "containers": containers,
                **spec,
            },
        }

    def create(self, name: str, containers: list[Obj], **spec: Any) -> str:
        name = f"{name}-{secrets.token_hex(2)}"
        self.kube.create(self.namespace, self.manifest(name, containers, **spec))
        return name

    def create_object(self, manifest: Obj) -> Obj:
        return self.kube.create(self.namespace, manifest)

    def get(self, name: str) -> Obj:
        return self.kube.pod(self.namespace, name)

    def wait(self, name: str, what: str, check: Any, timeout: float = 60.0) -> Obj:
        return self.kube.wait_pod(self.namespace, name, what, check, timeout)

    def run(self, name: str, containers: list[Obj], **spec: Any) -> tuple[str, Obj]:
        """Creates the pod and waits until it runs with every container ready."""
        created = self.create(name, containers, **spec)
        return created, self.wait(created, "Ready", is_ready)

    def finish(self, name: str, containers: list[Obj], **spec: Any) -> tuple[str, Obj]:
        """Creates a pod that ends (restartPolicy Never unless given) and waits for it."""
        spec.setdefault("restartPolicy", "Never")
        created = self.create(name, containers, **spec)
        return created, self.wait(created, "finished", phase_is(*TERMINAL))

    def logs(self, name: str, container: str | None = None, previous: bool = False) -> str:
        return self.kube.logs(self.namespace, name, container, previous)

    def exec(self, name: str, *command: str, container: str | None = None) -> str:
        result = self.kube.exec(self.namespace, name, list(command), container=container)
        assert result.exit_code == 0, f"{command} in {name}: {result}"
        return result.stdout

    def events(self, name: str) -> list[Obj]:
        return self.kube.events(self.namespace, name)

    def event_messages(self, name: str, reason: str) -> list[str]:
        return [str(e.get("message", "")) for e in self.events(name) if e["reason"] == reason]

    def delete(self, name: str, grace: int | None = None) -> float:
        self.kube.delete_pod(self.namespace, name, grace)
        return self.kube.wait_gone(self.namespace, name, timeout=90)

    def delete_all(self) -> None:
        """Deletes every pod the graceful way, so the API object goes only once the
        kubelet has stopped it through the runtime."""
        for pod in self.kube.pods(self.namespace):
            self.kube.delete_pod(self.namespace, pod["metadata"]["name"], grace=1)
        for pod in self.kube.pods(self.namespace):
            self.kube.wait_gone(self.namespace, pod["metadata"]["name"], timeout=90)
