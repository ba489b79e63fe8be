"""Voiceprints at rest: sealed with their own key (AES-256-GCM), kept in the keystore, not the database.

A voiceprint's embeddings (centroid, clip embeddings, recent accepted attempts) are stored only
as ciphertext. Their key lives in the keystore (app/store/keystore.py, which says why outside the
database); erasing a voiceprint destroys its key first, so no copy of the database, however old,
can give the voice back. Each sealed value is bound to its key and its purpose (which column it
fills), so a ciphertext cannot be moved to another user or another field.

Fail closed: when a key or the keystore is missing or unreadable, ``VoiceprintUnavailable`` is
raised; nothing is decrypted, and the voice it belongs to is accepted nowhere.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from flask import current_app

from ..errors import VoiceGateError
from .keystore import Keystore, KeystoreError

logger = logging.getLogger(__name__)

VERSION = b"\x01"
NONCE_BYTES = 12


class VoiceprintUnavailable(VoiceGateError):
    """A voiceprint cannot be decrypted: its key or the keystore is missing or unreadable."""

    def __init__(self, detail: str):
        super().__init__("voiceprint_unavailable",
                         "the enrolled voice cannot be read on this server (its key is missing); nothing is decided")
        self.detail = detail


def keystore_path(config, instance_path: str) -> Path:
    """Return where the keystore file is: ``KEYSTORE_PATH``, or ``keystore.db`` in the instance folder."""
    return Path(config.get("KEYSTORE_PATH") or Path(instance_path) / "keystore.db")


def keystore(app=None) -> Keystore:
    """Return the app's keystore (created once per app, from its path and secret key)."""
    app = app or current_app._get_current_object()
    store = app.extensions.get("voicegate.keystore")
    if store is None:
        store = Keystore(keystore_path(app.config, app.instance_path), app.config["SECRET_KEY"])
        app.extensions["voicegate.keystore"] = store
    return store


def new_key() -> tuple[str, bytes]:
    """Create a key for a new voiceprint in the keystore; return its id and the key."""
    try:
        return keystore().create()
    except KeystoreError as error:
        logger.error("cannot create a voiceprint key: %s", error)
        raise VoiceprintUnavailable(str(error)) from None


def key(key_id: str | None) -> bytes:
    """Return the key ``key_id``, or raise VoiceprintUnavailable."""
    if not key_id:
        raise VoiceprintUnavailable("the voiceprint has no key (stored before encryption and never migrated)")
    try:
        return keystore().get(key_id)
    except KeystoreError as error:
        logger.error("voiceprint key %s unavailable: %s", key_id, error)
        raise VoiceprintUnavailable(str(error)) from None


def keys(key_ids) -> dict[str, bytes]:
    """Return the keys of ``key_ids`` that exist, by id; raise VoiceprintUnavailable if the keystore is unreadable."""
    try:
        return keystore().get_many(key_ids)
    except KeystoreError as error:
        logger.error("voiceprint keys unavailable: %s", error)
        raise VoiceprintUnavailable(str(error)) from None


def destroy(key_id: str | None) -> None:
    """Destroy key ``key_id``, so that every copy of what it sealed is unreadable for good."""
    if key_id:
        try:
            keystore().destroy(key_id)
        except KeystoreError as error:
            # Deleting the rows without destroying the key would leave the voice in old backups: refuse.
            logger.error("cannot destroy voiceprint key %s: %s", key_id, error)
            raise VoiceprintUnavailable(str(error)) from None


def report(key_ids: set[str]) -> dict:
    """Return the keystore's state for the voiceprints whose keys are ``key_ids`` (for /healthz and the CLI).

    ``ok`` is False when no voiceprint could be read (no keystore, an unreadable one, keys wrapped
    with another secret, or none of the keys); ``unreadable`` counts voiceprints whose key is gone.
    """
    store = keystore()
    state = {"ok": True, "voiceprints": len(key_ids), "unreadable": 0}
    try:
        if not store.path.is_file():
            return {**state, "ok": not key_ids, "unreadable": len(key_ids), **({"error": "missing"} if key_ids else {})}
        stored, foreign = store.ids(), store.foreign()
    except KeystoreError as error:
        logger.error("keystore unreadable: %s", error)
        return {**state, "ok": False, "unreadable": len(key_ids), "error": "unreadable"}
    if foreign:
        return {**state, "ok": False, "unreadable": len(key_ids), "error": "another_secret"}
    unreadable = len(key_ids - stored)
    if key_ids and unreadable == len(key_ids):
        return {**state, "ok": False, "unreadable": unreadable, "error": "keys_missing"}
    return {**state, "unreadable": unreadable}


def seal(key: bytes, key_id: str, purpose: str, plaintext: bytes) -> bytes:
    """Encrypt ``plaintext`` for ``purpose`` (e.g. "voiceprints.centroid") under ``key``."""
    nonce = os.urandom(NONCE_BYTES)
    return VERSION + nonce + AESGCM(key).encrypt(nonce, plaintext, _aad(key_id, purpose))


def unseal(key: bytes, key_id: str, purpose: str, sealed: bytes) -> bytes:
    """Decrypt what ``seal`` made; raise VoiceprintUnavailable if it was not sealed with this key for this purpose."""
    if not sealed or sealed[:1] != VERSION:
        raise VoiceprintUnavailable(f"{purpose} is not sealed")
    try:
        return AESGCM(key).decrypt(sealed[1:1 + NONCE_BYTES], sealed[1 + NONCE_BYTES:], _aad(key_id, purpose))
    except InvalidTag:
        raise VoiceprintUnavailable(f"{purpose} does not open with its key (damaged or moved)") from None


def _aad(key_id: str, purpose: str) -> bytes:
    return f"voicegate/{purpose}/{key_id}".encode()
