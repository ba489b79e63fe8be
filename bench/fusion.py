"""Two speaker models side by side, and fused at score level: cross-validated by speaker, per condition.

    python -m bench.degrade ../shared/data/speech-more            # once: the hard variants
    python -m bench.degrade ../shared/data/speech-dev
    python -m bench.fusion [--data DIR] [--hard DIR] [--heldout DIR] [--out bench/results/fusion.json]
    python -m bench.fusion --embed campplus                        # only fill the cache (one model per process)

Systems: plain ECAPA cosine and plain CAM++ cosine against the clean centroid of the enrollment
list, and two fusions by logistic regression: over the two cosines, each z-normalised on the
fitting trials' impostors (``fused``), and over those with the test's seconds of speech and its
products with them (``fused+speech``); and CAM++'s alone with the speech terms (``campplus+speech``),
to tell the speech terms' share of a gain from ECAPA's. Trials are all pairs, as bench.calibrate makes them:
every enrollment list of the set's trials.tsv against every other file of the speakers, under
every condition of the hard variant (enrollment stays clean).

Cross-validation by speaker: the set's speakers are split in two halves (``folds``, by collection
and name, before any score was looked at). A fusion is fitted on the all-pairs trials of one half
and scores the other's, then the other way round; every figure of speech-more is of scores from
a fusion that never saw those speakers. Each half's fit also sets a threshold (the score where
its own impostors are accepted at 0.5%), applied as it stands to the other half: the
``cv_far``/``cv_frr`` figures. A held-out set (``--heldout``, speech-dev) is scored with the mean
of the two fits' scores; nothing was fitted on it.

Embeddings are computed once and cached (bench/embedcache.py).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import metrics
from .data import SpeechSet
from .degrade import condition_of, default_out
from .embedcache import embedding_set, measure_set
from .paths import DEFAULT_DATA as DEV
from .paths import RESULTS
from .paths import SPEECH_MORE as MORE

logger = logging.getLogger(__name__)

MODELS = ("ecapa", "campplus")
SYSTEMS = ("ecapa", "campplus", "campplus+speech", "fused", "fused+speech")
TARGET_FAR = 0.005
P_TARGET = 0.01
# Speech seconds are read as log2, clipped: below 0.5 s and above 16 s they say nothing more.
SPEECH_RANGE = (-1.0, 4.0)
# A light ridge on the fusion weights (not the intercept): the fits have tens of thousands of trials.
RIDGE = 1e-3


@dataclass
class Embedded:
    """A set and its hard variant: who speaks in each file, and every file's embedding by both models."""

    name: str
    conditions: list[str]
    speaker_of: dict[str, str]
    lists: dict[str, set[tuple[str, ...]]]
    files: dict[str, list[str]]
    clean: dict[str, dict[str, np.ndarray]]  # model -> clean file label -> embedding
    hard: dict[str, dict[str, np.ndarray]]  # model -> "condition/label" -> embedding
    seconds: dict[str, float]  # "condition/label" -> seconds of speech (VAD)


