"""Probes and termination: exec and httpGet readiness and liveness, a failing liveness
probe restarting the container, preStop hooks and the grace period on delete."""

from __future__ import annotations

import time

from tests.e2e.images import WEB_PORT
from tests.e2e.workloads import (
    Pods,
    container,
    container_status,
    is_ready,
    shell,
    terminated,
)

FAST = {"periodSeconds": 1, "failureThreshold": 1, "successThreshold": 1, "timeoutSeconds": 2}


def not_ready(pod: dict[str, object]) -> bool:
    return not is_ready(pod)


def test_exec_readiness_follows_the_probe(pods: Pods) -> None:
    main = container(
        "main",
        pods.images.busybox,
        "sleep",
        "3600",
        readinessProbe={"exec": {"command": ["cat", "/tmp/ready"]}, **FAST},
    )
    name = pods.create("exec-ready", [main])
    pods.wait(name, "running", lambda p: container_status(p, "main").get("started") is True)
    assert not is_ready(pods.get(name))
    pods.exec(name, "touch", "/tmp/ready")
    pods.wait(name, "Ready", is_ready, timeout=30)
    pods.exec(name, "rm", "/tmp/ready")
    pods.wait(name, "not Ready", not_ready, timeout=30)


def test_http_readiness_follows_the_server(pods: Pods) -> None:
    probe = {"httpGet": {"path": "/index.html", "port": WEB_PORT}, **FAST}
    name, _ = pods.run("http-ready", [container("web", pods.images.web, readinessProbe=probe)])
    pods.exec(name, "rm", "/www/index.html")
    pods.wait(name, "not Ready after a 404", not_ready, timeout=30)
    assert container_status(pods.get(name), "web")["restartCount"] == 0


def test_failing_exec_liveness_restarts_the_container(pods: Pods) -> None:
    main = container(
        "main",
        pods.images.busybox,
        "sh",
        "-c",
        "touch /tmp/alive; sleep 3600",
        livenessProbe={"exec": {"command": ["cat", "/tmp/alive"]}, **FAST},
    )
    name, _ = pods.run("exec-live", [main])
    pods.exec(name, "rm", "/tmp/alive")
    pod = pods.wait(
        name,
        "restarted by its liveness probe",
        lambda p: container_status(p, "main").get("restartCount", 0) >= 1,
        timeout=60,
    )
    assert terminated(pod, "main", last=True)["exitCode"] in (137, 143)
    assert any("Liveness probe failed" in m for m in pods.event_messages(name, "Unhealthy"))
    assert any("failed liveness probe" in m for m in pods.event_messages(name, "Killing"))


def test_failing_http_liveness_restarts_the_container(pods: Pods) -> None:
    probe = {"httpGet": {"path": "/index.html", "port": WEB_PORT}, **FAST}
    name, _ = pods.run("http-live", [container("web", pods.images.web, livenessProbe=probe)])
    pods.exec(name, "rm", "/www/index.html")
    pod = pods.wait(
        name,
        "restarted by its liveness probe",
        lambda p: container_status(p, "web").get("restartCount", 0) >= 1,
        timeout=60,
    )
    # A restarted container starts from the image again: the page is back.
    pods.wait(name, "Ready again", is_ready, timeout=30)
    assert "index.html" in pods.exec(name, "ls", "/www", container="web")
    assert container_status(pod, "web")["lastState"]["terminated"]


def test_pre_stop_hook_and_grace_period_on_delete(pods: Pods) -> None:
    # The main process ignores SIGTERM: only the grace period's SIGKILL ends it, after
    # the preStop hook has run.
    main = shell(
        "main",
        pods.images.busybox,
        "trap 'echo got TERM' TERM; echo started; while true; do sleep 0.2; done",
        lifecycle={
            "preStop": {"exec": {"command": ["sh", "-c", "echo pre-stop ran > /proc/1/fd/1"]}}
        },
    )
    grace = 4
    name, _ = pods.run("prestop", [main], terminationGracePeriodSeconds=grace)
    pods.kube.delete_pod(pods.namespace, name)
    started = time.monotonic()
    deadline = started + 20
    logs = ""
    while "got TERM" not in logs and time.monotonic() < deadline:
        logs = pods.logs(name)
        time.sleep(0.2)
    assert logs.splitlines()[:3] == ["started", "pre-stop ran", "got TERM"], logs
    pods.kube.wait_gone(pods.namespace, name, timeout=60)
    elapsed = time.monotonic() - started
    assert elapsed >= grace - 1, f"the pod went after {elapsed:.1f}s, before its grace period"
    assert elapsed < grace + 15, f"the pod took {elapsed:.1f}s to go (grace {grace}s)"
