"""Measure the second-chance login rule (app/gate/second_chance.py): what a second attempt gains, and costs.

    python -m bench.second_chance [--data ../shared/data/speech-more] [--heldout ../shared/data/speech-dev]

A login that misses by a little (its calibrated score within ``band`` of the threshold) is asked
for one more utterance, and is accepted when the mean of the two attempts' calibrated scores
reaches the threshold plus ``margin`` (and the mean raw cosine the floor). Two tries must not
double the false-accept rate, so the margin is chosen on speech-more's held-out cohort speakers
(the calibration's own fitting speakers, each trial's cohort without its two speakers): the
smallest margin whose second attempts add at most ``ADDED_SHARE`` of the target. Everything is
then measured on speech-more's other speakers and on ``--heldout`` sets, none of which took part
in any fit.

The two attempts are two different files of the speaker who spoke, in the same condition (the
same room, line or noise), against the same enrollment list: every ordered pair of such files.
Beside the rule: one attempt alone (the service without it), and a plain retry (either attempt
accepted on its own), which is what "try again" costs without combining the evidence.
An attempt with too little speech is not measured here: its retry is decided as one utterance
of both attempts' audio joined, which is the single-attempt rule on more speech.
Embeddings come from bench/embedcache.py's cache (the fused voice, as the service scores it).
"""
from __future__ import annotations

import argparse
import logging
from collections import defaultdict
from pathlib import Path

import numpy as np

from app.gate.calibration import FUSED_COHORT_PATH, FUSED_COHORT_SHA256, Calibration, load_cohort
from app.gate.policy import DEFAULT_TARGET_FAR, Policy
from app.gate.second_chance import MARGIN, MAX_BAND

from .calibrate import DEFAULT_FLOOR, DEFAULT_MIN_SPEECH, Loaded, Scorer, Trial, calibrated, load
from .cohort import COHORT_SPEAKERS
from .output import quiet_logging, save
from .paths import DEFAULT_DATA, RESULTS, SPEECH_MORE

logger = logging.getLogger(__name__)

DEFAULT_BAND = Policy().second_chance_band

# Second attempts may add at most this share of the target false-accept rate.
ADDED_SHARE = 0.1
MARGINS = tuple(round(m, 2) for m in np.arange(0.0, 1.51, 0.1))
BANDS = (0.5, 1.0, 1.5, MAX_BAND)


def scored(trials: list[Trial], scorer: Scorer, calibration: Calibration, exclude: bool) -> dict[str, np.ndarray]:
    """Return each attempt's calibrated score, raw cosine and seconds of speech."""
    scores = scorer.score(trials, exclude_speakers=exclude)
    return {"z": calibrated(calibration, scores), "raw": scores["raw"], "speech": scores["speech"]}


def pairs(trials: list[Trial]) -> tuple[np.ndarray, np.ndarray]:
    """Return (first, second) indices of every ordered pair of attempts with the same list, speaker and condition."""
    groups = defaultdict(list)
    for i, t in enumerate(trials):
        groups[t.enroll, t.speaker, t.condition].append(i)
    first, second = [], []
    for members in groups.values():
        for a in members:
            for b in members:
                if a != b:
                    first.append(a)
                    second.append(b)
    return np.array(first), np.array(second)


def outcomes(s: dict[str, np.ndarray], first: np.ndarray, second: np.ndarray, threshold: float, floor: float,
             band: float, margin: float) -> dict[str, np.ndarray]:
    """Return, per ordered pair, whether one attempt, a plain retry, and the rule accept."""
    z1, z2, r1, r2 = s["z"][first], s["z"][second], s["raw"][first], s["raw"][second]
    enough1 = s["speech"][first] >= DEFAULT_MIN_SPEECH
    enough2 = s["speech"][second] >= DEFAULT_MIN_SPEECH
    one = enough1 & (z1 >= threshold) & (r1 >= floor)
    alone2 = enough2 & (z2 >= threshold) & (r2 >= floor)
    near = enough1 & ~one & (z1 >= threshold - band)
    again = near & enough2 & ((z1 + z2) / 2 >= threshold + margin) & ((r1 + r2) / 2 >= floor)
    return {"one": one, "retry": one | (~one & alone2), "rule": one | again, "asked": near}


def rates(accepts: dict[str, np.ndarray], target: np.ndarray) -> dict:
    """Return FAR and FRR of each way of deciding, and how often a second attempt was asked for."""
    out = {}
    for name, accept in accepts.items():
        if name == "asked":
            out["asked_genuine"] = round(float(accept[target].mean()), 5)
            out["asked_impostor"] = round(float(accept[~target].mean()), 5)
        else:
            out[name] = {"far": round(float(accept[~target].mean()), 5), "frr": round(float(1 - accept[target].mean()), 5)}
    return out


