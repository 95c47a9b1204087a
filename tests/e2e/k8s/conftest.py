"""Fixtures of the Kubernetes suite: the cluster, for this package only (its node is
stopped as soon as the package's last test is done), and a namespace per module."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from tests.e2e.k8s.cluster import Cluster, clusters
from tests.e2e.workloads import Pods


@pytest.fixture(scope="package")
def cluster() -> Iterator[Cluster]:
    yield from clusters()


@pytest.fixture(scope="module")
def pods(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[Pods]:
    """A namespace of the module's own; its pods are deleted at the end."""
    module = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    namespace = f"e2e-{module.replace('_', '-')}-{secrets.token_hex(3)}"
    cluster.kube.create_namespace(namespace)
    made = Pods(cluster.kube, namespace, cluster.node, cluster.images)
    try:
        yield made
    finally:
        made.delete_all()
        cluster.kube.delete_namespace(namespace)
