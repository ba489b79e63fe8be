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
# Plain cosine is held to the service's old fixed threshold, before calibrated decisions.
BASELINE_THRESHOLD = 0.40
# A trial the service answered without a score (not_enough_speech, an error...) counts as this,
# i.e. as a reject at every threshold: the user was not let in.
NO_SCORE = -1.0
# The same for calibrated scores, which are not bounded by -1.
NO_SCORE_CALIBRATED = -100.0
P_TARGET = 0.01


def enroll_lists(service, speech: SpeechSet, prefix: str) -> dict[tuple, dict]:
    """Create and enroll one user per distinct enrollment list of the trials, on every clip it offers.

    The server ends an enrollment once it has its minimum of clips, so the minimum is set to the
    list's length before each one; a list with a refused clip is enrolled again on what it has.
    """
    users: dict[tuple, dict] = {}
    try:
        for trial in speech.trials:
            if trial.enroll in users:
                continue
            name = f"{prefix}sv{len(users)}"
            clips = [speech.audio(p) for p in trial.enroll]
            service.set_setting("enroll_min_clips", len(clips))
            outcome = calls.enroll(service.ws_url, name, service.invite(name), clips)
            if outcome["state"] == "incomplete" and len(clips) - len(outcome["refused"]) >= 1:
                service.set_setting("enroll_min_clips", len(clips) - len(outcome["refused"]))
                name = f"{name}r"
                outcome = {**calls.enroll(service.ws_url, name, service.invite(name), clips), "retried": True}
            users[trial.enroll] = {"user": name, **outcome}
            if outcome["state"] != "enrolled":
                logger.warning("enrollment of %s on %s: %s (refused clips: %s)", name,
                               ", ".join(speech.label(p) for p in trial.enroll), outcome["state"], outcome["refused"])
    finally:
        service.set_setting("enroll_min_clips", None)
    return users


def run_service(service, speech: SpeechSet, prefix: str) -> dict:
    """Enroll every trial list and verify every trial over the WebSocket and HTTP; return the raw records.

    Trials are verified as a signed-in admin: a caller who is not an admin is shown no score on a
    reject (no oracle to tune a voice by), and the EER and DET curves need the calibrated score of
    every trial. The decisions themselves are the same for both.
    """
    users = enroll_lists(service, speech, prefix)
    logger.info("enrolled %d of %d trial lists", sum(u["state"] == "enrolled" for u in users.values()), len(users))
    admin = service.sign_in_admin()
    records = []
    for index, trial in enumerate(speech.trials):
        user = users[trial.enroll]["user"]
        ws = calls.verify(service.ws_url, user, speech.audio(trial.test), admin=admin)
        http = calls.verify_http(service.url, user, trial.test, admin=admin)
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


def _scores(records: list[dict], key: str, field: str = "score") -> tuple[list[float], list[float]]:
    genuine, impostor = [], []
    for record in records:
        score = record[key].get(field)
        (genuine if record["target"] else impostor).append(NO_SCORE_CALIBRATED if score is None and field != "score"
                                                           else NO_SCORE if score is None else float(score))
    return genuine, impostor


def _figures(genuine: list[float], impostor: list[float], threshold: float) -> dict:
    far, frr = metrics.rates_at(genuine, impostor, threshold)
    return {"eer": round(metrics.eer(genuine, impostor), 4), "min_dcf": round(metrics.min_dcf(genuine, impostor, P_TARGET), 4),
            "far_at_default": round(far, 4), "frr_at_default": round(frr, 4),
            # When no trial is misjudged, the gap between the classes is what still tells systems apart.
            "lowest_genuine": round(min(genuine), 4), "highest_impostor": round(max(impostor), 4)}


def _decided(records: list[dict], key: str) -> tuple[float, float]:
    """Return (FAR, FRR) of the service's own decisions: anything but accept is a reject."""
    genuine = [r[key]["state"] == "accept" for r in records if r["target"]]
    impostor = [r[key]["state"] == "accept" for r in records if not r["target"]]
    return (sum(impostor) / len(impostor) if impostor else 0.0,
            1 - sum(genuine) / len(genuine) if genuine else 0.0)


def det(genuine: list[float], impostor: list[float], points: int = 40) -> dict:
    """Return a thinned DET curve (FAR and FRR at ``points`` thresholds) for the results JSON."""
    far, frr = metrics.det_points(genuine, impostor)
    keep = np.unique(np.linspace(0, far.size - 1, min(far.size, points)).astype(int))
    return {"far": [round(float(x), 4) for x in far[keep]], "frr": [round(float(x), 4) for x in frr[keep]]}


def condition(label: str) -> str:
    """Return the degradation a test file was made under (bench.degrade names it), or 'all'."""
    from .degrade import CONDITIONS, condition_of

    name = condition_of(label)
    return name if name in CONDITIONS else "all"


