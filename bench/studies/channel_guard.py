"""Why Dutch dictation was refused with the fused voice (issue 26), and what the fix must not do.

    python -m bench.studies.channel_guard [--out bench/results/channel-guard.json]

Two measurements:

1. **A raw guard per channel.** The fused raw guard (Calibration.floor, 0.407) is what 1% of the
   fitting speakers' impostor trials reach, telephone-band and wide-band together. This fits it
   per channel on the same trials (speech-more's 13 cohort speakers, each trial's cohort without
   its two speakers, the shipped scoring), and measures lower telephone-band floors on
   speech-more's other 20 speakers and on speech-dev, at the default target (0.5%, 0.8 s).
2. **A speaker whose own recordings are band-limited** (speech-more's ``fillets-nl-small``, the
   Dutch files the service refused). Each file is held out, the voice is enrolled on the other
   files, and every 2 s window of the held-out file (1 s steps, as dictation checks) is compared,
   by fused raw cosine, with the clean centroid and with the telephone copy the service uses for
   telephone-band audio.

3. **The telephone copy kept for tests well below the enrollment's own band.** The service's
   scoring, but a telephone-band test meets the telephone copy only when its band edge lies at
   least ``gap`` dB below the enrollment clips' median; else the clean centroid. On speech-more's
   13 fitting speakers (where the gap was chosen: 20 dB, shipped as decide.PHONE_COPY_GAP_DB with
   migration 0008), its 20 evaluation speakers and speech-dev.

Embeddings of (1) and (3) come from bench/embedcache.py's cache; (2) runs the models (about a minute).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from app.audio.augment import channel
from app.gate.calibration import FUSED_COHORT_PATH, FUSED_COHORT_SHA256, band_edge, load_cohort
from app.gate.policy import DEFAULT_TARGET_FAR

from ..calibrate import DEFAULT_FLOOR, DEFAULT_MIN_SPEECH, Scorer, calibrated, load
from ..cohort import COHORT_SPEAKERS
from ..data import SpeechSet
from ..output import quiet_logging, save
from ..paths import DEFAULT_DATA, RESULTS, ROOT, SPEECH_MORE

BAND_LIMITED_SPEAKER = "fillets-nl-small"
NARROW_FLOORS = (0.25, 0.30, 0.35)
# How far (dB) a telephone-band test's band edge must lie below the enrollment's for the telephone
# copy; -inf: always (the rule before migration 0008, which the shipped calibration was fitted with).
GAPS = (-np.inf, 5.0, 10.0, 15.0, 20.0)
WINDOW, STEP = 32000, 16000


def guards(target_far: float) -> dict:
    """Return the per-channel guard fit and what lower telephone-band floors do on held-out speakers."""
    shipped = load_cohort(FUSED_COHORT_PATH, FUSED_COHORT_SHA256)
    calibration = shipped.calibration
    more = load(SPEECH_MORE, None, None, "fused")
    held = set(COHORT_SPEAKERS)
    cohort, cohort_speaker = more.cohort()

    def scored(loaded, trials, exclude):
        scorer = Scorer(loaded.clean, loaded.hard, loaded.speaker_of, cohort, cohort_speaker, calibration.top_k,
                        loaded.phone, loaded.edges, centred=calibration.centred)
        scores = scorer.score(trials, exclude_speakers=exclude)
        impostor = ~np.array([t.target for t in trials])
        return scores, calibrated(calibration, scores), impostor, scores["narrow"].astype(bool)

    scores, _, impostor, narrow = scored(more, more.all_pairs(held), True)
    out = {"shipped_floor": calibration.floor, "fit": {
        "narrow_impostor_trials": int((impostor & narrow).sum()), "wide_impostor_trials": int((impostor & ~narrow).sum()),
        "narrow_p99": round(float(np.quantile(scores["raw"][impostor & narrow], 0.99)), 4),
        "wide_p99": round(float(np.quantile(scores["raw"][impostor & ~narrow], 0.99)), 4),
        "narrow_genuine_p5_p10_p50": [round(float(q), 4) for q in
                                      np.percentile(scores["raw"][~impostor & narrow], [5, 10, 50])]}, "sets": {}}
    dev = load(DEFAULT_DATA, None, None, "fused")
    rest = {u.speaker for u in more.speech.utterances} - held
    threshold = calibration.threshold(target_far)
    for name, loaded, trials in (("speech-more evaluation speakers", more, more.all_pairs(rest)),
                                 ("speech-dev", dev, dev.all_pairs({u.speaker for u in dev.speech.utterances}))):
        scores, z, impostor, narrow = scored(loaded, trials, False)
        rows = {}
        for floor in NARROW_FLOORS + (calibration.floor,):
            needed = np.where(narrow, max(DEFAULT_FLOOR, floor), max(DEFAULT_FLOOR, calibration.floor))
            accept = (scores["speech"] >= DEFAULT_MIN_SPEECH) & (z >= threshold) & (scores["raw"] >= needed)
            rows[f"{floor:g}"] = {"narrow_far": round(float(accept[impostor & narrow].mean()), 5),
                                  "narrow_frr": round(float(1 - accept[~impostor & narrow].mean()), 5),
                                  "all_far": round(float(accept[impostor].mean()), 5),
                                  "all_frr": round(float(1 - accept[~impostor].mean()), 5)}
        out["sets"][name] = rows
    return out


def band_aware(target_far: float) -> dict:
    """Return FAR / FRR when the telephone copy is kept for tests well below the enrollment's band."""
    shipped = load_cohort(FUSED_COHORT_PATH, FUSED_COHORT_SHA256)
    calibration = shipped.calibration
    threshold = calibration.threshold(target_far)
    floor = max(DEFAULT_FLOOR, calibration.floor)
    more = load(SPEECH_MORE, None, None, "fused")
    dev = load(DEFAULT_DATA, None, None, "fused")
    held = set(COHORT_SPEAKERS)
    rest = {u.speaker for u in more.speech.utterances} - held
    cohort, cohort_speaker = more.cohort()
    out = {}
    for name, loaded, speakers in (("speech-more fitting (cohort) speakers", more, held),
                                   ("speech-more evaluation speakers", more, rest),
                                   ("speech-dev", dev, {u.speaker for u in dev.speech.utterances})):
        fitting = speakers is held
        edges = loaded.enroll_edges  # each clean file's band edge, as an enrollment clip's is kept
        trials = loaded.all_pairs(speakers)
        impostor = ~np.array([t.target for t in trials])
        band = np.array([t.speaker == BAND_LIMITED_SPEAKER for t in trials])
        rows = {}
        for gap in GAPS:
            scorer = Scorer(loaded.clean, loaded.hard, loaded.speaker_of, cohort, cohort_speaker,
                            calibration.top_k, loaded.phone, loaded.edges,
                            centred=calibration.centred, enroll_edges=edges, gap=gap)
            scores = scorer.score(trials, exclude_speakers=fitting)
            z = calibrated(calibration, scores)
            accept = (scores["speech"] >= DEFAULT_MIN_SPEECH) & (z >= threshold) & (scores["raw"] >= floor)
            row = {"far": round(float(accept[impostor].mean()), 5), "frr": round(float(1 - accept[~impostor].mean()), 5)}
            if band.any():
                row[f"frr_{BAND_LIMITED_SPEAKER}"] = round(float(1 - accept[~impostor & band].mean()), 5)
                row[f"far_{BAND_LIMITED_SPEAKER}_as_impostor"] = round(float(accept[impostor & band].mean()), 5)
            rows["service" if gap == -np.inf else f"gap{gap:g}"] = row
        out[name] = rows
    return out


