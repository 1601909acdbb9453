"""Encryption at rest for the few secrets the control plane must be able to
read back (registry passwords, which agents need in the clear to pull).

AES-256-GCM with a random 96-bit nonce per secret; the stored form is
`version byte || nonce || ciphertext+tag`. The associated data binds each
ciphertext to its row (registry and user name), so a sealed password cannot
be moved to another registry's row in the database and still open.

The key is a file of its own, `registry.key` (mode 0600, made on first use):
in the state directory beside the CA, or, with `--insecure` (which has no
state directory of its own), beside the database. The database alone (a copy,
a backup) reveals no password; the key file and the database together do,
so keep them apart in backups.
"""

from __future__ import annotations

import base64
import logging
import os
import stat
import threading
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from muster.common.files import write_private

log = logging.getLogger(__name__)

KEY_FILE = "registry.key"
_VERSION = b"\x01"
_NONCE = 12


class SealError(Exception):
    """A sealed secret that does not open (another key, or altered)."""


class Sealer:
    """Seals and opens secrets with one AES-GCM key, read from (or made in)
    `path` the first time it is needed; `path` None keeps a key in memory
    only (for a database in memory, which forgets everything anyway)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._key: bytes | None = None
        self._lock = threading.Lock()

    def _aead(self, create: bool) -> AESGCM | None:
        with self._lock:
            if self._key is None:
                self._key = self._load(create)
            return AESGCM(self._key) if self._key is not None else None

    def _load(self, create: bool) -> bytes | None:
        if self.path is None:
            return AESGCM.generate_key(bit_length=256) if create else None
        if self.path.exists():
            mode = stat.S_IMODE(self.path.stat().st_mode)
            if mode & 0o077:
                log.warning(
                    "event=key_file_readable_by_others file=%s mode=%o (chmod 600 it)",
                    self.path,
                    mode,
                )
            key = base64.urlsafe_b64decode(self.path.read_bytes().strip())
            if len(key) != 32:
                raise SealError(f"{self.path} does not hold a 256-bit key")
            return key
        if not create:
            return None
        key = AESGCM.generate_key(bit_length=256)
        write_private(self.path, base64.urlsafe_b64encode(key) + b"\n")
        log.info("event=key_file_created file=%s", self.path)
        return key

    def seal(self, secret: bytes, context: bytes) -> bytes:
        """Encrypt `secret`, bound to `context` (making the key on first use)."""
        aead = self._aead(create=True)
        assert aead is not None
        nonce = os.urandom(_NONCE)
        return _VERSION + nonce + aead.encrypt(nonce, secret, context)

    def open(self, sealed: bytes, context: bytes) -> bytes:
        """Decrypt what `seal` made with the same key and context."""
        aead = self._aead(create=False)
        if aead is None:
            raise SealError(f"the key file {self.path} is missing")
        if len(sealed) < 1 + _NONCE + 16 or sealed[:1] != _VERSION:
            raise SealError("not a sealed secret of this version")
        nonce, body = sealed[1 : 1 + _NONCE], sealed[1 + _NONCE :]
        try:
            return aead.decrypt(nonce, body, context)
        except InvalidTag:
            raise SealError(
                "the secret does not open with this key (another key, or altered)"
            ) from None
