"""The models of one process: loaded once, reached through ``get_engines``, Whisper switched live.

Loading imports torch and faster-whisper; nothing here does so at import time, so that
the app factory, migrations and the CLI never load them.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..observe import metrics
from . import modelstore
from .pool import InferencePool, StreamSlots

if TYPE_CHECKING:
    from flask import Flask

    from ..audio.vad import Vad
    from .batch import WindowBatcher
    from .speaker import SpeakerEncoder
    from .transcriber import Transcriber

logger = logging.getLogger(__name__)


@dataclass
class Engines:
    """The loaded speaker encoder, transcriber and VAD, with the bounded inference pool."""

    speaker: SpeakerEncoder
    transcriber: Transcriber
    vad: Vad
    pool: InferencePool
    streams: StreamSlots
    load_seconds: dict[str, float] = field(default_factory=dict)
    # The configured name of the loaded Whisper model (tiny.en, base, a directory, a hub name).
    whisper_name: str | None = None
    # Voice-check windows of all live streams, embedded together (batch.py).
    windows: WindowBatcher | None = None


def resolve_whisper(models_dir: str | os.PathLike, name: str) -> str:
    """Return what faster-whisper should load for the configured model ``name``.

    A known name (``tiny.en``, ``base``) means our verified local copy; an existing
    directory is used as it is; anything else is handed to faster-whisper as a hub
    name, which works only for users with internet and HF_HUB_OFFLINE unset.
    """
    if name in modelstore.WHISPER_MODELS:
        if not modelstore.is_complete(models_dir, name):
            raise modelstore.ModelError(
                f"Whisper model {name!r} is not in {modelstore.model_dir(models_dir, name)}; run 'flask models fetch {name}'"
            )
        return str(modelstore.model_dir(models_dir, name))
    if Path(name).is_dir():
        return str(Path(name).resolve())
    return name


def load_engines(models_dir: str | os.PathLike, whisper_model: str, workers: int, queue: int, beam_size: int = 5,
                 threads: int = 1, speaker_precision: str = "auto", max_streams: int | None = None,
                 speaker_runtime: str = "auto", speaker_models: str = "ecapa+campplus") -> Engines:
    """Load both models from ``models_dir`` and start the inference pool.

    Each model call runs on ``threads`` threads. One per call, with one worker per core,
    serves parallel sessions best: a lone call is faster on two threads, but two such
    calls at once fight over the cores (docs/benchmarks.md).
    At most ``max_streams`` dictations run at once (default: as many as the pool is measured
    to keep up with, one per worker at least and eight at most; see pool.StreamSlots).
    """
    if not modelstore.is_complete(models_dir, "ecapa"):
        raise modelstore.ModelError(
            f"the ECAPA speaker model is not in {modelstore.model_dir(models_dir, 'ecapa')}; run 'flask models fetch'"
        )
    from ..audio.vad import Vad
    from .speaker import SpeakerEncoder

    timings = {}
    started = time.perf_counter()
    vad = Vad()
    timings["vad"] = time.perf_counter() - started
    started = time.perf_counter()
    speaker = SpeakerEncoder(modelstore.model_dir(models_dir, "ecapa"), threads=threads, precision=speaker_precision,
                             runtime=speaker_runtime)
    speaker = load_second_speaker(models_dir, speaker, speaker_models, threads)
    timings["speaker"] = time.perf_counter() - started
    started = time.perf_counter()
    transcriber = load_transcriber(models_dir, whisper_model, threads=threads, beam_size=beam_size, workers=workers)
    timings["whisper"] = time.perf_counter() - started
    logger.info("models loaded: %s (%s %s) in %.1f s, Whisper %s in %.1f s", speaker.model_id, speaker.runtime,
                speaker.precision, timings["speaker"], whisper_model, timings["whisper"])
    pool = InferencePool(workers, queue)
    # A configured limit is kept as it is; else as many as the pool is measured to keep up with
    # (one per worker always, up to 8 per worker: pool.StreamSlots).
    streams = StreamSlots(max_streams) if max_streams else StreamSlots(8 * workers, pool)
    # A call with the machine to itself (nothing else in the pool, at most the one live stream
    # it serves, and no other process keeping the cores busy) runs on every core: a verification,
    # or the final of a lone dictation. On cores that others use, threads that wait for each
    # other are far slower than one thread (measured on the shared dev machine).
    speaker.idle = lambda: pool.pending <= 1 and streams.open <= 1 and machine_quiet()
    # Never a courtesy draft or piece, though: one on every core makes the checks and the final
    # that come at the end of speech wait for a core. Alone on a Zen 3 EPYC with drafts on one
    # core, the final after 4-7 s of dictation came sooner in 25 of 36 interleaved pairs (p50
    # 685-692 ms against 787-841 ms), with about as many partials. A login's courtesy prefixes
    # keep every core: they are cancelled when speech ends (gate/early.py).
    transcriber.idle = lambda: speaker.idle() and not pool.in_courtesy_call()
    from .batch import WindowBatcher

    return Engines(speaker, transcriber, vad, pool, streams, timings, whisper_model, WindowBatcher(speaker, pool))


def load_second_speaker(models_dir: str | os.PathLike, ecapa: SpeakerEncoder, speaker_models: str, threads: int):
    """Return the speaker encoder ``speaker_models`` names: ``ecapa`` itself, or ECAPA and CAM++ fused.

    Asked for both, a missing CAM++ is an error (no voice is decided on half a model), never a
    quiet fall back to ECAPA alone.
    """
    if speaker_models == "ecapa":
        return ecapa
    if speaker_models != "ecapa+campplus":
        raise ValueError(f"speaker models are 'ecapa+campplus' or 'ecapa', not {speaker_models!r}")
    from .campplus_encoder import CampplusEncoder
    from .fused import FusedEncoder

    if not modelstore.is_complete(models_dir, "campplus"):
        directory = modelstore.model_dir(models_dir, "campplus")
        raise modelstore.ModelError(f"the CAM++ speaker model is not in {directory}; run 'flask models fetch campplus'")
    return FusedEncoder(ecapa, CampplusEncoder(modelstore.model_dir(models_dir, "campplus"), threads=threads))


def machine_quiet() -> bool:
    """Return True when the machine's load (1 min average) leaves a core free besides the one call running."""
    cores = os.cpu_count() or 1
    return cores > 1 and os.getloadavg()[0] < cores - 0.5


