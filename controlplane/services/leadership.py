"""Which of the control planes sharing one database leads (docs/ha.md).

Only the leader schedules, releases, tears down and talks to agents; the
others answer reads from the database and tell everybody else where the
leader is. Leadership is a lease in the store with an epoch that grows with
each new leader:

- every `renew_every` the leader renews its lease (`duration` long, on the
  database's clock) and a follower tries to take it, which works once the
  lease has expired;
- the leader acts only until its lease would run out by its own monotonic
  clock, counted from *before* its last successful renewal was sent (so
  never later than the database's expiry), less a margin; a leader that
  could not renew in time, or that finds another holder, is deposed at once
  and for good: this process never leads again (the command line exits and
  its service manager starts it afresh, as a follower: crash-only);
- its epoch fences it everywhere else: agents ignore commands of an epoch
  older than the newest they have seen, and a PostgreSQL store commits its
  writes only while its lease is held (`Store.set_fence`).

On SQLite and the memory store there is only ever one control plane: the
lease is theirs at once and never expires; the epoch still grows with each
start, so agents tell a restarted control plane's commands from older ones.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from controlplane.core.errors import StoreUnavailable
from controlplane.store.base import Lease, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseSettings:
    """How long a lease lasts and how often it is renewed or tried for."""

    duration: float = 5.0
    renew_every: float = 1.0
    margin: float = 0.5
    """The leader stops acting this long before its lease would expire."""


@dataclass(frozen=True)
class Candidate:
    """This control plane, as the lease row records it: who, and the
    addresses clients and agents reach it at (named in followers' refusals)."""

    holder: str
    api_address: str
    agent_address: str


def new_holder() -> str:
    """A name for this process: never the same twice, so that a restarted
    control plane takes the lease with a new epoch."""
    return f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(3)}"


class Leadership:
    """This process's view of the lease: whether it leads, with which epoch,
    and who leads otherwise."""

    def __init__(
        self,
        store: Store,
        me: Candidate,
        settings: LeaseSettings | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self.me = me
        self.settings = settings or LeaseSettings()
        self._mono = monotonic
        self.epoch = 0
        """This process's epoch while it leads (0: it has not led)."""
        self.leader: Lease | None = None
        """The lease as last read (None: not read yet)."""
        self._until = 0.0  # monotonic instant until which the leader may act
        self.elected = asyncio.Event()
        self.deposed = asyncio.Event()
        self.reason = ""
        """Why this process was deposed."""
        self.ready = False
        """Set once the new leader has loaded its state: it serves from then on."""

    @property
    def leading(self) -> bool:
        """Elected and not deposed (whether or not the lease is still fresh)."""
        return self.epoch > 0 and not self.deposed.is_set()

    def acting(self) -> bool:
        """Whether this process may act as the leader now. Checked before every
        command to an agent: after a pause (SIGSTOP, a frozen VM) the first
        thing that runs sees the lease run out and deposes this process,
        whichever task it is."""
        if not self.leading:
            return False
        if self._mono() >= self._until:
            self._depose("its lease ran out before it could renew it")
            return False
        return True

    def serving(self) -> bool:
        """Acting and with its state loaded: it takes writes and agent streams."""
        return self.ready and self.acting()

    async def round(self) -> None:
        """Renew the lease, or try to take it; depose this process if it lost it."""
        if self.deposed.is_set():
            return
        sent = self._mono()
        try:
            lease = await self._store.acquire_lease(
                self.me.holder, self.me.api_address, self.me.agent_address, self.settings.duration
            )
        except StoreUnavailable as exc:
            log.warning("event=lease_unavailable leading=%s error=%r", self.leading, str(exc))
            if self.leading:
                self.acting()  # deposes once the lease has run out
            return
        self.leader = lease
        if lease.holder != self.me.holder or (self.leading and lease.epoch != self.epoch):
            if self.leading:
                self._depose(f"{lease.holder} holds the lease now (epoch {lease.epoch})")
            return
        if self.leading and not self.acting():
            return  # renewed too late: the lease may have been someone else's meanwhile
        self._until = sent + lease.seconds_left - self.settings.margin
        if self.epoch == 0:
            await self._store.set_fence(None if math.isinf(lease.seconds_left) else lease.epoch)
            self.epoch = lease.epoch
            log.info("event=elected holder=%s epoch=%d", self.me.holder, self.epoch)
            self.elected.set()

    async def run_forever(self) -> None:
        """Rounds every `renew_every` seconds until this process is deposed."""
        while not self.deposed.is_set():
            await self.round()
            await asyncio.sleep(self.settings.renew_every)

    def _depose(self, reason: str) -> None:
        if self.deposed.is_set():
            return
        self.reason = reason
        self.ready = False
        self.deposed.set()
        log.error("event=deposed epoch=%d reason=%r", self.epoch, reason)

    def hint(self) -> str:
        """Where the leader is, for a refusal: one line."""
        lease = self.leader
        if lease is None or not lease.holder or lease.seconds_left <= 0:
            return "no control plane leads right now (an election is under way); retry shortly"
        if lease.holder == self.me.holder:
            return "this control plane was just elected and is loading its state; retry shortly"
        return (
            f"the leader (epoch {lease.epoch}) is at {lease.api_address} "
            f"(agents: {lease.agent_address})"
        )
