"""Streaming benchmark (issue 6): exec round trips and port-forward throughput, skiff
against containerd's CRI.

Both daemons run side by side, on the pod network and with the busybox image of
`bench.lifecycle` (pulled through each CRI first), and every measurement is taken on
one, then the other, in turns, so that a change in the load of the shared machine hits
both alike, with an untimed ``--pause-ms`` (50) after each, so that what a runtime still
does after answering (reaping, bookkeeping, events) does not land in the other's
measurement. Each runs one pod with one container whose PID 1 runs two busybox
``nc -ll`` servers:

- ``UPLOAD_PORT``: each connection runs ``dd of=/dev/null`` for exactly ``--size-mb``
  MB (blocks of 1 MB, ``iflag=fullblock``) and answers dd's record counts;
- ``DOWNLOAD_PORT``: each connection gets exactly ``--size-mb`` MB from ``/dev/zero``.

Then, client side, after ``--warmup`` untimed rounds of each:

1. **ExecSync** ``true``, ``--execs`` (100) times: the CRI RPC alone.
2. **streaming exec** ``true``, ``--execs`` times over SPDY/3.1 (``v4.channel.k8s.io``)
   and as many over WebSocket (``v5`` or ``v4.channel.k8s.io``): the Exec RPC, the HTTP
   upgrade on the URL it answers, the streams (error, stdout, stderr), until the
   exit status has come back on the error stream and the session is closed.
3. **port-forward**: ``--pf-runs`` (3) transfers of ``--size-mb`` (100) MB in each
   direction, each through a SPDY port-forward session of its own
   (``portforward.k8s.io``): PortForward RPC, upgrade, the data and error streams, and
   every byte (upload: until dd's answer is back; download: until the last byte is in;
   the stream's end is waited for untimed, as containerd sends its FIN about a second
   after the data). Also the daemon's CPU time (``/proc/<pid>/stat``) during each: both
   relay the bytes in the daemon process.

The client is the same for both runtimes: the SPDY/WebSocket client of skiff's
integration tests (`tests.integration.test_streaming`, on `cri.streaming.spdy` and
`cri.streaming.websocket`), in one asyncio loop in this process. skiff: skiffd through
`bench.lifecycle.skiff_target`; containerd: Debian's 1.6 and 2.x (``--peers``), all
side by side, through `bench.lifecycle.containerd_target` (its streaming server on a
free loopback port).

Printed: p50/p99 of each round trip with the ratio skiff/containerd (lower is
better), throughput in MB/s (MB = 10^6 bytes; median of the runs) with the ratio
skiff/containerd (higher is better), the daemons' CPU per transfer (median), and the
targets: no slower than containerd. Exit status 0 whatever the numbers; 1 when the
benchmark could not run.

Run as root from the repository root: ``make bench-streaming`` or
``.venv/bin/python -m bench.streaming``.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from api.runtime.v1 import api_pb2 as pb
from bench import lifecycle
from bench.lifecycle import (
    Target,
    containerd_target,
    push_images,
    remove_all,
    skiff_target,
    wait_ready,
)
from bench.peer import (
    BenchError,
    Cell,
    add_peers_option,
    add_skiff_log_level,
    cpu_seconds,
    percentile,
    pod_bench,
    ratio,
    resolve_peers,
    run_main,
    table_header,
    table_row,
    tail,
    temp_base,
)
from tests.integration.test_streaming import (
    PORTFORWARD_HEADERS,
    drain,
    spdy_exec,
    spdy_session,
    ws_exec,
)

RPC_TIMEOUT = 60.0
TRANSFER_TIMEOUT = 300.0
UPLOAD_PORT = 9001
DOWNLOAD_PORT = 9002
MB = 1_000_000
#: Width of the row labels of the report's tables.
LABEL_WIDTH = 28
ROUND_TRIPS = ("ExecSync", "exec over SPDY", "exec over WebSocket")
DIRECTIONS = ("upload into the pod", "download from the pod")


def server_command(size_mb: int) -> list[str]:
    """PID 1 of the benchmark's container: two persistent ``nc`` servers (one process
    per connection, its socket as stdin/stdout), ``ready`` once they are started; exits
    0 on SIGTERM."""
    return [
        "sh",
        "-c",
        "trap 'exit 0' TERM; "
        f"nc -ll -p {UPLOAD_PORT} -e sh -c "
        f"'dd of=/dev/null bs={MB} count={size_mb} iflag=fullblock 2>&1' & "
        f"nc -ll -p {DOWNLOAD_PORT} -e sh -c "
        f"'dd if=/dev/zero bs={MB} count={size_mb} 2>/dev/null' & "
        "echo ready; wait",
    ]


# --------------------------------------------------------------------------------------
# The measurements
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    execs: int
    warmup: int
    pf_runs: int
    #: seconds between two measurements (untimed)
    pause: float
    size_mb: int
    log_level: str
    peers: str | None = None


@dataclass
class Result:
    #: seconds per round trip, by kind (ROUND_TRIPS)
    round_trips: dict[str, list[float]] = field(default_factory=dict)
    #: seconds per transfer of the whole size, by direction (DIRECTIONS)
    transfers: dict[str, list[float]] = field(default_factory=dict)
    #: the daemon's CPU time (user + system) during each transfer, by direction
    cpu: dict[str, list[float]] = field(default_factory=dict)
    #: why a kind of measurement could not be made against this runtime
    failures: dict[str, str] = field(default_factory=dict)
    #: processes in the container after the run besides its servers (exec leftovers)
    leftovers: list[str] = field(default_factory=list)


def _rpc_error(target: Target, rpc: str, exc: grpc.RpcError) -> BenchError:
    return BenchError(
        f"{target.name}: {rpc} failed: {exc.code()} {exc.details()}\n{tail(target.log_path)}"
    )


def start_server_pod(target: Target, image: str, log_root: Path, opts: Options) -> tuple[str, str]:
    """The pod and its container with the nc servers, running and ready (untimed)."""
    config = lifecycle.pod_config(f"s{secrets.token_hex(3)}", 0, log_root)
    container = lifecycle.container_config("srv", image)
    del container.command[:]
    container.command.extend(server_command(opts.size_mb))
    rt = target.runtime
    try:
        sandbox_id: str = rt.RunPodSandbox(
            pb.RunPodSandboxRequest(config=config), timeout=RPC_TIMEOUT
        ).pod_sandbox_id
        container_id: str = rt.CreateContainer(
            pb.CreateContainerRequest(
                pod_sandbox_id=sandbox_id, config=container, sandbox_config=config
            ),
            timeout=RPC_TIMEOUT,
        ).container_id
        rt.StartContainer(pb.StartContainerRequest(container_id=container_id), timeout=RPC_TIMEOUT)
    except grpc.RpcError as exc:
        raise _rpc_error(target, "starting the server pod", exc) from None
    wait_ready(target, Path(config.log_directory) / "srv_0.log")
    return sandbox_id, container_id


def exec_sync(target: Target, container_id: str) -> float:
    start = time.perf_counter()
    try:
        response = target.runtime.ExecSync(
            pb.ExecSyncRequest(container_id=container_id, cmd=["true"], timeout=30),
            timeout=RPC_TIMEOUT,
        )
    except grpc.RpcError as exc:
        raise _rpc_error(target, "ExecSync(true)", exc) from None
    elapsed = time.perf_counter() - start
    if response.exit_code != 0:
        raise BenchError(f"{target.name}: ExecSync(true) exited with {response.exit_code}")
    return elapsed


def _exec_url(target: Target, container_id: str) -> str:
    try:
        url: str = target.runtime.Exec(
            pb.ExecRequest(container_id=container_id, cmd=["true"], stdout=True, stderr=True),
            timeout=RPC_TIMEOUT,
        ).url
    except grpc.RpcError as exc:
        raise _rpc_error(target, "Exec(true)", exc) from None
    return url


async def streaming_exec(target: Target, container_id: str, websocket: bool) -> float:
    """One streaming exec of ``true``: RPC, upgrade, streams, exit status back."""
    start = time.perf_counter()
    url = _exec_url(target, container_id)
    async with asyncio.timeout(RPC_TIMEOUT):
        result = await (ws_exec(url) if websocket else spdy_exec(url))
    elapsed = time.perf_counter() - start
    if result.status.get("status") != "Success":
        raise BenchError(
            f"{target.name}: streaming exec of true ended with status {result.status} "
            f"(stdout {result.stdout[:200]!r}, stderr {result.stderr[:200]!r}) from {url}"
        )
    return elapsed


def _portforward_url(target: Target, sandbox_id: str, port: int) -> str:
    try:
        url: str = target.runtime.PortForward(
            pb.PortForwardRequest(pod_sandbox_id=sandbox_id, port=[port]), timeout=RPC_TIMEOUT
        ).url
    except grpc.RpcError as exc:
        raise _rpc_error(target, "PortForward", exc) from None
    return url


async def transfer(target: Target, sandbox_id: str, upload: bool, size_mb: int) -> float:
    """``size_mb`` MB through one port-forward connection, into the pod or out of it;
    seconds from the PortForward RPC until the last byte is in (upload: dd's answer is
    back; download: every byte received). The end of the stream is waited for, untimed:
    containerd sends its FIN about a second after the data."""
    block = secrets.token_bytes(MB)
    port = UPLOAD_PORT if upload else DOWNLOAD_PORT
    expected = size_mb * MB
    start = time.perf_counter()
    url = _portforward_url(target, sandbox_id, port)
    async with spdy_session(url, PORTFORWARD_HEADERS, expect_protocol="portforward.k8s.io") as s:
        headers = {"port": str(port), "requestid": "0"}
        error = await s.open_stream({**headers, "streamtype": "error"})
        data = await s.open_stream({**headers, "streamtype": "data"})
        received = 0
        answer = b""
        if upload:
            for _ in range(size_mb):
                await data.write(block)
            while b"records out" not in answer and (chunk := await data.read()):
                answer += chunk
            if f"{size_mb}+0 records in".encode() in answer:
                received = expected
        else:
            while received < expected and (chunk := await data.read()):
                received += len(chunk)
        elapsed = time.perf_counter() - start
        rest = await drain(data)  # upload: the end of dd's answer at most
        if received != expected or (rest and not upload):
            problem = b""
            with suppress(Exception):
                async with asyncio.timeout(1):
                    problem = await drain(error)
            what = f"dd answered {answer[:200]!r}" if upload else f"{received} bytes arrived"
            raise BenchError(
                f"{target.name}: port-forward {'upload' if upload else 'download'} of "
                f"{size_mb} MB: {what}, then {len(rest)} more; error stream: {problem[:300]!r}"
            )
    return elapsed


@dataclass
class Runner:
    """One runtime under test with its server pod, and what was measured on it."""

    target: Target
    #: its column head
    label: str
    sandbox_id: str = ""
    container_id: str = ""
    result: Result = field(default_factory=Result)

    @property
    def name(self) -> str:
        return self.target.name


def _round(runners: Sequence[Runner], one: Callable[[Runner], float], pause: float) -> list[float]:
    """One measurement on each runtime, in turn, each followed by ``pause`` seconds:
    the work a runtime does after answering (reaping, bookkeeping, events) must not
    land in the other's measurement."""
    times = []
    for runner in runners:
        times.append(one(runner))
        time.sleep(pause)
    return times