def load_transcriber(models_dir: str | os.PathLike, whisper_model: str, threads: int = 1, beam_size: int = 5,
                     workers: int = 1) -> Transcriber:
    """Load the Whisper model ``whisper_model`` (a name as in resolve_whisper) for ``workers`` parallel calls."""
    from .transcriber import Transcriber

    return Transcriber(resolve_whisper(models_dir, whisper_model), threads=threads, beam_size=beam_size, workers=workers,
                       wide=True)


# --------------------------------------------------------------------------- the process's engines

_ENGINES_KEY = "voicegate.engines"
_ERROR_KEY = "voicegate.engines_error"
_WHISPER_KEY = "voicegate.whisper_switch"
_load_lock = threading.Lock()
_switch_lock = threading.Lock()
_WIRING_KEY = "voicegate.engine_wiring"


@dataclass(frozen=True)
class Wiring:
    """What the app factory hands the engines from above them, so that they import none of it."""

    # The Whisper model to load at start (an admin's stored choice).
    wanted_whisper: Callable[[Flask], str]
    # The dictation slots as every instance on the database counts them.
    shared_slots: Callable[[Flask, StreamSlots], StreamSlots]


def wire(app: Flask, wiring: Wiring) -> None:
    """Give ``app``'s engines what they need from the settings and the database."""
    app.extensions[_WIRING_KEY] = wiring