def load(data: Path, hard_dir: Path | None, models: tuple[str, ...] = MODELS, only: str | None = None) -> Embedded:
    """Embed a set and its hard variant with ``models`` (cached); ECAPA's pass also measures speech seconds.

    ``only``: the conditions to keep (comma-separated), else all of the hard variant's.
    """
    speech = SpeechSet(data.resolve())
    hard_set = SpeechSet((hard_dir or default_out(speech.root)).resolve())
    if only:
        hard_set.trials = [t for t in hard_set.trials if condition_of(hard_set.label(t.test)) in only.split(",")]
    paths = [u.path for u in speech.utterances]
    tests = sorted({t.test for t in hard_set.trials})
    clean, hard, seconds = {}, {}, {}
    for model in models:
        if model == "ecapa":
            measured = measure_set(speech, paths)
            clean[model] = {speech.label(k): v.embedding for k, v in measured.items()}
            measured = measure_set(hard_set, tests)
            hard[model] = {hard_set.label(k): v.embedding for k, v in measured.items()}
            seconds = {hard_set.label(k): v.speech_seconds for k, v in measured.items()}
        else:
            clean[model] = {speech.label(k): v for k, v in embedding_set(speech, paths, model).items()}
            hard[model] = {hard_set.label(k): v for k, v in embedding_set(hard_set, tests, model).items()}
    speaker_of = {speech.label(u.path): u.speaker for u in speech.utterances}
    lists = defaultdict(set)
    for t in speech.trials:
        lists[speaker_of[speech.label(t.enroll[0])]].add(tuple(speech.label(p) for p in t.enroll))
    files = defaultdict(list)
    for u in speech.utterances:
        files[u.speaker].append(speech.label(u.path))
    conditions = list(dict.fromkeys(condition_of(hard_set.label(t.test)) for t in hard_set.trials))
    return Embedded(speech.root.name, conditions, speaker_of, dict(lists), dict(files), clean, hard, seconds)


def folds(speakers: list[str]) -> tuple[set[str], set[str]]:
    """Split speakers in two halves: within each collection (the name before its first '-'), alternately by name."""
    halves: tuple[set[str], set[str]] = (set(), set())
    by_collection = defaultdict(list)
    for speaker in sorted(speakers):
        by_collection[speaker.split("-")[0]].append(speaker)
    turn = 0
    for collection in sorted(by_collection):
        for speaker in by_collection[collection]:
            halves[turn % 2].add(speaker)
            turn += 1
    return halves


@dataclass
class Trials:
    """All-pairs trials of some speakers: each model's cosine, the test's speech, same speaker or not, condition."""

    cosine: dict[str, np.ndarray]
    speech: np.ndarray
    target: np.ndarray
    condition: np.ndarray


def all_pairs(sets: Embedded, speakers: set[str]) -> Trials:
    """Score every enrollment list of ``speakers`` against every other file of theirs, in every condition."""
    enrolls = [(claimed, enroll) for claimed in sorted(speakers) for enroll in sorted(sets.lists.get(claimed, ()))]
    tests = [(spoken, f) for spoken in sorted(speakers) for f in sets.files[spoken]]
    claimed = np.array([c for c, _ in enrolls])
    spoken = np.array([s for s, _ in tests])
    target = claimed[:, None] == spoken[None, :]
    valid = np.array([[f not in enroll for _, f in tests] for _, enroll in enrolls])
    out = defaultdict(list)
    for condition in sets.conditions:
        keys = [f"{condition}/{f}" for _, f in tests]
        for model in sets.clean:
            centroids = np.stack([np.mean([sets.clean[model][p] for p in enroll], axis=0) for _, enroll in enrolls])
            centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
            vectors = np.stack([sets.hard[model][k] for k in keys])
            vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
            out[model].append((centroids @ vectors.T)[valid])
        out["speech"].append(np.broadcast_to(np.array([sets.seconds[k] for k in keys])[None, :], valid.shape)[valid])
        out["target"].append(target[valid])
        out["condition"].append(np.full(int(valid.sum()), condition))
    joined = {k: np.concatenate(v) for k, v in out.items()}
    return Trials({m: joined[m] for m in sets.clean}, joined["speech"], joined["target"], joined["condition"])


