"""The enrolled voices of this process as one matrix, kept in step with the database by a version counter.

Identification (1:N) and the cohort of a verification score an embedding against every
enrolled voice with one matrix product. The matrix is rebuilt when the ``voiceprints``
counter (bumped by database triggers on any enrollment, deletion, rename, disabling or
enabling, by any instance) differs from the one it was built at.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import numpy as np
from flask import current_app

from ..engines.fused import in_space
from ..store import versions
from . import store
from .calibration import CalibrationError, centred_cosines, cohort_for
from .decide import SAME_PERSON

logger = logging.getLogger(__name__)

_KEY = "voicegate.gallery"
_load_lock = threading.Lock()


@dataclass(frozen=True)
class Gallery:
    """The unit centroids of every active, enrolled user (columns of ``columns``), as of counter ``version``."""

    version: int | None
    names: tuple[str, ...]
    columns: np.ndarray  # dim × users, float32, unit columns
    rows: dict[str, int] = field(default_factory=dict)
    keys: tuple[str, ...] = ()  # each column's voiceprint key id: a voiceprint's identity (a new one, a new key)
    # Each row's enrolled-side AS-norm figures, filled in as rows are scored (app.gate.decide).
    stats: dict = field(default_factory=dict)

    @classmethod
    def build(cls, version: int | None, voices: dict[str, np.ndarray], keys: tuple[str, ...] = (),
              unit: bool = False) -> Gallery:
        """Return the gallery of ``voices`` (centroids by name; ``unit``: already of unit length)."""
        names = tuple(voices)
        if not names:
            return cls(version, names, np.zeros((0, 0), dtype=np.float32), keys=keys)
        columns = np.stack([voices[name] for name in names], axis=1).astype(np.float32)
        if not unit:
            columns /= np.linalg.norm(columns, axis=0, keepdims=True)
        return cls(version, names, columns, {name: row for row, name in enumerate(names)}, keys=keys)


def current() -> Gallery:
    """Return the enrolled voices as of now: this process's copy, rebuilt first if the database moved on.

    The counter is read before the voices, so a change racing the rebuild leaves the copy
    marked older than it is (rebuilt again next time), never newer.
    """
    app = current_app._get_current_object()
    version = versions.current("voiceprints")
    held: Gallery | None = app.extensions.get(_KEY)
    if held is not None and version is not None and held.version == version:
        return held
    with _load_lock:
        held = app.extensions.get(_KEY)
        if held is not None and version is not None and held.version == version:
            return held
        gallery = _load(version, held)
        if held is not None and held.stats:
            gallery.stats.update(carried_stats(held, gallery))
        app.extensions[_KEY] = gallery
        logger.info("enrolled voices loaded: %d (version %s)", len(gallery.names), version)
        return gallery


def _load(version: int | None, held: Gallery | None) -> Gallery:
    """Read the enrolled voices; decrypt only the voiceprints ``held`` does not have already (by key id)."""
    rows = store.enrolled_keys()
    known = {key_id: column for column, key_id in enumerate(held.keys)} if held is not None else {}
    opened = store.open_centroids([key_id for _, key_id in rows if key_id not in known])
    voices, keys = {}, []
    for name, key_id in rows:
        if key_id in known:
            voices[name] = held.columns[:, known[key_id]]
        elif key_id in opened:
            voices[name] = opened[key_id] / np.linalg.norm(opened[key_id])
        else:
            continue  # its key is gone: that voice is matched nowhere
        keys.append(key_id)
    if len(voices) < len(rows):
        logger.warning("%d enrolled voiceprints have no key in the keystore and cannot be matched",
                       len(rows) - len(voices))
    # One matrix, one space: while some voices are of ECAPA alone, all are compared as ECAPA's.
    dim = min((voice.size for voice in voices.values()), default=0)
    if any(voice.size != dim for voice in voices.values()):
        voices = {name: in_space(voice, dim) for name, voice in voices.items()}
    return Gallery.build(version, voices, tuple(keys), unit=True)


# More changed voices than this between two versions: every voice's figures are worked out anew.
MAX_CARRIED_CHANGES = 1000


def carried_stats(old: Gallery, new: Gallery) -> dict:
    """Return the enrolled-side AS-norm figures of ``old`` that still hold in ``new``, by ``new``'s columns.

    A voice's figures come from its ``top_k`` closest other voices (below SAME_PERSON); a voice
    added or removed closer than the farthest of those changes them, any other leaves them as
    they were. So one enrollment costs the other instances a few products, not every figure.
    """
    if old.columns.shape[0] != new.columns.shape[0]:
        return {}  # the voices moved to another space (app/engines/fused.py): every figure anew
    common = [name for name in old.names if name in new.rows]
    old_at = np.array([old.rows[name] for name in common], dtype=np.int64)
    new_at = np.array([new.rows[name] for name in common], dtype=np.int64)
    # A voice is the same when its projections on two fixed random directions are (a changed
    # voice that kept both to the last bit is not a risk worth the full comparison's time).
    directions = np.random.default_rng(0).normal(size=(2, old.columns.shape[0])).astype(np.float32)
    before, after = directions @ old.columns, directions @ new.columns
    same = np.all(before[:, old_at] == after[:, new_at], axis=0) if common else np.zeros(0, bool)
    kept_old, kept_new = old_at[same], new_at[same]
    gone, fresh = np.ones(len(old.names), bool), np.ones(len(new.names), bool)
    gone[kept_old], fresh[kept_new] = False, False
    removed, added = np.flatnonzero(gone), np.flatnonzero(fresh)
    if len(removed) + len(added) > MAX_CARRIED_CHANGES:
        return {}
    moved = np.concatenate([old.columns[:, removed], new.columns[:, added]], axis=1)
    to_new = dict(zip(kept_old.tolist(), kept_new.tolist()))
    cached = [row for row in old.stats if row in to_new]
    if not cached:
        return {}
    if moved.shape[1] == 0:
        return {to_new[row]: old.stats[row] for row in cached}
    try:
        mean = cohort_for(new.columns.shape[0]).mean
    except CalibrationError:
        return {}  # nothing is decided without the cohort; work every figure out anew when it is back
    alike = moved.T @ old.columns[:, cached]  # changed voices × cached voices
    # The figures are of cosines less the cohort's mean (app.gate.decide), the same-person rule of raw ones.
    centred = centred_cosines(alike, (mean @ moved)[:, None], (mean @ old.columns[:, cached])[None, :],
                              float(mean @ mean))
    floors = np.array([old.stats[row][2] for row in cached])
    touched = np.any((centred >= floors) & (alike < SAME_PERSON), axis=0)
    return {to_new[row]: old.stats[row] for row, hit in zip(cached, touched) if not hit}
