"""What sealing voiceprints costs: a new key, one voiceprint opened, every voiceprint opened (1:N).

    nice python -m bench.vault [--users 1000 10000] [--database-url URL] [--out bench/results/vault.json]

Fills a fresh database (an SQLite file, or the empty PostgreSQL database of ``--database-url``)
with N users whose voiceprints are random unit vectors, sealed as enrollment seals them, and
times (median of several runs):

- ``new_voiceprint_ms``: a key created in the keystore (one durable SQLite write) and the
  embeddings sealed, per enrollment;
- ``open_one_ms``: one user's centroid opened (a 1:1 verification reads it once);
- ``open_all_ms`` vs ``read_all_ms``: every centroid read and opened (``store.enrolled_voices``,
  what identification and the cohort of a 1:1 check use) against the same rows read unopened.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from flask_migrate import upgrade
from sqlalchemy import delete, select

from app import create_app
from app.store.db import db
from app.gate import store
from app.store.models import User, Voiceprint

from .output import save
from .paths import RESULTS


def _median_ms(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        db.session.commit()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000, 2)


def measure(users: int, folder: Path, database_url: str | None) -> dict:
    """Fill a database with ``users`` sealed voiceprints and time the reads; return the figures."""
    app = create_app({"SECRET_KEY": "bench", "INSTANCE_PATH": str(folder),
                      "DATABASE_URL": database_url or f"sqlite:///{folder / 'bench.db'}"})
    rng = np.random.default_rng(users)
    with app.app_context():
        upgrade()
        start = time.perf_counter()
        for i in range(users):
            clips = rng.normal(size=(3, 192)).astype(np.float32)
            clips /= np.linalg.norm(clips, axis=1, keepdims=True)
            user = User(name=f"u{i}", display_name=f"u{i}")
            user.voiceprint = Voiceprint.from_embeddings(clips, "ecapa", 20.0)
            db.session.add(user)
            if i % 500 == 499:
                db.session.commit()
        db.session.commit()
        new_voiceprint = (time.perf_counter() - start) / users * 1000
        someone = User.by_name("u7")
        rows = select(User.name, Voiceprint.key_id, Voiceprint.centroid).join(Voiceprint, Voiceprint.user_id == User.id)
        figures = {
            "users": users,
            "database": db.engine.dialect.name,
            "new_voiceprint_ms": round(new_voiceprint, 2),
            "open_one_ms": _median_ms(lambda: someone.voiceprint.centroid_vector(), 50),
            "read_all_ms": _median_ms(lambda: db.session.execute(rows).all(), 7),
            "open_all_ms": _median_ms(store.enrolled_voices, 7),
        }
        # The next size starts empty (the keys go with this run's temporary keystore).
        db.session.execute(delete(User))
        db.session.commit()
    return figures


def main() -> None:
    """Run the measurements and write them as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--database-url", help="an empty PostgreSQL database (default: an SQLite file)")
    parser.add_argument("--out", type=Path, default=RESULTS / "vault.json")
    args = parser.parse_args()
    results = []
    for users in args.users:
        with tempfile.TemporaryDirectory() as folder:
            figures = measure(users, Path(folder), args.database_url)
        print(json.dumps(figures), flush=True)
        results.append(figures)
    save(results, args.out)


if __name__ == "__main__":
    main()
