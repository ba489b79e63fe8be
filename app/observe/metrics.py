"""Prometheus metrics at GET /metrics: decisions, latencies, live streams, the pool's queue, model state.

Counters and histograms live for the process (the audit store and the model calls feed them);
gauges are read from the app when scraped. Only loopback clients may scrape, unless
``METRICS_TOKEN`` is set: then anyone with ``Authorization: Bearer <token>``, and no one without.
"""
from __future__ import annotations

import hmac
import ipaddress
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

bp = Blueprint("metrics", __name__)

REGISTRY = CollectorRegistry(auto_describe=True)
DECISIONS = Counter(
    "voicegate_decisions", "Decisions written to the audit log, by kind (enroll, verify, identify, transcribe, "
    "admin, self), surface (ws, http, kaldi, web, cli) and state (accept, reject, no_speech, ...)",
    ["kind", "surface", "state"], registry=REGISTRY)
# Waiting for a worker included: the latency a caller feels.
VERIFICATION_SECONDS = Histogram(
    "voicegate_verification_seconds", "One voice check on the inference pool (queue wait and speaker embedding)",
    buckets=(0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1, 1.5, 2.5, 5, 10), registry=REGISTRY)
TRANSCRIPT_SECONDS = Histogram(
    "voicegate_final_transcript_seconds", "One final transcript on the inference pool (queue wait and Whisper)",
    buckets=(0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1, 1.5, 2.5, 5, 10, 30), registry=REGISTRY)
_TIMED = {"embed": VERIFICATION_SECONDS, "transcribe": TRANSCRIPT_SECONDS}
LOGIN_EMBEDDINGS = Counter(
    "voicegate_streamed_login_embeddings", "How streamed voice logins were embedded after stop: from the work "
    "done while the person spoke (estimate: an accept far from every threshold), that and again on the whole "
    "utterance (redecided: a refusal or a close call), or on the whole utterance (whole: no finished prefix "
    "near the end)", ["source"], registry=REGISTRY)

FINAL_TRANSCRIPTS = Counter(
    "voicegate_live_final_transcripts", "How the finals of live dictations and meetings were decoded: ahead (most "
    "of the stretch while the person spoke, the rest after), pause (all of it at the pause that ended it, before "
    "the end was known) or whole (all of it after; under load, or no pause)", ["source"], registry=REGISTRY)

PAUSE_DECODES = Counter(
    "voicegate_pause_decodes", "Text decoded at a pause, of what an end there would settle, before it was "
    "known to end there: used (the utterance ended there) or dropped unseen (speech went on, or another end)",
    ["outcome"], registry=REGISTRY)


def count_decision(kind: str, surface: str, state: str) -> None:
    """Count one audited decision."""
    DECISIONS.labels(kind, surface, state).inc()


def count_login_embedding(source: str) -> None:
    """Count how one streamed voice login was embedded (estimate, redecided, whole)."""
    LOGIN_EMBEDDINGS.labels(source).inc()


def count_final_transcript(source: str) -> None:
    """Count how one live final was decoded (ahead, pause, whole)."""
    FINAL_TRANSCRIPTS.labels(source).inc()


def count_pause_decode(outcome: str) -> None:
    """Count one decode made at a pause (used, dropped)."""
    PAUSE_DECODES.labels(outcome).inc()


@contextmanager
def timed_model_call(fn):
    """Time a model call by what it does (speaker ``embed`` or ``transcribe``); others are not timed."""
    # A functools.partial (a transcription with its language) is timed by the function it wraps.
    histogram = _TIMED.get(getattr(getattr(fn, "func", fn), "__name__", ""))
    start = time.perf_counter()
    try:
        yield
    finally:
        if histogram is not None:
            histogram.observe(time.perf_counter() - start)


@dataclass(frozen=True)
class EngineState:
    """What a scrape reports of one process's models (see ``register_engine_state``)."""

    loaded: bool
    load_failed: bool
    whisper_name: str | None
    # The Whisper switch: loading, loaded, failed, or not_loaded.
    whisper_state: str | None
    pool_pending: int = 0
    pool_capacity: int = 0
    pool_workers: int = 0
    streams_open: int = 0
    streams_limit: int = 0


# Set by the engines (app.engines.runtime), which sit below nothing here: metrics reads their
# state through this one function and imports none of them, so the arrows point one way.
_engine_state: Callable[[Flask], EngineState] | None = None


def register_engine_state(reader: Callable[[Flask], EngineState]) -> None:
    """Name the function that reports the models' state to a scrape (it must never load them)."""
    global _engine_state
    _engine_state = reader


class _AppState:
    """Gauges read from one app when scraped: models, pool, live streams."""

    def __init__(self, app):
        self.app = app

    def collect(self):
        state = _engine_state(self.app) if _engine_state is not None else EngineState(False, False, None, None)
        loaded = GaugeMetricFamily("voicegate_model_loaded", "1 when the model is loaded in this process",
                                   labels=["model", "name"])
        loaded.add_metric(["speaker", "ecapa"], 1 if state.loaded else 0)
        loaded.add_metric(["whisper", str(state.whisper_name or self.app.config["WHISPER_MODEL"])],
                          1 if state.loaded else 0)
        yield loaded
        failed = GaugeMetricFamily("voicegate_model_load_failed", "1 when loading the models failed")
        failed.add_metric([], 1 if state.load_failed else 0)
        yield failed
        switching = GaugeMetricFamily("voicegate_whisper_switch", "1 for the state of a Whisper model switch",
                                      labels=["state"])
        for name in ("loading", "loaded", "failed"):
            switching.add_metric([name], 1 if state.whisper_state == name else 0)
        yield switching
        if not state.loaded:
            return
        for name, text, value in (
            ("voicegate_pool_queue_depth", "Model calls running or waiting on the inference pool", state.pool_pending),
            ("voicegate_pool_capacity", "Model calls the pool takes before answering busy", state.pool_capacity),
            ("voicegate_pool_workers", "Inference workers", state.pool_workers),
            ("voicegate_live_streams", "Live dictations holding a stream slot", state.streams_open),
            ("voicegate_live_streams_limit", "Live dictations admitted at once", state.streams_limit),
        ):
            gauge = GaugeMetricFamily(name, text)
            gauge.add_metric([], value)
            yield gauge


def _allowed() -> tuple[bool, int]:
    token = current_app.config.get("METRICS_TOKEN")
    if token:
        given = request.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {token}".encode()), 401
    try:
        return ipaddress.ip_address(request.remote_addr or "").is_loopback, 403
    except ValueError:
        return False, 403


@bp.get("/metrics")
def metrics():
    """Return the metrics in Prometheus' text format (loopback clients, or a bearer token when one is set)."""
    allowed, status = _allowed()
    if not allowed:
        message = "send the metrics token" if status == 401 else "metrics are served to this machine only"
        return jsonify(error={"code": "not_allowed", "message": message}), status
    app_registry = CollectorRegistry(auto_describe=False)
    app_registry.register(_AppState(current_app._get_current_object()))
    return Response(generate_latest(REGISTRY) + generate_latest(app_registry), content_type=CONTENT_TYPE_LATEST)
