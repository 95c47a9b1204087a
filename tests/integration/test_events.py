"""GetContainerEvents under the real skiffd: every subscriber sees a container's life in
order, exits come from conmon's exit file without a status call, and a subscriber that
never reads holds nothing up."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from api.runtime.v1 import api_pb2 as pb
from tests.integration.nodes import MakeNode, Node, sandbox_config

CREATED = pb.ContainerEventType.CONTAINER_CREATED_EVENT
STARTED = pb.ContainerEventType.CONTAINER_STARTED_EVENT
STOPPED = pb.ContainerEventType.CONTAINER_STOPPED_EVENT
DELETED = pb.ContainerEventType.CONTAINER_DELETED_EVENT


class Subscriber:
    """Reads one GetContainerEvents stream on a thread into a queue."""

    def __init__(self, node: Node) -> None:
        self.stream: Any = node.runtime.GetContainerEvents(pb.GetEventsRequest())
        self.events: queue.Queue[pb.ContainerEventResponse] = queue.Queue()
        self.error: grpc.RpcError | None = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for event in self.stream:
                self.events.put(event)
        except grpc.RpcError as exc:
            self.error = exc

    def take(self, count: int, of: str, timeout: float = 20) -> list[pb.ContainerEventResponse]:
        """The next ``count`` events about object ``of``, skipping others."""
        found: list[pb.ContainerEventResponse] = []
        deadline = time.monotonic() + timeout
        while len(found) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"got only {found} about {of} in {timeout}s")
            try:
                event = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if event.container_id == of:
                found.append(event)
        return found

    def close(self) -> None:
        self.stream.cancel()
        self.thread.join(5)


@pytest.fixture
def subscribers() -> Iterator[list[Subscriber]]:
    made: list[Subscriber] = []
    yield made
    for subscriber in made:
        subscriber.close()


def _wait_subscribed(node: Node, subscribers: list[Subscriber]) -> None:
    """A stream is open on the server once its call has started; a throwaway pod's
    events show that every subscriber is receiving."""
    pod = node.runtime.RunPodSandbox(
        pb.RunPodSandboxRequest(config=sandbox_config("probe", node.log_dir)), timeout=30
    ).pod_sandbox_id
    for subscriber in subscribers:
        subscriber.take(2, pod)


def test_two_subscribers_see_a_container_life_in_order(
    make_node: MakeNode, subscribers: list[Subscriber]
) -> None:
    node = make_node()
    subscribers.extend([Subscriber(node), Subscriber(node)])
    _wait_subscribed(node, subscribers)

    cid = node.create("short", command=["sh", "-c", "sleep 0.5; exit 7"])
    node.start(cid)
    # No status call until the STOPPED event: the exit is noticed from conmon's file.
    for subscriber in subscribers:
        created, started, stopped = subscriber.take(3, cid)
        assert [created.container_event_type, started.container_event_type] == [
            CREATED,
            STARTED,
        ]
        assert stopped.container_event_type == STOPPED
        assert created.created_at < started.created_at < stopped.created_at
        assert stopped.pod_sandbox_status.id == node.pod
        assert stopped.pod_sandbox_status.metadata.uid == "uid-pod"
        mine = [s for s in stopped.containers_statuses if s.id == cid]
        assert len(mine) == 1
        assert mine[0].state == pb.ContainerState.CONTAINER_EXITED
        assert mine[0].exit_code == 7
        assert [s.id for s in started.containers_statuses if s.id == cid] == [cid]
        assert started.containers_statuses[0].state == pb.ContainerState.CONTAINER_RUNNING

    node.remove(cid)
    for subscriber in subscribers:
        (deleted,) = subscriber.take(1, cid)
        assert deleted.container_event_type == DELETED
        assert cid not in [s.id for s in deleted.containers_statuses]

    # The pod's own changes come as events about the sandbox id.
    node.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=node.pod), timeout=30)
    node.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=node.pod), timeout=30)
    for subscriber in subscribers:
        stopped, deleted = subscriber.take(2, node.pod)
        assert [stopped.container_event_type, deleted.container_event_type] == [STOPPED, DELETED]
        assert deleted.pod_sandbox_status.state == pb.PodSandboxState.SANDBOX_NOTREADY
        assert subscriber.error is None


def test_stop_and_kill_from_outside_are_events(
    make_node: MakeNode, subscribers: list[Subscriber]
) -> None:
    node = make_node()
    subscriber = Subscriber(node)
    subscribers.append(subscriber)
    _wait_subscribed(node, [subscriber])
    stopped_by_rpc = node.run("by-rpc", command=["sleep", "600"])
    killed = node.run("killed", command=["sleep", "600"])
    subscriber.take(2, stopped_by_rpc)
    subscriber.take(2, killed)

    node.runtime.StopContainer(
        pb.StopContainerRequest(container_id=stopped_by_rpc, timeout=0), timeout=30
    )
    (event,) = subscriber.take(1, stopped_by_rpc)
    assert event.container_event_type == STOPPED

    # Killed behind skiff's back: only conmon's exit file tells.
    pid = json.loads(node.status(killed, verbose=True).info["info"])["pid"]
    os.kill(pid, signal.SIGKILL)
    (event,) = subscriber.take(1, killed)
    assert event.container_event_type == STOPPED
    mine = [s for s in event.containers_statuses if s.id == killed]
    assert mine[0].exit_code == 137
    # Exactly one STOPPED each, even though stop and the exit file both saw it.
    time.sleep(0.5)
    extra = [subscriber.events.get_nowait() for _ in range(subscriber.events.qsize())]
    assert [e for e in extra if e.container_id in (stopped_by_rpc, killed)] == []


def test_a_subscriber_that_never_reads_does_not_stall_the_runtime(
    make_node: MakeNode, subscribers: list[Subscriber]
) -> None:
    node = make_node()
    # A raw stream nobody iterates: its messages pile up on the server.
    stuck = node.runtime.GetContainerEvents(pb.GetEventsRequest())
    try:
        reader = Subscriber(node)
        subscribers.append(reader)
        _wait_subscribed(node, [reader])
        started = time.monotonic()
        ids = []
        for index in range(8):
            ids.append(node.run(f"c{index}", command=["true"]))
        assert time.monotonic() - started < 30
        for cid in ids:
            kinds = [e.container_event_type for e in reader.take(3, cid)]
            assert kinds == [CREATED, STARTED, STOPPED]
    finally:
        stuck.cancel()


def test_a_disconnected_subscriber_is_dropped(
    make_node: MakeNode, subscribers: list[Subscriber]
) -> None:
    node = make_node()
    first, second = Subscriber(node), Subscriber(node)
    subscribers.extend([first, second])
    _wait_subscribed(node, [first, second])
    first.close()

    def counts() -> list[int]:
        return [
            int(m)
            for m in re.findall(
                r'msg="event subscriber left" subscribers=(\d+)', node.daemon.logs()
            )
        ]

    deadline = time.monotonic() + 10
    while counts() != [1] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert counts() == [1], node.daemon.logs()[-2000:]
    # The one still connected keeps getting events.
    cid = node.create("after", command=["true"])
    (event,) = second.take(1, cid)
    assert event.container_event_type == CREATED
