"""The layering rules of ARCHITECTURE.md, checked on the source: image/, runtime/ and
network/ import neither cri/ nor api/ nor each other, only base/ below them; base/ and
api/ import nothing of ours, and base/ nothing outside the standard library."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OURS = {"api", "base", "cri", "image", "runtime", "network", "tests", "bench"}
ALLOWED = {
    "api": {"api"},
    "base": {"base"},
    "image": {"image", "base"},
    "runtime": {"runtime", "base"},
    "network": {"network", "base"},
}


def _top_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def _imports(path: Path) -> set[str]:
    return _top_level_imports(path) & OURS


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_it_may(package: str) -> None:
    files = list((REPO / package).rglob("*.py"))
    assert files, f"{package}/ has no modules"
    for path in files:
        extra = _imports(path) - ALLOWED[package]
        assert not extra, f"{path.relative_to(REPO)} imports {sorted(extra)}"


def test_base_imports_the_standard_library_only() -> None:
    """base/ is the floor under every layer: it may not bring in a dependency either."""
    for path in (REPO / "base").rglob("*.py"):
        outside = _top_level_imports(path) - set(sys.stdlib_module_names) - {"__future__", "base"}
        assert not outside, f"{path.relative_to(REPO)} imports {sorted(outside)}"
