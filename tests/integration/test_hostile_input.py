"""Hostile input to the real skiffd's RuntimeService and ImageService, as a fuzzer or a
kubelet gone wrong would send it: every bad request gets a clear status (the right
code, a message naming the object and the problem, short enough to reach the client)
and leaves nothing behind."""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

from api.runtime.v1 import api_pb2 as pb
from api.runtime.v1 import api_pb2_grpc
from cri.containers import EXEC_SYNC_MAX_OUTPUT
from cri.errors import fit_status
from runtime.cgroups import hugepage_sizes
from tests.integration.nodes import (
    MakeNode,
    Node,
    _assert_no_container_leaks,
    assert_only_the_node_pod,
    container_config,
    sandbox_config,
)

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION

# Ids no object has: too long, far too long, NUL, newline, path-like, unicode.
ODD_IDS = ["a" * 65, "a" * 10_000, "x\0y", "a\nb", "/", "..", "../../etc", "ü", "%s%n"]


def _error(call: Callable[..., Any], request: Any) -> grpc.RpcError:
    try:
        call(request, timeout=30)
    except grpc.RpcError as err:
        return err
    raise AssertionError(f"{type(request).__name__} succeeded: {request!s:.300}")


def _expect(call: Callable[..., Any], request: Any, code: grpc.StatusCode, *words: str) -> str:
    """The call fails with `code`, a message holding `words` and fitting the trailers."""
    err = _error(call, request)
    details = err.details() or ""
    assert err.code() == code, f"{type(request).__name__}: {err.code()} {details[:300]}"
    assert len(fit_status(details)) == len(details)
    for word in words:
        assert word in details, f"{word!r} not in {details[:300]!r}"
    return details


# --- ids and image names -----------------------------------------------------------------


