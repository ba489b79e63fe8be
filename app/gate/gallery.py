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

from .. import versions
from . import store

logger = logging.getLogger(__name__)

_KEY = "voicegate.gallery"
_load_lock = threading.Lock()


@dataclass(frozen=True)
class Gallery:
    """The unit centroids of every active, enrolled user (rows of ``matrix``), as of counter ``version``."""

    version: int | None
    names: tuple[str, ...]
    matrix: np.ndarray  # users × dim, float32, unit rows
    rows: dict[str, int] = field(default_factory=dict)

    @classmethod
    def build(cls, version: int | None, voices: dict[str, np.ndarray]) -> Gallery:
        """Return the gallery of ``voices`` (centroids by name)."""
        names = tuple(voices)
        if not names:
            return cls(version, names, np.zeros((0, 0), dtype=np.float32))
        matrix = np.stack([voices[name] for name in names]).astype(np.float32)
        matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
        return cls(version, names, matrix, {name: row for row, name in enumerate(names)})


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
        voices = store.enrolled_voices()
        gallery = Gallery.build(version, voices)
        app.extensions[_KEY] = gallery
        logger.info("enrolled voices loaded: %d (version %s)", len(gallery.names), version)
        return gallery
