"""The per-user voiceprint keys, wrapped with the server's secret, in a file outside the database.

Why outside: erasure must hold for copies of the database made before the erasure (a backup,
a replica, the WAL, free pages, PostgreSQL's dead tuples). Each voiceprint is encrypted with a
key of its own (app/store/vault.py). If that key were kept in the database, even wrapped, a backup from
before the deletion would still hold it, and the server's secret would unwrap it. So the keys
live here instead, in a small SQLite file that is *not* part of the database or its backups;
destroying a key here makes every copy of that voiceprint, wherever it is, unreadable.

- Each key is wrapped (AES-256-GCM) with a key derived from the server's secret (HKDF-SHA256),
  bound to its id, so the file alone, or a copy of it, opens nothing without the secret.
- Deleting a key overwrites it in the file (``PRAGMA secure_delete``); the rollback journal that
  held its page for the length of that one transaction is removed. Blocks the file system freed
  are beyond any program's reach: keep this file off snapshotting file systems, ideally on an
  encrypted disk, and never in backups. Losing it means every user enrolls again.
- Several server processes on one host share the file (SQLite's file locks); its path is
  ``KEYSTORE_PATH`` (default ``instance/keystore.db``).
- Rotating the secret re-wraps every key (``flask keys rewrap``); keys record which secret
  wrapped them by a fingerprint, never the secret itself.

Fail closed: a missing file, a key wrapped with another secret, or a missing key raises
``KeystoreError``; nothing is decrypted and no voiceprint loads.
"""
from __future__ import annotations

import logging
import os
import secrets
import sqlite3
import time
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Iterable, Iterator
from urllib.parse import quote

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

logger = logging.getLogger(__name__)

NONCE_BYTES = 12
SCHEMA = ("CREATE TABLE IF NOT EXISTS keys (id TEXT PRIMARY KEY, kek_id TEXT NOT NULL, wrapped BLOB NOT NULL, "
          "created_at REAL NOT NULL)")


class KeystoreError(Exception):
    """The keystore cannot give the key asked for: missing, unreadable, or wrapped with another secret."""


def _derive(secret: str, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"voicegate keystore", info=purpose).derive(secret.encode())


