"""Copies between a job's named pipes and its buffers, run by the agent itself.

A job with buffers gets one FIFO per buffer in a directory of its own on the
node (``<pipe root>/<container name>/pipes/<buffer name>``), which the
runtime mounts at :data:`muster.common.pipes.PIPE_DIR` in the container. For
each buffer the agent runs one copy, in its own event loop, from the moment
the container is started:

* **output** (the job writes the FIFO): the buffer is started at once
  (``.bufferstart``), then the FIFO is opened for reading, which waits until
  the job opens it for writing, and everything up to end of file (the job
  closed it) goes into the buffer; then the empty final blob and
  ``.bufferend`` complete. A job that exits without ever opening the FIFO
  leaves an **empty, complete** buffer: the agent releases its own waiting
  open by opening the other end itself, and reads end of file.
* **input** (the job reads the FIFO): the FIFO is opened for writing, which
  waits until the job opens it for reading, then the buffer is read into it
  (following a buffer that is still being written) and the FIFO is closed,
  which the job reads as end of file. A job that exits before opening the
  FIFO, or before reading everything, ends the copy without an error.

A copy that fails (the data plane refused or stayed unreachable, a hash chain
mismatch, a failed input buffer) is described as ``output buffer 'out': ...``;
the writer has then marked an output buffer failed. The description goes to
the control plane at once (on the RUNNING status) and again on the job's exit.

Once a copy has ended while the job still runs, its FIFO keeps answering a
late open so that the job never hangs on it: a new reader of an input sees
end of file, a new writer of an output a broken pipe.

When the job exits, the inputs are stopped (nothing more can be delivered)
and the outputs are given the time to upload what the job wrote: there is
no fixed deadline, because an output must be complete, but an output that
makes no progress (no block stored) for ``stall_timeout`` seconds is given up
and marked failed. What the job wrote and the agent has not stored yet is
bounded (the pipe, the reader's queue and ``write_dop`` blocks), so a data
plane that works finishes quickly. Only then does the supervisor report the
job's exit, with the outcome of its copies.

A teardown (a canceled or failed run) stops the copies: an output not
finished yet is marked failed. The outcome of a job's copies is kept in a
file beside its pipe directory, so an agent that restarts after the copies
ended reports it again; a job whose copies were still running when the agent
stopped has lost them (bytes held in the agent's memory are gone, blocks
already stored cannot be written again), so its status carries
:data:`LOST` and its run cannot succeed.

Memory: each output holds at most the pipe reader's queue (4 MiB) and
``write_dop`` blocks; each input ``read_dop`` blocks. FIFO opens, which
block, run in threads of their own (:mod:`agent.fifo_ends`); all reading and
writing of FIFOs is non-blocking on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import stat
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agent.fifo_ends import FifoOpening, write_all
from agent.logutil import log
from agent.runtime import BufferPipe, ContainerSpec, RuntimeFailure
from muster.common.buffers import ContainerClient, read_buffer, write_buffer
from muster.common.buffers.format import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_READ_DOP,
    DEFAULT_WRITE_DOP,
)
from muster.common.buffers.streams import PIPE_SIZE, open_source

_log = logging.getLogger(__name__)

LOST = "the agent restarted while the job's buffer copies ran; their data is lost"
"""The buffer error of a job whose copies did not survive an agent restart."""
OUTCOME_FILE = "outcome"
"""Beside ``pipes/``: the copies' outcome ("" when they succeeded), once they ended."""

ErrorCallback = Callable[[str], None]
"""Told the container name when one of its copies failed while the job runs."""


class _JobFailed(Exception):
    """The job exited unsuccessfully: its output is marked failed, not completed."""


class _Client(ContainerClient):
    """A container client that notes when a block last went through."""

    progressed_at = 0.0
    """Loop time of the last blob stored or fetched."""

    async def put_blob(self, blob: str, data: bytes, md5: str, chain: str | None = None) -> None:
        await super().put_blob(blob, data, md5, chain)
        self.progressed_at = asyncio.get_running_loop().time()


