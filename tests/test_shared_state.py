"""Limits shared by the app instances on one database (SQLite and PostgreSQL), taken by many threads of
two apps at once: exactly as many dictation slots as the total (and a dead instance's lapse),
and no more voice attempts or admin sign-ins let through than the limit. No models needed.
"""
from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from app.store.db import db
from app.engines.pool import StreamSlots
from app.store.leases import SharedStreamSlots, take_lease
from app.store.models import StreamLease, utcnow

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


@pytest.mark.parametrize("db_backend", BACKENDS)
def test_attempts_sent_at_once_to_two_instances_are_let_through_no_more_than_the_limit(tmp_path, database_url):
    from app.gate import store
    from app.gate.policy import Policy
    from app.web.admin.auth import AddressThrottle

    apps = [make_app(tmp_path / name, DATABASE_URL=database_url) for name in ("one", "other")]
    policy = Policy(lockout_attempts=5, lockout_delay=0)
    voice, admin, start = [], [], threading.Barrier(12)

    def attempt(app):
        with app.app_context():
            start.wait()
            voice.append(store.hold_attempt("lj", "10.0.0.9", policy).wait == 0)
            admin.append(AddressThrottle().take("10.0.0.9", 4, 900, 0)[0] == 0)
            db.session.remove()

    threads = [threading.Thread(target=attempt, args=(apps[n % 2],)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert (voice.count(True), admin.count(True)) == (5, 4)