def test_odd_ids_and_image_names(make_node: MakeNode) -> None:
    node = make_node()
    rt, images = node.runtime, node.daemon.images()
    busybox = node.world.busybox
    for odd in ODD_IDS:
        for call, request, kind in (
            (rt.ContainerStatus, pb.ContainerStatusRequest(container_id=odd), "container"),
            (rt.StartContainer, pb.StartContainerRequest(container_id=odd), "container"),
            (rt.ExecSync, pb.ExecSyncRequest(container_id=odd, cmd=["true"]), "container"),
            (rt.ReopenContainerLog, pb.ReopenContainerLogRequest(container_id=odd), "container"),
            (
                rt.UpdateContainerResources,
                pb.UpdateContainerResourcesRequest(
                    container_id=odd, linux=pb.LinuxContainerResources()
                ),
                "container",
            ),
            (rt.ContainerStats, pb.ContainerStatsRequest(container_id=odd), "container"),
            (rt.Exec, pb.ExecRequest(container_id=odd, cmd=["true"], stdout=True), "container"),
            (rt.Attach, pb.AttachRequest(container_id=odd, stdout=True), "container"),
            (rt.PodSandboxStatus, pb.PodSandboxStatusRequest(pod_sandbox_id=odd), "sandbox"),
            (rt.PodSandboxStats, pb.PodSandboxStatsRequest(pod_sandbox_id=odd), "sandbox"),
            (rt.PortForward, pb.PortForwardRequest(pod_sandbox_id=odd, port=[80]), "sandbox"),
            (
                rt.UpdatePodSandboxResources,
                pb.UpdatePodSandboxResourcesRequest(pod_sandbox_id=odd),
                "sandbox",
            ),
            (
                rt.CreateContainer,
                pb.CreateContainerRequest(
                    pod_sandbox_id=odd, config=container_config("c", busybox, command=["true"])
                ),
                "sandbox",
            ),
        ):
            _expect(call, request, NOT_FOUND, kind, "not found", repr(odd)[:40])
        # Stopping or removing what is not there is fine (the CRI wants it idempotent).
        rt.StopContainer(pb.StopContainerRequest(container_id=odd), timeout=30)
        rt.RemoveContainer(pb.RemoveContainerRequest(container_id=odd), timeout=30)
        rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=odd), timeout=30)
        rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=odd), timeout=30)
    _expect(rt.ContainerStatus, pb.ContainerStatusRequest(), INVALID, "container id")
    _expect(rt.StopPodSandbox, pb.StopPodSandboxRequest(), INVALID, "sandbox id")

    # Image names that are no references, whatever the RPC.
    host = node.world.registry.host
    for name, problem in (
        ("UPPER/case", "lowercase"),
        ("a@sha256:short", "not a digest"),
        ("host:99999/x", "port 99999"),
        (f"{host}/" + "x" * 300, "longer than"),
        ("x" * 10_000, "longer than"),
        ("x\0y", "not a valid repository name"),
        ("a\nb", "white space"),
        ("../../etc", "not a registry host"),
    ):
        spec = pb.ImageSpec(image=name)
        _expect(images.PullImage, pb.PullImageRequest(image=spec), INVALID, problem)
        _expect(images.ImageStatus, pb.ImageStatusRequest(image=spec), INVALID, problem)
        _expect(images.RemoveImage, pb.RemoveImageRequest(image=spec), INVALID, problem)
        listing = pb.ListImagesRequest(filter=pb.ImageFilter(image=spec))
        _expect(images.ListImages, listing, INVALID, problem)
    # Malformed credentials are the client's fault (auth was FAILED_PRECONDITION), and a
    # line break must not reach an HTTP header.
    for auth, problem in (
        (pb.AuthConfig(auth="!!not base64"), "auth is not base64"),
        (pb.AuthConfig(auth="\x80dXNlcjpwdw=="), "auth is not base64"),  # was INTERNAL
        (pb.AuthConfig(username="u\r\nX-Evil: 1", password="p"), "username contains control"),
        (pb.AuthConfig(registry_token="t\nx"), "registry_token contains control"),
        # Not Latin-1: the header could not be encoded, and the error quoted the token.
        (pb.AuthConfig(registry_token="s3cret-\u20ac-token"), "registry_token has characters"),
    ):
        pull = pb.PullImageRequest(image=pb.ImageSpec(image=busybox), auth=auth)
        details = _expect(images.PullImage, pull, INVALID, problem)
        assert "s3cret" not in details
    empty = pb.ImageSpec()
    _expect(images.ImageStatus, pb.ImageStatusRequest(image=empty), INVALID, "image")
    _expect(images.RemoveImage, pb.RemoveImageRequest(image=empty), INVALID, "image")
    _expect(images.PullImage, pb.PullImageRequest(image=empty), INVALID, "image")
    # Nothing was pulled, half-pulled or lost; the node's pod is still there.
    listed = images.ListImages(pb.ListImagesRequest()).images
    assert sorted(tag for image in listed for tag in image.repo_tags) == sorted(
        [busybox, node.world.stopper]
    )
    pods = rt.ListPodSandbox(pb.ListPodSandboxRequest()).items
    assert [p.id for p in pods] == [node.pod]


# --- pods ------------------------------------------------------------------------------


def _pod_config(node: Node, name: str, **fields: Any) -> pb.PodSandboxConfig:
    config = sandbox_config(name, node.log_dir.parent / name)
    for key, value in fields.items():
        if isinstance(value, list):
            getattr(config, key).extend(value)
        elif isinstance(value, dict):
            getattr(config, key).update(value)
        elif isinstance(value, str):
            setattr(config, key, value)
        else:
            getattr(config, key).CopyFrom(value)
    return config


def _namespaces(**modes: int) -> pb.LinuxPodSandboxConfig:
    options = pb.NamespaceOption(**modes)  # type: ignore[arg-type]
    return pb.LinuxPodSandboxConfig(
        security_context=pb.LinuxSandboxSecurityContext(namespace_options=options)
    )


