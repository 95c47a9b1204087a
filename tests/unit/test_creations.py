"""Creations that outlive their call: joined by a retry, handed to it, or refused."""

from __future__ import annotations

import asyncio

import pytest

from cri.creations import Creations
from cri.errors import AlreadyExists


def _free() -> Exception | None:
    return None


def test_a_retry_joins_the_creation_in_progress_and_gets_its_result() -> None:
    async def body() -> None:
        creations, made = Creations("pod"), []
        release = asyncio.Event()

        async def create() -> str:
            made.append(1)
            await release.wait()
            return "id-1"

        first = asyncio.ensure_future(creations.run("p", create, alive=bool, taken=_free))
        await asyncio.sleep(0)
        second = asyncio.ensure_future(creations.run("p", create, alive=bool, taken=_free))
        await asyncio.sleep(0)
        release.set()
        assert [await first, await second] == ["id-1", "id-1"]
        assert made == [1]

    asyncio.run(body())


@pytest.mark.parametrize(("alive", "handed"), [(True, "id-1"), (False, "id-2")])
def test_a_result_its_caller_never_saw_goes_to_the_retry_while_it_exists(
    alive: bool, handed: str
) -> None:
    async def body() -> str:
        creations, ids = Creations("pod"), iter(["id-1", "id-2"])
        release = asyncio.Event()

        async def create() -> str:
            await release.wait()
            return next(ids)

        caller = asyncio.ensure_future(
            creations.run("p", create, alive=lambda _i: alive, taken=_free)
        )
        await asyncio.sleep(0)
        caller.cancel()  # the kubelet's deadline
        release.set()
        await asyncio.sleep(0.01)
        return await creations.run("p", create, alive=lambda _i: alive, taken=_free)

    assert asyncio.run(body()) == handed


def test_a_name_another_object_holds_is_refused_as_taken_says() -> None:
    async def body() -> None:
        creations = Creations("pod")

        async def create() -> str:
            raise AssertionError("not to be made")

        def taken() -> Exception | None:
            return AlreadyExists("pod sandbox name 'p' is reserved by sandbox x")

        with pytest.raises(AlreadyExists, match="reserved by sandbox x"):
            await creations.run("p", create, alive=bool, taken=taken)

    asyncio.run(body())
