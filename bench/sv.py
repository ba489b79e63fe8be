"""Speaker verification: every trial through the service, and plain ECAPA cosine scoring as the baseline.

The service: one user per distinct enrollment list, enrolled over the WebSocket; every trial
verified over the WebSocket (timed from ``stop`` to the result) and over HTTP. The baseline:
app.engines.speaker.SpeakerEncoder on whole files, cosine against the centroid of the enrollment
embeddings, computed in this process.
"""
from __future__ import annotations

import logging
from collections import Counter

import numpy as np

from app.engines.speaker import centroid, cosine

from . import calls, metrics
from .data import SpeechSet, Trial

logger = logging.getLogger(__name__)

# SpeechBrain's own default threshold for this model's cosine scores.
SPEECHBRAIN_THRESHOLD = 0.25
# A trial the service answered without a score (not_enough_speech, an error...) counts as this,
# i.e. as a reject at every threshold: the user was not let in.
NO_SCORE = -1.0
P_TARGET = 0.01


def enroll_lists(service, speech: SpeechSet, prefix: str) -> dict[tuple, dict]:
    """Create and enroll one user per distinct enrollment list of the trials; return list → outcome."""
    users: dict[tuple, dict] = {}
    for trial in speech.trials:
        if trial.enroll in users:
            continue
        name = f"{prefix}sv{len(users)}"
        outcome = calls.enroll(service.ws_url, name, service.invite(name), [speech.audio(p) for p in trial.enroll])
        users[trial.enroll] = {"user": name, **outcome}
        if outcome["state"] != "enrolled":
            logger.warning("enrollment of %s on %s: %s (refused clips: %s)", name,
                           ", ".join(speech.label(p) for p in trial.enroll), outcome["state"], outcome["refused"])
    return users


def run_service(service, speech: SpeechSet, prefix: str) -> dict:
    """Enroll every trial list and verify every trial over the WebSocket and HTTP; return the raw records."""
    users = enroll_lists(service, speech, prefix)
    logger.info("enrolled %d of %d trial lists", sum(u["state"] == "enrolled" for u in users.values()), len(users))
    records = []
    for index, trial in enumerate(speech.trials):
        user = users[trial.enroll]["user"]
        ws = calls.verify(service.ws_url, user, speech.audio(trial.test))
        http = calls.verify_http(service.url, user, trial.test)
        for reply in (ws, http):
            if reply.get("score") is None and reply.get("request_id"):
                # A reject shows its caller no score; the audit log keeps it.
                reply["score"], threshold = service.audited(reply["request_id"])
                if "threshold" in reply:
                    reply["threshold"] = threshold
        records.append({
            "enroll": [speech.label(p) for p in trial.enroll], "test": speech.label(trial.test),
            "target": trial.target, "user": user, "ws": ws, "http": http,
        })
        if (index + 1) % 20 == 0:
            logger.info("verified %d/%d trials", index + 1, len(speech.trials))
    return {"enrollments": list(users.values()), "trials": records}


def baseline_scores(speech: SpeechSet, embeddings: dict) -> list[dict]:
    """Score every trial with plain cosine: centroid of all enrollment files, and of the first one only."""
    scores = []
    for trial in speech.trials:
        test = embeddings[trial.test]
        scores.append({
            "centroid": cosine(centroid(np.stack([embeddings[p] for p in trial.enroll])), test),
            "first_clip": cosine(embeddings[trial.enroll[0]], test),
        })
    return scores


def _scores(records: list[dict], key: str) -> tuple[list[float], list[float]]:
    genuine, impostor = [], []
    for record in records:
        score = record[key]["score"]
        (genuine if record["target"] else impostor).append(NO_SCORE if score is None else float(score))
    return genuine, impostor


def _figures(genuine: list[float], impostor: list[float], threshold: float) -> dict:
    far, frr = metrics.rates_at(genuine, impostor, threshold)
    return {"eer": round(metrics.eer(genuine, impostor), 4), "min_dcf": round(metrics.min_dcf(genuine, impostor, P_TARGET), 4),
            "far_at_default": round(far, 4), "frr_at_default": round(frr, 4),
            # When no trial is misjudged, the gap between the classes is what still tells systems apart.
            "lowest_genuine": round(min(genuine), 4), "highest_impostor": round(max(impostor), 4)}


def summarise(raw: dict, baseline: list[dict], trials: list[Trial]) -> dict:
    """Return the verification figures of the service and the baseline (rates as fractions)."""
    records = raw["trials"]
    thresholds = {r["ws"]["threshold"] for r in records if r["ws"].get("threshold") is not None}
    if len(thresholds) != 1:
        raise RuntimeError(f"the server reported thresholds {sorted(thresholds)}; expected one")
    threshold = thresholds.pop()
    genuine, impostor = _scores(records, "ws")
    states = Counter(r["ws"]["state"] for r in records)
    by_label = {True: Counter(), False: Counter()}
    for record in records:
        by_label[record["target"]][record["ws"]["state"]] += 1
    http_genuine, http_impostor = _scores(records, "http")
    http_far, http_frr = metrics.rates_at(http_genuine, http_impostor, threshold)
    agree = sum(r["ws"]["state"] == r["http"]["state"] for r in records)

    def baseline_figures(key: str) -> dict:
        base_genuine = [b[key] for b, t in zip(baseline, trials) if t.target]
        base_impostor = [b[key] for b, t in zip(baseline, trials) if not t.target]
        far_sb, frr_sb = metrics.rates_at(base_genuine, base_impostor, SPEECHBRAIN_THRESHOLD)
        return {**_figures(base_genuine, base_impostor, threshold),
                "far_at_0_25": round(far_sb, 4), "frr_at_0_25": round(frr_sb, 4)}

    enrollments = raw["enrollments"]
    return {
        "threshold": threshold,
        "trials": len(records),
        "targets": len(genuine),
        "nontargets": len(impostor),
        **_figures(genuine, impostor, threshold),
        "states": dict(states.most_common()),
        "states_by_label": {"target": dict(by_label[True]), "nontarget": dict(by_label[False])},
        "no_score_as": NO_SCORE,
        "p_target": P_TARGET,
        "enrollment": {
            "lists": len(enrollments),
            "enrolled": sum(e["state"] == "enrolled" for e in enrollments),
            "states": dict(Counter(e["state"] for e in enrollments)),
            "clips_offered": dict(sorted(Counter(e["clips_offered"] for e in enrollments).items())),
            "clips_stored": dict(sorted(Counter(e["clips_stored"] for e in enrollments).items())),
            "refused_clips": dict(Counter(r for e in enrollments for r in e["refused"])),
        },
        "http": {
            "states": dict(Counter(r["http"]["state"] for r in records).most_common()),
            "far_at_default": round(http_far, 4), "frr_at_default": round(http_frr, 4),
            "same_state_as_ws": round(agree / len(records), 4),
        },
        "baseline": baseline_figures("centroid"),
        "baseline_first_clip": baseline_figures("first_clip"),
    }


def plot_inputs(records: list[dict]) -> dict:
    """Return the genuine and impostor score lists the plots need, from the per-trial records."""
    genuine, impostor = _scores(records, "ws")
    return {
        "service": (genuine, impostor),
        "baseline": ([r["baseline"]["centroid"] for r in records if r["target"]],
                     [r["baseline"]["centroid"] for r in records if not r["target"]]),
    }
