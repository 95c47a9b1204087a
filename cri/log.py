"""Structured logging: one line per event, as logfmt text or JSON.

Code everywhere (image/, runtime/ and network/ included) logs with the standard
``logging`` module and passes the ids of the objects involved as ``extra`` fields,
e.g. ``log.info("container started", extra={"container_id": cid})``. The formatters
here turn every such field into a key of the line.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, ClassVar

_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    out: dict[str, Any] = {
        "time": _timestamp(record.created),
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    for key, value in vars(record).items():
        if key not in _STANDARD_ATTRS and not key.startswith("_"):
            out[key] = value
    if record.exc_info:
        out["error"] = logging.Formatter().formatException(record.exc_info)
    return out


def _timestamp(created: float) -> str:
    seconds = int(created)
    micros = int((created - seconds) * 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{micros:06d}Z"


def _logfmt_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if text and not any(c in text for c in ' ="\n\t\\'):
        return text
    return json.dumps(text)


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in _fields(record).items())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), default=str)


class _Setup:
    handler: ClassVar[logging.Handler | None] = None


def configure(level: str, fmt: str) -> None:
    """Send every log line to stderr in the chosen format; safe to call again (SIGHUP)."""
    root = logging.getLogger()
    if _Setup.handler is None:
        _Setup.handler = logging.StreamHandler(sys.stderr)
        root.addHandler(_Setup.handler)
    _Setup.handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root.setLevel(LEVELS[level])
    # grpc's and asyncio's debug lines say nothing an operator needs.
    for noisy in ("grpc", "asyncio"):
        logging.getLogger(noisy).setLevel(max(LEVELS[level], logging.INFO))
