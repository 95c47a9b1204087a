"""The fuzzing process itself: `python -m tests.fuzz.engine TARGET CORPUS ARTIFACTS
SECONDS`. Run through `python -m tests.fuzz`, which prepares the corpus and reports."""

from __future__ import annotations

import sys

import atheris

# Only what is imported inside this block is instrumented for coverage: skiff's own
# packages and the stdlib parsers they lean on.
with atheris.instrument_imports(include=["image", "cri", "tarfile", "tomllib", "json", "gzip"]):
    from tests.fuzz.targets import TARGETS

# A session target gives up after 5 s by itself; this catches loops that never yield.
HANG_SECONDS = 15


def main() -> None:
    name, corpus, artifacts, seconds = sys.argv[1:5]
    atheris.Setup(
        [
            sys.argv[0],
            f"-max_total_time={seconds}",
            f"-timeout={HANG_SECONDS}",
            "-rss_limit_mb=2048",
            "-max_len=65536",
            f"-artifact_prefix={artifacts}/",
            corpus,
        ],
        TARGETS[name],
    )
    atheris.Fuzz()


if __name__ == "__main__":
    main()
