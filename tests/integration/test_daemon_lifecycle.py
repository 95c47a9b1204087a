"""skiffd as a process: config errors, the one-daemon-per-root lock, signals, crashes."""

from __future__ import annotations

import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml

from api.runtime.v1 import api_pb2 as pb
from runtime.cgroup_driver import systemd_running
from tests.integration.skiffd import Skiffd, pid_alive, run_skiffd, short_tempdir


@pytest.fixture
def base() -> Iterator[Path]:
    path = short_tempdir("life")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _wait_for(predicate: object, what: str, timeout: float = 10.0) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# --- config errors -------------------------------------------------------------------


def _config_error(base: Path, text: str, *extra: str) -> tuple[int, str]:
    config = base / "skiff.yaml"
    config.write_text(text)
    result = run_skiffd("--config", str(config), "--config-dir", str(base / "none"), *extra)
    return result.returncode, result.stderr


def test_unknown_key_exits_naming_file_and_key(base: Path) -> None:
    status, err = _config_error(base, "runtime:\n  default_handlr: runc\n")
    assert status == 2
    assert str(base / "skiff.yaml") in err
    assert "runtime.default_handlr" in err
    assert "unknown key" in err
    assert "default_handler" in err  # what is allowed


def test_wrong_type_exits_naming_key_and_type(base: Path) -> None:
    status, err = _config_error(base, "shutdown_grace: soon\n")
    assert status == 2
    assert "shutdown_grace" in err
    assert "must be a number" in err


def test_bad_enum_value_lists_the_choices(base: Path) -> None:
    status, err = _config_error(base, "runtime:\n  cgroup_driver: cgroupv3\n")
    assert status == 2
    assert "runtime.cgroup_driver" in err
    assert "cgroupfs" in err
    assert "systemd" in err


def test_relative_path_is_refused(base: Path) -> None:
    status, err = _config_error(base, "root: var/lib/skiff\n")
    assert status == 2
    assert "root" in err
    assert "absolute path" in err


def test_socket_path_too_long_is_refused(base: Path) -> None:
    status, err = _config_error(base, f"listen: /tmp/{'s' * 120}.sock\n")
    assert status == 2
    assert "listen" in err
    assert "107 bytes" in err


def test_invalid_yaml_is_refused(base: Path) -> None:
    status, err = _config_error(base, "root: [unclosed\n")
    assert status == 2
    assert "not valid YAML" in err


def test_unknown_default_handler_names_the_configured_ones(base: Path) -> None:
    status, err = _config_error(base, "runtime:\n  default_handler: kata\n")
    assert status == 2
    assert "runtime.default_handler" in err
    assert "kata" in err
    assert "crun, runc" in err


def test_missing_config_file_given_by_flag_is_an_error(base: Path) -> None:
    result = run_skiffd("--config", str(base / "missing.yaml"))
    assert result.returncode == 2
    assert "missing.yaml" in result.stderr
    assert "cannot read" in result.stderr


def test_unreadable_config_file_is_an_error(base: Path) -> None:
    # Root reads any mode, so make the path one that cannot be read as a file.
    (base / "skiff.yaml").mkdir()
    result = run_skiffd("--config", str(base / "skiff.yaml"))
    assert result.returncode == 2
    assert "cannot read" in result.stderr
    assert str(base / "skiff.yaml") in result.stderr


def test_dropin_error_names_the_dropin(base: Path) -> None:
    dropins = base / "skiff.d"
    dropins.mkdir()
    (dropins / "20-bad.yaml").write_text("network:\n  cni_plugin_dirs: /opt/cni/bin\n")
    config = base / "skiff.yaml"
    config.write_text("log_level: info\n")
    result = run_skiffd("--config", str(config), "--config-dir", str(dropins))
    assert result.returncode == 2
    assert "20-bad.yaml" in result.stderr
    assert "network.cni_plugin_dirs" in result.stderr
    assert "a list of a string" in result.stderr


