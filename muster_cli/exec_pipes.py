"""`muster run exec` as a pipe: stdin into the job's input buffer, its output
buffer to stdout, as `tyger run exec` does.

A job codespec's `buffers.inputs/outputs` are parameters. A parameter is
*unbound* when the run gives it no buffer: no `-b NAME=ID`, or `-b NAME=_`
(here `_` means the same as leaving the parameter out: the control plane
makes a new buffer for it; muster has no ephemeral relay buffers). At most
one input and one output may be unbound: the input is fed from stdin, the
output is copied to stdout (Tyger's rules and messages). Bound buffers are
left alone.

The checks happen twice: before the run is created, from the codespec the
run names (so a refused exec leaves nothing behind), and again from the
codespec the control plane resolved, which is what counts.

Exit code 0 only if the run Succeeded and the output buffer was copied to
stdout completely. On any other terminal status exec exits 1 with "Run
failed" and the reason, without waiting for the copies. Progress and
`--logs` go to stderr; stdout carries only the output buffer's bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import uuid
from dataclasses import dataclass
from typing import Any

import click
import grpc

from muster.v1 import codespec_pb2 as cs_pb
from muster.v1 import codespec_pb2_grpc as cs_grpc
from muster.v1 import run_pb2 as pb
from muster.v1 import run_pb2_grpc as pb_grpc
from muster_cli.app import address
from muster_cli.client import channel, fail, open_channel, with_retries

UNBOUND = "_"
MULTIPLE_INPUTS = "exec cannot be called if the job has multiple unmapped input buffers"
MULTIPLE_OUTPUTS = "exec cannot be called if the job has multiple unmapped output buffers"
LOG_DRAIN_SECONDS = 10.0
FAILED_OUTPUT_GRACE = 30.0
"""After the output buffer turns out failed, how long to wait for the run's
own verdict (which says why) before reporting the buffer's error."""


@dataclass(frozen=True)
class Options:
    """`run exec`'s flags that matter here."""

    fmt: str
    with_logs: bool
    timestamps: bool
    cancel_on_exit: bool
    block_size: str | None
    write_dop: int
    read_dop: int


@dataclass(frozen=True)
class Pipes:
    """The unbound parameters: fed from stdin / copied to stdout (None: none)."""

    input: str | None
    output: str | None


def unbound(spec: cs_pb.Codespec, bindings: Any) -> Pipes:
    """Which input and output are unbound in `spec` given the run's bindings;
    exits with Tyger's one-line error when two or more of a kind are."""
    inputs = [p for p in spec.buffers.inputs if p not in bindings]
    outputs = [p for p in spec.buffers.outputs if p not in bindings]
    if len(inputs) > 1:
        fail(MULTIPLE_INPUTS)
    if len(outputs) > 1:
        fail(MULTIPLE_OUTPUTS)
    return Pipes(inputs[0] if inputs else None, outputs[0] if outputs else None)


def _named(reference: str) -> tuple[str, int]:
    """'name' or 'name/versions/N' -> (name, N or 0)."""
    name, sep, version = reference.partition("/versions/")
    return name, int(version) if sep and version.isdigit() else 0


def job_codespec(server: str, message: pb.Run) -> cs_pb.Codespec | None:
    """The job codespec the run names, looked up before creating it; None when
    it cannot be (the create then reports why)."""
    ref = message.job.codespec
    if ref.WhichOneof("reference") == "inline":
        return ref.inline
    name, version = _named(ref.named)
    ch = open_channel(server)
    try:
        reply = cs_grpc.CodespecServiceStub(ch).GetCodespec(
            cs_pb.GetCodespecRequest(name=name, version=version), timeout=30
        )
        return reply.codespec
    except grpc.RpcError:
        return None
    finally:
        ch.close()


