"""Speed as a user feels it: latency after a ~5 s utterance, and simultaneous real-time dictation streams.

Every stream here is sent at real-time pace, so the server can work while the user speaks;
latency runs from the client's ``stop`` (sent at the end of the audio) to the reply.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import requests

from . import calls, metrics
from .data import SpeechSet, followed

logger = logging.getLogger(__name__)

# Goals of issue 19, on either CPU kind (2 cores).
VERIFY_TARGET_MS = 150
FINAL_TARGET_MS = 250
STREAMS_TARGET = 8
RSS_TARGET_MB = 1200
# Silence before stop in the "stop after a breath" latency (final_latency's ``silence``).
BREATH_SECONDS = 0.5
# A stream has fallen behind when its last final comes this long after the end of its audio.
FALL_BEHIND_S = 1.5


@dataclass(frozen=True)
class Pair:
    """A file and a user enrolled on the same speaker's voice (not on this file)."""

    user: str
    path: Path
    seconds: float


def pick(pairs: list[Pair], low: float, high: float, count: int) -> list[Pair]:
    """Return ``count`` pairs (repeating if needed) whose files last ``low``-``high`` s, else the nearest."""
    if not pairs:
        return []
    middle = (low + high) / 2
    inside = [p for p in pairs if low <= p.seconds <= high]
    chosen = sorted(inside or pairs, key=lambda p: abs(p.seconds - middle))
    if not inside:
        chosen = chosen[:max(1, count)]
    # One pair per file before any file repeats.
    unique = list({p.path: p for p in chosen}.values())
    return [unique[i % len(unique)] for i in range(count)]


def verify_latency(service, speech: SpeechSet, pairs: list[Pair]) -> dict:
    """Verify each pair's file at real-time pace; return latency from stop to result.

    Each login's latency is also given by how the server embedded it after ``stop`` (its
    counter ``voicegate_streamed_login_embeddings``): from the work done while the person
    spoke (estimate), that and the whole utterance again (redecided), or the whole utterance.
    """
    by_source: dict[str, list[float]] = {}
    outcomes = []
    for pair in pairs:
        before = login_embeddings(service.url)
        outcome = calls.verify(service.ws_url, pair.user, speech.audio(pair.path), realtime=True)
        after = login_embeddings(service.url)
        outcomes.append(outcome)
        sources = [source for source in after if after[source] > before.get(source, 0)]
        if outcome["latency_s"] is not None:
            by_source.setdefault("+".join(sources) or "none", []).append(outcome["latency_s"])
    latencies = [o["latency_s"] for o in outcomes if o["latency_s"] is not None]
    return {**metrics.summary_ms(latencies), "states": dict(Counter(o["state"] for o in outcomes)),
            "by_embedding": {source: metrics.summary_ms(values) for source, values in sorted(by_source.items())},
            "audio_seconds": sorted({round(p.seconds, 2) for p in pairs})}