class Fusion:
    """Logistic regression over z-normalised cosines (and, with ``speech``, speech seconds and their products).

    ``models``: whose cosines; CAM++ alone with speech asks how much of a fusion's gain is the speech term's.
    """

    def __init__(self, speech: bool, models: tuple[str, ...] = MODELS):
        self.speech, self.models = speech, models

    def features(self, trials: Trials) -> np.ndarray:
        """Return the design matrix of trials (intercept first)."""
        z = [(trials.cosine[m] - self.norms[m][0]) / self.norms[m][1] for m in self.models]
        columns = [np.ones_like(z[0]), *z]
        if self.speech:
            q = np.clip(np.log2(np.maximum(trials.speech, 1e-3)), *SPEECH_RANGE)
            columns += [q, *(zm * q for zm in z)]
        return np.stack(columns, axis=1)

    def fit(self, trials: Trials) -> Fusion:
        """Fit on ``trials``: impostor statistics for the z-norm, then weights balanced between the two classes."""
        impostor = ~trials.target
        self.norms = {m: (float(trials.cosine[m][impostor].mean()), float(trials.cosine[m][impostor].std()))
                      for m in self.models}
        x, y = self.features(trials), trials.target.astype(np.float64)
        weight = np.where(trials.target, 0.5 / trials.target.sum(), 0.5 / impostor.sum())
        self.w = _logistic(x, y, weight)
        return self

    def __call__(self, trials: Trials) -> np.ndarray:
        """Return the fused score (log-odds) of trials."""
        return self.features(trials) @ self.w

    def about(self) -> dict:
        """Return the fitted numbers."""
        names = ["intercept", *(f"z_{m}" for m in self.models)]
        names += ["speech", *(f"z_{m}*speech" for m in self.models)] if self.speech else []
        return {"weights": dict(zip(names, (round(float(w), 4) for w in self.w))),
                "impostor_norms": {m: [round(v, 4) for v in self.norms[m]] for m in self.models}}


def _logistic(x: np.ndarray, y: np.ndarray, weight: np.ndarray, iterations: int = 50) -> np.ndarray:
    """Return weighted logistic regression weights by Newton's method (a small ridge off the intercept)."""
    w = np.zeros(x.shape[1])
    ridge = np.full(x.shape[1], RIDGE)
    ridge[0] = 0.0
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -30, 30)))
        gradient = x.T @ (weight * (p - y)) + ridge * w
        hessian = (x * (weight * p * (1 - p))[:, None]).T @ x + np.diag(ridge)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def threshold_at(impostor: np.ndarray, far: float) -> float:
    """Return the lowest threshold that accepts at most ``far`` of ``impostor`` scores."""
    ordered = np.sort(impostor)[::-1]
    allowed = int(np.floor(far * ordered.size))
    return float(np.nextafter(ordered[allowed], np.inf)) if allowed < ordered.size else float(ordered[-1])


def frr_at_far(genuine: np.ndarray, impostor: np.ndarray, far: float) -> float:
    """Return the FRR at the threshold where these impostors are accepted at ``far`` (a threshold chosen on them)."""
    return metrics.rates_at(genuine, impostor, threshold_at(impostor, far))[1]


def figures(scores: np.ndarray, target: np.ndarray, threshold: np.ndarray | float | None = None) -> dict:
    """Return EER, FRR at FAR 0.5% (threshold chosen on these trials), minDCF; and FAR/FRR at a given threshold."""
    genuine, impostor = scores[target], scores[~target]
    row = {"targets": int(genuine.size), "nontargets": int(impostor.size),
           "eer": round(metrics.eer(genuine, impostor), 5),
           "frr_at_far_0.005": round(frr_at_far(genuine, impostor, TARGET_FAR), 5),
           "min_dcf": round(metrics.min_dcf(genuine, impostor, P_TARGET), 4)}
    if threshold is not None:
        accepted = scores >= threshold
        row["cv_far"] = round(float(accepted[~target].mean()), 5)
        row["cv_frr"] = round(float((~accepted[target]).mean()), 5)
    return row


def per_condition(scores: dict[str, np.ndarray], thresholds: dict[str, np.ndarray], trials: Trials,
                  conditions: list[str]) -> dict:
    """Return every system's figures per condition and over all of them."""
    out = {}
    for condition in [*conditions, "all"]:
        keep = np.ones(trials.target.size, bool) if condition == "all" else trials.condition == condition
        out[condition] = {system: figures(scores[system][keep], trials.target[keep], thresholds[system][keep])
                          for system in SYSTEMS}
    return out