def test_bad_flag_value_is_named(base: Path) -> None:
    config = base / "skiff.yaml"
    config.write_text("")
    result = run_skiffd("--config", str(config), "--log-level", "chatty")
    assert result.returncode == 2
    assert "command line" in result.stderr
    assert "log_level" in result.stderr


def test_config_command_prints_the_effective_config(base: Path) -> None:
    config = base / "skiff.yaml"
    config.write_text("log_level: warning\nruntime:\n  default_handler: crun\n")
    dropins = base / "skiff.d"
    dropins.mkdir()
    (dropins / "10-a.yaml").write_text("log_level: error\nnetwork:\n  cni_default_network: a\n")
    (dropins / "20-b.yaml").write_text("network:\n  cni_default_network: b\n")
    (dropins / "30-c.yaml").write_text(
        "runtime:\n  handlers:\n    kata:\n      path: /usr/bin/kata-runtime\n"
    )
    result = run_skiffd(
        "config", "--config", str(config), "--config-dir", str(dropins), "--log-format", "json"
    )
    assert result.returncode == 0, result.stderr
    effective = yaml.safe_load(result.stdout)
    assert effective["log_level"] == "error"  # drop-in over main file
    assert effective["network"]["cni_default_network"] == "b"  # later drop-in wins
    assert effective["log_format"] == "json"  # flag over everything
    assert effective["runtime"]["default_handler"] == "crun"
    # Mappings merge: the new handler joins the default ones.
    assert set(effective["runtime"]["handlers"]) == {"runc", "crun", "kata"}
    assert effective["root"] == "/var/lib/skiff"  # untouched default


def test_systemd_driver_fails_clearly_without_systemd(base: Path) -> None:
    if systemd_running():
        pytest.skip("this node runs systemd, so the systemd driver is usable here")
    daemon = Skiffd(base, {"runtime": {"cgroup_driver": "systemd"}})
    result = run_skiffd(*daemon.args())
    assert result.returncode == 1
    assert "systemd" in result.stderr
    assert "cgroupfs" in result.stderr
    assert not daemon.socket.exists()


# --- one daemon per root ---------------------------------------------------------------


def test_second_daemon_on_the_same_root_refuses(base: Path) -> None:
    first = Skiffd(base)
    other_base = short_tempdir("life2")
    try:
        first.start()
        second = Skiffd(
            other_base,
            {"root": str(first.root), "runroot": str(other_base / "run")},
        )
        result = run_skiffd(*second.args())
        assert result.returncode == 1
        assert "another skiffd" in result.stderr
        assert f"pid {first.proc.pid if first.proc else ''}" in result.stderr
        assert str(first.root) in result.stderr
        # The first one still serves, on its own socket.
        assert first.runtime().Version(pb.VersionRequest()).runtime_name == "skiff"
        assert first.stop() == 0
    finally:
        first.kill()
        shutil.rmtree(other_base, ignore_errors=True)


def test_second_daemon_on_the_same_socket_does_not_steal_it(base: Path) -> None:
    first = Skiffd(base)
    other_base = short_tempdir("life2")
    try:
        first.start()
        inode = first.socket.stat().st_ino
        second = Skiffd(other_base, {"listen": str(first.socket)})
        result = run_skiffd(*second.args())
        assert result.returncode == 1
        assert "another skiffd" in result.stderr
        assert first.socket.stat().st_ino == inode
        assert first.runtime().Version(pb.VersionRequest()).runtime_name == "skiff"
        assert first.stop() == 0
    finally:
        first.kill()
        shutil.rmtree(other_base, ignore_errors=True)


# --- signals and crashes ---------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_exits_zero_and_removes_the_socket(base: Path, sig: int) -> None:
    daemon = Skiffd(base)
    try:
        daemon.start()
        assert daemon.stop(sig) == 0
        assert not daemon.socket.exists()
        assert "skiffd stopped" in daemon.logs()
    finally:
        daemon.kill()


