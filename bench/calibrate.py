"""Fit the shipped cohort and calibration on held-out speakers, and measure it per condition on the rest.

    python -m bench.degrade ../shared/data/speech-more            # once: the hard variants
    python -m bench.degrade ../shared/data/speech-dev
    python -m bench.calibrate [--data DIR] [--hard DIR] [--heldout ../shared/data/speech-dev] [--write-cohort]
                              [--out bench/results/calibration.json] [--model ecapa|campplus|fused]

Speakers are split in two: ``COHORT_SPEAKERS`` (bench/cohort.py; held out: their embeddings become
the shipped cohort, and the calibration is fitted on their trials among each other) and the rest, on which
everything is measured, per degradation condition, with the trials of the set's trials.tsv and,
for false-accept rates fine enough to see 1 in 1000, every enrollment list against every other
evaluation speaker's files. ``--heldout`` sets are measured with that fit, all their speakers.
Telephone-band test files are scored against the enrollment's telephone copies (app/audio/augment.py)
as the service decides (decide.held_to_phone_copy: tests at least 20 dB under the enrollment's
band); the calibration is fitted as it was when that rule came (migration 0008), with the copy
for every telephone-band test, so that ``--write-cohort`` rewrites the shipped fit. The clean
centroid alone is measured beside it. **Cross-validated** as well (``cross_validated`` in the
results): the cohort and calibration fitted on the evaluation speakers and measured on the cohort
speakers too, both sides pooled, beside each model's plain cosine when ``--model fused``.
Embeddings are computed in this process and cached (bench/embedcache.py).

``--model campplus`` fits and measures the same scoring on CAM++'s embeddings (its own cohort of
the same held-out speakers, its own telephone copies), to ``calibration-campplus.json``: what the
service's calibrated score would be with CAM++ as its speaker model (issue 25). ``--model fused``
scores ECAPA's and CAM++'s embeddings side by side (app/engines/fused.py), as the service does by
default; ``--write-cohort`` writes the shipped cohort of ECAPA or of the fused pair.
"""
from __future__ import annotations

import argparse
import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from app.engines.fused import FUSED_DIM, PART_DIM
from app.gate.calibration import (COHORT_PATH, COHORT_SHA256, FUSED_COHORT_PATH, FUSED_COHORT_SHA256, NARROW_EDGE_DB,
                                  Calibration, Quality, save_cohort)
from app.gate.decide import PHONE_COPY_GAP_DB
from app.gate.policy import DEFAULT_TARGET_FAR

from . import metrics
from .cohort import COHORT_CONDITIONS, COHORT_SPEAKERS
from .data import SpeechSet
from .degrade import condition_of, default_out
from .embedcache import Measured, channel_set, edge_set, measure_set
from .fusion import frr_at_far
from .paths import RESULTS, ROOT, SPEECH_MORE

logger = logging.getLogger(__name__)

TOP_K = 100
# The previous release (top 30, voices not centred), measured beside the shipped scoring in the same run.
PREVIOUS_TOP_K = 30
TARGET_FARS = (0.01, 0.005, 0.002, 0.001, 0.0005)
MIN_SPEECH = (0.5, 0.8, 1.0, 1.5)

DEFAULT_MIN_SPEECH = 0.8
DEFAULT_FLOOR = 0.25
# The fused space's raw guard (app.gate.calibration.Calibration.floor): the raw cosine this share
# of the fitting speakers' impostor trials reach.
RAW_GUARD_FAR = 0.01
# Quality.features' columns: 1, log2 seconds of speech, SNR / 10, band share, narrow band.
ALL_TERMS = (0, 1, 2, 3, 4)
# The fused voices' calibration has the intercept and the seconds of speech alone. Cross-validated
# on speech-more (cohort and calibration fitted on one side of the speaker split, measured on the
# other, both ways), its EER was lower than with SNR and band as well in 7 of 8 conditions (over
# all: 1.73% against 1.89%; g711 2.42% against 3.08%, crop1 2.01% against 2.32%) and its FAR at
# the default stayed under the target in every one: measured on one test, SNR and band moved a
# fused score's impostor centre by more noise than they explained (docs/benchmarks.md).
SPEECH_TERMS = (0, 1)
# Raw cosine floors tried under the calibrated decision.
FLOORS = (0.0, 0.15, 0.20, 0.25, 0.30, 0.40)


@dataclass
class Trial:
    """One scored trial: who was claimed, who spoke, under what condition."""

    enroll: tuple[str, ...]
    test: str
    target: bool
    condition: str
    claimed: str
    speaker: str


