"""The Kubernetes and CRI programs the e2e suites are judged by, built from the Go modules
pinned in tests/e2e/tools/ into a cache outside the checkout.

Each module directory (its go.mod and go.sum) is one build: its programs land in
``<cache>/<module>-<hash>/`` where the hash covers go.mod, go.sum, the build recipe and
the Go version, so a second ``make test`` rebuilds nothing and a version bump rebuilds
only its module. ``python -m tests.e2e.toolchain`` (``make e2e-tools``) builds them all.

A module kept elsewhere (the benchmarks' containerd 2.x, ``bench/tools/``) is a
`ToolModule` with its own ``root``, built into the same cache by `build_module`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

TOOLS_DIR = Path(__file__).resolve().parent / "tools"
DEFAULT_CACHE = Path("/var/cache/skiff-e2e-tools")
CACHE_ENV = "SKIFF_E2E_TOOLS_CACHE"
# Bumped when what a build produces changes for the same go.mod/go.sum.
RECIPE = "2"


@dataclass(frozen=True)
class Program:
    name: str  # the file name in the cache
    package: str  # the Go package built
    test_binary: bool = False  # `go test -c` (critest is cri-tools' test suite)


@dataclass(frozen=True)
class ToolModule:
    directory: str  # under ``root``
    programs: tuple[Program, ...]
    # The module whose version the programs report, and the -X flags that say so.
    version_module: str
    version_flags: Callable[[str], list[str]]
    tags: str = ""
    root: Path = TOOLS_DIR  # where ``directory`` (its go.mod and go.sum) lies

    @property
    def source(self) -> Path:
        return self.root / self.directory


def _kubernetes_version_flags(version: str) -> list[str]:
    # As hack/lib/version.sh does for a release: client-go and component-base both carry it.
    major, minor = version.lstrip("v").split(".")[:2]
    values = {
        "gitVersion": version,
        "gitMajor": major,
        "gitMinor": minor,
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
    }
    return [
        f"-X k8s.io/{pkg}/version.{key}={value}"
        for pkg in ("client-go/pkg", "component-base")
        for key, value in values.items()
    ]


def _cri_tools_version_flags(version: str) -> list[str]:
    return [f"-X sigs.k8s.io/cri-tools/pkg/version.Version={version.lstrip('v')}"]


MODULES = (
    ToolModule(
        directory="kubernetes",
        programs=(
            Program("kubelet", "k8s.io/kubernetes/cmd/kubelet"),
            Program("kube-apiserver", "k8s.io/kubernetes/cmd/kube-apiserver"),
            Program("etcd", "go.etcd.io/etcd/server/v3"),
        ),
        version_module="k8s.io/kubernetes",
        version_flags=_kubernetes_version_flags,
        # The release build's tags: no test hooks, no gRPC tracing.
        tags="selinux,notest,grpcnotrace",
    ),
    ToolModule(
        directory="cri-tools",
        programs=(
            Program("crictl", "sigs.k8s.io/cri-tools/cmd/crictl"),
            Program("critest", "sigs.k8s.io/cri-tools/cmd/critest", test_binary=True),
        ),
        version_module="sigs.k8s.io/cri-tools",
        version_flags=_cri_tools_version_flags,
    ),
)
PROGRAMS = {program.name: module for module in MODULES for program in module.programs}


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    # go.sum must already hold every module; the Go on the machine builds, never another.
    env.update(
        GOFLAGS="-mod=readonly -trimpath -buildvcs=false", GOTOOLCHAIN="local", CGO_ENABLED="0"
    )
    return env


def _go(args: Sequence[str], module_dir: Path) -> str:
    if shutil.which("go") is None:
        raise RuntimeError("no `go` in PATH: the e2e tools need Go 1.26.6 or newer")
    done = subprocess.run(
        ["go", *args],
        cwd=module_dir,
        env=_go_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"go {' '.join(args)} in {module_dir} failed:\n{done.stderr}")
    return done.stdout


def _go_version() -> str:
    return subprocess.run(
        ["go", "env", "GOVERSION"], capture_output=True, text=True, check=True
    ).stdout.strip()


def build_dir(module: ToolModule) -> Path:
    source = module.source
    digest = hashlib.sha256()
    for part in (
        (source / "go.mod").read_bytes(),
        (source / "go.sum").read_bytes(),
        RECIPE.encode(),
        _go_version().encode(),
        json.dumps([p.__dict__ for p in module.programs], sort_keys=True).encode(),
    ):
        digest.update(hashlib.sha256(part).digest())
    return cache_root() / f"{module.directory}-{digest.hexdigest()[:16]}"


def tool(name: str) -> Path:
    """The path of a built program; raises naming the command that builds it."""
    path = build_dir(PROGRAMS[name]) / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is not built: run `make e2e-tools`")
    return path


def build_module(module: ToolModule, log: Callable[[str], None]) -> Path:
    """The cache directory holding ``module``'s programs, built first when missing."""
    target = build_dir(module)
    if all((target / p.name).is_file() for p in module.programs):
        return target
    source = module.source
    version = _go(["list", "-m", "-f", "{{.Version}}", module.version_module], source).strip()
    ldflags = " ".join(["-s", "-w", *module.version_flags(version)])
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        for program in module.programs:
            started = time.monotonic()
            verb = ["test", "-c"] if program.test_binary else ["build"]
            tags = ["-tags", module.tags] if module.tags else []
            out = str(staging / program.name)
            _go([*verb, *tags, "-ldflags", ldflags, "-o", out, program.package], source)
            log(
                f"built {program.name} ({module.version_module} {version})"
                f" in {time.monotonic() - started:.0f}s"
            )
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def build_all(log: Callable[[str], None] = print) -> dict[str, Path]:
    """Builds what the cache lacks; returns every program's path."""
    paths: dict[str, Path] = {}
    for module in MODULES:
        directory = build_module(module, log)
        paths.update({p.name: directory / p.name for p in module.programs})
    return paths


def main() -> int:
    started = time.monotonic()
    try:
        paths = build_all(lambda line: print(f"e2e-tools: {line}", flush=True))
    except RuntimeError as exc:
        print(f"e2e-tools: {exc}", file=sys.stderr)
        return 1
    for name, path in sorted(paths.items()):
        print(f"e2e-tools: {name:15} {path}")
    print(f"e2e-tools: ready in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
