"""Images as the kubelet drives them: pull policies, pull errors and back-off with
skiff's message, pull secrets for a registry with Basic auth, and image garbage
collection through ImageFsInfo and RemoveImage."""

from __future__ import annotations

import base64
import json
import secrets
import time

import pytest

from api.runtime.v1 import api_pb2 as pb
from tests.e2e.images import push_big_image
from tests.e2e.k8s.cluster import BIG_IMAGE_MB, Cluster
from tests.e2e.workloads import Pods, container, container_status, phase_is, waiting_reason
from tests.integration import images as img
from tests.integration.skiffd import short_tempdir


def _fresh_image(cluster: Cluster, repository: str) -> str:
    """An image no node has pulled yet: busybox under a label of its own."""
    tag = secrets.token_hex(4)
    image = img.busybox_image(labels={"skiff-e2e": tag})
    img.push(cluster.push_to, repository, tag, image)
    return f"{cluster.registry_host}/{repository}:{tag}"


def _waiting(pods: Pods, name: str, reason: str, timeout: float = 60) -> dict[str, object]:
    pod = pods.wait(
        name, f"waiting with {reason}", lambda p: waiting_reason(p, "main") == reason, timeout
    )
    return dict(container_status(pod, "main")["state"]["waiting"])


def test_pull_policies(cluster: Cluster, pods: Pods) -> None:
    image = _fresh_image(cluster, "e2e/policies")
    never = pods.create(
        "never",
        [container("main", image, "true", imagePullPolicy="Never")],
        restartPolicy="Never",
    )
    waiting = _waiting(pods, never, "ErrImageNeverPull")
    assert image in str(waiting["message"])

    first = pods.create(
        "if-not-present",
        [container("main", image, "true", imagePullPolicy="IfNotPresent")],
        restartPolicy="Never",
    )
    pods.wait(first, "Succeeded", phase_is("Succeeded"))
    assert any(image in m for m in pods.event_messages(first, "Pulled")), pods.events(first)
    assert any("Successfully pulled" in m for m in pods.event_messages(first, "Pulled"))

    again = pods.create(
        "present",
        [container("main", image, "true", imagePullPolicy="IfNotPresent")],
        restartPolicy="Never",
    )
    pods.wait(again, "Succeeded", phase_is("Succeeded"))
    assert any("already present on machine" in m for m in pods.event_messages(again, "Pulled"))
    assert pods.event_messages(again, "Pulling") == []

    always = pods.create(
        "always",
        [container("main", image, "true", imagePullPolicy="Always")],
        restartPolicy="Never",
    )
    pods.wait(always, "Succeeded", phase_is("Succeeded"))
    assert pods.event_messages(always, "Pulling"), pods.events(always)
    assert any("Successfully pulled" in m for m in pods.event_messages(always, "Pulled"))
    # The pod that waited for the image with Never now finds it.
    pods.wait(never, "Succeeded", phase_is("Succeeded"), timeout=90)


def test_a_missing_image_fails_the_pull_then_backs_off(pods: Pods) -> None:
    image = pods.images.missing
    name = pods.create("missing", [container("main", image, "true")], restartPolicy="Never")
    failed = _waiting(pods, name, "ErrImagePull")
    # The kubelet passes skiff's own words on: what was asked for, and that it is not there.
    message = str(failed["message"])
    assert image.rsplit(":", 1)[0] in message and "not found" in message, message
    backing_off = _waiting(pods, name, "ImagePullBackOff")
    assert image in str(backing_off["message"])
    failures = pods.event_messages(name, "Failed")
    assert any("not found" in m for m in failures), failures