def login_embeddings(url: str) -> dict[str, float]:
    """Return the server's counts of streamed logins by how they were embedded after stop (source -> count)."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    return {source: float(value) for source, value in
            re.findall(r'^voicegate_streamed_login_embeddings_total\{source="(\w+)"\} (\S+)$', text, re.M)}


def final_latency(service, speech: SpeechSet, pairs: list[Pair], silence: float = 0.0) -> dict:
    """Dictate each pair's file at real-time pace, ``silence`` seconds more before stop; return latency from stop to the last final.

    The files end a fraction of a second after their last word (speech-dev: 0.13 s median); a
    user who breathes before pressing stop sends half a second more, in which the server can work.
    """
    outcomes = [calls.dictate(service.ws_url, p.user, followed(speech.audio(p.path), silence), realtime=True)
                for p in pairs]
    latencies = [o.last_final_s for o in outcomes if o.last_final_s is not None]
    return {**metrics.summary_ms(latencies), "errors": dict(Counter(o.error for o in outcomes if o.error)),
            "without_final": sum(1 for o in outcomes if o.last_final_s is None),
            "rejected_utterances": sum(o.count("reject") for o in outcomes),
            "audio_seconds": sorted({round(p.seconds, 2) for p in pairs}), "silence_s": silence}


def streams(service, speech: SpeechSet, pairs: list[Pair]) -> dict:
    """Run one real-time dictation per pair at the same time; report latency and who fell behind."""
    outcomes: list[calls.Dictation | None] = [None] * len(pairs)
    gate = threading.Barrier(len(pairs))

    def stream(index: int, pair: Pair) -> None:
        audio = speech.audio(pair.path)
        gate.wait()
        outcomes[index] = calls.dictate(service.ws_url, pair.user, audio, realtime=True)

    threads = [threading.Thread(target=stream, args=(i, p), daemon=True) for i, p in enumerate(pairs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    done = [o for o in outcomes if o is not None]
    latencies = [o.last_final_s for o in done if o.last_final_s is not None]
    busy = sum(1 for o in done if o.error == "busy")
    late = sum(1 for o in done if o.last_final_s is not None and o.last_final_s > FALL_BEHIND_S)
    without_final = sum(1 for o in done if o.error is None and o.last_final_s is None)
    return {
        "streams": len(pairs),
        **{f"latency_{k}": v for k, v in metrics.summary_ms(latencies).items() if k != "n"},
        "busy": busy,
        "late": late,
        "other_errors": dict(Counter(o.error for o in done if o.error and o.error != "busy")),
        "without_final": without_final,
        "unfinished": len(pairs) - len(done),
        "fell_behind": busy + late + without_final + (len(pairs) - len(done))
        + sum(1 for o in done if o.error and o.error != "busy"),
        "rejected_utterances": sum(o.count("reject") for o in done),
        "audio_seconds": sorted({round(p.seconds, 2) for p in pairs}),
    }


def sweep(service, speech: SpeechSet, pairs: list[Pair], levels: list[int]) -> list[dict]:
    """Run ``streams`` at each concurrency level, with a pause between levels for the server to drain."""
    results = []
    for level in levels:
        result = streams(service, speech, pick(pairs, 5.0, 8.0, level))
        logger.info("%d streams: p50 %s ms, p95 %s ms, fell behind %d (busy %d)", level, result["latency_p50_ms"],
                    result["latency_p95_ms"], result["fell_behind"], result["busy"])
        results.append(result)
        time.sleep(2)
    return results


def targets(verify: dict, final: dict, levels: list[dict], asr: dict | None = None, memory: dict | None = None) -> dict:
    """Check the issue-19 goals: verify ≤ 150 ms and final ≤ 250 ms (medians), 8 streams keep up,
    service WER ≤ plain faster-whisper's, server RSS ≤ 1.2 GB."""
    level = {entry["streams"]: entry for entry in levels}
    target = level.get(STREAMS_TARGET)
    wer, plain = (asr or {}).get("wer"), ((asr or {}).get("baseline") or {}).get("wer")
    rss = (memory or {}).get("rss_mb")
    return {
        "verify_p50_ms": verify["p50_ms"], "verify_target_ms": VERIFY_TARGET_MS,
        "verify_met": verify["p50_ms"] is not None and verify["p50_ms"] <= VERIFY_TARGET_MS,
        "final_p50_ms": final["p50_ms"], "final_target_ms": FINAL_TARGET_MS,
        "final_met": final["p50_ms"] is not None and final["p50_ms"] <= FINAL_TARGET_MS,
        "streams": STREAMS_TARGET,
        "streams_fell_behind": None if target is None else target["fell_behind"],
        "streams_met": None if target is None else target["fell_behind"] == 0,
        # Each level: admitted (not told busy), busy, and late or unfinished among the admitted.
        "streams_by_level": {str(n): {"admitted": e["streams"] - e["busy"], "busy": e["busy"],
                                      "behind": e["fell_behind"] - e["busy"]} for n, e in sorted(level.items())},
        "service_wer": wer, "plain_wer": plain,
        "wer_met": None if wer is None or plain is None else wer <= plain,
        "rss_mb": rss, "rss_target_mb": RSS_TARGET_MB,
        "rss_met": None if rss is None else rss <= RSS_TARGET_MB,
    }
