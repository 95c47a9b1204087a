"""Pods on skiff as the API server reports them: status, commands and environment, exit
codes and reasons, restart policies, init containers."""

from __future__ import annotations

import ipaddress

from tests.e2e.k8s.cluster import Cluster
from tests.e2e.workloads import (
    Pods,
    container,
    container_status,
    phase_is,
    shell,
    terminated,
    waiting_reason,
)


def test_a_running_pod_reports_what_kubectl_shows(cluster: Cluster, pods: Pods) -> None:
    image = pods.images.busybox
    name, pod = pods.run("status", [container("main", image, "sleep", "3600")])
    status = pod["status"]
    node = cluster.kube.node(cluster.node)
    internal = [a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP"]
    assert status["hostIP"] in internal
    ip = ipaddress.ip_address(status["podIP"])
    if cluster.local is not None:
        assert ip in cluster.local.pod_subnet
    assert [p["ip"] for p in status["podIPs"]] == [status["podIP"]]
    main = container_status(pod, "main")
    assert main["containerID"].startswith("skiff://")
    assert len(main["containerID"].removeprefix("skiff://")) == 64
    # `kubectl get pods` shows the image as the user named it, and its digest as imageID.
    assert main["image"] == image
    repository = image.rsplit(":", 1)[0]
    assert main["imageID"].startswith(f"{repository}@sha256:")
    assert main["ready"] is True and main["started"] is True
    assert main["restartCount"] == 0
    assert main["state"]["running"]["startedAt"]
    assert status["startTime"] and status["qosClass"] == "BestEffort"
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("skiff://")
    assert pods.exec(name, "hostname").strip() == name


def test_command_args_env_downward_api_and_working_dir(pods: Pods) -> None:
    script = 'echo "args=$*"; echo "pwd=$(pwd)"; env | sort | grep -E "^(LITERAL|POD_|MEM_)"'
    main = container(
        "main",
        pods.images.busybox,
        "sh",
        "-c",
        script,
        "ignored-$0",
        "first",
        "second word",
        workingDir="/srv/work",
        env=[
            {"name": "LITERAL", "value": "plain value"},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {
                "name": "MEM_LIMIT",
                "valueFrom": {"resourceFieldRef": {"resource": "limits.memory"}},
            },
        ],
        resources={"limits": {"memory": "64Mi"}},
    )
    name, pod = pods.finish("env", [main])
    assert pod["status"]["phase"] == "Succeeded"
    lines = pods.logs(name).splitlines()
    assert lines[:2] == ["args=first second word", "pwd=/srv/work"]
    env = dict(line.split("=", 1) for line in lines[2:])
    assert env == {
        "LITERAL": "plain value",
        "MEM_LIMIT": str(64 * 1024 * 1024),
        "POD_IP": pod["status"]["podIP"],
        "POD_NAME": name,
        "POD_NS": pods.namespace,
    }


def test_exit_codes_and_reasons(pods: Pods) -> None:
    image = pods.images.busybox
    ok, pod_ok = pods.finish("exit-zero", [shell("main", image, "exit 0")])
    failed, pod_failed = pods.finish("exit-three", [shell("main", image, "echo bye >&2; exit 3")])
    assert pod_ok["status"]["phase"] == "Succeeded"
    assert terminated(pod_ok, "main")["reason"] == "Completed"
    assert terminated(pod_ok, "main")["exitCode"] == 0
    assert pod_failed["status"]["phase"] == "Failed"
    assert terminated(pod_failed, "main")["reason"] == "Error"
    assert terminated(pod_failed, "main")["exitCode"] == 3
    assert pods.logs(failed) == "bye\n"
    finished = terminated(pod_failed, "main")
    assert finished["startedAt"] <= finished["finishedAt"]
    assert ok != failed


def test_a_container_over_its_memory_limit_is_oom_killed(pods: Pods) -> None:
    # dd's 64 MiB buffer does not fit under a 16 MiB limit.
    hog = container(
        "hog",
        pods.images.busybox,
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=64M",
        "count=4",
        resources={"limits": {"memory": "16Mi"}},
    )
    _, pod = pods.finish("oom", [hog])
    assert pod["status"]["phase"] == "Failed"
    state = terminated(pod, "hog")
    assert state["reason"] == "OOMKilled"
    assert state["exitCode"] == 137


def test_restart_policy_always_restarts_into_crash_loop_back_off(pods: Pods) -> None:
    name = pods.create(
        "crashloop",
        [shell("main", pods.images.busybox, "echo run; exit 1")],
        restartPolicy="Always",
    )
    seen: set[str] = set()

    def backing_off(pod: dict[str, object]) -> bool:
        seen.add(waiting_reason(pod, "main"))
        status = container_status(pod, "main")
        return "CrashLoopBackOff" in seen and status.get("restartCount", 0) >= 2

    pod = pods.wait(name, "restarted twice in CrashLoopBackOff", backing_off, timeout=90)
    last = terminated(pod, "main", last=True)
    assert last["exitCode"] == 1 and last["reason"] == "Error"
    assert pod["status"]["phase"] == "Running"


def test_restart_policy_on_failure_restarts_until_success(pods: Pods) -> None:
    script = (
        "if [ -e /state/failed-once ]; then echo second; exit 0; fi;"
        " touch /state/failed-once; exit 7"
    )
    main = shell(
        "main", pods.images.busybox, script, volumeMounts=[{"name": "state", "mountPath": "/state"}]
    )
    name, pod = pods.finish(
        "onfailure", [main], restartPolicy="OnFailure", volumes=[{"name": "state", "emptyDir": {}}]
    )
    assert pod["status"]["phase"] == "Succeeded"
    status = container_status(pod, "main")
    assert status["restartCount"] == 1
    assert status["lastState"]["terminated"]["exitCode"] == 7
    assert status["state"]["terminated"]["reason"] == "Completed"
    assert pods.logs(name) == "second\n"


def test_restart_policy_never_leaves_a_failed_container_alone(pods: Pods) -> None:
    name, pod = pods.finish("never", [shell("main", pods.images.busybox, "exit 1")])
    assert pod["status"]["phase"] == "Failed"
    assert container_status(pod, "main")["restartCount"] == 0
    # Still nothing restarted a moment later.
    again = pods.wait(name, "failed", phase_is("Failed"))
    assert container_status(again, "main")["restartCount"] == 0


def test_init_containers_run_in_order_before_the_app(pods: Pods) -> None:
    mounts = [{"name": "work", "mountPath": "/work"}]
    image = pods.images.busybox
    inits = [
        shell(f"init-{i}", image, f"echo init-{i} >> /work/order", volumeMounts=mounts)
        for i in (1, 2)
    ]
    app = shell("app", image, "echo app >> /work/order; cat /work/order", volumeMounts=mounts)
    name, pod = pods.finish(
        "init", [app], initContainers=inits, volumes=[{"name": "work", "emptyDir": {}}]
    )
    assert pod["status"]["phase"] == "Succeeded"
    assert pods.logs(name, "app") == "init-1\ninit-2\napp\n"
    for init in ("init-1", "init-2"):
        assert container_status(pod, init, init=True)["state"]["terminated"]["reason"] == (
            "Completed"
        )
    first = container_status(pod, "init-1", init=True)["state"]["terminated"]
    second = container_status(pod, "init-2", init=True)["state"]["terminated"]
    assert first["finishedAt"] <= second["startedAt"]
