"""List answers built from each object's wire encoding, kept until the object changes.

The kubelet lists every pod and container every second; at node scale building and
serializing those messages was most of skiffd's work between calls. An object's entry
in a List response is the same bytes until its state changes (what a List shows of a
pod or container is fixed at creation but for its state), so each is encoded once per
state and the response is their concatenation: a repeated message field is just its
elements' encodings one after the other.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar, cast

from google.protobuf.message import Message

T = TypeVar("T")
M = TypeVar("M", bound=Message)


class Encoded:
    """A response already in its wire form: the interceptor sends ``data`` as it is
    (gRPC takes exactly bytes, not a subclass)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


def as_response(encoded: Encoded, kind: type[M]) -> M:
    """``encoded`` where the servicer's signature wants a ``kind``: the interceptor's
    serializer takes either."""
    return cast(M, encoded)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def element(field_number: int, message: Message) -> bytes:
    """``message`` as one element of a repeated message field ``field_number``."""
    payload = message.SerializeToString()
    return _varint(field_number << 3 | 2) + _varint(len(payload)) + payload


class EncodedList(Generic[T]):
    """The elements of one List response's repeated field, one cached entry per object
    (by id) while its version (what can change of it) stays the same."""

    def __init__(
        self,
        field_number: int,
        to_proto: Callable[[T], Message],
        id_of: Callable[[T], str],
        version_of: Callable[[T], Hashable],
    ) -> None:
        self._field = field_number
        self._to_proto = to_proto
        self._id_of = id_of
        self._version_of = version_of
        self._cache: dict[str, tuple[Hashable, bytes]] = {}
        self._whole: tuple[int, Encoded] | None = None

    def everything(self, generation: int, objects: Callable[[], Iterable[T]]) -> Encoded:
        """The response listing all ``objects``, built again only when ``generation``
        (the store's, for their kind) moved since the last one: a relist between
        changes costs nothing but the lookup."""
        if self._whole is None or self._whole[0] != generation:
            self._whole = (generation, self.response(objects(), everything=True))
        return self._whole[1]

    def response(self, objects: Iterable[T], *, everything: bool) -> Encoded:
        """The response listing ``objects``. ``everything``: they are all there is, so
        entries of objects gone are dropped."""
        fresh: dict[str, tuple[Hashable, bytes]] = {}
        parts = []
        for obj in objects:
            key, version = self._id_of(obj), self._version_of(obj)
            entry = self._cache.get(key)
            if entry is None or entry[0] != version:
                entry = (version, element(self._field, self._to_proto(obj)))
            fresh[key] = entry
            parts.append(entry[1])
        if everything:
            self._cache = fresh
        else:
            self._cache.update(fresh)
        return Encoded(b"".join(parts))