class Keystore:
    """A file of per-user keys, each wrapped with a key derived from the server's secret."""

    def __init__(self, path: str | os.PathLike, secret: str):
        self.path = Path(path)
        self._kek = AESGCM(_derive(secret, b"wrap v1"))
        # Names the secret that wrapped a key (to tell "wrong secret" from "damaged"), revealing nothing of it.
        self.kek_id = _derive(secret, b"fingerprint v1")[:8].hex()

    # -- the file ---------------------------------------------------------------------------

    @contextmanager
    def _connect(self, create: bool = False) -> Iterator[sqlite3.Connection]:
        if not self.path.is_file():
            if not create:
                raise KeystoreError(f"the keystore {self.path} is missing")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Owner-only from its first byte; never truncates a file another process just made.
            try:
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            except FileExistsError:
                pass
        try:
            # mode=rw: reading never creates an empty keystore in place of a lost one.
            connection = sqlite3.connect(f"file:{quote(str(self.path))}?mode=rw", uri=True, timeout=15,
                                         isolation_level=None)
        except sqlite3.Error as error:
            raise KeystoreError(f"the keystore {self.path} cannot be opened: {error}") from None
        with closing(connection):
            try:
                connection.execute("PRAGMA secure_delete=ON")
                if create:
                    connection.execute(SCHEMA)
                yield connection
            except sqlite3.Error as error:
                raise KeystoreError(f"the keystore {self.path} is unreadable: {error}") from None

    # -- keys ---------------------------------------------------------------------------------

    def create(self) -> tuple[str, bytes]:
        """Make and store a fresh 256-bit key; return its id and the key."""
        key_id, key = secrets.token_hex(16), AESGCM.generate_key(bit_length=256)
        with self._connect(create=True) as connection:
            connection.execute("INSERT INTO keys (id, kek_id, wrapped, created_at) VALUES (?, ?, ?, ?)",
                               (key_id, self.kek_id, self._wrap(key_id, key), time.time()))
        return key_id, key

    def get(self, key_id: str) -> bytes:
        """Return the key ``key_id``; raise KeystoreError if it is gone or cannot be unwrapped."""
        keys = self.get_many([key_id])
        if key_id not in keys:
            raise KeystoreError("the voiceprint's key is not in the keystore (erased, or the keystore was replaced)")
        return keys[key_id]

    def get_many(self, key_ids: Iterable[str]) -> dict[str, bytes]:
        """Return the keys of ``key_ids`` that exist, by id; raise KeystoreError if any is unreadable."""
        wanted = list(dict.fromkeys(key_ids))
        found: dict[str, bytes] = {}
        if not wanted:
            return found
        with self._connect() as connection:
            if len(wanted) > 500:  # most of the store (identification): one scan beats many lookups
                wanted_set = set(wanted)
                rows = [row for row in connection.execute("SELECT id, kek_id, wrapped FROM keys")
                        if row[0] in wanted_set]
            else:
                marks = ",".join("?" * len(wanted))
                rows = connection.execute(f"SELECT id, kek_id, wrapped FROM keys WHERE id IN ({marks})",
                                          wanted).fetchall()
        for key_id, kek_id, wrapped in rows:
            if kek_id != self.kek_id:
                raise KeystoreError("the keystore's keys were wrapped with another secret "
                                    "(a rotated secret? run: flask keys rewrap)")
            found[key_id] = self._unwrap(key_id, wrapped)
        return found

    def destroy(self, key_id: str) -> None:
        """Delete key ``key_id`` for good (overwritten in the file); a missing one is already gone."""
        if not self.path.is_file():
            return
        with self._connect() as connection:
            connection.execute("DELETE FROM keys WHERE id = ?", (key_id,))

    def ids(self, older_than: float = 0.0) -> set[str]:
        """Return the id of every stored key made more than ``older_than`` seconds ago (none without a keystore)."""
        if not self.path.is_file():
            return set()
        with self._connect() as connection:
            return {row[0] for row in connection.execute("SELECT id FROM keys WHERE created_at <= ?",
                                                         (time.time() - older_than,))}

    def foreign(self) -> int:
        """Return how many keys were wrapped with another secret than this one."""
        if not self.path.is_file():
            return 0
        with self._connect() as connection:
            return connection.execute("SELECT COUNT(*) FROM keys WHERE kek_id != ?", (self.kek_id,)).fetchone()[0]

    def rewrap(self, old_secret: str) -> tuple[int, int]:
        """Re-wrap every key wrapped with ``old_secret`` under this keystore's secret, in one transaction.

        Return (re-wrapped, already under this secret). Raise KeystoreError, changing nothing, if
        a key was wrapped with neither secret or does not unwrap.
        """
        old = Keystore(self.path, old_secret)
        with self._connect() as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                rows = connection.execute("SELECT id, kek_id, wrapped FROM keys").fetchall()
                done = 0
                for key_id, kek_id, wrapped in rows:
                    if kek_id == self.kek_id:
                        continue
                    if kek_id != old.kek_id:
                        raise KeystoreError(f"key {key_id} was wrapped with neither the old nor the new secret")
                    connection.execute("UPDATE keys SET kek_id = ?, wrapped = ? WHERE id = ?",
                                       (self.kek_id, self._wrap(key_id, old._unwrap(key_id, wrapped)), key_id))
                    done += 1
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
        return done, len(rows) - done

    def _wrap(self, key_id: str, key: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._kek.encrypt(nonce, key, key_id.encode())

    def _unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        try:
            return self._kek.decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], key_id.encode())
        except InvalidTag:
            raise KeystoreError(f"key {key_id} does not unwrap with the server's secret (damaged?)") from None
