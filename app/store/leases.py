"""Dictation slots counted across every instance on one database, as expiring lease rows.

Each process keeps its own limit (what its cores keep up with, app.engines.pool.StreamSlots);
with ``MAX_STREAMS_TOTAL`` set, a slot also needs one of that many lease rows shared by all
instances. A live process renews its leases; a killed one stops, and its slots free
themselves within ``STREAM_LEASE_SECONDS``.
"""
from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from datetime import timedelta

from flask import Flask, current_app
from sqlalchemy import delete, func, select, update

from .db import db
from ..engines.pool import StreamSlots
from .models import StreamLease, Version, utcnow

logger = logging.getLogger(__name__)

# Names this process's leases, so that they can be renewed together (and read in the table).
INSTANCE = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def take_lease(total: int, seconds: float) -> str | None:
    """Insert a lease row when fewer than ``total`` live ones exist across instances; return its id or None."""
    now = utcnow()
    with db.engine.connect() as connection, connection.begin():
        # Its own connection and transaction: the caller's session is left as it was.
        if connection.dialect.name != "sqlite":
            # One taker at a time: a row lock every instance waits on (SQLite's first write below
            # takes the database's write lock, which does the same there).
            connection.execute(select(Version.value).where(Version.name == "streams").with_for_update())
        connection.execute(delete(StreamLease).where(StreamLease.expires_at <= now))
        live = connection.scalar(select(func.count()).select_from(StreamLease))
        if live >= total:
            return None
        lease_id = secrets.token_hex(16)
        connection.execute(StreamLease.__table__.insert().values(
            id=lease_id, instance=INSTANCE, created_at=now, expires_at=now + timedelta(seconds=seconds)))
    return lease_id


def drop_lease(lease_id: str) -> None:
    """Delete a lease row: its slot is free for any instance."""
    with db.engine.connect() as connection, connection.begin():
        connection.execute(delete(StreamLease).where(StreamLease.id == lease_id))


def renew_leases(lease_ids: list[str], seconds: float) -> None:
    """Push the expiry of ``lease_ids`` ``seconds`` ahead."""
    with db.engine.connect() as connection, connection.begin():
        connection.execute(update(StreamLease).where(StreamLease.id.in_(lease_ids))
                           .values(expires_at=utcnow() + timedelta(seconds=seconds)))


class SharedStreamSlots:
    """This process's StreamSlots, each slot also holding a lease of the ``total`` shared by all instances."""

    def __init__(self, local: StreamSlots, total: int, seconds: float):
        self.local, self.total, self.seconds = local, max(1, total), max(3.0, float(seconds))
        self._held: list[tuple[Flask, str]] = []  # (app, lease id): whose database the lease is in
        self._lock = threading.Lock()
        self._renewer: threading.Thread | None = None

    @property
    def limit(self) -> int:
        """Return this process's own limit (the shared one can only make it smaller)."""
        return self.local.limit

    @property
    def open(self) -> int:
        """Return how many slots this process holds."""
        return self.local.open

    def acquire(self) -> bool:
        """Take a slot here and a lease in the database; False at once when either is full or unreachable."""
        if not self.local.acquire():
            return False
        try:
            lease_id = take_lease(self.total, self.seconds)
        except Exception:  # an unreachable database admits nobody: a lease cannot be counted
            logger.exception("could not take a dictation lease; refusing the dictation")
            lease_id = None
        if lease_id is None:
            self.local.release()
            return False
        with self._lock:
            self._held.append((current_app._get_current_object(), lease_id))
            if self._renewer is None:
                self._renewer = threading.Thread(target=self._renew, name="stream-leases", daemon=True)
                self._renewer.start()
        return True

    def release(self) -> None:
        """Give a slot back, here and in the database (slots are alike: any of this app's leases goes)."""
        app = current_app._get_current_object()
        with self._lock:
            index = next((i for i, (owner, _) in enumerate(self._held) if owner is app), None)
            lease_id = self._held.pop(index)[1] if index is not None else None
        try:
            if lease_id is not None:
                drop_lease(lease_id)
        except Exception:  # the lease then expires by itself
            logger.exception("could not drop a dictation lease; it expires within %.0f s", self.seconds)
        finally:
            self.local.release()

    def _renew(self) -> None:
        while True:
            threading.Event().wait(self.seconds / 3)
            with self._lock:
                if not self._held:  # started again by the next acquire
                    self._renewer = None
                    return
                by_app: dict[Flask, list[str]] = {}
                for app, lease_id in self._held:
                    by_app.setdefault(app, []).append(lease_id)
            for app, lease_ids in by_app.items():
                try:
                    with app.app_context():
                        renew_leases(lease_ids, self.seconds)
                except Exception:  # tried again next round; a lease missed for long just frees its slot
                    logger.exception("could not renew %d dictation leases", len(lease_ids))


def shared_slots(app: Flask, local: StreamSlots) -> StreamSlots | SharedStreamSlots:
    """Return ``local``, counted against the deployment's ``MAX_STREAMS_TOTAL`` when one is set."""
    total = app.config.get("MAX_STREAMS_TOTAL")
    if not total:
        return local
    return SharedStreamSlots(local, int(total), float(app.config["STREAM_LEASE_SECONDS"]))