async def _round_async(
    runners: Sequence[Runner], one: Callable[[Runner], Awaitable[float]], pause: float
) -> list[float]:
    times = []
    for runner in runners:
        times.append(await one(runner))
        await asyncio.sleep(pause)
    return times


def _show(kind: str, runners: Sequence[Runner]) -> None:
    """The progress line of one kind of round trip, on stderr."""
    parts = []
    for runner in runners:
        times = runner.result.round_trips.get(kind)
        if times:
            parts.append(
                f"{runner.name} p50 {percentile(times, 50) * 1000:.1f} ms "
                f"p99 {percentile(times, 99) * 1000:.1f} ms"
            )
    print(f"  {kind:<22} " + "; ".join(parts), file=sys.stderr)


def exec_sync_rounds(runners: Sequence[Runner], opts: Options) -> None:
    for i in range(opts.warmup + opts.execs):
        times = _round(runners, lambda r: exec_sync(r.target, r.container_id), opts.pause)
        if i >= opts.warmup:
            for runner, elapsed in zip(runners, times, strict=True):
                runner.result.round_trips.setdefault("ExecSync", []).append(elapsed)
    _show("ExecSync", runners)


async def streaming_rounds(runners: Sequence[Runner], opts: Options) -> None:
    """Streaming execs over each transport, then the transfers, each runtime in turn
    (a runtime a transport fails on is left out of that transport's rounds)."""
    for kind, websocket in (("exec over SPDY", False), ("exec over WebSocket", True)):
        active = list(runners)
        for i in range(opts.warmup + opts.execs):
            for runner in list(active):
                try:
                    elapsed = await streaming_exec(runner.target, runner.container_id, websocket)
                    await asyncio.sleep(opts.pause)
                except BenchError:
                    raise
                except Exception as exc:  # a transport the peer does not speak: reported
                    runner.result.failures[kind] = f"{type(exc).__name__}: {exc}"
                    print(f"  {runner.name}: {kind} failed: {exc!r}", file=sys.stderr)
                    active.remove(runner)
                    continue
                if i >= opts.warmup:
                    runner.result.round_trips.setdefault(kind, []).append(elapsed)
        _show(kind, runners)
    for direction in DIRECTIONS:
        upload = direction == DIRECTIONS[0]

        async def move(runner: Runner, upload: bool = upload, direction: str = direction) -> float:
            before = cpu_seconds(runner.target.pid)
            async with asyncio.timeout(TRANSFER_TIMEOUT):
                elapsed = await transfer(runner.target, runner.sandbox_id, upload, opts.size_mb)
            used = cpu_seconds(runner.target.pid) - before
            runner.result.cpu.setdefault(direction, []).append(used)
            return elapsed

        await _round_async(runners, move, opts.pause)  # warm-up
        for runner in runners:
            runner.result.cpu[direction].clear()
        for _ in range(opts.pf_runs):
            times = await _round_async(runners, move, opts.pause)
            for runner, elapsed in zip(runners, times, strict=True):
                runner.result.transfers.setdefault(direction, []).append(elapsed)
        speeds = "; ".join(
            f"{r.name} " + ", ".join(f"{opts.size_mb / t:.0f}" for t in times_of(r, direction))
            for r in runners
        )
        print(f"  {direction:<22} {speeds} MB/s", file=sys.stderr)