class Scorer:
    """Scores trials from cached embeddings: plain cosine, AS-norm, calibrated.

    ``phone`` (clean file label -> embedding of its telephone copy, app/audio/augment.py) makes
    telephone-band tests (``edges`` below NARROW_EDGE_DB) score against the enrollment's
    telephone centroid; None scores every test against the clean centroid. With ``enroll_edges``
    (clean file label -> band edge), only tests ``gap`` dB or more below the enrollment clips'
    median edge meet the copy, as the service decides (decide.held_to_phone_copy); without, every
    telephone-band test does (the rule the shipped calibration was fitted with).
    """

    def __init__(self, clean: dict[str, Measured], hard: dict[str, Measured], speaker_of: dict[str, str],
                 cohort: np.ndarray, cohort_speaker: np.ndarray, top_k: int,
                 phone: dict[str, np.ndarray] | None = None, edges: dict[str, float] | None = None,
                 centred: bool = True, enroll_edges: dict[str, float] | None = None, gap: float = PHONE_COPY_GAP_DB):
        self.clean, self.hard, self.speaker_of, self.top_k = clean, hard, speaker_of, top_k
        # AS-norm on voices less the cohort's mean, as app.gate.calibration.Cohort.centre does.
        self.mean = cohort.mean(axis=0) if centred else np.zeros(cohort.shape[1], dtype=cohort.dtype)
        self.centred = centred
        self.cohort, self.cohort_speaker = self.centre(cohort), cohort_speaker
        self.phone, self.edges = phone, edges or {}
        self.enroll_edges, self.gap = enroll_edges, gap
        self._stats: dict = {}

    def centre(self, vectors: np.ndarray) -> np.ndarray:
        """Return unit vectors less the cohort mean, at unit length again (a vector or one per row)."""
        moved = vectors / np.linalg.norm(vectors, axis=-1, keepdims=True) - self.mean
        return moved / np.linalg.norm(moved, axis=-1, keepdims=True)

    def speaker(self, key: str) -> str:
        """Return the speaker of a clean or degraded file's label."""
        return self.speaker_of[key.split("/", 1)[1] if key.split("/", 1)[0] in CONDITION_NAMES else key]

    def narrow(self, test: str, enroll: tuple[str, ...] = ()) -> bool:
        """Return True when the test meets the enrollment's telephone copy (``enroll``: the enrollment list)."""
        edge = self.edges.get(test, 0.0)
        if self.phone is None or edge >= NARROW_EDGE_DB:
            return False
        return self.enroll_edges is None or float(np.median([self.enroll_edges[p] for p in enroll])) - edge >= self.gap

    def enrolled(self, enroll: tuple[str, ...], narrow: bool = False) -> np.ndarray:
        """Return the centroid of an enrollment list (of its telephone copies when ``narrow``)."""
        mean = np.mean([self.phone[p] if narrow else self.clean[p].embedding for p in enroll], axis=0)
        return mean / np.linalg.norm(mean)

    def stats(self, name, vector: np.ndarray, exclude: tuple[str, ...]) -> tuple[float, float]:
        """Return the mean and deviation of the top-k cohort scores of ``vector`` (cached by name)."""
        key = (name, exclude)
        if key not in self._stats:
            scores = self.cohort @ vector
            if exclude:
                scores = scores[~np.isin(self.cohort_speaker, exclude)]
            top = np.partition(scores, -self.top_k)[-self.top_k:]
            self._stats[key] = (float(top.mean()), float(top.std()))
        return self._stats[key]

    def score(self, trials: list[Trial], exclude_speakers: bool) -> dict[str, np.ndarray]:
        """Return raw cosines (centroid, clip mean, clip max), AS-norm scores and test qualities."""
        out = defaultdict(list)
        centroids = {}
        for t in trials:
            narrow = self.narrow(t.test, t.enroll)
            if (t.enroll, narrow) not in centroids:
                centroids[t.enroll, narrow] = self.enrolled(t.enroll, narrow)
            e, m = centroids[t.enroll, narrow], self.hard[t.test]
            raw = float(e @ m.embedding)
            clips = np.array([self.clean[p].embedding @ m.embedding for p in t.enroll])
            exclude = tuple(sorted({t.claimed, t.speaker})) if exclude_speakers else ()
            ce, cm = self.centre(e), self.centre(m.embedding)
            centred = float(ce @ cm)
            me, se = self.stats((t.enroll, narrow), ce, exclude)
            mt, st = self.stats(t.test, cm, exclude)
            out["raw"].append(raw)
            if e.size == FUSED_DIM:  # each model's own plain cosine, from its part of the fused voices
                out["raw_ecapa"].append(float(_unit(e[:PART_DIM]) @ _unit(m.embedding[:PART_DIM])))
                out["raw_campplus"].append(float(_unit(e[PART_DIM:]) @ _unit(m.embedding[PART_DIM:])))
            out["clip_mean"].append(float(clips.mean()))
            out["clip_max"].append(float(clips.max()))
            out["asnorm"].append(0.5 * ((centred - me) / max(se, 1e-3) + (centred - mt) / max(st, 1e-3)))
            out["features"].append(Quality(m.speech_seconds, m.snr_db, m.band).features())
            out["speech"].append(m.speech_seconds)
            out["narrow"].append(narrow)
        return {k: np.array(v) for k, v in out.items()}


