"""`python -m tests.fuzz TARGET [SECONDS]`: fuzz one parser from its seed corpus for
SECONDS (default $SKIFF_FUZZ_SECONDS, else 6); exit 1 with the crashing input shown
and kept if the fuzzer finds one. `python -m tests.fuzz list` names the targets."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.fuzz.seeds import SEEDS

DEFAULT_SECONDS = 6


def default_seconds() -> int:
    return int(os.environ.get("SKIFF_FUZZ_SECONDS", DEFAULT_SECONDS))


def fuzz(name: str, seconds: int) -> tuple[bool, str]:
    """Run the target; (passed, the fuzzer's output plus, on a crash, the input)."""
    with tempfile.TemporaryDirectory(prefix=f"skiff-fuzz-{name}-") as work:
        corpus = Path(work) / "corpus"
        artifacts = Path(work) / "artifacts"
        corpus.mkdir()
        artifacts.mkdir()
        for index, seed in enumerate(SEEDS[name]()):
            (corpus / f"seed-{index}").write_bytes(seed)
        command = [sys.executable, "-m", "tests.fuzz.engine", name, str(corpus), str(artifacts)]
        result = subprocess.run(
            [*command, str(seconds)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            # The fuzzer stops itself after `seconds`; this only bounds a stuck start.
            timeout=seconds + 120,
            check=False,
        )
        output = result.stdout
        found = sorted(artifacts.iterdir())
        if result.returncode == 0 and not found:
            return True, output
        if found:
            kept = Path(tempfile.mkdtemp(prefix=f"skiff-fuzz-{name}-crash-"))
            for path in found:
                shutil.copy(path, kept / path.name)
                data = path.read_bytes()
                output += f"\n{path.name} ({len(data)} bytes, kept in {kept}):\n{data[:2000]!r}\n"
        return False, output


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in (*SEEDS, "list"):
        print(f"usage: python -m tests.fuzz {{{'|'.join(SEEDS)}|list}} [SECONDS]")
        return 2
    if sys.argv[1] == "list":
        print("\n".join(SEEDS))
        return 0
    seconds = int(sys.argv[2]) if len(sys.argv) > 2 else default_seconds()
    passed, output = fuzz(sys.argv[1], seconds)
    print(output)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
