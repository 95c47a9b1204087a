"""What a pod's containers share and see: localhost, emptyDir, configMap and secret
volumes, a hostPort, the pod's DNS settings and hostname."""

from __future__ import annotations

import base64
import http.client
import time

from tests.e2e.images import WEB_PAGE, WEB_PORT
from tests.e2e.k8s.cluster import Cluster
from tests.e2e.workloads import Pods, container, shell
from tests.integration.registry import LOOPBACK, free_port


def test_containers_of_a_pod_share_localhost_and_an_empty_dir(pods: Pods) -> None:
    shared = [{"name": "shared", "mountPath": "/shared"}]
    web = container("web", pods.images.web, volumeMounts=shared)
    client = shell(
        "client",
        pods.images.busybox,
        f"until wget -q -O /shared/fetched http://127.0.0.1:{WEB_PORT}/; do sleep 0.2; done;"
        " sleep 3600",
        volumeMounts=shared,
    )
    name, _ = pods.run("share", [web, client], volumes=[{"name": "shared", "emptyDir": {}}])
    # What the client fetched over localhost, written where the web container reads it.
    deadline = time.monotonic() + 30
    while True:
        # Not there yet until the client's first fetch has worked.
        read = pods.kube.exec(pods.namespace, name, ["cat", "/shared/fetched"], container="web")
        if read.stdout == WEB_PAGE:
            break
        assert time.monotonic() < deadline, f"client fetched {read}"
        time.sleep(0.2)


def test_config_map_and_secret_volumes(pods: Pods) -> None:
    pods.create_object(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "settings"},
            "data": {"greeting": "hello from a configmap\n", "mode": "e2e"},
        }
    )
    pods.create_object(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "credentials"},
            "data": {"password": base64.b64encode(b"s3cret-value").decode()},
        }
    )
    reader = shell(
        "reader",
        pods.images.busybox,
        "cat /config/greeting /config/mode; echo; cat /secret/password; echo;"
        " stat -L -c '%a' /secret/password; touch /config/new 2>&1 || true",
        volumeMounts=[
            {"name": "config", "mountPath": "/config"},
            {"name": "secret", "mountPath": "/secret"},
        ],
    )
    name, pod = pods.finish(
        "volumes",
        [reader],
        volumes=[
            {"name": "config", "configMap": {"name": "settings"}},
            {"name": "secret", "secret": {"secretName": "credentials", "defaultMode": 0o400}},
        ],
    )
    assert pod["status"]["phase"] == "Succeeded"
    lines = pods.logs(name).splitlines()
    assert lines[:4] == ["hello from a configmap", "e2e", "s3cret-value", "400"]
    assert "Read-only file system" in lines[4]


def _http_get(host: str, port: int, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        connection = http.client.HTTPConnection(host, port, timeout=5)
        try:
            connection.request("GET", "/")
            return connection.getresponse().read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
        finally:
            connection.close()


def test_a_host_port_reaches_the_pod(cluster: Cluster, pods: Pods) -> None:
    port = free_port()
    web = container("web", pods.images.web, ports=[{"containerPort": WEB_PORT, "hostPort": port}])
    pods.run("hostport", [web])
    if cluster.local is not None:
        # On the suite's own node: the host's loopback, through portmap's DNAT.
        assert _http_get(LOOPBACK, port) == WEB_PAGE
    node = cluster.kube.node(cluster.node)
    address = next(a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP")
    assert _http_get(address, port) == WEB_PAGE


def test_dns_config_and_hostname(cluster: Cluster, pods: Pods) -> None:
    name, pod = pods.run(
        "dns",
        [container("main", pods.images.busybox, "sleep", "3600")],
        hostname="custom-host",
        subdomain="sub",
        dnsConfig={"options": [{"name": "ndots", "value": "2"}], "searches": ["example.test"]},
    )
    resolv = pods.exec(name, "cat", "/etc/resolv.conf").splitlines()
    search = next(line.split()[1:] for line in resolv if line.startswith("search "))
    domain = "cluster.local"
    if cluster.local is not None:
        assert "nameserver 10.96.0.10" in resolv
    else:
        domain = search[1].removeprefix("svc.")
    assert search[:3] == [f"{pods.namespace}.svc.{domain}", f"svc.{domain}", domain]
    assert search[-1] == "example.test"
    assert "options ndots:2" in resolv
    assert pods.exec(name, "hostname").strip() == "custom-host"
    hosts = pods.exec(name, "cat", "/etc/hosts")
    fqdn = f"custom-host.sub.{pods.namespace}.svc.{domain}"
    assert any(
        line.split()[:1] == [pod["status"]["podIP"]] and fqdn in line.split()
        for line in hosts.splitlines()
    ), hosts