def system_scores(trials: Trials, fusions: dict[str, Fusion]) -> dict[str, np.ndarray]:
    """Return each system's scores of trials (the plain cosines, and the given fusions)."""
    return {"ecapa": trials.cosine["ecapa"], "campplus": trials.cosine["campplus"],
            **{name: fusion(trials) for name, fusion in fusions.items()}}


def cross_validate(more: Embedded, heldout: list[Embedded]) -> dict:
    """Fit on each half of the speakers, score the other half and the held-out sets; return the figures."""
    speakers = sorted({s for s in more.speaker_of.values()})
    halves = folds(speakers)
    fold_trials = [all_pairs(more, half) for half in halves]
    fits, scored, thresholds, about = [], [], [], []
    for k in (0, 1):
        fit_on, check_on = fold_trials[k], fold_trials[1 - k]
        fusions = {"campplus+speech": Fusion(True, ("campplus",)).fit(fit_on), "fused": Fusion(False).fit(fit_on),
                   "fused+speech": Fusion(True).fit(fit_on)}
        fitted = system_scores(fit_on, fusions)
        # The operating point is the fitting half's too: where its own impostors pass at 0.5%.
        cut = {s: threshold_at(fitted[s][~fit_on.target], TARGET_FAR) for s in SYSTEMS}
        fits.append((fusions, cut))
        scored.append(system_scores(check_on, fusions))
        thresholds.append({s: np.full(check_on.target.size, cut[s]) for s in SYSTEMS})
        about.append({"fitted_on": sorted(halves[k]), "checked_on": sorted(halves[1 - k]),
                      "fit_trials": {"targets": int(fit_on.target.sum()), "nontargets": int((~fit_on.target).sum())},
                      "thresholds_at_far_0.005": {s: round(v, 5) for s, v in cut.items()},
                      **{name: fusion.about() for name, fusion in fusions.items()}})
    # Each half's scores come from the fit on the other half: pooled, every figure is cross-validated.
    checked = [fold_trials[1], fold_trials[0]]
    pooled = Trials({m: np.concatenate([t.cosine[m] for t in checked]) for m in MODELS},
                    np.concatenate([t.speech for t in checked]), np.concatenate([t.target for t in checked]),
                    np.concatenate([t.condition for t in checked]))
    joined = {s: np.concatenate([scored[0][s], scored[1][s]]) for s in SYSTEMS}
    cuts = {s: np.concatenate([thresholds[0][s], thresholds[1][s]]) for s in SYSTEMS}
    results = {"folds": about, "sets": {f"{more.name}_cross_validated": per_condition(joined, cuts, pooled, more.conditions)}}
    for k in (0, 1):  # each half alone, scored by the fit on the other
        results["sets"][f"{more.name}_half{2 - k}_checked"] = per_condition(scored[k], thresholds[k],
                                                                            fold_trials[1 - k], more.conditions)
    for other in heldout:
        trials = all_pairs(other, set(other.speaker_of.values()))
        each = [system_scores(trials, fusions) for fusions, _ in fits]
        # Scored with both fits (neither saw these speakers): their mean score, and their mean threshold.
        scores = {s: (each[0][s] + each[1][s]) / 2 for s in SYSTEMS}
        cut = {s: np.full(trials.target.size, (fits[0][1][s] + fits[1][1][s]) / 2) for s in SYSTEMS}
        results["sets"][f"{other.name}_all_pairs"] = per_condition(scores, cut, trials, other.conditions)
    return results


def speed(data: Path, repeats: int = 7) -> dict:
    """Return each model's median time to embed the same ~5 s of speech, one thread, ONNX Runtime (as the server runs them)."""
    from .embedcache import model_encoder

    speech = SpeechSet(data.resolve())
    audio = np.concatenate([speech.audio(u.path) for u in speech.utterances[:3]])[:5 * 16000]
    out = {"audio_seconds": round(audio.size / 16000, 2), "load_average": round(os.getloadavg()[0], 2)}
    for model in MODELS:
        encoder = model_encoder(model)
        encoder.embed(audio)  # the first call sets up the runtime's buffers
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            encoder.embed(audio)
            times.append(time.perf_counter() - started)
        out[f"{model}_p50_ms"] = round(float(np.median(times)) * 1000, 1)
    return out


