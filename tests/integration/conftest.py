from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.nodes import make_node, world  # noqa: F401  (shared fixtures)
from tests.integration.skiffd import Skiffd, skiffd_process


@pytest.fixture
def skiffd(request: pytest.FixtureRequest) -> Iterator[Skiffd]:
    """The real skiffd on a temp socket, root and runroot."""
    with skiffd_process(request.node.name[:20].replace("[", "-").replace("]", "")) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def shared_skiffd(request: pytest.FixtureRequest) -> Iterator[Skiffd]:
    """One real skiffd for a whole module of read-only tests."""
    with skiffd_process(request.module.__name__.rsplit(".", 1)[-1][:20]) as daemon:
        yield daemon


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