def exec_with_pipes(
    ctx: click.Context,
    leaf_server: str | None,
    file: str | None,
    flags: dict[str, Any],
    options: Options,
) -> bool:
    """Run `exec` for a job that declares buffers (never returns then: it
    exits). Returns False, having done nothing, when the job declares none,
    for the caller's plain exec."""
    from muster_cli.run_spec import build_run

    message = build_run(file, flags)
    for name, value in list(message.buffers.items()):
        if value == UNBOUND:
            del message.buffers[name]
    server = address(ctx, leaf_server)
    spec = job_codespec(server, message)
    if spec is None or not (spec.buffers.inputs or spec.buffers.outputs):
        return False
    block_size = _block_size(options.block_size)
    _check_format(unbound(spec, message.buffers), options.fmt)

    request = pb.CreateRunRequest(run=message, request_id=uuid.uuid4().hex)
    with channel(server) as ch:
        created = with_retries(lambda: pb_grpc.RunServiceStub(ch).CreateRun(request, timeout=30))
    run = created.run
    try:
        pipes = unbound(run.job.resolved_codespec, message.buffers)
    except SystemExit:
        _cancel_quietly(server, run.id)  # the codespec changed under us: take the run back
        raise
    if pipes.output is not None and options.fmt != "table":
        _cancel_quietly(server, run.id)
        _check_format(pipes, options.fmt)
    show = options.fmt == "table" and sys.stderr.isatty()
    if show:
        click.echo(f"run {run.id} created", err=True)
    ids = {
        "input": run.buffers.get(pipes.input or ""),
        "output": run.buffers.get(pipes.output or ""),
    }
    for role, parameter in (("input", pipes.input), ("output", pipes.output)):
        if parameter is not None and not ids[role]:
            _cancel_quietly(server, run.id)
            fail(f"the control plane gave no buffer for the {role} {parameter!r}")
    _PipeRun(server, run, pipes, ids, options, block_size, show).main()
    return True  # not reached: main() exits


def _check_format(pipes: Pipes, fmt: str) -> None:
    """-o json|yaml prints the run on stdout, which the output buffer needs."""
    if pipes.output is not None and fmt != "table":
        fail(f"-o {fmt} cannot be used: stdout carries the output buffer {pipes.output!r}")