CONDITION_NAMES: set[str] = set()


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def fit(normed: np.ndarray, features: np.ndarray, top_k: int, centred: bool = True,
        terms: tuple[int, ...] = ALL_TERMS) -> Calibration:
    """Fit the impostor AS-norm centre and spread as functions of quality, and the measured tail.

    ``terms``: the columns of Quality.features fitted; the others' weights are 0.
    """
    used = features[:, list(terms)]
    centre, spread = np.zeros(features.shape[1]), np.zeros(features.shape[1])
    centre[list(terms)] = np.linalg.lstsq(used, normed, rcond=None)[0]
    residual = normed - features @ centre
    # For normal residuals, E[log|r|] = log(sigma) - 0.635: fit the log spread, then correct.
    spread[list(terms)] = np.linalg.lstsq(used, np.log(np.abs(residual) + 1e-6), rcond=None)[0]
    spread[0] += 0.635
    calibration = Calibration(top_k, tuple(float(c) for c in centre), tuple(float(s) for s in spread), centred=centred)
    z = np.array([calibration.calibrate(n, _q(f)) for n, f in zip(normed, features)])
    tail = []
    for far in (0.05, 0.02, 0.01, 0.005, 0.002, 0.001, 0.0005, 0.0002):
        if far * z.size < 10:  # fewer than ten exceedances: not measured, extended as a normal tail
            break
        tail.append((far, float(np.quantile(z, 1 - far))))
    return Calibration(top_k, calibration.centre, calibration.spread, tuple(tail), centred)


def _q(features: np.ndarray) -> Quality:
    # Inverse of Quality.features (within the clipped ranges) so that calibrate() sees the same values.
    return Quality(float(2 ** features[1]), float(features[2] * 10), float(features[3]))


def calibrated(calibration: Calibration, scores: dict[str, np.ndarray]) -> np.ndarray:
    """Return calibrated scores of scored trials."""
    return np.array([calibration.calibrate(n, _q(f)) for n, f in zip(scores["asnorm"], scores["features"])])


def figures(genuine: np.ndarray, impostor: np.ndarray) -> dict:
    """Return EER and a thinned DET curve."""
    far, frr = metrics.det_points(genuine, impostor)
    keep = np.unique(np.linspace(0, far.size - 1, min(far.size, 60)).astype(int))
    return {"eer": round(metrics.eer(genuine, impostor), 4),
            "det": {"far": [round(float(x), 5) for x in far[keep]], "frr": [round(float(x), 5) for x in frr[keep]]}}