def band_limited(models_dir: Path) -> dict:
    """Return, per held-out file of the band-limited speaker, its windows' raw cosines to both centroids."""
    from app.engines.runtime import load_engines

    speech = SpeechSet(SPEECH_MORE.resolve())
    speaker = load_engines(models_dir, "tiny.en", workers=1, queue=4).speaker
    files = [u.path for u in speech.utterances if u.speaker == BAND_LIMITED_SPEAKER]
    audio = {f: speech.audio(f) for f in files}
    clean = {f: speaker.embed(a) for f, a in audio.items()}
    phone = {f: speaker.embed(channel("phone", a)) for f, a in audio.items()}
    unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
    rows = []
    for f in files:
        others = [g for g in files if g != f]
        to_clean = unit(np.mean([clean[g] for g in others], axis=0))
        to_phone = unit(np.mean([phone[g] for g in others], axis=0))
        a = audio[f]
        windows = [speaker.embed(a[i:i + WINDOW]) for i in range(0, max(1, a.size - WINDOW + 1), STEP)]
        rows.append({"file": speech.label(f), "edge_db": round(band_edge(a), 1),
                     "windows_to_clean": [round(float(unit(w) @ to_clean), 3) for w in windows],
                     "windows_to_phone": [round(float(unit(w) @ to_phone), 3) for w in windows]})
    every = lambda key: np.concatenate([r[key] for r in rows])  # noqa: E731
    return {"speaker": BAND_LIMITED_SPEAKER, "files": rows,
            "median_to_clean": round(float(np.median(every("windows_to_clean"))), 3),
            "median_to_phone": round(float(np.median(every("windows_to_phone"))), 3),
            "share_under_guard_clean": round(float((every("windows_to_clean") < 0.407).mean()), 3),
            "share_under_guard_phone": round(float((every("windows_to_phone") < 0.407).mean()), 3)}


def main(argv: list[str] | None = None) -> dict:
    """Measure both, print and write."""
    parser = argparse.ArgumentParser(prog="python -m bench.studies.channel_guard", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "channel-guard.json")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "pretrained_models")
    args = parser.parse_args(argv)
    quiet_logging()
    results = {"target_far": DEFAULT_TARGET_FAR, "guards": guards(DEFAULT_TARGET_FAR),
               "band_limited": band_limited(args.models_dir), "band_aware_copy": band_aware(DEFAULT_TARGET_FAR)}
    shown = {"fit": results["guards"]["fit"], "sets": results["guards"]["sets"],
             **{k: v for k, v in results["band_limited"].items() if k != "files"},
             "band_aware_copy": results["band_aware_copy"]}
    save(results, args.out, shown)
    return results


if __name__ == "__main__":
    main()
