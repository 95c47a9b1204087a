"""Config loading: defaults, file merging, flags, and the errors a bad file gets."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cri.config import Config, ConfigError, ConfigSources, load, read_file

REPO = Path(__file__).resolve().parents[2]


def _sources(tmp_path: Path, main: str | None = None, **overrides: object) -> ConfigSources:
    config_file = tmp_path / "skiff.yaml"
    if main is not None:
        config_file.write_text(main)
    return ConfigSources(
        config_file=config_file,
        config_file_required=main is not None,
        dropin_dir=tmp_path / "skiff.d",
        overrides=overrides,
    )


def test_deploy_config_is_exactly_the_builtin_defaults() -> None:
    shipped = yaml.safe_load((REPO / "deploy" / "skiff.yaml").read_text())
    assert shipped == Config().to_dict()


def test_no_files_gives_the_defaults(tmp_path: Path) -> None:
    config = load(_sources(tmp_path))
    assert config == Config()
    assert config.socket_path == Path("/run/skiff/skiff.sock")
    assert config.runtime.cgroup_driver == "cgroupfs"


def test_unix_url_listen_address(tmp_path: Path) -> None:
    config = load(_sources(tmp_path, "listen: unix:///run/x/s.sock\n"))
    assert config.socket_path == Path("/run/x/s.sock")


def test_dropins_are_read_in_name_order_and_mappings_merge(tmp_path: Path) -> None:
    dropins = tmp_path / "skiff.d"
    dropins.mkdir()
    (dropins / "b.yaml").write_text("network:\n  cni_plugin_dirs: [/b]\n")
    (dropins / "a.yaml").write_text(
        "network:\n  cni_plugin_dirs: [/a]\n  cni_default_network: net-a\n"
    )
    (dropins / "c.txt").write_text("not: [a config\n")  # not a .yaml: ignored
    (dropins / ".hidden.yaml").write_text("root: relative\n")  # hidden: ignored
    config = load(_sources(tmp_path, "log_level: debug\n"))
    assert config.network.cni_plugin_dirs == ["/b"]  # lists replace; b after a
    assert config.network.cni_default_network == "net-a"  # the rest of the mapping stays
    assert config.log_level == "debug"


def test_flags_win_over_files(tmp_path: Path) -> None:
    config = load(_sources(tmp_path, "root: /srv/skiff\n", root="/data/skiff"))
    assert config.root == "/data/skiff"


def test_metrics_are_off_by_default_and_on_with_the_make_run_dropin(tmp_path: Path) -> None:
    assert load(_sources(tmp_path)).metrics.enabled is False
    dropins = tmp_path / "skiff.d"
    dropins.mkdir()
    shipped = REPO / "deploy" / "skiff.d" / "metrics.yaml"
    (dropins / shipped.name).write_text(shipped.read_text())
    metrics = load(_sources(tmp_path)).metrics
    assert (metrics.enabled, metrics.address, metrics.port) == (True, "127.0.0.1", 9090)


def test_integers_are_taken_for_numbers(tmp_path: Path) -> None:
    config = load(_sources(tmp_path, "shutdown_grace: 3\n"))
    assert config.shutdown_grace == 3.0
    assert isinstance(config.shutdown_grace, float)


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("nope: 1\n", "nope", "unknown key"),
        (
            "runtime:\n  handlers:\n    runc:\n      binary: x\n",
            "runtime.handlers.runc.binary",
            "unknown key",
        ),
        ("log_level: 3\n", "log_level", "must be one of debug, info, warning, error"),
        ("shutdown_grace: true\n", "shutdown_grace", "must be a number"),
        ("shutdown_grace: 0\n", "shutdown_grace", "greater than 0"),
        ("runtime: [runc]\n", "runtime", "must be a mapping"),
        ("network:\n  cni_plugin_dirs: [/ok, rel]\n", "network.cni_plugin_dirs[1]", "absolute"),
        ("runtime:\n  conmon: bin/conmon\n", "runtime.conmon", "program name or an absolute"),
        ("runtime:\n  handlers: {'': {path: runc}}\n", "runtime.handlers", "non-empty"),
        ("- a\n- b\n", "", "must be a mapping of keys"),
        ("metrics:\n  port: 70000\n", "metrics.port", "must be a port number"),
        ("metrics:\n  address: ''\n", "metrics.address", "must name an address"),
        ("metrics:\n  enabled: 'yes'\n", "metrics.enabled", "must be true or false"),
    ],
)
def test_file_errors_name_the_file_and_key(
    tmp_path: Path, text: str, key: str, problem: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        read_file(path)
    assert err.value.source == str(path)
    assert err.value.key == key
    assert problem in str(err.value)


def test_empty_file_is_an_empty_config(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing set\n")
    assert read_file(path) == {}


def test_cross_key_checks(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load(_sources(tmp_path, "root: /x\nrunroot: /x\n"))
    assert err.value.key == "runroot"


def test_dump_reads_back_as_the_same_config(tmp_path: Path) -> None:
    config = load(_sources(tmp_path, "log_format: json\nruntime:\n  cgroup_driver: systemd\n"))
    path = tmp_path / "dumped.yaml"
    path.write_text(config.to_yaml())
    again = load(ConfigSources(config_file=path, dropin_dir=tmp_path / "none"))
    assert again == config