def _block_size(text: str | None) -> int:
    from muster.common.buffers.format import DEFAULT_BLOCK_SIZE, parse_block_size

    if not text:
        return DEFAULT_BLOCK_SIZE
    try:
        return parse_block_size(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--block-size") from None


def _cancel_quietly(server: str, run_id: int) -> None:
    with contextlib.suppress(grpc.RpcError):
        ch = open_channel(server)
        try:
            pb_grpc.RunServiceStub(ch).CancelRun(pb.CancelRunRequest(run_id=run_id), timeout=30)
        finally:
            ch.close()


class _WatchEnded(Exception):
    """The watcher gave up with an error line already printed; exit with `code`."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclass
class _Outcome:
    """How exec ends: exit code and the line to print (on stderr)."""

    code: int
    message: str = ""
    final: pb.Run | None = None


class _PipeRun:
    """One exec: the watcher and log threads, the stdin writer and stdout reader."""

    def __init__(
        self,
        server: str,
        run: pb.Run,
        pipes: Pipes,
        ids: dict[str, str | None],
        options: Options,
        block_size: int,
        show: bool,
    ) -> None:
        self.server, self.run, self.pipes, self.ids = server, run, pipes, ids
        self.options, self.block_size, self.show = options, block_size, show
        self.log_thread: threading.Thread | None = None

    def main(self) -> None:
        from muster_cli.runs import interrupted

        if self.options.with_logs:
            self.log_thread = self._start_logs()
        try:
            outcome = asyncio.run(self._pipe())
        except KeyboardInterrupt:
            # With stdin feeding the input, the run cannot go on without us
            # (its input is marked failed): cancel it without asking.
            cancel = self.options.cancel_on_exit or self.pipes.input is not None
            interrupted(self.server, self.run.id, cancel)
            return
        if self.log_thread is not None:
            self.log_thread.join(timeout=LOG_DRAIN_SECONDS)
        if outcome.code == 0:
            if self.options.fmt != "table" and outcome.final is not None:
                from muster_cli.output import dump, run_dict

                click.echo(dump(run_dict(outcome.final), self.options.fmt))
            elif self.show:
                click.echo(f"run {self.run.id} succeeded", err=True)
            sys.exit(0)
        fail(outcome.message, outcome.code)

    def _start_logs(self) -> threading.Thread:
        from muster_cli.logs import stream_logs

        thread = threading.Thread(
            target=stream_logs,
            args=(self.server, self.run.id),
            kwargs={
                "follow": True,
                "since": None,
                "tail": 0,
                "timestamps": self.options.timestamps,
                "out": sys.stderr,
            },
            daemon=True,
        )
        thread.start()
        return thread

    def _watch(self, loop: asyncio.AbstractEventLoop, done: asyncio.Future[pb.Run]) -> None:
        """Follow the run in a daemon thread (blocking gRPC); resolve `done`."""
        from muster_cli.runs import follow, stamped_to_stderr

        def target() -> None:
            try:
                final = follow(self.server, self.run.id, stamped_to_stderr if self.show else _quiet)
            except SystemExit as exc:  # fail() printed the line already
                _resolve(loop, done, _WatchEnded(int(exc.code or 1)))
            except BaseException as exc:  # reported by the main thread
                _resolve(loop, done, exc)
            else:
                _resolve(loop, done, final)

        threading.Thread(target=target, daemon=True, name="watch").start()

    async def _pipe(self) -> _Outcome:
        loop = asyncio.get_running_loop()
        status: asyncio.Future[pb.Run] = loop.create_future()
        self._watch(loop, status)
        writer = reader = None
        if self.pipes.input is not None:
            writer = asyncio.create_task(self._write(self.ids["input"] or ""))
        if self.pipes.output is not None:
            reader = asyncio.create_task(self._read(self.ids["output"] or ""))
        try:
            return await self._decide(status, writer, reader)
        finally:
            for task in (writer, reader):
                if task is not None and not task.done():
                    task.cancel()
            await asyncio.gather(*(t for t in (writer, reader) if t), return_exceptions=True)

    async def _decide(
        self,
        status: asyncio.Future[pb.Run],
        writer: asyncio.Task[None] | None,
        reader: asyncio.Task[None] | None,
    ) -> _Outcome:
        pending: set[asyncio.Future[Any]] = {f for f in (status, writer, reader) if f is not None}
        while True:
            finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if status in finished:
                return await self._ended(status, reader)
            if writer is not None and writer in finished and writer.exception() is not None:
                return _Outcome(1, self._copy_error("input", writer.exception()))
            if reader is not None and reader in finished and reader.exception() is not None:
                # The output failed: the run is failing too, and says why.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(status), FAILED_OUTPUT_GRACE)
                if status.done() and status.exception() is None:
                    if status.result().status != pb.RUN_STATUS_SUCCEEDED:
                        return self._run_failed(status.result())
                return _Outcome(1, self._copy_error("output", reader.exception()))

    async def _ended(
        self, status: asyncio.Future[pb.Run], reader: asyncio.Task[None] | None
    ) -> _Outcome:
        error = status.exception()
        if error is not None:
            if isinstance(error, _WatchEnded):  # fail() in the watcher printed the line
                return _Outcome(error.code, "")
            return _Outcome(1, f"watching run {self.run.id}: {error}")
        final = status.result()
        if final.status != pb.RUN_STATUS_SUCCEEDED:
            return self._run_failed(final)
        if reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait({reader})
            if reader.exception() is not None:
                return _Outcome(1, self._copy_error("output", reader.exception()))
        return _Outcome(0, final=final)

    def _run_failed(self, final: pb.Run) -> _Outcome:
        from muster_cli.run_text import status_text

        reason = f": {final.status_reason}" if final.status_reason else ""
        return _Outcome(1, f"Run failed: run {final.id} {status_text(final).lower()}{reason}")

    def _copy_error(self, role: str, exc: BaseException | None) -> str:
        if role == "input":
            what = f"standard input to the input buffer {self.pipes.input!r}"
        else:
            what = f"the output buffer {self.pipes.output!r} to standard output"
        if isinstance(exc, BrokenPipeError):
            text = "standard output was closed"
        elif isinstance(exc, OSError):
            text = str(exc.strerror or exc)
        else:
            text = str(exc)
        return f"copying {what} ({self.ids[role]}): {text}"

    async def _client(self, buffer_id: str, writable: bool) -> Any:
        """A ContainerClient for the buffer, whose URL is renewed when it expires."""
        from muster.common.buffers.client import ContainerClient
        from muster.common.buffers.errors import BufferDataError
        from muster_cli.buffer_io import _refresher, _request_url
        from muster_cli.client import client_config

        config = client_config()
        ca_pem = config.ca_pem if config and config.ca_pem else None
        loop = asyncio.get_running_loop()
        try:
            url = await loop.run_in_executor(None, _request_url, self.server, buffer_id, writable)
        except grpc.RpcError as err:
            detail = err.details() or err.code().name
            raise BufferDataError(f"no access to the buffer: {detail}") from None
        refresh = _refresher(self.server, buffer_id, writable)
        return ContainerClient(url, ca_pem=ca_pem, refresh=refresh)

    async def _write(self, buffer_id: str) -> None:
        from muster.common.buffers.writer import write_buffer

        client = await self._client(buffer_id, writable=True)
        async with client:
            await write_buffer(
                client,
                sys.stdin.buffer,
                dop=self.options.write_dop,
                block_size=self.block_size,
                flush_interval=1.0,
            )

    async def _read(self, buffer_id: str) -> None:
        from muster.common.buffers.reader import read_buffer

        client = await self._client(buffer_id, writable=False)
        async with client:
            await read_buffer(client, sys.stdout.buffer, dop=self.options.read_dop)


def _quiet(_line: str) -> None:
    return None


def _resolve(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], value: Any) -> None:
    """Settle `future` from another thread (an exception, or a result)."""

    def settle() -> None:
        if future.done():
            return
        if isinstance(value, BaseException):
            future.set_exception(value)
        else:
            future.set_result(value)

    with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
        loop.call_soon_threadsafe(settle)