@dataclass(eq=False)
class _Copy:
    """One buffer's copy and what it left behind."""

    pipe: BufferPipe
    path: Path
    task: asyncio.Task[None] | None = None
    client: _Client | None = None
    opening: FifoOpening | None = None
    error: str = ""
    guard: asyncio.Task[None] | None = None


@dataclass(eq=False)
class _Job:
    """The copies of one job container."""

    name: str
    run_id: int
    home: Path
    copies: list[_Copy]
    on_error: ErrorCallback
    exit_code: asyncio.Future[int] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    """The job's exit code, once it has exited (a container that failed: -1)."""
    finishing: asyncio.Task[None] | None = None
    outcome: str | None = None
    """The copies' outcome once all ended ("" for success); None before."""
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def exited(self) -> bool:
        return self.exit_code.done()

    def first_error(self) -> str:
        return "; ".join(c.error for c in self.copies if c.error)


def describe(pipe: BufferPipe, exc: BaseException) -> str:
    """``output buffer 'out': <what went wrong>``."""
    kind = "output" if pipe.output else "input"
    text = str(exc) or type(exc).__name__
    return f"{kind} buffer '{pipe.name}': {text}"


class BufferCopies:
    """Every job's pipes and copies on this node (see the module docstring)."""

    def __init__(
        self,
        root: Path | None,
        *,
        stall_timeout: float = 60.0,
        write_dop: int = DEFAULT_WRITE_DOP,
        read_dop: int = DEFAULT_READ_DOP,
        block_size: int = DEFAULT_BLOCK_SIZE,
    ) -> None:
        """``root``: where per-container pipe directories go (None: this agent cannot
        run jobs with buffers). ``stall_timeout``: how long an output may go without
        storing a block once its job has exited."""
        self._root = root
        self._stall = stall_timeout
        self._write_dop = write_dop
        self._read_dop = read_dop
        self._block_size = block_size
        self._jobs: dict[str, _Job] = {}
        self._recorded: dict[str, str] = {}
        """Outcomes of jobs this process did not copy for (read from disk once)."""

    # -- layout ---------------------------------------------------------------------

    def _home(self, name: str) -> Path:
        if self._root is None:
            raise RuntimeFailure("this agent has no directory for buffer pipes (--pipe-dir)")
        if not name or "/" in name or name in (".", ".."):
            raise RuntimeFailure(f"container name {name!r} cannot name a directory")
        return self._root / name

    async def prepare(self, spec: ContainerSpec, *, fresh: bool) -> ContainerSpec:
        """Make the container's pipe directory and one FIFO per buffer (existing
        FIFOs are kept, so a repeated start is harmless); ``spec`` with
        ``pipe_dir`` set. ``fresh``: the container is new, so an outcome left by
        an earlier container of the same name is dropped."""
        home = self._home(spec.name)
        await asyncio.to_thread(_make_pipes, home, spec.buffers, fresh)
        self._recorded.pop(spec.name, None)
        return replace(spec, pipe_dir=str(home / "pipes"))

    # -- copies ---------------------------------------------------------------------

    def start(self, spec: ContainerSpec, on_error: ErrorCallback) -> None:
        """Start one copy per buffer of ``spec`` (prepared); idempotent by name."""
        if spec.name in self._jobs or not spec.buffers:
            return
        home = self._home(spec.name)
        copies = [_Copy(p, home / "pipes" / p.name) for p in spec.buffers]
        job = _Job(spec.name, spec.run_id, home, copies, on_error)
        self._jobs[spec.name] = job
        for copy in copies:
            label = f"copy {spec.name}/{copy.pipe.name}"
            copy.task = self._spawn(job, self._copy(job, copy), label)
        log(_log, logging.INFO, "buffer_copies_started", name=spec.name, buffers=len(copies))

    def _spawn(self, job: _Job, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        job.tasks.add(task)
        task.add_done_callback(job.tasks.discard)
        return task

    async def _copy(self, job: _Job, copy: _Copy) -> None:
        """One copy; records what went wrong, then guards the FIFO while the job runs."""
        copy.client = _Client(copy.pipe.access_url, ca_pem=copy.pipe.ca_pem or None)
        try:
            if copy.pipe.output:
                written = await write_buffer(
                    copy.client,
                    self._fifo_chunks(job, copy),
                    dop=self._write_dop,
                    block_size=self._block_size,
                )
                log(_log, logging.INFO, "output_copied", name=job.name, buffer=copy.pipe.name,
                    bytes=written.bytes)  # fmt: skip
            else:
                await self._fill_fifo(copy)
        except asyncio.CancelledError:
            raise
        except _JobFailed as exc:  # the job's failure, not the copy's
            log(_log, logging.INFO, "output_marked_failed", name=job.name,
                buffer=copy.pipe.name, reason=exc)  # fmt: skip
        except Exception as exc:
            copy.error = describe(copy.pipe, exc)
            log(_log, logging.WARNING, "buffer_copy_failed", name=job.name, error=copy.error)
            if not job.exited:
                job.on_error(job.name)
        finally:
            await copy.client.close()
        if not job.exited:
            copy.guard = self._spawn(job, _guard(copy), f"guard {job.name}/{copy.pipe.name}")

    async def _fifo_chunks(self, job: _Job, copy: _Copy) -> AsyncIterator[bytes]:
        """What the job writes into an output FIFO, up to end of file; the end
        comes only once the job has exited, and only if it exited 0 (otherwise
        the buffer is marked failed rather than complete)."""
        if not job.exited:  # else it never opened the FIFO: an empty buffer
            copy.opening = FifoOpening(copy.path, write=False)
            fd = await copy.opening.wait()
            try:
                source = await open_source(fd)
                try:
                    while chunk := await source.read(PIPE_SIZE):
                        yield chunk
                finally:
                    await source.aclose()
            finally:
                os.close(fd)
        code = await asyncio.shield(job.exit_code)  # a cancelled copy leaves it be
        if code != 0:
            raise _JobFailed(f"the job exited with code {code}")

    async def _fill_fifo(self, copy: _Copy) -> None:
        """An input buffer into its FIFO; the job closing its end is no error."""
        assert copy.client is not None
        copy.opening = FifoOpening(copy.path, write=True)
        fd = await copy.opening.wait()
        try:
            os.set_blocking(fd, False)
            copied = await read_buffer(copy.client, lambda data: write_all(fd, data),
                                       dop=self._read_dop)  # fmt: skip
            log(_log, logging.INFO, "input_copied", buffer=copy.pipe.name, bytes=copied)
        except BrokenPipeError:
            log(_log, logging.INFO, "input_closed_by_job", buffer=copy.pipe.name)
        finally:
            os.close(fd)

    # -- the job's end ----------------------------------------------------------------

    def holds(self, name: str) -> bool:
        """Whether ``name`` has copies that have not all ended yet."""
        job = self._jobs.get(name)
        return job is not None and job.outcome is None

    def error_of(self, name: str) -> str:
        """What went wrong with ``name``'s copies so far ("" if nothing did). For a
        job this process did not start copies for: the outcome recorded on disk,
        or :data:`LOST` when its copies never ended."""
        job = self._jobs.get(name)
        if job is not None:
            return job.outcome if job.outcome is not None else job.first_error()
        if name not in self._recorded:
            self._recorded[name] = self._read_outcome(name)
        return self._recorded[name]

    def _read_outcome(self, name: str) -> str:
        if self._root is None:
            return ""
        home = self._home(name)
        try:
            return (home / OUTCOME_FILE).read_text()
        except FileNotFoundError:
            return LOST if (home / "pipes").is_dir() else ""
        except OSError as exc:
            return f"the outcome of the buffer copies cannot be read: {exc}"

    def job_exited(self, name: str, exit_code: int, report: Callable[[], None]) -> bool:
        """The job ``name`` has exited with ``exit_code``: end its copies and call
        ``report`` once they have (then :meth:`error_of` tells how they went).
        False when there is nothing to wait for (report now)."""
        job = self._jobs.get(name)
        if job is None or job.outcome is not None:
            return False
        if job.finishing is None:
            job.exit_code.set_result(exit_code)
            job.finishing = self._spawn(job, self._finish(job, report), f"finish {name}")
        return True

    async def _finish(self, job: _Job, report: Callable[[], None]) -> None:
        for copy in job.copies:
            if copy.guard is not None:
                copy.guard.cancel()
            if not copy.pipe.output and copy.task is not None:
                copy.task.cancel()  # nothing more can be delivered: no error
        await asyncio.gather(
            *(c.opening.release() for c in job.copies if c.pipe.output and c.opening is not None)
        )
        await self._wait_outputs(job)
        await asyncio.gather(
            *(t for c in job.copies for t in (c.task, c.guard) if t is not None),
            return_exceptions=True,
        )
        outcome = job.first_error()
        try:
            await asyncio.to_thread((job.home / OUTCOME_FILE).write_text, outcome)
        except OSError as exc:
            log(_log, logging.WARNING, "outcome_not_saved", name=job.name, error=exc)
        job.outcome = outcome
        log(_log, logging.INFO, "buffer_copies_ended", name=job.name, error=outcome or None)
        report()

    async def _wait_outputs(self, job: _Job) -> None:
        """Let the outputs upload while they make progress; give up a stalled one."""
        loop = asyncio.get_running_loop()
        exited_at = loop.time()
        pending = {c.task: c for c in job.copies if c.pipe.output and c.task is not None}
        while pending:
            done, _ = await asyncio.wait(pending, timeout=min(1.0, self._stall))
            for task in done:
                pending.pop(task)
            for task, copy in list(pending.items()):
                since = max(exited_at, copy.client.progressed_at if copy.client else 0.0)
                if loop.time() - since >= self._stall:
                    copy.error = describe(
                        copy.pipe,
                        TimeoutError(f"no block stored for {self._stall:g} s after the job exited"),
                    )
                    task.cancel()
                    pending.pop(task)

    # -- teardown ----------------------------------------------------------------------

    async def stop(self, name: str) -> None:
        """Stop ``name``'s copies without a report (the run is being torn down): an
        output not finished yet is marked failed."""
        job = self._jobs.get(name)
        if job is None:
            return
        tasks = list(job.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if job.outcome is None:
            job.outcome = job.first_error() or "the run was torn down during the copies"

    async def stop_run(self, run_id: int) -> None:
        """:meth:`stop` every job of ``run_id``."""
        names = [n for n, j in self._jobs.items() if j.run_id == run_id]
        await asyncio.gather(*(self.stop(n) for n in names))

    async def remove(self, name: str) -> None:
        """Stop ``name``'s copies and delete its pipe directory (the container is gone)."""
        await self.stop(name)
        self._jobs.pop(name, None)
        self._recorded.pop(name, None)
        if self._root is None:
            return
        home = self._home(name)
        await asyncio.to_thread(shutil.rmtree, home, ignore_errors=True)

    async def close(self) -> None:
        """Stop every copy (the agent stops; the containers keep running). Outcomes
        are not recorded: a restarted agent reports the unfinished ones lost."""
        tasks = [t for j in self._jobs.values() for t in j.tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._jobs.clear()


def _make_pipes(home: Path, buffers: tuple[BufferPipe, ...], fresh: bool) -> None:
    """The container's directory (``pipes/`` readable by any container user) and
    FIFOs that any container user can open (umask does not apply: chmod)."""
    pipes = home / "pipes"
    pipes.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o755)
    os.chmod(pipes, 0o755)
    if fresh:
        with contextlib.suppress(FileNotFoundError):
            (home / OUTCOME_FILE).unlink()
    for pipe in buffers:
        path = pipes / pipe.name
        try:
            if stat.S_ISFIFO(path.lstat().st_mode):
                os.chmod(path, 0o666)
                continue
            path.unlink()
        except FileNotFoundError:
            pass
        os.mkfifo(path, 0o666)
        os.chmod(path, 0o666)


async def _guard(copy: _Copy) -> None:
    """After the copy ended, answer every late open of the FIFO at once (end of
    file for a reader of an input, a broken pipe for a writer of an output), so
    the job never blocks on it. Cancelled when the job exits."""
    while True:
        opening = FifoOpening(copy.path, write=not copy.pipe.output)
        try:
            fd = await opening.wait()
        except OSError as exc:
            if exc.errno != errno.EINTR:
                return
            continue
        os.close(fd)