def show(name: str, per: dict) -> None:
    """Print one set's table: EER, FRR at FAR 0.5% and minDCF of each system per condition."""
    print(f"\n{name}")
    head = " ".join(f"{s:>22}" for s in SYSTEMS)
    print(f"{'condition':<15} {'tar/non':>13} {head}")
    for condition, row in per.items():
        cells = " ".join(f"{row[s]['eer']:>6.2%} {row[s]['frr_at_far_0.005']:>6.1%} {row[s]['min_dcf']:>7.3f}"
                         for s in SYSTEMS)
        print(f"{condition:<15} {row['ecapa']['targets']:>6}/{row['ecapa']['nontargets']:<6} {cells}")


def markdown(per: dict) -> str:
    """Return one set's figures as a Markdown table (docs/benchmarks.md)."""
    names = {"ecapa": "ECAPA", "campplus": "CAM++", "campplus+speech": "CAM++ +speech", "fused": "fused",
             "fused+speech": "fused+speech"}
    systems = " / ".join(names[s] for s in SYSTEMS)
    lines = [f"| condition | genuine / impostor | EER: {systems} | FRR at FAR 0.5%: {systems} | minDCF: {systems} "
             f"| other half's threshold, FAR / FRR: ECAPA; CAM++; fused+speech |",
             "|---|---|---|---|---|---|"]
    for condition, row in per.items():
        eer = " / ".join(f"{row[s]['eer']:.2%}" for s in SYSTEMS)
        frr = " / ".join(f"{row[s]['frr_at_far_0.005']:.1%}" for s in SYSTEMS)
        dcf = " / ".join(f"{row[s]['min_dcf']:.3f}" for s in SYSTEMS)
        cv = "; ".join(f"{row[s]['cv_far']:.2%} / {row[s]['cv_frr']:.1%}" for s in ("ecapa", "campplus", "fused+speech"))
        lines.append(f"| {condition} | {row['ecapa']['targets']} / {row['ecapa']['nontargets']} | {eer} | {frr} | {dcf} | {cv} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict | None:
    """Embed (cached), cross-validate the fusion, print and write the figures."""
    parser = argparse.ArgumentParser(prog="python -m bench.fusion", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=MORE)
    parser.add_argument("--hard", type=Path, help="its hard variant (default: where bench.degrade writes it)")
    parser.add_argument("--heldout", type=Path, action="append", help="another set, scored with both fits (default: speech-dev)")
    parser.add_argument("--out", type=Path, default=RESULTS / "fusion.json")
    parser.add_argument("--conditions", help="measure only these conditions of the hard variants (comma-separated)")
    parser.add_argument("--embed", choices=MODELS, help="only embed every file with this model (fills the cache), then stop")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    heldout_paths = args.heldout if args.heldout is not None else [DEV]
    if args.embed:
        load(args.data, args.hard, (args.embed,), args.conditions)
        for path in heldout_paths:
            load(path, None, (args.embed,), args.conditions)
        return None
    started = time.time()
    more = load(args.data, args.hard, only=args.conditions)
    heldout = [load(path, None, only=args.conditions) for path in heldout_paths]
    results = {"made_by": "python -m bench.fusion", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
               "target_far": TARGET_FAR, "p_target": P_TARGET, **cross_validate(more, heldout)}
    results["speed"] = speed(heldout_paths[0] if heldout_paths else args.data)
    results["seconds"] = round(time.time() - started, 1)
    for name, per in results["sets"].items():
        show(name, per)
    print(f"\nspeed (one thread, ONNX Runtime, this machine's load): {results['speed']}")
    for name, per in results["sets"].items():
        print(f"\n{name}\n\n{markdown(per)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwrote {args.out}")
    return results


if __name__ == "__main__":
    main()