def test_bad_pods_are_refused_and_leave_nothing(make_node: MakeNode) -> None:
    node = make_node()
    run = node.runtime.RunPodSandbox
    relative_logs = f"hostile-relative-logs-{node.pod[:8]}"
    a_file = node.log_dir.parent / "a-file"
    a_file.write_text("not a directory")

    def refused(config: pb.PodSandboxConfig, *words: str) -> None:
        _expect(run, pb.RunPodSandboxRequest(config=config), INVALID, *words)

    # The hostname goes into the pod's /etc/hosts and /etc/hostname: no injected lines.
    for hostname in ("evil\n10.0.0.1 kubernetes.default", "a b", "a/b", "a\0b", "-a", "a."):
        refused(_pod_config(node, "hn", hostname=hostname), "'hn'", "hostname", repr(hostname))
    refused(_pod_config(node, "hn", hostname="a" * 65), "'hn'", "longer than 64 bytes")
    # DNS settings go into its resolv.conf: one word each, servers are addresses.
    for dns, what in (
        (pb.DNSConfig(servers=["10.0.0.10"], options=["ndots:5\nnameserver 6.6.6.6"]), "options"),
        (pb.DNSConfig(servers=["10.0.0.10\nsearch evil"]), "servers"),
        (pb.DNSConfig(servers=["evil.example"]), "not an IP address"),
        (pb.DNSConfig(searches=["a\0b"]), "searches"),
    ):
        refused(_pod_config(node, "dns", dns_config=dns), "dns_config", what)
    # Every ListPodSandbox answer carries them: Kubernetes' 256 KiB at most.
    refused(_pod_config(node, "big", annotations={"a": "x" * 300_000}), "annotations take")
    refused(_pod_config(node, "big", labels={"a": "x" * 300_000}), "labels take")
    # Name, namespace and uid go into CNI_ARGS (key=value;key=value) and logs.
    for field, value in (("name", "a;b"), ("name", "x=y"), ("namespace", "a\nb"), ("uid", "u\0")):
        config = _pod_config(node, "meta", hostname="meta")
        setattr(config.metadata, field, value)
        refused(config, f"config.metadata.{field}", repr(value))
    # The log directory must be absolute (not made in skiffd's working directory) and a
    # directory.
    refused(_pod_config(node, "rel", log_directory=relative_logs), "'rel'", "must be an absolute")
    refused(_pod_config(node, "nul", log_directory="/tmp/a\0b"), "'nul'", "log_directory")
    refused(_pod_config(node, "file", log_directory=str(a_file)), "'file'", "not a directory")
    # Port mappings: ports in range, a known protocol, an address to bind.
    for mapping, problem in (
        (pb.PortMapping(host_port=70000, container_port=80), "host_port"),
        (pb.PortMapping(host_port=-1, container_port=80), "host_port"),
        (pb.PortMapping(host_port=8080, container_port=0), "container_port"),
        (pb.PortMapping(host_port=8080, container_port=80, protocol=7), "protocol: 7"),  # type: ignore[arg-type]
        (pb.PortMapping(host_port=8080, container_port=80, host_ip="eth0"), "host_ip"),
    ):
        refused(_pod_config(node, "ports", port_mappings=[mapping]), "'ports'", problem)
    # Enum values protobuf lets through but the CRI does not name.
    for kind in ("network", "pid", "ipc"):
        config = _pod_config(node, "modes", linux=_namespaces(**{kind: 9}))
        refused(config, "'modes'", f"namespace_options.{kind}: 9 is not a valid value")
    for sysctl in ("net/../../kernel/x", "net.ipv4..x", "kernel.hostname"):
        linux = pb.LinuxPodSandboxConfig(sysctls={sysctl: "1"})
        refused(_pod_config(node, "sysctl", linux=linux), "sysctl", sysctl)
    config = _pod_config(node, "bw", annotations={"kubernetes.io/ingress-bandwidth": "9E"})
    refused(config, "ingress-bandwidth", "above 1P")
    # Digits no float holds (was INTERNAL OverflowError).
    huge = {"kubernetes.io/egress-bandwidth": "9" * 400}
    refused(_pod_config(node, "bw", annotations=huge), "egress-bandwidth", "above 1P")
    # A group of sysctls is no sysctl (was INTERNAL).
    for group in ("net.core", "net.ipv4.conf"):
        linux = pb.LinuxPodSandboxConfig(sysctls={group: "1"})
        refused(_pod_config(node, "sysctl", linux=linux), group, "names a group of sysctls")
    # Cgroup paths: no line break, no control file, no climbing (were INTERNAL).
    for parent, problem in (
        ("/fuzz\nx", "control characters"),
        ("/fuzz/cpu.shares", "'cpu.shares', a cgroup control file"),
        ("/tasks", "'tasks', a cgroup control file"),
        ("/a/../b", "'..' component"),
        ("/" + "c" * 300, "longer than 255 bytes"),
    ):
        linux = pb.LinuxPodSandboxConfig(cgroup_parent=parent)
        refused(_pod_config(node, "cg", linux=linux), "cgroup_parent", problem)
    # Paths the kernel or conmon would refuse late (were INTERNAL or UNKNOWN).
    long_name = str(node.log_dir.parent / ("l" * 300))
    refused(_pod_config(node, "ld", log_directory=long_name), "log_directory", "255 bytes")
    colon = str(node.log_dir.parent / "a:b")
    refused(_pod_config(node, "ld", log_directory=colon), "log_directory", "':'")

    # A pod that fails late (the kernel refuses a sysctl's value) takes back the log
    # directory it made, and everything else.
    late_logs = node.log_dir.parent / "late" / "logs"
    linux = pb.LinuxPodSandboxConfig(sysctls={"net.ipv4.conf.all.forwarding": "not-a-number"})
    config = _pod_config(node, "late", log_directory=str(late_logs), linux=linux)
    _expect(run, pb.RunPodSandboxRequest(config=config), INVALID, "net.ipv4.conf.all.forwarding")
    assert not (node.log_dir.parent / "late").exists()
    assert not Path(relative_logs).exists()
    assert_only_the_node_pod(node)

    # What the checks take: an FQDN hostname, IPv6 servers, options with values.
    dns = pb.DNSConfig(
        servers=["fd00::10", "10.0.0.10"], searches=["svc.local"], options=["ndots:5"]
    )
    good = _pod_config(node, "good", hostname="good-1.example_x", dns_config=dns)
    good.port_mappings.append(pb.PortMapping(host_port=0, container_port=80))
    pod = run(pb.RunPodSandboxRequest(config=good), timeout=30).pod_sandbox_id
    node.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=30)
    # A 64-byte FQDN, as the kubelet sends with setHostnameAsFQDN, is the pod's hostname.
    fqdn = "web-0.web." + "n" * 30 + ".svc.cluster.local"
    fqdn = fqdn + "x" * (64 - len(fqdn))
    config = _pod_config(node, "fqdn", hostname=fqdn)
    pod = run(pb.RunPodSandboxRequest(config=config), timeout=30).pod_sandbox_id
    status = node.runtime.PodSandboxStatus(
        pb.PodSandboxStatusRequest(pod_sandbox_id=pod, verbose=True)
    )
    assert json.loads(status.info["info"])["hostname"] == fqdn
    node.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=30)
    assert_only_the_node_pod(node)


