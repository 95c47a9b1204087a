"""Log lines: one per event, ids as keys."""

from __future__ import annotations

import json
import logging

from cri.log import JsonFormatter, LogfmtFormatter


def _record(msg: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("skiff.test", logging.INFO, __file__, 1, msg, None, None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_logfmt_carries_extra_fields_and_quotes_when_needed() -> None:
    line = LogfmtFormatter().format(
        _record("container started", container_id="abc", note='a "b" c', n=3)
    )
    assert "\n" not in line
    assert 'msg="container started"' in line
    assert "container_id=abc" in line
    assert 'note="a \\"b\\" c"' in line
    assert "n=3" in line
    assert "level=info" in line


def test_json_lines_parse() -> None:
    line = JsonFormatter().format(_record("pulled", image="busybox", layers=["a", "b"]))
    data = json.loads(line)
    assert data["msg"] == "pulled"
    assert data["image"] == "busybox"
    assert data["layers"] == ["a", "b"]
    assert data["time"].endswith("Z")


def test_multiline_messages_stay_on_one_line() -> None:
    line = LogfmtFormatter().format(_record("first\nsecond"))
    assert "\n" not in line