def plot(per: dict, path: Path, calibration: Calibration, default_far: float) -> None:
    """Draw one DET panel per condition: plain cosine and calibrated scores, the default marked."""
    from .report import DET_TICKS, plt

    names = [c for c in per if c != "all"] + ["all"]
    columns = 3
    rows = -(-len(names) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.1 * rows), squeeze=False)
    ticks = metrics.probit(np.array(DET_TICKS + (0.001, 0.005)), 10**6)
    labels = [f"{t:.1%}" if t < 0.01 else f"{t:.0%}" for t in DET_TICKS + (0.001, 0.005)]
    limit = metrics.probit(np.array([0.0005, 0.6]), 10**6)
    for axis, name in zip(axes.flat, names):
        row = per[name]
        for system, style in (("raw", "--"), ("calibrated", "-")):
            det = row[system]["det"]
            axis.plot(metrics.probit(det["far"], row["nontargets"]), metrics.probit(det["frr"], row["targets"]), style,
                      label=f"{'plain cosine' if system == 'raw' else 'calibrated'} (EER {row[system]['eer']:.1%})")
        point = row["decisions"].get(f"far{default_far:g}_min{DEFAULT_MIN_SPEECH:g}")
        if point:
            axis.plot(metrics.probit([point["far"]], row["nontargets"]), metrics.probit([point["frr"]], row["targets"]),
                      "ko", markersize=4, label="default")
        axis.set_xticks(ticks, labels, fontsize=6)
        axis.set_yticks(ticks, labels, fontsize=6)
        axis.set_xlim(*limit)
        axis.set_ylim(*limit)
        axis.grid(True, linewidth=0.3)
        axis.set_title(name, fontsize=9)
        axis.legend(fontsize=6, loc="upper right")
    for axis in list(axes.flat)[len(names):]:
        axis.axis("off")
    figure.supxlabel("false accept rate", fontsize=8)
    figure.supylabel("false reject rate", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


@dataclass
class Loaded:
    """A speech set, its hard variant, and every measurement the scoring needs."""

    speech: SpeechSet
    hard_set: SpeechSet
    clean: dict[str, Measured]
    hard: dict[str, Measured]
    speaker_of: dict[str, str]
    conditions: list[str]
    phone: dict[str, np.ndarray]
    edges: dict[str, float]
    lists: dict[str, set]
    files: dict[str, list[str]]
    enroll_edges: dict[str, float] = field(default_factory=dict)  # clean file label -> band edge (dB)

    def all_pairs(self, speakers: set[str]) -> list[Trial]:
        """Return every enrollment list of ``speakers`` against every other file of theirs, in every condition."""
        trials = []
        for claimed in sorted(speakers):
            for enroll in sorted(self.lists[claimed]):
                for spoken in sorted(speakers):
                    for f in self.files[spoken]:
                        if f in enroll:
                            continue
                        for c in self.conditions:
                            trials.append(Trial(enroll, f"{c}/{f}", claimed == spoken, c, claimed, spoken))
        return trials

    def cohort(self, conditions=COHORT_CONDITIONS, speakers=COHORT_SPEAKERS) -> tuple[np.ndarray, np.ndarray]:
        """Return the held-out speakers' embeddings in ``conditions`` (the shipped cohort, float16 as shipped)
        and each one's speaker, so that a fitting trial's cohort can leave its own two speakers out."""
        keys = [f"{c}/{self.speech.label(u.path)}" for c in conditions if c in self.conditions
                for u in self.speech.utterances if u.speaker in speakers]
        # As shipped (float16), so that fitting and measuring see the cohort the service loads.
        embeddings = np.stack([self.hard[k].embedding for k in keys]).astype("<f2").astype(np.float32)
        return embeddings, np.array([self.speaker_of[k.split("/", 1)[1]] for k in keys])

    def listed(self, speakers: set[str]) -> list[Trial]:
        """Return the hard variant's own trials between ``speakers``."""
        trials = [Trial(tuple(self.speech.label(p) for p in t.enroll), self.hard_set.label(t.test), t.target,
                        condition_of(self.hard_set.label(t.test)), self.speaker_of[self.speech.label(t.enroll[0])],
                        self.speaker_of[self.hard_set.label(t.test).split("/", 1)[1]]) for t in self.hard_set.trials]
        return [t for t in trials if t.claimed in speakers and t.speaker in speakers]


def load(data: Path, hard_dir: Path | None, only: str | None = None, model: str = "ecapa") -> Loaded:
    """Measure a set and its hard variant (cached): ``model``'s embeddings and telephone copies, band edges."""
    speech = SpeechSet(data.resolve())
    hard_set = SpeechSet((hard_dir or default_out(speech.root)).resolve())
    if only:
        wanted = set(only.split(","))
        hard_set.trials = [t for t in hard_set.trials if condition_of(hard_set.label(t.test)) in wanted]
    paths = [u.path for u in speech.utterances]
    clean = {speech.label(k): v for k, v in measure_set(speech, paths, model=model).items()}
    phone = {speech.label(k): v[0] for k, v in channel_set(speech, paths, ("phone",), model=model).items()}
    tests = sorted({t.test for t in hard_set.trials})
    hard = {hard_set.label(k): v for k, v in measure_set(hard_set, tests, model=model).items()}
    edges = {hard_set.label(k): v for k, v in edge_set(hard_set, tests).items()}
    conditions = list(dict.fromkeys(condition_of(hard_set.label(t.test)) for t in hard_set.trials))
    CONDITION_NAMES.update(conditions)
    speaker_of = {speech.label(u.path): u.speaker for u in speech.utterances}
    lists = defaultdict(set)
    for t in speech.trials:
        lists[speaker_of[speech.label(t.enroll[0])]].add(tuple(speech.label(p) for p in t.enroll))
    files = defaultdict(list)
    for u in speech.utterances:
        files[u.speaker].append(speech.label(u.path))
    enroll_edges = {speech.label(k): v for k, v in edge_set(speech, paths).items()}
    return Loaded(speech, hard_set, clean, hard, speaker_of, conditions, phone, edges, lists, files, enroll_edges)


def evaluate(scorers: dict[str, Scorer], trials: list[Trial], calibrations: dict[str, Calibration],
             conditions: list[str], default_far: float) -> dict:
    """Score ``trials`` with each system (``phone``: the service; ``centroid``: clean centroid only), per condition."""
    target = np.array([t.target for t in trials])
    condition = np.array([t.condition for t in trials])
    nclips = np.array([len(t.enroll) for t in trials])
    scored = {}
    for name, scorer in scorers.items():
        scores = scorer.score(trials, exclude_speakers=False)
        scores["calibrated"] = calibrated(calibrations[name], scores)
        scored[name] = scores
    scores = scored["phone"]
    base = scored["centroid"]
    calibration = calibrations["phone"]
    per = {}
    for c in conditions + ["all"]:
        sel = np.ones_like(target) if c == "all" else condition == c
        row = {"targets": int((sel & target).sum()), "nontargets": int((sel & ~target).sum()),
               "narrow_share": round(float(scores["narrow"][sel].mean()), 4)}
        # "raw" is plain ECAPA cosine to the clean centroid (the baseline the goal compares with);
        # "raw_phone" the cosine the service reports (to the telephone centroid on telephone audio).
        for system in ("raw", "clip_mean", "clip_max", "asnorm", "calibrated"):
            source = base if system in ("raw", "clip_mean", "clip_max") else scores
            g, i = source[system][sel & target], source[system][sel & ~target]
            row[system] = figures(g, i) if system in ("raw", "calibrated") else {"eer": round(metrics.eer(g, i), 4)}
        for system in ("raw_ecapa", "raw_campplus"):  # fused: each model's plain cosine to the clean centroid
            if system in base:
                row[system] = {"eer": round(metrics.eer(base[system][sel & target], base[system][sel & ~target]), 4)}
        row["raw_phone"] = {"eer": round(metrics.eer(scores["raw"][sel & target], scores["raw"][sel & ~target]), 4)}
        # The clean centroid alone (no telephone copies), calibrated on its own: what the channel adds.
        row["calibrated_centroid_only"] = {"eer": round(metrics.eer(base["calibrated"][sel & target],
                                                                    base["calibrated"][sel & ~target]), 4)}
        for n in (1, 3):
            s2 = sel & (nclips == n)
            if (s2 & target).any() and (s2 & ~target).any():
                row[f"eer_{n}clip"] = {s: round(metrics.eer(base[s][s2 & target], base[s][s2 & ~target]), 4)
                                       for s in ("raw", "clip_mean", "clip_max", "calibrated")}
        decisions = {}
        for far in TARGET_FARS:
            t_z = calibration.threshold(far)
            for minimum in MIN_SPEECH:
                enough = scores["speech"] >= minimum
                floor = max(DEFAULT_FLOOR, calibration.floor)
                accept = enough & (scores["calibrated"] >= t_z) & (scores["raw"] >= floor)
                decisions[f"far{far:g}_min{minimum:g}"] = {
                    "threshold": round(t_z, 3),
                    "far": round(float(accept[sel & ~target].mean()), 5),
                    "frr": round(float(1 - accept[sel & target].mean()), 5),
                    "not_enough_speech": round(float(1 - enough[sel & target].mean()), 5)}
        t_z = calibration.threshold(default_far)
        for floor in FLOORS:
            accept = (scores["speech"] >= DEFAULT_MIN_SPEECH) & (scores["calibrated"] >= t_z) & (scores["raw"] >= floor)
            decisions[f"default_floor{floor:.2f}"] = {"far": round(float(accept[sel & ~target].mean()), 5),
                                                      "frr": round(float(1 - accept[sel & target].mean()), 5)}
        prev, p_z = scored["previous"], calibrations["previous"].threshold(default_far)
        accept = ((prev["speech"] >= DEFAULT_MIN_SPEECH) & (prev["calibrated"] >= p_z)
                  & (prev["raw"] >= max(DEFAULT_FLOOR, calibrations["previous"].floor)))
        row["previous"] = {"eer": round(metrics.eer(prev["calibrated"][sel & target], prev["calibrated"][sel & ~target]), 4),
                           "far": round(float(accept[sel & ~target].mean()), 5),
                           "frr": round(float(1 - accept[sel & target].mean()), 5)}
        b_z = calibrations["centroid"].threshold(default_far)
        accept = ((base["speech"] >= DEFAULT_MIN_SPEECH) & (base["calibrated"] >= b_z)
                  & (base["raw"] >= max(DEFAULT_FLOOR, calibrations["centroid"].floor)))
        decisions["default_centroid_only"] = {"far": round(float(accept[sel & ~target].mean()), 5),
                                              "frr": round(float(1 - accept[sel & target].mean()), 5)}
        for cos in (0.30, 0.40):
            accept = (scores["speech"] >= 1.5) & (base["raw"] >= cos)
            decisions[f"cosine{cos:.2f}_min1.5"] = {"far": round(float(accept[sel & ~target].mean()), 5),
                                                    "frr": round(float(1 - accept[sel & target].mean()), 5)}
        # What the decision would need per condition: the FRR where this condition's own FAR is 0.5%.
        g, i = scores["calibrated"][sel & target], scores["calibrated"][sel & ~target]
        if i.size >= 1000:
            at = float(np.quantile(i, 0.995))
            row["frr_at_far0.005_oracle"] = round(float((g < at).mean()), 5)
        row["decisions"] = decisions
        row["speech_seconds_p10"] = round(float(np.percentile(scores["speech"][sel], 10)), 2)
        per[c] = row
    return per


def show(name: str, per: dict, default_far: float) -> None:
    """Print one set's figures per condition."""
    print(f"\n{name}: EER raw / asnorm / calibrated (centroid only) | at target {default_far:g}, min {DEFAULT_MIN_SPEECH:g} s: "
          "FAR FRR (not_enough_speech) | centroid only: FAR FRR | previous release: EER, FAR FRR")
    for c, row in per.items():
        d = row["decisions"][f"far{default_far:g}_min{DEFAULT_MIN_SPEECH:g}"]
        b = row["decisions"]["default_centroid_only"]
        print(f"  {c:<15} n={row['targets']:>5}/{row['nontargets']:<6} {row['raw']['eer']:6.2%} {row['asnorm']['eer']:6.2%} "
              f"{row['calibrated']['eer']:6.2%} ({row['calibrated_centroid_only']['eer']:6.2%}) | "
              f"FAR {d['far']:.3%} FRR {d['frr']:6.2%} ({d['not_enough_speech']:.1%}) | {b['far']:.3%} {b['frr']:6.2%} | "
              f"{row['previous']['eer']:6.2%} {row['previous']['far']:.3%} {row['previous']['frr']:6.2%}")


def scorers(loaded: Loaded, cohort: np.ndarray, cohort_speaker: np.ndarray, top_k: int, centred: bool,
            service: bool) -> dict[str, Scorer]:
    """Return the scorings measured: ``phone`` (the service's), ``centroid`` (clean centroid only), ``previous``.

    ``service``: telephone copies as the service keeps them now (decide.held_to_phone_copy); else
    for every telephone-band test, the rule the shipped calibration was fitted with.
    """
    edges = loaded.enroll_edges if service else None
    return {"phone": Scorer(loaded.clean, loaded.hard, loaded.speaker_of, cohort, cohort_speaker, top_k,
                            loaded.phone, loaded.edges, centred=centred, enroll_edges=edges),
            "centroid": Scorer(loaded.clean, loaded.hard, loaded.speaker_of, cohort, cohort_speaker, top_k,
                               centred=centred),
            "previous": Scorer(loaded.clean, loaded.hard, loaded.speaker_of, cohort, cohort_speaker, PREVIOUS_TOP_K,
                               loaded.phone, loaded.edges, centred=False)}


def fit_calibrations(loaded: Loaded, speakers: set[str], cohort: np.ndarray, cohort_speaker: np.ndarray, top_k: int,
                     centred: bool, fused: bool, variants: dict[str, tuple[int, ...]] | None = None,
                     only: tuple[str, ...] = ("phone", "centroid", "previous")) -> dict[str, Calibration]:
    """Fit each scoring's calibration on the impostor trials among ``speakers``, each cohort without the trial's two.

    The fused voices' calibrations use SPEECH_TERMS, ECAPA's and CAM++'s every quality term.
    ``variants`` (name -> terms) also fits the service's scoring (``phone``) with other terms, under those names.
    """
    trials = loaded.all_pairs(speakers)
    impostor = ~np.array([t.target for t in trials])
    terms = SPEECH_TERMS if fused else ALL_TERMS
    calibrations = {}
    for name, scorer in scorers(loaded, cohort, cohort_speaker, top_k, centred, service=False).items():
        if name not in only:
            continue
        scores = scorer.score(trials, exclude_speakers=True)
        guard = round(float(np.quantile(scores["raw"][impostor], 1 - RAW_GUARD_FAR)), 4) if fused else 0.0
        fits = {name: terms, **({} if name != "phone" else (variants or {}))}
        for key, chosen in fits.items():
            calibrations[key] = replace(fit(scores["asnorm"][impostor], scores["features"][impostor], scorer.top_k,
                                            scorer.centred, chosen), floor=guard)
    return calibrations


def cross_validated(loaded: Loaded, halves: tuple[set[str], set[str]], conditions: list[str], top_k: int,
                    centred: bool, fused: bool, default_far: float) -> dict:
    """Return the service's scoring fitted on each side of the speaker split (cohort and calibration) and
    measured on the other, pooled: every score from a fit that never saw its speakers; per condition,
    beside each model's plain cosine (both models' when ``fused``)."""
    pooled = defaultdict(list)
    # Fused: also calibrated on every quality term, as before SPEECH_TERMS, to compare.
    variants = {"all_quality_terms": ALL_TERMS} if fused else {}
    for fit_on, check_on in (halves, halves[::-1]):
        cohort, cohort_speaker = loaded.cohort(conditions, fit_on)
        calibrations = fit_calibrations(loaded, fit_on, cohort, cohort_speaker, top_k, centred, fused, variants,
                                        only=("phone",))
        trials = loaded.all_pairs(check_on)
        scores = scorers(loaded, cohort, cohort_speaker, top_k, centred, service=True)["phone"].score(trials, False)
        for system, name in (("service", "phone"), *((v, v) for v in variants)):
            calibration = calibrations[name]
            z = calibrated(calibration, scores)
            pooled[system].append(z)
            pooled[f"{system}_accept"].append((scores["speech"] >= DEFAULT_MIN_SPEECH) & (z >= calibration.threshold(default_far))
                                              & (scores["raw"] >= max(DEFAULT_FLOOR, calibration.floor)))
        for system in ("ecapa", "campplus") if fused else ():
            pooled[system].append(scores[f"raw_{system}"])
        pooled["raw"].append(scores["raw"])
        pooled["target"].append(np.array([t.target for t in trials]))
        pooled["condition"].append(np.array([t.condition for t in trials]))
    joined = {k: np.concatenate(v) for k, v in pooled.items()}
    target, condition = joined["target"], joined["condition"]
    per = {}
    for c in [*loaded.conditions, "all"]:
        sel = np.ones_like(target) if c == "all" else condition == c
        row = {"targets": int((sel & target).sum()), "nontargets": int((sel & ~target).sum())}
        for system in ("ecapa", "campplus", "raw", "service", *variants):
            if system in joined:
                g, i = joined[system][sel & target], joined[system][sel & ~target]
                row[system] = {"eer": round(metrics.eer(g, i), 5), "frr_at_far_0.005": round(frr_at_far(g, i, 0.005), 5),
                               "min_dcf": round(metrics.min_dcf(g, i, 0.01), 4)}
            if f"{system}_accept" in joined:  # the decision at the default target, as the service takes it
                accept = joined[f"{system}_accept"]
                row[system]["default"] = {"far": round(float(accept[sel & ~target].mean()), 5),
                                          "frr": round(float(1 - accept[sel & target].mean()), 5)}
        per[c] = row
    return per


def show_cross_validated(per: dict, default_far: float) -> None:
    """Print the cross-validated figures per condition: EER and FRR at FAR 0.5% of each system."""
    systems = [s for s in ("ecapa", "campplus", "raw", "service", "all_quality_terms") if s in per["all"]]
    decided = [s for s in systems if "default" in per["all"][s]]
    print(f"\ncross-validated (each side of the split scored by the other's fit): EER / FRR at FAR 0.5% of "
          f"{', '.join(systems)} | at the default target {default_far:g}, FAR FRR of {', '.join(decided)}")
    for c, row in per.items():
        cells = "  ".join(f"{row[s]['eer']:6.2%} {row[s]['frr_at_far_0.005']:6.1%}" for s in systems)
        decisions = "  ".join(f"{row[s]['default']['far']:.3%} {row[s]['default']['frr']:6.2%}" for s in decided)
        print(f"  {c:<15} n={row['targets']:>5}/{row['nontargets']:<6} {cells} | {decisions}")


def main(argv: list[str] | None = None) -> dict:
    """Fit, measure, print and write."""
    parser = argparse.ArgumentParser(prog="python -m bench.calibrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=SPEECH_MORE)
    parser.add_argument("--hard", type=Path, help="its hard variant (default: where bench.degrade writes it)")
    parser.add_argument("--heldout", type=Path, action="append", default=[],
                        help="another set (with its hard variant where bench.degrade writes it) measured with the fit, all its speakers")
    parser.add_argument("--model", choices=("ecapa", "campplus", "fused"), default="ecapa",
                        help="the speaker model scored")
    parser.add_argument("--out", type=Path, help="default: bench/results/calibration.json (calibration-campplus.json)")
    parser.add_argument("--write-cohort", action="store_true",
                        help=f"write {COHORT_PATH.relative_to(ROOT)} (ECAPA) or {FUSED_COHORT_PATH.name} (fused)")
    parser.add_argument("--top-k", type=int, default=TOP_K)
    parser.add_argument("--uncentred", action="store_true",
                        help="AS-norm on voices as they are, not less the cohort's mean (the fused cohort's scoring)")
    parser.add_argument("--default-far", type=float, default=DEFAULT_TARGET_FAR, help="the target marked on the plots")
    parser.add_argument("--cohort-conditions", default=",".join(COHORT_CONDITIONS))
    parser.add_argument("--conditions", help="measure only these conditions of the hard variant (comma-separated)")
    args = parser.parse_args(argv)
    if args.write_cohort and args.model == "campplus":
        parser.error("the service ships ECAPA's cohort and the fused one: --write-cohort takes --model ecapa or fused")
    args.out = args.out or RESULTS / ("calibration.json" if args.model == "ecapa" else f"calibration-{args.model}.json")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    more = load(args.data, args.hard, args.conditions, args.model)
    held = set(COHORT_SPEAKERS)
    cohort_conditions = [c for c in args.cohort_conditions.split(",") if c in more.conditions]
    cohort, cohort_speaker = more.cohort(cohort_conditions)

    centred = not args.uncentred
    calibrations = fit_calibrations(more, held, cohort, cohort_speaker, args.top_k, centred, args.model == "fused")
    calibration = calibrations["phone"]
    logger.info("fitted on %d held-out speakers: %s", len(held), calibration)

    rest = {u.speaker for u in more.speech.utterances} - held
    results = {"model": args.model, "cohort_speakers": sorted(held), "evaluation_speakers": sorted(rest), "top_k": args.top_k,
               "cohort_conditions": cohort_conditions, "cohort_size": len(cohort),
               "narrow_edge_db": NARROW_EDGE_DB,
               "calibration": {"centre": calibration.centre, "spread": calibration.spread, "tail": calibration.tail,
                               "floor": calibration.floor},
               "sets": {}}
    runs = [("trials", more, more.listed(rest)), ("all_pairs", more, more.all_pairs(rest))]
    for path in args.heldout:
        other = load(path, None, args.conditions, args.model)
        everyone = {u.speaker for u in other.speech.utterances}
        runs.append((f"{other.speech.root.name}_all_pairs", other, other.all_pairs(everyone)))
    for set_name, loaded, trials in runs:
        per = evaluate(scorers(loaded, cohort, cohort_speaker, args.top_k, centred, service=True), trials, calibrations,
                       loaded.conditions, args.default_far)
        results["sets"][set_name] = per
        show(set_name, per, args.default_far)
    # The split swapped as well: fitted on the evaluation speakers, measured on the cohort's.
    per = cross_validated(more, (held, rest), cohort_conditions, args.top_k, centred, args.model == "fused",
                          args.default_far)
    results["sets"]["cross_validated"] = per
    show_cross_validated(per, args.default_far)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    plot(results["sets"]["all_pairs"], args.out.with_name(args.out.stem + "-det.png"), calibration, args.default_far)
    if args.write_cohort:
        about = {"made_by": f"python -m bench.calibrate --model {args.model} --write-cohort", "speakers": sorted(held),
                 "conditions": cohort_conditions, "source": "speech-more (held-out speakers)"}
        path, expected, constant = ((COHORT_PATH, COHORT_SHA256, "COHORT_SHA256") if args.model == "ecapa" else
                                    (FUSED_COHORT_PATH, FUSED_COHORT_SHA256, "FUSED_COHORT_SHA256"))
        digest = save_cohort(path, cohort, calibration, about)
        print(f"wrote {path} ({cohort.shape[0]} embeddings) sha256 {digest}")
        if digest != expected:
            print(f"the server refuses this file until {constant} in app/gate/calibration.py is set to it")
        results["cohort_sha256"] = digest
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
