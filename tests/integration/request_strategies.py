"""Hypothesis strategies for CRI requests, built from the protobuf descriptors so every
message and field (and any added later) is covered: arbitrary values of every field, and
"nearly valid" requests that change one field of a valid one so checks deep inside a
create are reached, not only the first."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, cast

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

#: Text a client might send to break a path, a file format or a log line.
ODD_TEXT = [
    "",
    "\0",
    "a\0b",
    "\n",
    "a\nb",
    "\r\n",
    "/",
    ".",
    "..",
    "../../etc/passwd",
    "/proc/self/root",
    "a/b",
    "a=b",
    "a;b",
    "a,b",
    "a:b",
    " ",
    "-",
    "%s%n",
    "${HOME}",
    "$(id)",
    "*",
    "\u202e",
    "\ufeff",
    "\U0001f600",
    "ü",
    "\x7f",
    "\t",
    "\\",
    "'",
    '"',
    "0",
    "-1",
    "18446744073709551616",
    "1e309",
    "NaN",
    "true",
    "/dev/null",
    "/tmp",
    "/",
    "localhost",
    "::1",
    "127.0.0.1",
    "0.0.0.0",
    "10.0.0.0/8",
]

_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}

#: Field names whose values name objects: some of the time they name real ones.
ID_FIELDS = {"container_id", "pod_sandbox_id", "id", "sandbox_id"}
IMAGE_FIELDS = {"image", "user_specified_image", "image_ref"}


def text() -> st.SearchStrategy[str]:
    """Short text, odd text, and (rarely) text far longer than any name or path."""
    return st.one_of(
        st.text(max_size=20),
        st.sampled_from(ODD_TEXT),
        st.text(alphabet=st.characters(codec="ascii"), max_size=40),
        st.tuples(st.text(min_size=1, max_size=3), st.integers(60, 70_000)).map(
            lambda t: (t[0] * t[1])[: t[1]]
        ),
    )


def integers(field_type: int) -> st.SearchStrategy[int]:
    low, high = _INT_RANGES[field_type]
    edges = [v for v in (low, high, -1, 0, 1, 255, 256, 65535, 65536, 2**31) if low <= v <= high]
    return st.one_of(
        st.sampled_from(edges),
        st.integers(-10, 1000).filter(lambda v: v >= low),
        st.integers(low, high),
    )


def lists(element: st.SearchStrategy[Any], big: bool) -> st.SearchStrategy[list[Any]]:
    """Lists of a few, and (for scalars) sometimes of hundreds: one value repeated, so a
    huge list costs hypothesis no more than a small one."""
    small = st.lists(element, max_size=3)
    if not big:
        return small
    many = st.tuples(element, st.integers(100, 400)).map(lambda t: [t[0]] * t[1])
    return st.one_of(small, small, many)


class Requests:
    """Strategies for messages of the CRI api, with `real_ids`/`real_images` giving,
    when a value is drawn, names of objects the daemon has."""

    def __init__(
        self,
        real_ids: Callable[[], list[str]],
        real_images: Callable[[], list[str]],
        depth: int = 4,
    ) -> None:
        self.real_ids = real_ids
        self.real_images = real_images
        self.depth = depth
        self._cache: dict[tuple[str, int], st.SearchStrategy[Message]] = {}

    def _known(self, names: Callable[[], list[str]]) -> st.SearchStrategy[str]:
        @st.composite
        def draw(draw: st.DrawFn) -> str:
            # The same draws whatever there is now: hypothesis replays them to shrink.
            index = draw(st.integers(0, 63))
            cut = draw(st.sampled_from([None, 12, 5]))  # crictl-style id prefixes
            known = names()
            return known[index % len(known)][:cut] if known else ""

        return draw()

    def scalar(self, field: FieldDescriptor) -> st.SearchStrategy[Any]:
        kind = field.type
        if kind == FieldDescriptor.TYPE_STRING:
            if field.name in ID_FIELDS:
                return st.one_of(self._known(self.real_ids), self._known(self.real_ids), text())
            if field.name in IMAGE_FIELDS:
                return st.one_of(self._known(self.real_images), text())
            return text()
        if kind == FieldDescriptor.TYPE_BYTES:
            return st.one_of(st.binary(max_size=20), text().map(lambda s: s.encode()))
        if kind == FieldDescriptor.TYPE_BOOL:
            return st.booleans()
        if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            if kind == FieldDescriptor.TYPE_FLOAT:
                return st.floats(width=32)
            return st.floats()
        if kind == FieldDescriptor.TYPE_ENUM:
            assert field.enum_type is not None
            defined = [v.number for v in field.enum_type.values]
            return st.one_of(
                st.sampled_from(defined),
                st.sampled_from(defined),
                integers(FieldDescriptor.TYPE_INT32),
            )
        if kind in _INT_RANGES:
            return integers(kind)
        raise AssertionError(f"no strategy for field {field.full_name} of type {kind}")

    def value(self, field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
        """A value for the field as a whole: a list for a repeated one, a dict for a map."""
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_field = field.message_type.fields_by_name["key"]
            value_field = field.message_type.fields_by_name["value"]
            keys = self.scalar(key_field)
            values = self.single(value_field, depth - 1)
            small = st.dictionaries(keys, values, max_size=3)
            if key_field.type != FieldDescriptor.TYPE_STRING:
                return small
            # Hundreds of entries: one key with a counter, so they are distinct.
            many = st.tuples(keys, values, st.integers(100, 300)).map(
                lambda t: {f"{t[0]}{i}": t[1] for i in range(t[2])}
            )
            return st.one_of(small, small, many)
        if field.is_repeated:
            return lists(self.single(field, depth - 1), big=field.message_type is None or depth > 2)
        return self.single(field, depth - 1)

    def single(self, field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
        if field.message_type is not None:
            return self.message(field.message_type, depth)
        return self.scalar(field)

    def message(
        self, descriptor: Descriptor, depth: int | None = None
    ) -> st.SearchStrategy[Message]:
        """Any message of the type: each field set or not, nested down to `depth`."""
        depth = self.depth if depth is None else depth
        key = (descriptor.full_name, depth)
        if key not in self._cache:
            cls = _message_class(descriptor)
            if depth <= 0 or not descriptor.fields:
                self._cache[key] = st.just(cls())
            else:
                fields = {field.name: self.value(field, depth) for field in descriptor.fields}
                self._cache[key] = st.fixed_dictionaries({}, optional=fields).map(
                    functools.partial(_build, cls)
                )
        return self._cache[key]

    def mutated(self, base: Message) -> st.SearchStrategy[Message]:
        """`base` with one field, at any depth, replaced by an arbitrary value."""

        @st.composite
        def draw(draw: st.DrawFn) -> Message:
            request = type(base)()
            request.CopyFrom(base)
            target: Message = request
            depth = self.depth
            while True:
                fields = cast(list[FieldDescriptor], list(target.DESCRIPTOR.fields))
                field = draw(st.sampled_from(fields))
                nested = field.message_type is not None and not field.is_repeated and depth > 1
                if nested and draw(st.integers(0, 3)) > 0:
                    target = getattr(target, field.name)
                    depth -= 1
                    continue
                _assign(target, field, draw(self.value(field, depth)))
                return request

        return draw()


def _message_class(descriptor: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)


def _build(cls: type[Message], fields: dict[str, Any]) -> Message:
    message = cls()
    for name, value in fields.items():
        _assign(message, cast(FieldDescriptor, cls.DESCRIPTOR.fields_by_name[name]), value)
    return message


def _assign(message: Message, field: FieldDescriptor, value: Any) -> None:
    message.ClearField(field.name)
    slot = getattr(message, field.name)
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, Message):
                slot[key].CopyFrom(item)
            else:
                slot[key] = item
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, Message):
                slot.add().CopyFrom(item)
            else:
                slot.append(item)
    elif isinstance(value, Message):
        slot.CopyFrom(value)
    else:
        setattr(message, field.name, value)
