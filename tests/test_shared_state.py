"""Dictation slots shared by the app instances on one database (SQLite and PostgreSQL): taken by many
threads of two apps at once, exactly as many as the total are granted, and a dead instance's
lapse; no models needed.
"""
from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from app.db import db
from app.engines.pool import StreamSlots
from app.leases import SharedStreamSlots, take_lease
from app.models import StreamLease, utcnow

from .conftest import BACKENDS, make_app

TOTAL = 3


@pytest.mark.parametrize("db_backend", BACKENDS)
def test_two_instances_racing_for_slots_get_exactly_the_total(tmp_path, database_url):
    apps = [make_app(tmp_path / name, DATABASE_URL=database_url) for name in ("one", "other")]
    slots = [SharedStreamSlots(StreamSlots(8), TOTAL, 30) for _ in apps]
    granted, start = [], threading.Barrier(12)

    def take(app, instance_slots):
        with app.app_context():
            start.wait()
            if instance_slots.acquire():
                granted.append(app)
            db.session.remove()

    threads = [threading.Thread(target=take, args=(apps[n % 2], slots[n % 2])) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(granted) == TOTAL
    with apps[0].app_context():
        assert db.session.scalar(select(func.count()).select_from(StreamLease)) == TOTAL
    owner = granted[0]
    with owner.app_context():
        slots[apps.index(owner)].release()
    with apps[1].app_context():  # a slot given back is free for either instance, and only one
        assert slots[1].acquire()
        assert not slots[1].acquire()
        # An instance that stopped renewing (killed): once its leases run out, they free their slots.
        db.session.execute(update(StreamLease).values(expires_at=utcnow() - timedelta(seconds=1)))
        db.session.commit()
        assert take_lease(TOTAL, 30) is not None
    for app, instance_slots in zip(apps, slots):  # give every slot back: nothing is left renewing
        with app.app_context():
            while instance_slots.open:
                instance_slots.release()