def measure(s: dict, trials: list[Trial], conditions: list[str], threshold: float, floor: float, band: float,
            margin: float) -> dict:
    """Return the figures per condition and over all of them."""
    first, second = pairs(trials)
    target = np.array([trials[i].target for i in first])
    condition = np.array([trials[i].condition for i in first])
    accepts = outcomes(s, first, second, threshold, floor, band, margin)
    per = {}
    for c in conditions + ["all"]:
        sel = np.ones_like(target) if c == "all" else condition == c
        per[c] = {"genuine_pairs": int((sel & target).sum()), "impostor_pairs": int((sel & ~target).sum()),
                  **rates({k: v[sel] for k, v in accepts.items()}, target[sel])}
    return per


def main(argv: list[str] | None = None) -> dict:
    """Choose the margin on the fitting speakers, measure on the rest, print and write."""
    parser = argparse.ArgumentParser(prog="python -m bench.second_chance", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=SPEECH_MORE)
    parser.add_argument("--heldout", type=Path, action="append", default=None)
    parser.add_argument("--target-far", type=float, default=DEFAULT_TARGET_FAR)
    parser.add_argument("--out", type=Path, default=RESULTS / "second-chance.json")
    args = parser.parse_args(argv)
    args.heldout = args.heldout if args.heldout is not None else [DEFAULT_DATA]
    quiet_logging()
    shipped = load_cohort(FUSED_COHORT_PATH, FUSED_COHORT_SHA256)
    calibration = shipped.calibration
    threshold = calibration.threshold(args.target_far)
    floor = max(DEFAULT_FLOOR, calibration.floor)

    more = load(args.data, None, None, "fused")
    held = set(COHORT_SPEAKERS)
    cohort, cohort_speaker = more.cohort()
    if not np.allclose(cohort, shipped.embeddings, atol=1e-3):
        raise SystemExit("the cached embeddings are not those of the shipped fused cohort")

    def scorer(loaded: Loaded) -> Scorer:
        return Scorer(loaded.clean, loaded.hard, loaded.speaker_of, cohort, cohort_speaker, calibration.top_k,
                      loaded.phone, loaded.edges, centred=calibration.centred)

    fit_trials = more.all_pairs(held)
    fit_scores = scored(fit_trials, scorer(more), calibration, exclude=True)
    fit_first, fit_second = pairs(fit_trials)
    fit_target = np.array([fit_trials[i].target for i in fit_first])
    grid = {}
    for band in BANDS:
        for margin in MARGINS:
            a = outcomes(fit_scores, fit_first, fit_second, threshold, floor, band, margin)
            grid[f"band{band:g}_margin{margin:g}"] = {
                "added_far": round(float(a["rule"][~fit_target].mean() - a["one"][~fit_target].mean()), 6),
                "rescued": round(float(a["rule"][fit_target].mean() - a["one"][fit_target].mean()), 5)}
    allowed = ADDED_SHARE * args.target_far
    chosen = {band: next((m for m in MARGINS if grid[f"band{band:g}_margin{m:g}"]["added_far"] <= allowed), None)
              for band in BANDS}
    logger.info("fitting speakers: smallest margin per band with at most %.3g%% added: %s", 100 * allowed, chosen)
    if chosen[MAX_BAND] is None or chosen[MAX_BAND] > MARGIN:
        logger.warning("the shipped margin %g is below the %s the fitting speakers need at band %g",
                       MARGIN, chosen[MAX_BAND], MAX_BAND)

    results = {"target_far": args.target_far, "threshold": round(threshold, 3), "raw_floor": floor,
               "shipped": {"band": DEFAULT_BAND, "max_band": MAX_BAND, "margin": MARGIN}, "added_share": ADDED_SHARE,
               "fitting_speakers": sorted(held), "fitting_grid": grid, "chosen_margin_per_band": chosen, "sets": {}}
    rest = {u.speaker for u in more.speech.utterances} - held
    runs = [("speech-more evaluation speakers", more, more.all_pairs(rest))]
    for path in args.heldout:
        other = load(path, None, None, "fused")
        runs.append((other.speech.root.name, other, other.all_pairs({u.speaker for u in other.speech.utterances})))
    for name, loaded, trials in runs:
        s = scored(trials, scorer(loaded), calibration, exclude=False)
        per = measure(s, trials, loaded.conditions, threshold, floor, DEFAULT_BAND, MARGIN)
        results["sets"][name] = per
        print(f"\n{name} (band {DEFAULT_BAND:g}, margin {MARGIN:g}): "
              "FAR / FRR of one attempt | plain retry | the rule; asked again (genuine, impostor)")
        for c, row in per.items():
            print(f"  {c:<15} {row['one']['far']:7.3%} {row['one']['frr']:7.2%} | {row['retry']['far']:7.3%} "
                  f"{row['retry']['frr']:7.2%} | {row['rule']['far']:7.3%} {row['rule']['frr']:7.2%}; "
                  f"{row['asked_genuine']:6.2%} {row['asked_impostor']:6.3%}")
    save(results, args.out)
    return results


if __name__ == "__main__":
    main()