# --- containers ------------------------------------------------------------------------


def _security(**fields: Any) -> pb.LinuxContainerConfig:
    context = pb.LinuxContainerSecurityContext(**fields)
    context.namespace_options.pid = context.namespace_options.pid or pb.NamespaceMode.CONTAINER
    return pb.LinuxContainerConfig(security_context=context)


def test_bad_containers_are_refused_and_leave_nothing(make_node: MakeNode) -> None:
    node = make_node()
    outside = node.daemon.base / "outside.log"
    a_file = node.daemon.base / "a-file"
    a_file.write_text("a file")

    def refused(name: str, *words: str, **config: Any) -> None:
        config.setdefault("command", ["true"])
        request = pb.CreateContainerRequest(
            pod_sandbox_id=node.pod, config=container_config(name, node.world.busybox, **config)
        )
        _expect(node.runtime.CreateContainer, request, INVALID, *words)

    for name in ("a/b", "a\nb", "n" * 300):
        refused(name, "config.metadata.name", repr(name)[:40], log_path="c.log")
    # The log goes below the pod's log directory, nowhere else.
    for log_path in (str(outside), "../../outside.log", "a/../../outside.log", "a\0b"):
        refused("logs", "'logs'", "log_path", repr(log_path)[:40], log_path=log_path)
    for mount, problem in (
        (pb.Mount(container_path="rel", host_path="/tmp"), "container path must be absolute"),
        (pb.Mount(container_path="", host_path="/tmp"), "container path must be absolute"),
        (pb.Mount(container_path="/x\0", host_path="/tmp"), "container path must be absolute"),
        (pb.Mount(container_path="/", host_path="/tmp"), "cannot replace the container's root"),
        (pb.Mount(container_path="/x/..", host_path="/tmp"), "cannot replace the container's"),
        # "" was skiffd's working directory, bind-mounted into the container.
        (pb.Mount(container_path="/x", host_path=""), "host path '' must be an absolute path"),
        (pb.Mount(container_path="/x", host_path="tmp"), "host path 'tmp' must be an absolute"),
        (pb.Mount(container_path="/x", host_path="/tmp", propagation=9), "propagation: 9"),  # type: ignore[arg-type]
        # Refused only once the image's root is there (were UNKNOWN from runc create).
        (pb.Mount(container_path="/etc", host_path=str(a_file)), "'/etc' is a directory in"),
        (pb.Mount(container_path="/etc/passwd", host_path="/tmp"), "is a file in the image"),
    ):
        refused("mounts", "'mounts'", problem, mounts=[mount])
    # Enum values protobuf lets through but the CRI does not name (some were INTERNAL).
    refused("pid", "namespace_options.pid: 9", linux=_security(namespace_options={"pid": 9}))
    refused("signal", "stop_signal: 999", stop_signal=999)
    for profile in ("seccomp", "apparmor"):
        linux = _security(**{profile: pb.SecurityProfile(profile_type=9)})  # type: ignore[arg-type]
        refused("profile", f"{profile}.profile_type: 9", linux=linux)
    # What runc would refuse only after the root filesystem was made.
    refused("argnul", "command", "NUL", command=["tr\0ue"])
    # An empty program, given or made of args (was UNKNOWN from runc create).
    refused("noprog", "'noprog'", "program to run is empty", command=[""])
    refused("noprog", "'noprog'", "program to run is empty", command=[], args=["", "x"])
    refused("argnul", "args", "NUL", command=["echo"], args=["a\0b"])
    swap_only = pb.LinuxContainerResources(memory_swap_limit_in_bytes=64 << 20)
    refused(
        "swap", "'swap'", "needs a memory limit", linux=pb.LinuxContainerConfig(resources=swap_only)
    )
    # Every ListContainers answer carries them: Kubernetes' 256 KiB at most.
    refused("big", "'big'", "annotations take", annotations={"a": "x" * 300_000})
    refused("big", "'big'", "labels take", labels={f"l{i}": "v" * 1000 for i in range(300)})
    refused("cwdnul", "working_dir", "NUL", working_dir="/a\0b")
    refused("envnul", "environment variable 'A'", envs={"A": "x\0y"})
    refused("envkey", "environment variable 'A=B'", envs={"A=B": "x"})
    refused("envkey", "environment variable ''", envs={"": "x"})
    for field in ("masked_paths", "readonly_paths"):
        refused("paths", f"{field} entry 'rel'", linux=_security(**{field: ["rel"]}))
        refused("paths", f"{field} cannot cover '/proc'", linux=_security(**{field: ["/proc"]}))
    # What exec(2), the kernel and conmon would refuse late (were UNKNOWN or INTERNAL).
    refused("argv", "argument", "exec takes at most", command=["echo", "x" * (200 * 1024)])
    refused("argv", "in all", command=["echo"], args=["y" * 100_000] * 12)
    refused("cwd", "working_dir", "longer than 4095", working_dir="/" + "d/" * 2100)
    refused("logs", "log_path", "':'", log_path="a:b.log")
    refused("logs", "log_path", "255 bytes", log_path="l" * 300)
    for device in (
        pb.Device(container_path="/dev/x", host_path="/dev/nu\0ll", permissions="rw"),
        pb.Device(container_path="/dev/x\0", host_path="/dev/null", permissions="rw"),
    ):
        refused("devnul", "device", "NUL byte", devices=[device])
    quota = pb.LinuxContainerConfig(resources=pb.LinuxContainerResources(cpu_quota=2**62))
    refused("quota", "cpu_quota", linux=quota)
    # CPUs the node does not have (was UNKNOWN from runc, after the rootfs was made).
    cpus = pb.LinuxContainerConfig(resources=pb.LinuxContainerResources(cpuset_cpus="0-999999"))
    refused("cpus", "cpuset_cpus '0-999999' names CPU", linux=cpus)
    pages = pb.LinuxContainerResources(hugepage_limits=[pb.HugepageLimit(page_size="3MB")])
    refused(
        "pages",
        "hugepage size '3MB' is not one this node has",
        linux=pb.LinuxContainerConfig(resources=pages),
    )
    assert not outside.exists()
    assert not (node.log_dir.parent / "outside.log").exists()
    _assert_no_container_leaks(node)
    assert_only_the_node_pod(node)

    # A log in a directory of its own below the pod's (kubelet style) is made there. A
    # limit of 0 for each huge page size the node has, as the kubelet sends, is taken
    # whether or not the node's cgroups have the hugetlb controller (runc failed without).
    sizes = hugepage_sizes() or ()
    limits = [pb.HugepageLimit(page_size=size, limit=0) for size in sorted(sizes)]
    linux = pb.LinuxContainerConfig(resources=pb.LinuxContainerResources(hugepage_limits=limits))
    container = node.run("sub", command=["echo", "hello"], log_path="sub/dir/0.log", linux=linux)
    node.wait_exit(container)
    assert node.status(container).status.log_path == str(node.log_dir / "sub" / "dir" / "0.log")
    assert "hello" in node.output(container)
    node.remove(container)
    _assert_no_container_leaks(node)


