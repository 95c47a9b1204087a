"""Every error class of skiff has the kind it means (base/errors.py), and every kind
has a gRPC status code (cri/errors.py): a lower layer cannot name a code that does not
exist, and a subclass of another kind than its parent cannot silently keep the
parent's."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import grpc
import pytest

from base.errors import KINDS, FailedPrecondition, NotFound, SkiffError, kind_of
from cri.errors import STATUS_CODES, status_of
from runtime.cgroups import CgroupError

PACKAGES = ("api", "base", "cri", "image", "runtime", "network")

#: Exceptions that never reach a client as a typed error: start-up failures of skiffd,
#: the streaming server's HTTP-level errors, and lower-layer errors that their callers
#: in cri/ catch and handle. A new exception class is either of a kind or listed here.
NOT_A_CLIENTS_ERROR = {
    "base.failpoints.UnknownFailpoint",
    "base.trees.TreeRemovalError",
    "cri.config.ConfigError",
    "cri.daemon.StartupError",
    "cri.http_head.MalformedHead",
    "cri.instance_lock.AlreadyRunning",
    "cri.store.StoreError",
    "cri.streaming.server.StreamingTLSError",
    "cri.streaming.spdy.SpdyError",
    "cri.streaming.websocket.WebSocketError",
    "network.cni_config.CniConfigError",
    "network.pin.PinFailure",
    "runtime.exit_watch.ExitWatchError",
}


def _error_classes() -> list[type[BaseException]]:
    found: list[type[BaseException]] = []
    for package in PACKAGES:
        root = importlib.import_module(package)
        for module_info in pkgutil.walk_packages(root.__path__, f"{package}."):
            module = importlib.import_module(module_info.name)
            found.extend(
                value
                for value in vars(module).values()
                if inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == module.__name__
            )
    return found


ERROR_CLASSES = _error_classes()


def _name(error: type[BaseException]) -> str:
    return f"{error.__module__}.{error.__qualname__}"


def _kind_problems(error: type[BaseException]) -> list[str]:
    """What is wrong with the kind of one error class (nothing: an empty list)."""
    if not issubclass(error, SkiffError):
        return []
    if error in KINDS or error is SkiffError:
        return []
    kind = kind_of(error)
    if kind is None:
        return [f"{_name(error)} is a SkiffError of no kind: subclass a kind of base/errors.py"]
    named = [base for base in error.__bases__ if base in KINDS]
    if len(named) > 1:
        return [f"{_name(error)} names two kinds: {[base.__name__ for base in named]}"]
    if named and kind is not named[0]:
        return [
            f"{_name(error)} names {named[0].__name__} but is {kind.__name__}: "
            "name the kind first among the bases"
        ]
    return []


def test_the_walk_finds_the_errors_of_every_layer() -> None:
    modules = {error.__module__.split(".")[0] for error in ERROR_CLASSES}
    assert {"base", "cri", "image", "runtime", "network"} <= modules


def test_every_kind_has_its_own_status_code() -> None:
    assert set(STATUS_CODES) == set(KINDS)
    assert len(set(STATUS_CODES.values())) == len(KINDS)
    assert grpc.StatusCode.OK not in STATUS_CODES.values()


def test_every_typed_error_is_of_the_kind_it_names() -> None:
    problems = [problem for error in ERROR_CLASSES for problem in _kind_problems(error)]
    assert not problems, "\n".join(problems)


def test_a_subclass_naming_its_kind_after_its_parent_is_caught() -> None:
    class NamedLast(CgroupError, NotFound):  # would be INTERNAL, not NOT_FOUND
        pass

    class NamedFirst(NotFound, CgroupError):
        pass

    class TwoKinds(NotFound, FailedPrecondition):
        pass

    assert _kind_problems(NamedLast) == [
        f"{_name(NamedLast)} names NotFound but is Internal: name the kind first among the bases"
    ]
    assert _kind_problems(NamedFirst) == []
    assert status_of(NamedFirst("cgroup x not found")) == grpc.StatusCode.NOT_FOUND
    assert _kind_problems(TwoKinds) == [
        f"{_name(TwoKinds)} names two kinds: ['NotFound', 'FailedPrecondition']"
    ]


def test_no_error_names_its_status_as_a_string() -> None:
    named = [_name(error) for error in ERROR_CLASSES if hasattr(error, "grpc_status")]
    assert not named, f"grpc_status is gone; subclass a kind of base/errors.py: {named}"


def test_every_public_error_is_of_a_kind_or_known_not_to_reach_a_client() -> None:
    untyped = {
        _name(error)
        for error in ERROR_CLASSES
        if not issubclass(error, SkiffError) and not error.__name__.startswith("_")
    }
    assert untyped == NOT_A_CLIENTS_ERROR


@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.__name__)
def test_each_kind_reaches_the_client_as_its_code(kind: type[SkiffError]) -> None:
    assert status_of(kind("x")) == STATUS_CODES[kind]
    assert kind.__name__.lower() == STATUS_CODES[kind].name.replace("_", "").lower()
