"""Decided: AS-norm on centred voices, top 100, telephone copy (docs/threshold.md, "How the score is computed").

Compare ways to score a trial, offline on cached embeddings: what docs/threshold.md chose the shipped scoring by.

    python -m bench.studies.scoring [--out bench/results/scoring.json]

Every variant is fitted like bench/calibrate.py (the cohort and the calibration from the held-out
speakers of speech-more, each fitting trial's cohort without its two speakers) and measured on
all pairs of speech-more's evaluation speakers and of speech-dev (held out: nothing is chosen on
it), under every condition of their hard variants. It reports each variant's EER of calibrated
scores as a ratio to plain ECAPA cosine against the clean centroid, per condition and pooled.
Needs the embeddings bench.calibrate caches (bench/embedcache.py); takes seconds, as every score
is one matrix product.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from app.gate.calibration import NARROW_EDGE_DB, Quality

from .. import metrics
from ..calibrate import Loaded, load
from ..cohort import COHORT_CONDITIONS, COHORT_SPEAKERS
from ..paths import DEFAULT_DATA, RESULTS, SPEECH_MORE

logger = logging.getLogger(__name__)



def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


class Pairs:
    """Every enrollment list of some speakers against every other file of theirs, in every condition, as matrices."""

    def __init__(self, loaded: Loaded, speakers: set[str]):
        self.models = [(s, e) for s in sorted(speakers) for e in sorted(loaded.lists[s])]
        tests = [(s, f, c) for s in sorted(speakers) for f in loaded.files[s] for c in loaded.conditions]
        self.model_speaker = np.array([s for s, _ in self.models])
        self.test_speaker = np.array([s for s, _, _ in tests])
        self.condition = np.array([c for _, _, c in tests])
        keys = [f"{c}/{f}" for _, f, c in tests]
        self.tests = _unit(np.stack([loaded.hard[k].embedding for k in keys]))
        self.narrow = np.array([loaded.edges.get(k, 0.0) < NARROW_EDGE_DB for k in keys])
        self.features = np.stack([Quality(loaded.hard[k].speech_seconds, loaded.hard[k].snr_db,
                                          loaded.hard[k].band).features() for k in keys])
        self.centroids = _unit(np.stack([np.mean([loaded.clean[p].embedding for p in e], axis=0)
                                         for _, e in self.models]))
        self.phones = _unit(np.stack([np.mean([loaded.phone[p] for p in e], axis=0) for _, e in self.models]))
        self.clips = [_unit(np.stack([loaded.clean[p].embedding for p in e])) for _, e in self.models]
        self.valid = np.array([[f not in set(e) for _, f, _ in tests] for _, e in self.models])
        self.target = self.model_speaker[:, None] == self.test_speaker[None, :]


def _top(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    k = min(k, scores.shape[-1])
    top = np.partition(scores, -k, axis=-1)[..., -k:]
    return top.mean(-1), np.maximum(top.std(-1), 1e-3)


class Variant:
    """One way to score: AS-norm top-k, centring, telephone copy use, fusion with the clip cosines."""

    def __init__(self, name: str, top_k: int = 100, centred: bool = True, phone: str = "narrow",
                 clips: float = 0.0, cohort_conditions: tuple[str, ...] = COHORT_CONDITIONS):
        self.name, self.top_k, self.centred, self.phone, self.clips = name, top_k, centred, phone, clips
        self.cohort_conditions = cohort_conditions

    def scores(self, pairs: Pairs, cohort: np.ndarray, cohort_speaker: np.ndarray, fitting: bool) -> np.ndarray:
        """Return AS-norm scores, models × tests (``fitting``: each cell's cohort without its two speakers)."""
        mean = cohort.mean(axis=0) if self.centred else 0.0

        def centre(x):
            return _unit(x - mean)

        tests, cohort_c = centre(pairs.tests), centre(cohort)

        def normed(models):
            raw = models @ tests.T
            return self._asnorm(raw, models @ cohort_c.T, tests @ cohort_c.T, pairs, cohort_speaker, fitting)

        clean = normed(centre(pairs.centroids))
        if self.phone == "none":
            out = clean
        else:
            phone = normed(centre(pairs.phones))
            out = {"narrow": np.where(pairs.narrow[None, :], phone, clean), "max": np.maximum(phone, clean),
                   "narrow_mean": np.where(pairs.narrow[None, :], (phone + clean) / 2, clean)}[self.phone]
        if self.clips:
            # AS-norm of the mean of the clip cosines, with the centroid's cohort figures.
            mean_clip = np.stack([(centre(c) @ tests.T).mean(0) for c in pairs.clips])
            models = centre(pairs.centroids)
            out = (1 - self.clips) * out + self.clips * self._asnorm(mean_clip, models @ cohort_c.T, tests @ cohort_c.T,
                                                                      pairs, cohort_speaker, fitting)
        return out

    def _asnorm(self, raw, model_cohort, test_cohort, pairs, cohort_speaker, fitting):
        if not fitting:
            (me, se), (mt, st) = _top(model_cohort, self.top_k), _top(test_cohort, self.top_k)
            return 0.5 * ((raw - me[:, None]) / se[:, None] + (raw - mt[None, :]) / st[None, :])
        out = np.empty_like(raw)
        for a in np.unique(pairs.model_speaker):
            for b in np.unique(pairs.test_speaker):
                keep = np.flatnonzero((cohort_speaker != a) & (cohort_speaker != b))
                rows, cols = np.flatnonzero(pairs.model_speaker == a), np.flatnonzero(pairs.test_speaker == b)
                me, se = _top(model_cohort[np.ix_(rows, keep)], self.top_k)
                mt, st = _top(test_cohort[np.ix_(cols, keep)], self.top_k)
                cell = raw[np.ix_(rows, cols)]
                out[np.ix_(rows, cols)] = 0.5 * ((cell - me[:, None]) / se[:, None] + (cell - mt[None, :]) / st[None, :])
        return out


def _calibrated(normed: np.ndarray, features: np.ndarray, fit_normed: np.ndarray, fit_features: np.ndarray) -> np.ndarray:
    """Return scores calibrated as bench.calibrate.fit does (impostor centre and log spread linear in quality)."""
    centre, *_ = np.linalg.lstsq(fit_features, fit_normed, rcond=None)
    spread, *_ = np.linalg.lstsq(fit_features, np.log(np.abs(fit_normed - fit_features @ centre) + 1e-6), rcond=None)
    spread[0] += 0.635
    return (normed - (features @ centre)[None, :]) / np.exp(features @ spread)[None, :]


def best_frr(pairs: Pairs, scores: np.ndarray, conditions: list[str], far: float = 0.005) -> dict[str, float]:
    """Return per condition the FRR where that condition's own FAR is ``far``: the best any threshold gives."""
    out = {}
    for c in conditions:
        sel = pairs.valid & (pairs.condition == c)[None, :]
        at = np.quantile(scores[sel & ~pairs.target], 1 - far)
        out[c] = round(float((scores[sel & pairs.target] < at).mean()), 4)
    return out


def eers(pairs: Pairs, scores: np.ndarray, conditions: list[str]) -> dict[str, float]:
    """Return the EER per condition and pooled ('all')."""
    out = {}
    for c in conditions + ["all"]:
        sel = pairs.valid & ((pairs.condition == c)[None, :] if c != "all" else True)
        out[c] = round(metrics.eer(scores[sel & pairs.target], scores[sel & ~pairs.target]), 5)
    return out


VARIANTS = (
    Variant("previous release: top 30, not centred", top_k=30, centred=False),
    *(Variant(f"top {k}, not centred", top_k=k, centred=False) for k in (10, 20, 50, 100, 200)),
    Variant("top 100, not centred, no telephone copy", centred=False, phone="none"),
    Variant("top 100, not centred, cohort of clean clips only", centred=False, cohort_conditions=("clean",)),
    *(Variant(f"top {k}, centred (shipped at 100)", top_k=k) for k in (30, 50, 100, 200)),
    Variant("top 100, centred, no telephone copy", phone="none"),
    Variant("top 100, centred, telephone copy: max of both", phone="max"),
    Variant("top 100, centred, telephone copy: mean of both", phone="narrow_mean"),
    *(Variant(f"top 100, centred, fused with the mean clip cosine ({w})", clips=w) for w in (0.3, 0.5)),
)


def main(argv: list[str] | None = None) -> dict:
    """Score every variant, print and write the figures."""
    parser = argparse.ArgumentParser(prog="python -m bench.studies.scoring", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=SPEECH_MORE)
    parser.add_argument("--heldout", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=RESULTS / "scoring.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    more, dev = load(args.data, None), load(args.heldout, None)
    held = set(COHORT_SPEAKERS)
    fitting = Pairs(more, held)
    sets = {"speech-more": Pairs(more, {u.speaker for u in more.speech.utterances} - held),
            "speech-dev": Pairs(dev, {u.speaker for u in dev.speech.utterances})}
    plain = {name: eers(p, p.centroids @ p.tests.T, more.conditions) for name, p in sets.items()}
    more_pairs = sets["speech-more"]
    results = {"plain_cosine_eer": plain, "variants": {},
               "best_frr_at_far_0.005": {"plain cosine": best_frr(more_pairs, more_pairs.centroids @ more_pairs.tests.T,
                                                                  more.conditions)}}
    impostor = fitting.valid & ~fitting.target
    columns = np.broadcast_to(np.arange(fitting.tests.shape[0])[None, :], impostor.shape)[impostor]
    for variant in VARIANTS:
        keys = [f"{c}/{more.speech.label(u.path)}" for c in variant.cohort_conditions for u in more.speech.utterances
                if u.speaker in held]
        cohort = np.stack([more.hard[k].embedding for k in keys]).astype("<f2").astype(np.float32)  # as shipped
        speakers = np.array([more.speaker_of[k.split("/", 1)[1]] for k in keys])
        fit = variant.scores(fitting, cohort, speakers, fitting=True)[impostor]
        row = {}
        for name, pairs in sets.items():
            figures = eers(pairs, _calibrated(variant.scores(pairs, cohort, speakers, False), pairs.features, fit,
                                              fitting.features[columns]), more.conditions)
            if name == "speech-more" and variant.name.startswith("top 100, centred (shipped"):
                shipped = _calibrated(variant.scores(pairs, cohort, speakers, False), pairs.features, fit,
                                      fitting.features[columns])
                results["best_frr_at_far_0.005"]["shipped"] = best_frr(pairs, shipped, more.conditions)
            row[name] = {"eer": figures,
                         "ratio": {c: round(e / plain[name][c], 3) if plain[name][c] else None for c, e in figures.items()}}
        results["variants"][variant.name] = row
        ratio = row["speech-more"]["ratio"]
        print(f"{variant.name:<60} speech-more pooled {ratio['all']:.3f} "
              + " ".join(f"{c}={ratio[c]:.2f}" for c in more.conditions)
              + f" | speech-dev pooled {row['speech-dev']['ratio']['all']:.2f}", flush=True)
    for system, frr in results["best_frr_at_far_0.005"].items():
        print(f"best FRR at each condition's own FAR 0.5%, {system}: " + " ".join(f"{c}={v:.1%}" for c, v in frr.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