def times_of(runner: Runner, direction: str) -> list[float]:
    return runner.result.transfers.get(direction, [])


def leftover_processes(target: Target, container_id: str) -> list[str]:
    """Processes in the container besides PID 1's shell and its nc servers (and the ps
    that lists them): what the execs left behind."""
    response = target.runtime.ExecSync(
        pb.ExecSyncRequest(container_id=container_id, cmd=["ps", "-o", "pid,args"], timeout=10),
        timeout=RPC_TIMEOUT,
    )
    found: list[str] = []
    for line in response.stdout.decode(errors="replace").splitlines()[1:]:
        fields = line.split(None, 1)
        args = fields[1] if len(fields) == 2 else ""
        if args.startswith(("sh -c trap", "nc -ll", "ps -o")):
            continue
        found.append(line.strip())
    return found


def measure(runners: Sequence[Runner], image: str, log_root: Path, opts: Options) -> None:
    """Every measurement, the runtimes taking turns (so a change in the load of the
    shared machine hits both alike); the pods are removed at the end."""
    try:
        for runner in runners:
            runner.sandbox_id, runner.container_id = start_server_pod(
                runner.target, image, log_root, opts
            )
        exec_sync_rounds(runners, opts)
        asyncio.run(streaming_rounds(runners, opts))
        time.sleep(0.5)  # execs that outlive their session would show up now
        for runner in runners:
            runner.result.leftovers = leftover_processes(runner.target, runner.container_id)
    finally:
        for runner in runners:
            with suppress(grpc.RpcError):
                remove_all(runner.target)


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def _verdict(label: str, value: str, ok: bool) -> str:
    return f"  {label:<58}{value:>8}   " + ("PASS" if ok else "MISS")


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def report(skiff: Runner, peers: Sequence[Runner], opts: Options) -> str:
    head = [p.label for p in peers]
    ours = skiff.result
    lines = [
        f"streaming: exec of `true` {opts.execs} times each (after {opts.warmup} untimed), "
        f"port-forward of {opts.size_mb} MB x {opts.pf_runs} each way; client side",
        "",
        table_header("round trips (lower is better)", LABEL_WIDTH, head),
    ]
    verdicts: list[str] = []
    for kind in ROUND_TRIPS:
        a = ours.round_trips.get(kind)
        bs = [p.result.round_trips.get(kind) for p in peers]
        for q in (50, 99):
            label = f"{kind if q == 50 else '':<22}p{q}"
            x = percentile(a, q) if a else None
            cells: list[Cell] = []
            for b in bs:
                y = percentile(b, q) if b else None
                ratio_to = None if x is None or y is None else ratio(x, y)
                cells.append((_ms(y) if y is not None else "failed", ratio_to))
            lines.append(
                table_row(label, _ms(x) if x is not None else "failed", cells, LABEL_WIDTH)
            )
        for peer, b in zip(peers, bs, strict=True):
            if a and b:
                p50 = ratio(percentile(a, 50), percentile(b, 50))
                verdicts.append(
                    _verdict(f"{kind} p50 ratio <= 1.0 ({peer.label})", f"{p50:.2f}", p50 <= 1.0)
                )
    lines += [
        "",
        table_header(f"port-forward, {opts.size_mb} MB (higher)", LABEL_WIDTH, head),
    ]

    def speed(runner: Runner, direction: str) -> float | None:
        times = runner.result.transfers.get(direction)
        return opts.size_mb / statistics.median(times) if times else None

    def cpu(runner: Runner, direction: str) -> float | None:
        used = runner.result.cpu.get(direction)
        return statistics.median(used) if used else None

    for direction in DIRECTIONS:
        a_s = speed(skiff, direction)
        cells = []
        for peer in peers:
            b_s = speed(peer, direction)
            shown = f"{b_s:.0f} MB/s" if b_s is not None else "failed"
            cells.append((shown, None if a_s is None or b_s is None else ratio(a_s, b_s)))
            if a_s is not None and b_s is not None:
                verdicts.append(
                    _verdict(
                        f"port-forward {direction.split()[0]} MB/s ratio >= 1.0 ({peer.label})",
                        f"{a_s / b_s:.2f}",
                        a_s >= b_s,
                    )
                )
        ours_shown = f"{a_s:.0f} MB/s" if a_s is not None else "failed"
        lines.append(table_row(direction, ours_shown, cells, LABEL_WIDTH))
    for direction in DIRECTIONS:
        a_c = cpu(skiff, direction)
        cells = []
        for peer in peers:
            b_c = cpu(peer, direction)
            shown = f"{b_c * 1000:.0f} ms" if b_c is not None else "failed"
            cells.append((shown, None if a_c is None or b_c is None else ratio(a_c, b_c)))
        ours_shown = f"{a_c * 1000:.0f} ms" if a_c is not None else "failed"
        lines.append(
            table_row(f"daemon CPU per {direction.split()[0]}", ours_shown, cells, LABEL_WIDTH)
        )
    everyone = (skiff, *peers)
    for runner in everyone:
        for kind, why in runner.result.failures.items():
            lines.append(f"{runner.label}: {kind} could not run: {why}")
    lines += [
        "",
        "processes left in the container after the execs: "
        + "; ".join(
            f"{r.label} {', '.join(r.result.leftovers) if r.result.leftovers else 'none'}"
            for r in everyone
        ),
        "",
        "targets (issue 6): skiff no slower than containerd",
        *verdicts,
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def bench(opts: Options) -> str:
    kinds = resolve_peers(opts.peers, "`make bench-streaming` installs it")
    with pod_bench("stm") as env:
        registry, log_root = env.registry, env.log_root
        images = push_images(registry)
        busybox, image, sandbox_image = images.busybox, images.image, images.sandbox_image

        with (
            temp_base("stmd") as skiff_base,
            skiff_target(skiff_base, env.skiff_conf, registry.host, opts.log_level) as skiff,
            ExitStack() as stack,
        ):
            runners = [Runner(skiff, "skiff")]
            pulled = images.pulled
            for kind in kinds:
                ctrd = stack.enter_context(
                    containerd_target(kind, registry.host, sandbox_image, env.ctrd_conf, pulled)
                )
                runners.append(Runner(ctrd, kind.label))
            if skiff.pull(image) != busybox.config_digest:
                raise BenchError(f"skiff pulled {image} as another image")
            measure(runners, image, log_root, opts)
    return report(runners[0], runners[1:], opts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.streaming",
        description="Exec round trips and port-forward throughput: skiff against containerd's CRI.",
    )
    parser.add_argument("--execs", type=int, default=100, help="round trips of each kind (100)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed round trips first (5)")
    parser.add_argument("--pf-runs", type=int, default=3, help="transfers each way (3)")
    parser.add_argument(
        "--pause-ms", type=int, default=50, help="untimed pause after each measurement (50)"
    )
    parser.add_argument("--size-mb", type=int, default=100, help="MB per transfer (100)")
    add_peers_option(parser)
    add_skiff_log_level(parser, "nothing here")
    args = parser.parse_args(argv)
    if args.execs < 2 or args.warmup < 0 or args.pf_runs < 1 or args.size_mb < 1:
        parser.error("--execs >= 2, --warmup >= 0, --pf-runs >= 1, --size-mb >= 1")
    if args.pause_ms < 0:
        parser.error("--pause-ms must be at least 0")
    opts = Options(
        args.execs,
        args.warmup,
        args.pf_runs,
        args.pause_ms / 1000,
        args.size_mb,
        args.skiff_log_level,
        args.peers,
    )
    return run_main("bench.streaming", lambda: bench(opts))


if __name__ == "__main__":
    sys.exit(main())
