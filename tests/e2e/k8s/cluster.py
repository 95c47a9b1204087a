"""The cluster the Kubernetes suite runs against, as the tests see it.

With ``SKIFF_E2E_KUBECONFIG`` set it is that cluster (any whose nodes run skiff: a kind
cluster, say), its images pushed to ``SKIFF_E2E_REGISTRY`` (host:port, plain HTTP,
reachable by the tests and the nodes). Unset, it is a node of the run's own
(tests/e2e/node.py) with registries on loopback. Tests that need the node's host (its
skiffd, kubelet, cgroups) run only on the local node.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.images import E2EImages, push_e2e_images
from tests.e2e.kube import Kube
from tests.e2e.node import LocalNode
from tests.integration import images as img
from tests.integration.registry import TestRegistry
from tests.integration.skiffd import short_tempdir

# The local node's image filesystem (skiff's root): small, so that one big image takes
# it past the kubelet's threshold and image GC can be driven by a test.
IMAGE_FS_MB = 512
IMAGE_FS_MIN_AVAILABLE = "50%"
BIG_IMAGE_MB = 300


@dataclass(frozen=True)
class RemoteRegistry:
    """A plain-HTTP registry given by address, as `img.push` wants it."""

    host: str

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def username(self) -> str | None:
        return None

    @property
    def password(self) -> str | None:
        return None

    def ssl_context(self) -> None:
        return None


@dataclass
class Cluster:
    kube: Kube
    node: str  # the node the suite's pods are bound to
    images: E2EImages
    push_to: img.RegistryEndpoint  # where the suite's images live
    registry_host: str  # ... as the nodes name it
    auth_registry: TestRegistry | None = None  # Basic auth; the local node only
    local: LocalNode | None = None

    def require_local(self) -> LocalNode:
        if self.local is None:
            pytest.skip("needs the suite's own node (its skiffd and kubelet)")
        return self.local


def _ready_skiff_node(kube: Kube) -> str:
    for node in kube.nodes():
        runtime = node["status"]["nodeInfo"]["containerRuntimeVersion"]
        ready = any(
            c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"]
        )
        if ready and runtime.startswith("skiff://"):
            return str(node["metadata"]["name"])
    raise AssertionError("no Ready node runs skiff in this cluster")


def clusters() -> Iterator[Cluster]:
    """The one cluster of a run: the kubeconfig's, or a local node brought up for it and
    checked for leftovers once the suite is done with it."""
    kubeconfig = os.environ.get("SKIFF_E2E_KUBECONFIG")
    if kubeconfig:
        host = os.environ.get("SKIFF_E2E_REGISTRY")
        if not host:
            raise pytest.UsageError("SKIFF_E2E_KUBECONFIG needs SKIFF_E2E_REGISTRY=host:port")
        kube = Kube(Path(kubeconfig))
        remote = RemoteRegistry(host)
        yield Cluster(kube, _ready_skiff_node(kube), push_e2e_images(remote, host), remote, host)
        return
    yield from _local_cluster()


def _local_cluster() -> Iterator[Cluster]:
    base = short_tempdir("k8s")
    with TestRegistry("insecure") as registry, TestRegistry("basic") as auth_registry:
        node = LocalNode(
            base,
            registries=(registry.host, auth_registry.host),
            image_fs_mb=IMAGE_FS_MB,
            kubelet_config={
                "evictionHard": {"imagefs.available": IMAGE_FS_MIN_AVAILABLE},
                "imageGCHighThresholdPercent": 50,
                "imageGCLowThresholdPercent": 40,
            },
        )
        try:
            node.start()
            kube = Kube(node.kubeconfig, health=node.check_running)
            images = push_e2e_images(registry, registry.host)
            yield Cluster(kube, node.name, images, registry, registry.host, auth_registry, node)
            node.check_pods_stopped()
        finally:
            node.stop()
            if not os.environ.get("SKIFF_E2E_KEEP_LOGS"):
                shutil.rmtree(base, ignore_errors=True)
        node.check_nothing_left()
