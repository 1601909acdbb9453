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

from controlplane.core.errors import NotFound
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
        self, store: Store, sealer: Sealer, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self._store = store
        self._sealer = sealer
        self._clock = clock
        self._logins: dict[str, Credential] = {}
        self._usernames: dict[str, str] = {}

    async def load(self) -> None:
        """Open every stored login; one that does not open (its key file was
        lost or replaced) is left out, with a warning naming the registry."""
        for stored in await self._store.list_registry_logins():
            self._usernames[stored.registry] = stored.username
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
            self._logins[stored.registry] = Credential(stored.registry, stored.username, password)
        log.info("event=registry_logins_loaded count=%d", len(self._logins))

    async def login(self, registry: str, username: str, password: str) -> str:
        """Store (or replace) a registry's login; returns the normalized registry."""
        cred = check_credential(registry, username, password)
        sealed = self._sealer.seal(cred.password.encode(), _context(cred.registry, cred.username))
        await self._store.save_registry_login(
            StoredLogin(cred.registry, cred.username, sealed, self._clock())
        )
        self._logins[cred.registry] = cred
        self._usernames[cred.registry] = cred.username
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
        log.info("event=registry_logout registry=%s", name)
        return name

    def list(self) -> list[tuple[str, str]]:
        """(registry, username) of every stored login, by registry; never a password."""
        return sorted(self._usernames.items())

    @property
    def logins(self) -> Mapping[str, Credential]:
        """The logins in force (opened), by registry."""
        return self._logins
