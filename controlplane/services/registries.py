"""Registry credentials held by the control plane.

The store keeps each password sealed (`security/sealing.py`); this service
keeps the opened logins in memory, because every StartContainer that may pull
needs them at once. They leave the control plane only inside StartContainer
and PullImage messages to the node that pulls, never in an API answer, a run,
an event or a log line (logins are logged by registry and user name only).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime

from controlplane.core.errors import FailedPrecondition, NotFound
from controlplane.core.images import Credential, StoredLogin, check_credential, check_registry
from controlplane.security.sealing import Sealer, SealError
from controlplane.services.codespecs import utcnow
from controlplane.store.base import Store

log = logging.getLogger(__name__)


def _context(registry: str, username: str) -> bytes:
    """What a sealed password is bound to: its row."""
    return f"muster registry login\0{registry}\0{username}".encode()


class RegistryService:
    """Login, logout, list; and the logins in force, by registry."""

    def __init__(
        self,
        store: Store,
        sealer: Sealer,
        clock: Callable[[], datetime] = utcnow,
        *,
        refuse_logins: str | None = None,
    ) -> None:
        """`refuse_logins`: why `login` must fail (FailedPrecondition with this
        text), when the sealing key could not outlive the process but the store does."""
        self._store = store
        self._refuse_logins = refuse_logins
        self._sealer = sealer
        self._clock = clock
        self._logins: dict[str, Credential] = {}
        self._usernames: dict[str, str] = {}
        self._changes = 0
        """Logins and logouts made in memory so far (see :meth:`load`)."""

    async def load(self) -> None:
        """Replace the logins in memory with those stored now; one that does not
        open (its key file was lost or replaced) is left out, with a warning
        naming the registry.

        Replace, not add: a control plane elected again (``take_office``) must
        not keep a login another leader deleted meanwhile, nor an old password
        of one that no longer opens, and send it to nodes. A login or logout
        made here while the store was being read is not undone either: the
        read is repeated."""
        while True:
            changes = self._changes
            stored_logins = await self._store.list_registry_logins()
            if changes == self._changes:
                break
        logins: dict[str, Credential] = {}
        usernames: dict[str, str] = {}
        for stored in stored_logins:
            usernames[stored.registry] = stored.username
            try:
                password = self._sealer.open(
                    stored.sealed, _context(stored.registry, stored.username)
                ).decode()
            except (SealError, UnicodeDecodeError, ValueError) as exc:
                log.warning(
                    "event=registry_login_unreadable registry=%s reason=%r "
                    "hint='muster registry login' again",
                    stored.registry,
                    str(exc),
                )
                continue
            logins[stored.registry] = Credential(stored.registry, stored.username, password)
        self._logins, self._usernames = logins, usernames
        log.info("event=registry_logins_loaded count=%d", len(self._logins))

    async def login(self, registry: str, username: str, password: str) -> str:
        """Store (or replace) a registry's login; returns the normalized registry."""
        cred = check_credential(registry, username, password)
        if self._refuse_logins is not None:
            raise FailedPrecondition(self._refuse_logins)
        sealed = self._sealer.seal(cred.password.encode(), _context(cred.registry, cred.username))
        await self._store.save_registry_login(
            StoredLogin(cred.registry, cred.username, sealed, self._clock())
        )
        self._logins[cred.registry] = cred
        self._usernames[cred.registry] = cred.username
        self._changes += 1
        log.info("event=registry_login registry=%s username=%s", cred.registry, cred.username)
        return cred.registry

    async def logout(self, registry: str) -> str:
        """Forget a registry's login (NotFound if there is none)."""
        name = check_registry(registry)
        if not await self._store.delete_registry_login(name):
            raise NotFound(
                f"no login is stored for registry '{name}'; `muster registry list` shows them"
            )
        self._logins.pop(name, None)
        self._usernames.pop(name, None)
        self._changes += 1
        log.info("event=registry_logout registry=%s", name)
        return name

    def list(self) -> list[tuple[str, str]]:
        """(registry, username) of every stored login, by registry; never a password."""
        return sorted(self._usernames.items())

    @property
    def logins(self) -> Mapping[str, Credential]:
        """The logins in force (opened), by registry."""
        return self._logins
