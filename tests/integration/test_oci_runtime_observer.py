"""The OCI runtime driver tells its observer about every runtime and conmon call: the
handler, the verb, how long it took and whether it worked (real conmon and runc)."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from runtime.exec_session import ExecError, ExecOptions, start_exec
from runtime.oci_runtime import OciRuntimeError
from tests.integration.test_oci_runtime import Env, make_env, pytestmark, run

__all__ = ["pytestmark"]  # the same skip conditions as the driver's own tests

Call = tuple[str, str, bool]


@pytest.fixture
def env() -> Iterator[Env]:
    yield from make_env("runc")


def test_every_runtime_call_is_observed(env: Env) -> None:
    observed: list[tuple[str, str, float, bool]] = []
    env.runtime.observer = lambda *call: observed.append(call)

    def calls() -> list[Call]:
        """The calls observed since the last look (each one timed)."""
        assert all(seconds > 0 for _, _, seconds, _ in observed), observed
        taken = [(handler, verb, ok) for handler, verb, _, ok in observed]
        observed.clear()
        return taken

    async def body() -> None:
        cid, _ = await env.started(["sleep", "1000"])
        assert calls() == [("runc", "create", True), ("runc", "start", True)]

        with pytest.raises(OciRuntimeError):
            await env.runtime.start(cid)  # already running: runc refuses
        assert calls() == [("runc", "start", False)]

        assert (await env.runtime.exec_sync(cid, ["true"], 10)).exit_code == 0
        # The command's own failure is an answer, not a failed runtime call.
        assert (await env.runtime.exec_sync(cid, ["false"], 10)).exit_code == 1
        with pytest.raises(OciRuntimeError):
            await env.runtime.exec_sync(cid, ["no-such-command"], 10)
        assert calls() == [
            ("runc", "exec", True),
            ("runc", "exec", True),
            ("runc", "exec", False),
        ]

        # A streaming exec is timed until its command runs, then left to its client.
        session = await start_exec(env.runtime, cid, ExecOptions(("sleep", "0.5")))
        async with session:
            assert calls() == [("runc", "exec_start", True)]
            assert await session.wait() == 0
        assert calls() == []
        with pytest.raises(ExecError):
            await start_exec(env.runtime, cid, ExecOptions(("no-such-command",)))
        assert calls() == [("runc", "exec_start", False)]

        await env.runtime.stop(cid, signal.SIGKILL, 5)
        await env.runtime.delete(cid)
        verbs = calls()
        assert ("runc", "kill", True) in verbs
        assert ("runc", "delete", True) in verbs

        # Stopping a container that never ran, or one already gone, is no failed call.
        never = env.new_id()
        await env.runtime.create(never, env.bundle(never, ["sleep", "1000"]), env.log(never))
        calls()
        await env.runtime.stop(never, signal.SIGTERM, 5)
        await env.runtime.kill(never, signal.SIGKILL)
        assert [c for c in calls() if c[1] == "kill"] == [("runc", "kill", True)] * 2
        await env.runtime.delete(never)
        calls()

        bad = env.new_id()
        with pytest.raises(OciRuntimeError):
            await env.runtime.create(bad, env.bundle(bad, ["/no/such/program"]), env.log(bad))
        assert ("runc", "create", False) in calls()

    run(body())