def get_engines(app: Flask | None = None) -> Engines:
    """Return the process's loaded models, loading them on first use (thread-safe)."""
    if app is None:
        from flask import current_app

        app = current_app._get_current_object()
    engines = app.extensions.get(_ENGINES_KEY)
    if engines is not None:
        return engines
    with _load_lock:
        engines = app.extensions.get(_ENGINES_KEY)
        if engines is None:
            try:
                wiring: Wiring | None = app.extensions.get(_WIRING_KEY)
                engines = load_engines(
                    app.config["MODELS_DIR"],
                    wiring.wanted_whisper(app) if wiring else app.config["WHISPER_MODEL"],
                    workers=int(app.config["INFERENCE_WORKERS"]),
                    queue=int(app.config["INFERENCE_QUEUE"]),
                    beam_size=int(app.config["WHISPER_BEAM_SIZE"]),
                    threads=int(app.config["INFERENCE_THREADS"]),
                    speaker_precision=app.config["SPEAKER_PRECISION"],
                    max_streams=app.config["MAX_STREAMS"],
                    speaker_runtime=app.config.get("SPEAKER_RUNTIME", "auto"),
                    speaker_models=app.config.get("SPEAKER_MODELS", "ecapa+campplus"),
                )
            except Exception as error:
                # Kept for /healthz; the caller still gets the exception.
                app.extensions[_ERROR_KEY] = f"{error.__class__.__name__}: {error}"
                raise
            if wiring:
                engines.streams = wiring.shared_slots(app, engines.streams)
            app.extensions.pop(_ERROR_KEY, None)
            app.extensions[_ENGINES_KEY] = engines
    return engines


def set_engines(app: Flask, engines) -> None:
    """Hand already loaded models to ``app`` (tests share one set across apps)."""
    app.extensions[_ENGINES_KEY] = engines


def engines_loaded(app: Flask) -> bool:
    """Return True when the models are loaded in this process."""
    return app.extensions.get(_ENGINES_KEY) is not None


def engines_error(app: Flask) -> str | None:
    """Return why the last attempt to load the models failed, if it did."""
    return app.extensions.get(_ERROR_KEY)


def switch_whisper(app: Flask, name: str) -> None:
    """Load Whisper model ``name`` in the background and swap it in when ready.

    The current model keeps serving until then (a call already running finishes on it);
    a failure leaves it in place and is reported by whisper_status.
    """
    engines = app.extensions.get(_ENGINES_KEY)
    if engines is None:
        return  # not loaded yet: get_engines loads the stored choice
    with _switch_lock:
        status = app.extensions.setdefault(_WHISPER_KEY, {})
        status["wanted"] = name
        if status.get("state") == "loading":
            return  # the running loader takes the newest choice when it is done
        status.update(state="loading", name=name, error=None)
    threading.Thread(target=_load_whisper, args=(app, engines), name="whisper-loader", daemon=True).start()


def _load_whisper(app: Flask, engines) -> None:
    while True:
        with _switch_lock:
            status = app.extensions[_WHISPER_KEY]
            name = status["wanted"]
            if engines.whisper_name == name:
                status.update(state="loaded", name=name, error=None)
                return
            status.update(state="loading", name=name, error=None)
        try:
            transcriber = load_transcriber(app.config["MODELS_DIR"], name, threads=int(app.config["INFERENCE_THREADS"]),
                                           beam_size=int(app.config["WHISPER_BEAM_SIZE"]), workers=engines.pool.workers)
        except Exception as error:  # any failure of a model load must reach the settings page
            logger.exception("loading Whisper %s failed", name)
            with _switch_lock:
                status.update(state="failed", error=f"{error.__class__.__name__}: {error}")
                if status["wanted"] == name:
                    return
            continue
        transcriber.idle = engines.transcriber.idle  # the same rule as the copy it replaces
        with _switch_lock:
            engines.transcriber, engines.whisper_name = transcriber, name
        logger.info("Whisper model switched to %s", name)


def whisper_status(app: Flask) -> dict:
    """Report the Whisper model in use and any switch: state loading, loaded or failed."""
    engines = app.extensions.get(_ENGINES_KEY)
    with _switch_lock:
        status = dict(app.extensions.get(_WHISPER_KEY, {}))
    active = engines.whisper_name if engines is not None else None
    if not status:
        error = engines_error(app)
        status = {"state": "failed" if error else "loaded" if engines is not None else "not_loaded",
                  "name": active, "error": error}
    status["active"] = active
    return status


def _metrics_state(app: Flask) -> metrics.EngineState:
    """Report the models' state to a scrape without ever loading them."""
    engines = app.extensions.get(_ENGINES_KEY)
    whisper = whisper_status(app)
    if engines is None:
        return metrics.EngineState(False, bool(engines_error(app)), whisper.get("active"), whisper.get("state"))
    pool, streams = engines.pool, engines.streams
    return metrics.EngineState(True, bool(engines_error(app)), whisper.get("active"), whisper.get("state"),
                               pool.pending, pool.capacity, pool.workers, streams.open, streams.limit)


metrics.register_engine_state(_metrics_state)