# --- exec and lifecycle ------------------------------------------------------------------


def _at_once(*calls: Callable[[], object]) -> None:
    """Run the calls concurrently; each must succeed."""
    with ThreadPoolExecutor(len(calls)) as pool:
        for future in [pool.submit(call) for call in calls]:
            future.result()


def test_exec_and_lifecycle_calls_in_the_wrong_state(make_node: MakeNode) -> None:
    node = make_node()
    rt = node.runtime
    cid = node.run("sleeper", command=["sleep", "1000"])
    for cmd, problem in (([], "cmd must not be empty"), ([""], "cmd must not be empty")):
        _expect(rt.ExecSync, pb.ExecSyncRequest(container_id=cid, cmd=cmd), INVALID, problem)
        streamed = pb.ExecRequest(container_id=cid, cmd=cmd, stdout=True)
        _expect(rt.Exec, streamed, INVALID, problem)
    nul = pb.ExecSyncRequest(container_id=cid, cmd=["echo", "a\0b"])
    _expect(rt.ExecSync, nul, INVALID, "NUL")  # was INTERNAL
    _expect(rt.Exec, pb.ExecRequest(container_id=cid, cmd=["ec\0ho"], stdout=True), INVALID, "NUL")
    # Past what exec(2) takes (was UNKNOWN from runc exec).
    long = pb.ExecSyncRequest(container_id=cid, cmd=["echo", "z" * (200 * 1024)])
    _expect(rt.ExecSync, long, INVALID, "cmd argument", "exec takes at most")
    # A program the container does not have, or that is no program (were UNKNOWN from
    # runc exec): the client's command, refused naming it.
    for program in ("no-such-program", "/etc"):
        missing = pb.ExecSyncRequest(container_id=cid, cmd=[program, "x"], timeout=10)
        _expect(rt.ExecSync, missing, PRECONDITION, cid, f"cmd {program!r} cannot be run")
    # A negative timeout is no timeout, as 0 is.
    assert node.exec(cid, "true", timeout=-5).exit_code == 0
    # Output beyond what one response can carry is cut, not a failed call (it was
    # RESOURCE_EXHAUSTED: the response exceeded 16 MiB). The client takes 16 MiB, as the
    # kubelet does.
    with grpc.insecure_channel(
        f"unix://{node.daemon.socket}",
        options=[("grpc.max_receive_message_length", 16 * 1024 * 1024)],
    ) as channel:
        big = api_pb2_grpc.RuntimeServiceStub(channel).ExecSync(
            pb.ExecSyncRequest(
                container_id=cid,
                cmd=["sh", "-c", "head -c 20000000 /dev/zero; head -c 20000000 /dev/zero >&2"],
                timeout=30,
            ),
            timeout=60,
        )
    assert big.exit_code == 0
    assert len(big.stdout) == len(big.stderr) == EXEC_SYNC_MAX_OUTPUT
    for resources, problem in (
        (pb.LinuxContainerResources(cpu_quota=2**62), "cpu_quota"),
        (pb.LinuxContainerResources(cpuset_cpus="0-999999"), "cpuset_cpus"),
        # The container has no memory limit for swap to add to (was UNKNOWN from runc).
        (pb.LinuxContainerResources(memory_swap_limit_in_bytes=1), "needs a memory limit"),
    ):
        update = pb.UpdateContainerResourcesRequest(container_id=cid, linux=resources)
        _expect(rt.UpdateContainerResources, update, INVALID, problem)
    for port in (0, 65536, -1):
        forward = pb.PortForwardRequest(pod_sandbox_id=node.pod, port=[port])
        _expect(rt.PortForward, forward, INVALID, f"port {port}")

    # Stopping (with a negative or huge timeout) and removing, twice and at once.
    _at_once(
        lambda: rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=-1)),
        lambda: rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=2**62)),
        lambda: rt.StopContainer(pb.StopContainerRequest(container_id=cid)),
    )
    exited = node.status(cid).status
    assert exited.state == pb.ContainerState.CONTAINER_EXITED
    wrong_state: list[tuple[Callable[..., Any], Any]] = [
        (rt.StartContainer, pb.StartContainerRequest(container_id=cid)),
        (rt.ExecSync, pb.ExecSyncRequest(container_id=cid, cmd=["true"])),
        (rt.Exec, pb.ExecRequest(container_id=cid, cmd=["true"], stdout=True)),
        (rt.Attach, pb.AttachRequest(container_id=cid, stdout=True)),
        (rt.ReopenContainerLog, pb.ReopenContainerLogRequest(container_id=cid)),
        (
            rt.UpdateContainerResources,
            pb.UpdateContainerResourcesRequest(
                container_id=cid, linux=pb.LinuxContainerResources(cpu_shares=512)
            ),
        ),
    ]
    for call, request in wrong_state:
        _expect(call, request, PRECONDITION, cid, "exited")
    _expect(
        node.daemon.images().RemoveImage,
        pb.RemoveImageRequest(image=pb.ImageSpec(image=node.world.busybox)),
        PRECONDITION,
        "used by a container",
    )
    remove = pb.RemoveContainerRequest(container_id=cid)
    _at_once(*[lambda: rt.RemoveContainer(remove, timeout=30)] * 4)
    rt.RemoveContainer(remove, timeout=30)
    rt.StopContainer(pb.StopContainerRequest(container_id=cid), timeout=30)
    _expect(rt.ContainerStatus, pb.ContainerStatusRequest(container_id=cid), NOT_FOUND, cid)
    # Filters on a state the CRI does not name match nothing.
    unknown_state = pb.ContainerFilter(state=pb.ContainerStateValue(state=9))  # type: ignore[arg-type]
    assert not rt.ListContainers(pb.ListContainersRequest(filter=unknown_state)).containers
    pod_filter = pb.PodSandboxFilter(state=pb.PodSandboxStateValue(state=9))  # type: ignore[arg-type]
    assert not rt.ListPodSandbox(pb.ListPodSandboxRequest(filter=pod_filter)).items

    # A stopped pod takes no containers; a removed one is not found; both calls twice
    # and at once are fine.
    config = sandbox_config("second", node.log_dir.parent / "second")
    pod = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=30).pod_sandbox_id
    in_pod = node.create("in-second", pod=pod, command=["sleep", "1000"])
    node.start(in_pod)
    stop = pb.StopPodSandboxRequest(pod_sandbox_id=pod)
    _at_once(*[lambda: rt.StopPodSandbox(stop, timeout=60)] * 3)
    create = pb.CreateContainerRequest(
        pod_sandbox_id=pod, config=container_config("late", node.world.busybox, command=["true"])
    )
    _expect(rt.CreateContainer, create, PRECONDITION, pod, "not ready")
    _expect(rt.PortForward, pb.PortForwardRequest(pod_sandbox_id=pod, port=[80]), PRECONDITION)
    removal = pb.RemovePodSandboxRequest(pod_sandbox_id=pod)
    _at_once(
        *[lambda: rt.RemovePodSandbox(removal, timeout=60)] * 3,
        lambda: rt.StopPodSandbox(stop, timeout=60),
    )
    rt.RemovePodSandbox(removal, timeout=60)
    _expect(rt.CreateContainer, create, NOT_FOUND, "sandbox", pod)
    _assert_no_container_leaks(node)
    assert_only_the_node_pod(node)