def test_image_pull_secrets_for_a_registry_with_basic_auth(cluster: Cluster, pods: Pods) -> None:
    registry = cluster.auth_registry
    if registry is None or cluster.local is None:
        pytest.skip("needs the suite's own registry with Basic auth")
    repository = "private/busybox"
    img.push(registry, repository, "1", img.busybox_image(labels={"private": "yes"}))
    image = f"{registry.host}/{repository}:1"
    assert registry.username is not None and registry.password is not None
    auth = base64.b64encode(f"{registry.username}:{registry.password}".encode()).decode()
    config = {"auths": {registry.host: {"auth": auth}}}
    pods.create_object(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "registry-auth"},
            "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": base64.b64encode(json.dumps(config).encode()).decode()},
        }
    )
    without = pods.create("no-secret", [container("main", image, "true")], restartPolicy="Never")
    refused = _waiting(pods, without, "ErrImagePull")
    assert "requires credentials" in str(refused["message"]), refused

    with_secret = pods.create(
        "secret",
        [container("main", image, "true")],
        restartPolicy="Never",
        imagePullSecrets=[{"name": "registry-auth"}],
    )
    pods.wait(with_secret, "Succeeded", phase_is("Succeeded"))


def _stored(cluster: Cluster) -> set[str]:
    local = cluster.require_local()
    listed = local.skiffd.images().ListImages(pb.ListImagesRequest(), timeout=10).images
    return {tag for image in listed for tag in image.repo_tags}


def _wait_no_containers_of(cluster: Cluster, pod: str, timeout: float = 120.0) -> None:
    runtime = cluster.require_local().skiffd.runtime()
    request = pb.ListContainersRequest(
        filter=pb.ContainerFilter(label_selector={"io.kubernetes.pod.name": pod})
    )
    deadline = time.monotonic() + timeout
    while runtime.ListContainers(request, timeout=10).containers:
        assert time.monotonic() < deadline, f"the kubelet left pod {pod}'s containers"
        time.sleep(1)


def _disk_pressure(cluster: Cluster) -> bool:
    conditions = cluster.kube.node(cluster.node)["status"]["conditions"]
    return any(c["type"] == "DiskPressure" and c["status"] == "True" for c in conditions)


def test_image_gc_frees_the_image_filesystem(cluster: Cluster, pods: Pods) -> None:
    local = cluster.require_local()
    pods.delete_all()  # nothing else of this module's for the kubelet to weigh
    workdir = short_tempdir("big")
    try:
        big = push_big_image(cluster.push_to, cluster.registry_host, workdir, BIG_IMAGE_MB)
    finally:
        for path in workdir.iterdir():
            path.unlink()
        workdir.rmdir()
    # The kubelet never evicts a critical pod: its image must survive the collection.
    keeper, _ = pods.run(
        "keeper",
        [container("main", pods.images.busybox, "sleep", "3600")],
        priorityClassName="system-node-critical",
    )
    unused = pods.images.web
    pulled, _ = pods.finish("unused", [container("main", unused, "true")])
    pods.delete(pulled)
    # The API object goes before the kubelet's container GC (every minute) removes the
    # pod's exited container: until then its image counts as used, and a collection
    # that came first kept it (seen once in a full run).
    _wait_no_containers_of(cluster, pulled)
    assert {big, unused} - _stored(cluster) == {big}

    # The big image takes the image filesystem past its threshold. Pulled by no pod, it
    # is used by none: the kubelet frees the space by removing every image no container
    # uses (once it has known an image for imageMinimumGCAge).
    spec = pb.ImageSpec(image=big)
    try:
        local.skiffd.images().PullImage(pb.PullImageRequest(image=spec), timeout=120)
        deadline = time.monotonic() + 90
        while big in _stored(cluster) and time.monotonic() < deadline:
            time.sleep(1)
        stored = _stored(cluster)
        assert big not in stored and unused not in stored, stored
        assert pods.images.busybox in stored  # the running pod's image stays
        assert container_status(pods.get(keeper), "main")["ready"] is True
        assert "Removing image to free bytes" in local.kubelet.log.read_text()
        while _disk_pressure(cluster) and time.monotonic() < deadline + 30:
            time.sleep(1)
        assert not _disk_pressure(cluster)
    finally:
        # Whatever failed above, the tests after this one must not find the node under
        # disk pressure (the kubelet evicts their pods).
        if big in _stored(cluster):
            local.skiffd.images().RemoveImage(pb.RemoveImageRequest(image=spec), timeout=60)
        end = time.monotonic() + 60
        while _disk_pressure(cluster) and time.monotonic() < end:
            time.sleep(1)