def test_kill_9_then_restart_replaces_the_stale_socket(base: Path) -> None:
    daemon = Skiffd(base)
    try:
        daemon.start()
        request = pb.UpdateRuntimeConfigRequest(
            runtime_config=pb.RuntimeConfig(network_config=pb.NetworkConfig(pod_cidr="10.9.0.0/16"))
        )
        daemon.runtime().UpdateRuntimeConfig(request)
        assert daemon.proc is not None
        pid = daemon.proc.pid
        daemon.kill()
        assert not pid_alive(pid)
        assert daemon.socket.exists(), "kill -9 leaves the socket file behind"

        daemon.start()
        status = daemon.runtime().Status(pb.StatusRequest(verbose=True))
        # A write acknowledged before the crash survived it.
        assert status.info["pod_cidr"] == "10.9.0.0/16"
        assert daemon.stop() == 0
        assert not daemon.socket.exists()
    finally:
        daemon.kill()


def test_sighup_reloads_the_log_level(base: Path) -> None:
    daemon = Skiffd(base, {"log_level": "info"})
    try:
        daemon.start()
        daemon.runtime().Version(pb.VersionRequest())
        assert "rpc=Version" not in daemon.logs()

        settings = yaml.safe_load(daemon.config_path.read_text())
        daemon.write_config(dict(settings, log_level="debug"))
        daemon.send_signal(signal.SIGHUP)
        _wait_for(lambda: "config reloaded" in daemon.logs(), "the reload")
        daemon.runtime().Version(pb.VersionRequest())
        _wait_for(lambda: "rpc=Version" in daemon.logs(), "a debug line for Version")
        assert daemon.stop() == 0
    finally:
        daemon.kill()


def test_sighup_with_a_broken_config_keeps_serving(base: Path) -> None:
    daemon = Skiffd(base)
    try:
        daemon.start()
        daemon.config_path.write_text("log_level: [\n")
        daemon.send_signal(signal.SIGHUP)
        _wait_for(lambda: "reload failed" in daemon.logs(), "the failed reload")
        assert "not valid YAML" in daemon.logs()
        assert daemon.runtime().Version(pb.VersionRequest()).runtime_name == "skiff"
        assert daemon.stop() == 0
    finally:
        daemon.kill()


def _slow_conmon(base: Path, seconds: float) -> Path:
    """A conmon whose --version takes a while: makes Status an in-flight call."""
    path = base / "slow-conmon"
    path.write_text(f"#!/bin/sh\nsleep {seconds}\necho 'conmon version 2.1.6'\n")
    path.chmod(0o755)
    return path


def _status_in_background(daemon: Skiffd) -> tuple[threading.Thread, dict[str, object]]:
    result: dict[str, object] = {}

    def call() -> None:
        try:
            result["response"] = daemon.runtime().Status(pb.StatusRequest(), timeout=30)
        except grpc.RpcError as exc:
            result["error"] = exc

    thread = threading.Thread(target=call)
    thread.start()
    return thread, result


def test_sigterm_lets_an_in_flight_call_finish(base: Path) -> None:
    daemon = Skiffd(base, {"runtime": {"conmon": str(_slow_conmon(base, 1.5))}})
    try:
        daemon.start()
        thread, result = _status_in_background(daemon)
        time.sleep(0.5)
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGTERM)
        thread.join(20)
        assert "error" not in result, result.get("error")
        response = result["response"]
        assert isinstance(response, pb.StatusResponse)
        assert {c.type: c.status for c in response.status.conditions}["RuntimeReady"] is True
        assert daemon.proc.wait(20) == 0
        assert not daemon.socket.exists()
    finally:
        daemon.kill()


def test_sigterm_grace_is_bounded(base: Path) -> None:
    config = {"shutdown_grace": 0.5, "runtime": {"conmon": str(_slow_conmon(base, 4))}}
    daemon = Skiffd(base, config)
    try:
        daemon.start()
        thread, result = _status_in_background(daemon)
        time.sleep(0.5)
        assert daemon.proc is not None
        started = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(20) == 0
        assert time.monotonic() - started < 3.0, "skiffd waited past shutdown_grace"
        thread.join(20)
        assert "error" in result, "the slow call should have been cut off"
        assert not daemon.socket.exists()
    finally:
        daemon.kill()
