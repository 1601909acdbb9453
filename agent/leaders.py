"""Following the leading control plane: the newest epoch an agent has seen,
and the addresses it tries (docs/ha.md).

Several control planes may share one database; one leads, with an epoch that
grows with each new leader, and stamps it on every message it sends an agent.
The agent remembers the newest epoch it has seen (in its state directory, so
that a restarted agent still knows it) and ignores any message of an older
one: a deposed leader that has not noticed yet cannot start or stop anything.
Followers refuse the agent's stream with UNAVAILABLE and name the leader in
the trailing metadata; the agent goes there next.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import grpc

from agent.logutil import log
from muster.common.leaders import LEADER_AGENT_KEY, hint_in

_log = logging.getLogger(__name__)
EPOCH_FILE = "leader-epoch"


class EpochGuard:
    """The newest leadership epoch seen; kept in `directory` when given."""

    def __init__(self, directory: Path | None = None) -> None:
        self._path = directory / EPOCH_FILE if directory is not None else None
        self.newest = self._read()

    def _read(self) -> int:
        if self._path is None:
            return 0
        try:
            return int(self._path.read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def admit(self, epoch: int, kind: str) -> bool:
        """Whether a message of `epoch` may be acted on (0: a control plane
        that does not say, as before epochs). A newer epoch is remembered,
        on disk first, before the message is acted on."""
        if epoch == 0 or epoch == self.newest:
            return True
        if epoch < self.newest:
            log(
                _log,
                logging.WARNING,
                "stale_leader_ignored",
                kind=kind,
                epoch=epoch,
                newest=self.newest,
            )
            return False
        self._save(epoch)
        log(_log, logging.INFO, "leader_epoch", epoch=epoch, previous=self.newest)
        self.newest = epoch
        return True

    def _save(self, epoch: int) -> None:
        if self._path is None:
            return
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self._path.with_suffix(".tmp")
            with open(temporary, "w") as out:
                out.write(f"{epoch}\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self._path)
        except OSError as exc:  # still refuse older epochs for this process's life
            log(_log, logging.ERROR, "epoch_not_saved", error=exc)


class Targets:
    """The control plane addresses an agent tries, in turn, starting with the
    leader it last heard of."""

    def __init__(self, addresses: list[str]) -> None:
        if not addresses:
            raise ValueError("no control plane address")
        self.addresses = list(addresses)
        self._index = 0
        self._hint: str | None = None

    @property
    def current(self) -> str:
        """The address the next session connects to."""
        return self._hint or self.addresses[self._index]

    def failed(self, error: BaseException | None) -> None:
        """The session at `current` ended: follow the leader a refusal named,
        or move on to the next address."""
        hint = leader_hint(error)
        if hint and hint != self.current:
            self._hint = hint
            return
        if self._hint is not None:
            self._hint = None
        else:
            self._index = (self._index + 1) % len(self.addresses)

    def connected(self) -> None:
        """The session at `current` was accepted: stay with it."""
        if self._hint is not None and self._hint not in self.addresses:
            self.addresses.append(self._hint)
        if self._hint is not None:
            self._index = self.addresses.index(self._hint)
            self._hint = None


def leader_hint(error: BaseException | None) -> str | None:
    """The leader's agent address from a follower's refusal, if it named one."""
    if not isinstance(error, grpc.aio.AioRpcError):
        return None
    if error.code() != grpc.StatusCode.UNAVAILABLE:
        return None
    return hint_in(error, LEADER_AGENT_KEY)
