"""restartPolicy Always on the worker: an exiting worker is restarted in place
(Tyger's behaviour) instead of failing the run; the default still fails it."""

from __future__ import annotations

import grpc
import pytest

from controlplane.core import runs as lifecycle
from controlplane.core.containers import container_spec
from controlplane.core.runs import Observation
from controlplane.store.documents import run_from_doc, run_to_doc
from muster.v1 import codespec_pb2 as cpb
from muster.v1 import codespec_pb2_grpc as cgrpc
from muster.v1 import run_pb2 as rpb
from muster.v1 import run_pb2_grpc as rgrpc
from tests.controlplane.test_runs_state import T0, placed, ready


def exited(run: lifecycle.Run, index: int, code: int) -> list:
    return lifecycle.observe(
        run, f"n{index}", Observation("worker", index, "exited", exit_code=code), T0
    )


def test_by_default_an_exiting_worker_fails_the_run() -> None:
    run, _ = placed()
    ready(run, 0), ready(run, 1)
    exited(run, 1, 3)
    assert (run.status, run.status_reason) == ("Failed", "worker 1 exited with code 3")


def test_with_restart_always_the_worker_comes_back_and_the_run_goes_on() -> None:
    run, _ = placed()
    assert run.worker is not None
    run.worker.restart = True
    ready(run, 0), ready(run, 1)
    assert run.released
    assert exited(run, 1, 3) == []
    assert run.status == "Running" and not run.replica("worker", 1).ready
    assert (
        run.events[-1].message
        == "worker 1 exited with code 3; restarting it (restartPolicy Always)"
    )
    ready(run, 1)  # Podman restarted it and its endpoints accept again
    assert run.replica("worker", 1).ready and run.status == "Running"
    job = lifecycle.observe(run, "n0", Observation("job", 0, "exited", exit_code=0), T0)
    assert run.status == "Succeeded" and job
    # A worker removed (not restarted) still fails a run.
    again, _ = placed()
    again.worker.restart = True  # type: ignore[union-attr]
    lifecycle.observe(again, "n0", Observation("worker", 0, "removed"), T0)
    assert again.status == "Failed"


def test_the_policy_reaches_the_container_and_survives_the_store() -> None:
    run, _ = placed()
    run.worker.restart = True  # type: ignore[union-attr]
    assert container_spec(run, "worker", 0).restart_always
    assert not container_spec(run, "job", 0).restart_always
    assert run_from_doc(run_to_doc(run)).worker.restart  # type: ignore[union-attr]
    run.worker.restart = False  # type: ignore[union-attr]
    assert "restart" not in run_to_doc(run)["worker"]  # older documents load as before


async def test_over_grpc_only_workers_take_the_policy(tmp_path) -> None:
    from controlplane.server import start

    plane = await start("127.0.0.1:0", tmp_path / "cp.db")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as ch:
            specs = cgrpc.CodespecServiceStub(ch)
            await specs.CreateCodespec(
                cpb.CreateCodespecRequest(codespec=cpb.Codespec(name="j", image="img"))
            )
            worker = cpb.Codespec(name="w", image="img", kind=cpb.CODESPEC_KIND_WORKER)
            await specs.CreateCodespec(cpb.CreateCodespecRequest(codespec=worker))
            runs = rgrpc.RunServiceStub(ch)
            always = rpb.RESTART_POLICY_ALWAYS
            j, w = rpb.CodespecRef(named="j"), rpb.CodespecRef(named="w")
            made = await runs.CreateRun(rpb.CreateRunRequest(run=rpb.Run(
                job=rpb.RunCodeTarget(codespec=j),
                worker=rpb.RunCodeTarget(codespec=w, restart_policy=always),
            )))  # fmt: skip
            got = await runs.GetRun(rpb.GetRunRequest(run_id=made.run.id))
            assert got.run.worker.restart_policy == always
            assert got.run.job.restart_policy == rpb.RESTART_POLICY_UNSPECIFIED
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await runs.CreateRun(rpb.CreateRunRequest(run=rpb.Run(
                    job=rpb.RunCodeTarget(codespec=j, restart_policy=always)
                )))  # fmt: skip
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert (err.value.details() or "").startswith("job.restartPolicy: only workers")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await runs.CreateRun(rpb.CreateRunRequest(run=rpb.Run(
                    job=rpb.RunCodeTarget(codespec=j, restart_policy=7)  # type: ignore[arg-type]
                )))  # fmt: skip
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await plane.stop(grace=0.2)
