"""Finding a usable CNI network in a config directory."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from network.cni_config import CniConfigDir, CniConfigError, parse_network


def _plugin_dir(tmp_path: Path, *names: str) -> str:
    directory = tmp_path / "bin"
    directory.mkdir(exist_ok=True)
    for name in names:
        path = directory / name
        path.write_text("#!/bin/sh\nexit 0\n")
        path.chmod(0o755)
    return str(directory)


def _write(directory: Path, name: str, content: object) -> Path:
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


CONFLIST = {
    "cniVersion": "1.0.0",
    "name": "podnet",
    "plugins": [{"type": "bridge"}, {"type": "portmap"}],
}


def test_conflist_and_single_conf_parse(tmp_path: Path) -> None:
    network = parse_network(Path("10-a.conflist"), json.dumps(CONFLIST).encode())
    assert network.name == "podnet"
    assert network.plugin_types == ("bridge", "portmap")
    single = {"cniVersion": "0.4.0", "name": "old", "type": "bridge"}
    network = parse_network(Path("10-a.conf"), json.dumps(single).encode())
    assert network.plugin_types == ("bridge",)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{", "not valid JSON"),
        ("[]", "must be a JSON object"),
        ({"name": "x", "plugins": [{"type": "a"}]}, "cniVersion is missing"),
        ({"cniVersion": "9.9.9", "name": "x", "plugins": [{"type": "a"}]}, "not supported"),
        ({"cniVersion": "1.0.0", "plugins": [{"type": "a"}]}, "name is missing"),
        ({"cniVersion": "1.0.0", "name": "x", "plugins": []}, "non-empty list"),
        ({"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "../a"}]}, "plugins[0].type"),
    ],
)
def test_bad_conflists_are_refused_with_the_reason(content: object, problem: str) -> None:
    raw = content if isinstance(content, str) else json.dumps(content)
    with pytest.raises(CniConfigError) as err:
        parse_network(Path("/etc/cni/net.d/bad.conflist"), raw.encode())
    assert problem in str(err.value)
    assert "bad.conflist" in str(err.value)


def test_first_usable_config_by_file_name(tmp_path: Path) -> None:
    conf_dir = tmp_path / "net.d"
    _write(conf_dir, "20-second.conflist", dict(CONFLIST, name="second"))
    _write(conf_dir, "10-first.conflist", dict(CONFLIST, name="first"))
    _write(conf_dir, "05-broken.conflist", "{")
    _write(conf_dir, "00-readme.txt", "not a config")
    cni = CniConfigDir(str(conf_dir), [_plugin_dir(tmp_path, "bridge", "portmap")])
    readiness = cni.readiness()
    assert readiness.ready
    assert readiness.network is not None
    assert readiness.network.name == "first"
    assert any("05-broken" in p for p in readiness.skipped)


def test_named_network_is_chosen(tmp_path: Path) -> None:
    conf_dir = tmp_path / "net.d"
    _write(conf_dir, "10-first.conflist", dict(CONFLIST, name="first"))
    _write(conf_dir, "20-second.conflist", dict(CONFLIST, name="second"))
    plugins = _plugin_dir(tmp_path, "bridge", "portmap")
    readiness = CniConfigDir(str(conf_dir), [plugins], "second").readiness()
    assert readiness.network is not None
    assert readiness.network.name == "second"
    readiness = CniConfigDir(str(conf_dir), [plugins], "third").readiness()
    assert not readiness.ready
    assert "'third'" in readiness.message


def test_missing_plugin_makes_the_network_unusable(tmp_path: Path) -> None:
    conf_dir = tmp_path / "net.d"
    _write(conf_dir, "10-a.conflist", CONFLIST)
    plugins = _plugin_dir(tmp_path, "bridge")
    readiness = CniConfigDir(str(conf_dir), [plugins]).readiness()
    assert not readiness.ready
    assert "portmap" in readiness.message
    assert plugins in readiness.message


def test_plugins_are_searched_in_every_directory(tmp_path: Path) -> None:
    conf_dir = tmp_path / "net.d"
    _write(conf_dir, "10-a.conflist", CONFLIST)
    first = _plugin_dir(tmp_path, "bridge")
    second = tmp_path / "more"
    second.mkdir()
    (second / "portmap").write_text("#!/bin/sh\n")
    (second / "portmap").chmod(0o755)
    assert CniConfigDir(str(conf_dir), [first, str(second)]).readiness().ready


def test_changes_in_the_directory_are_seen(tmp_path: Path) -> None:
    conf_dir = tmp_path / "net.d"
    cni = CniConfigDir(str(conf_dir), [_plugin_dir(tmp_path, "bridge", "portmap")])
    assert not cni.readiness().ready  # the directory does not even exist
    path = _write(conf_dir, "10-a.conflist", CONFLIST)
    assert cni.readiness().ready
    path.write_text("{ broken")
    # Same size class of edit within one mtime tick must still be noticed: bump mtime.
    os.utime(path, ns=(0, 1))
    assert not cni.readiness().ready
    path.unlink()
    assert not cni.readiness().ready
