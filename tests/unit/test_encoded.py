"""List answers from cached encodings: the same bytes a message would give."""

from __future__ import annotations

from dataclasses import dataclass

from api.runtime.v1 import api_pb2 as pb
from cri.encoded import EncodedList


@dataclass
class Thing:
    id: str
    state: str
    labels: dict[str, str]


def _proto(thing: Thing) -> pb.Container:
    state = pb.CONTAINER_RUNNING if thing.state == "running" else pb.CONTAINER_EXITED
    return pb.Container(id=thing.id, state=state, labels=thing.labels)


def _listing() -> tuple[EncodedList[Thing], list[str]]:
    made: list[str] = []

    def to_proto(thing: Thing) -> pb.Container:
        made.append(thing.id)
        return _proto(thing)

    return EncodedList(1, to_proto, lambda t: t.id, lambda t: t.state), made


def test_the_answer_parses_as_the_message_it_stands_for() -> None:
    listing, _ = _listing()
    things = [Thing("a" * 64, "running", {"k": "v" * 300}), Thing("b", "exited", {})]
    answer = listing.response(things, everything=True)
    parsed = pb.ListContainersResponse.FromString(answer.data)
    assert parsed == pb.ListContainersResponse(containers=[_proto(t) for t in things])
    assert listing.response([], everything=True).data == b""


def test_an_object_is_encoded_again_only_when_its_state_changes() -> None:
    listing, made = _listing()
    thing = Thing("a", "running", {})
    listing.response([thing], everything=True)
    listing.response([thing], everything=True)
    assert made == ["a"]
    thing.state = "exited"
    answer = listing.response([thing], everything=True)
    assert made == ["a", "a"]
    listed = pb.ListContainersResponse.FromString(answer.data)
    assert listed.containers[0].state == pb.CONTAINER_EXITED


def test_objects_gone_are_forgotten_at_a_full_listing_only() -> None:
    listing, made = _listing()
    a, b = Thing("a", "running", {}), Thing("b", "running", {})
    listing.response([a, b], everything=True)
    listing.response([a], everything=False)  # a filtered list: b is still there
    listing.response([b], everything=False)
    assert made == ["a", "b"]
    listing.response([a], everything=True)  # b is gone
    listing.response([b], everything=False)
    assert made == ["a", "b", "b"]


def test_the_whole_list_is_built_again_only_when_the_generation_moves() -> None:
    listing, made = _listing()
    things = [Thing("a", "running", {})]
    asked: list[int] = []

    def objects() -> list[Thing]:
        asked.append(1)
        return things

    first = listing.everything(1, objects)
    assert listing.everything(1, objects) is first
    assert len(asked) == 1
    things[0].state = "exited"
    moved = listing.everything(2, objects)
    assert len(asked) == 2 and made == ["a", "a"]
    assert pb.ListContainersResponse.FromString(moved.data).containers[0].state == (
        pb.CONTAINER_EXITED
    )