def _service_figures(records: list[dict], baseline: list[float], targets: list[bool], threshold: float) -> dict:
    """Return the service's decisions and calibrated-score figures beside plain cosine, for some trials."""
    genuine, impostor = _scores(records, "ws", "calibrated_score")
    far, frr = _decided(records, "ws")
    base_genuine = [b for b, t in zip(baseline, targets) if t]
    base_impostor = [b for b, t in zip(baseline, targets) if not t]
    base_far, base_frr = metrics.rates_at(base_genuine, base_impostor, threshold)
    states = {True: Counter(), False: Counter()}
    for record in records:
        states[record["target"]][record["ws"]["state"]] += 1
    return {"trials": len(records), "far_at_default": round(far, 4), "frr_at_default": round(frr, 4),
            "eer": round(metrics.eer(genuine, impostor), 4), "min_dcf": round(metrics.min_dcf(genuine, impostor, P_TARGET), 4),
            "det": det(genuine, impostor),
            "states_by_label": {"target": dict(states[True]), "nontarget": dict(states[False])},
            "baseline": {"eer": round(metrics.eer(base_genuine, base_impostor), 4),
                         "min_dcf": round(metrics.min_dcf(base_genuine, base_impostor, P_TARGET), 4),
                         "det": det(base_genuine, base_impostor),
                         f"far_at_{threshold:.2f}": round(base_far, 4), f"frr_at_{threshold:.2f}": round(base_frr, 4)}}


def summarise(raw: dict, baseline: list[dict], trials: list[Trial]) -> dict:
    """Return the verification figures of the service and the baseline (rates as fractions).

    The service decides on calibrated scores (a target false-accept rate): its FAR and FRR are
    its own decisions (not_enough_speech and every other non-accept count as rejects), its EER
    and DET are of the calibrated scores; the baseline is plain cosine against the centroid.
    """
    records = raw["trials"]
    thresholds = {r["ws"]["threshold"] for r in records if r["ws"].get("threshold") is not None}
    if len(thresholds) != 1:
        raise RuntimeError(f"the server reported thresholds {sorted(thresholds)}; expected one")
    threshold = thresholds.pop()
    target_far = next((r["ws"]["target_far"] for r in records if r["ws"].get("target_far") is not None), None)
    genuine, impostor = _scores(records, "ws", "calibrated_score")
    states = Counter(r["ws"]["state"] for r in records)
    by_label = {True: Counter(), False: Counter()}
    for record in records:
        by_label[record["target"]][record["ws"]["state"]] += 1
    far, frr = _decided(records, "ws")
    http_far, http_frr = _decided(records, "http")
    agree = sum(r["ws"]["state"] == r["http"]["state"] for r in records)

    def baseline_figures(key: str) -> dict:
        base_genuine = [b[key] for b, t in zip(baseline, trials) if t.target]
        base_impostor = [b[key] for b, t in zip(baseline, trials) if not t.target]
        far_sb, frr_sb = metrics.rates_at(base_genuine, base_impostor, SPEECHBRAIN_THRESHOLD)
        return {**_figures(base_genuine, base_impostor, BASELINE_THRESHOLD), "threshold": BASELINE_THRESHOLD,
                "far_at_0_25": round(far_sb, 4), "frr_at_0_25": round(frr_sb, 4)}

    conditions: dict[str, list[int]] = {}
    for index, record in enumerate(records):
        conditions.setdefault(condition(record["test"]), []).append(index)
    per_condition = {}
    if len(conditions) > 1 or "all" not in conditions:
        for name, indices in conditions.items():
            per_condition[name] = _service_figures([records[i] for i in indices], [baseline[i]["centroid"] for i in indices],
                                                   [trials[i].target for i in indices], BASELINE_THRESHOLD)

    enrollments = raw["enrollments"]
    return {
        "threshold": threshold,
        "target_far": target_far,
        "trials": len(records),
        "targets": len(genuine),
        "nontargets": len(impostor),
        **_figures(genuine, impostor, 0.0),
        "far_at_default": round(far, 4), "frr_at_default": round(frr, 4),
        "scores": "eer, min_dcf and det are of the calibrated scores; far/frr at default are the service's decisions",
        "det": det(genuine, impostor),
        "states": dict(states.most_common()),
        "states_by_label": {"target": dict(by_label[True]), "nontarget": dict(by_label[False])},
        "no_score_as": NO_SCORE,
        "p_target": P_TARGET,
        "by_condition": per_condition,
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
        "baseline": {**baseline_figures("centroid"), "det": det(*_base(baseline, trials, "centroid"))},
        "baseline_first_clip": baseline_figures("first_clip"),
    }


def _base(baseline: list[dict], trials: list[Trial], key: str) -> tuple[list[float], list[float]]:
    return ([b[key] for b, t in zip(baseline, trials) if t.target], [b[key] for b, t in zip(baseline, trials) if not t.target])


def plot_inputs(records: list[dict]) -> dict:
    """Return the genuine and impostor score lists the plots need, from the per-trial records."""
    return {
        "service": _scores(records, "ws"),
        "service_calibrated": _scores(records, "ws", "calibrated_score"),
        "baseline": ([r["baseline"]["centroid"] for r in records if r["target"]],
                     [r["baseline"]["centroid"] for r in records if not r["target"]]),
    }
