"""Generate the Python modules and .pyi type stubs of the CRI v1 contract.

`make proto` runs this; a test runs it into a temporary directory and fails when the
committed modules differ, so the generated code never goes stale.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROTO = Path("api/runtime/v1/api.proto")
GENERATED = ("api_pb2.py", "api_pb2.pyi", "api_pb2_grpc.py", "api_pb2_grpc.pyi")


def generate(out_dir: Path) -> list[Path]:
    """Run protoc on our .proto; returns the generated files under out_dir."""
    bin_dir = Path(sys.executable).parent
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={REPO}",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        str(REPO / PROTO),
    ]
    subprocess.run(command, check=True)
    return [out_dir / PROTO.parent / name for name in GENERATED]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for path in generate(Path(tmp)):
            shutil.copyfile(path, REPO / PROTO.parent / path.name)
            print(f"generated {PROTO.parent / path.name}")


if __name__ == "__main__":
    main()
