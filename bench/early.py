"""Deciding while the person speaks: voice-login decisions from an utterance's early frames vs from the whole.

    python -m bench.early [--data DIR ...] [--late SECONDS ...] [--out FILE.json]

During a streamed voice login the server works on what has been said so far (``prefix``):
ECAPA's frame features, and with the fused models CAM++'s embedding of it; after ``stop`` only
ECAPA's frames after that prefix are left to compute (``embed_after``). The estimate is not the whole utterance's embedding, so every
trial of each set is decided both ways with the service's scoring (AS-norm on the shipped
cohort, calibration, the policy's target and floor), the prefix ending ``--late`` seconds before
the end of the audio. Reported: how far the estimate's scores move, how many decisions change,
how many the service makes again on the whole utterance (every refusal and every close call:
``app.gate.early.settled``) and how many still change, with the work left after ``stop``.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from .data import SpeechSet
from .output import quiet_logging, save
from .paths import DEV_REPORT, RESULTS, SPEECH_MORE

logger = logging.getLogger("bench.early")
LATE = (0.15, 0.3, 0.45, 0.6)  # the service uses prefixes up to early.MAX_LATE_SECONDS late


def measure(speech: SpeechSet, engines, late: tuple[float, ...]) -> dict:
    """Return, per prefix lateness, score changes and decision changes of the estimate against the whole utterance."""
    from app.engines.fused import PART_DIM, in_space
    from app.engines.speaker import centroid, cosine
    from app.gate import calibration, decide, early
    from app.gate.policy import Policy

    policy = Policy()
    cohort = calibration.cohort_for(engines.speaker.dim)
    files = sorted({p for t in speech.trials for p in (*t.enroll, t.test)} | {u.path for u in speech.utterances})
    audio = {p: speech.audio(p) for p in files}
    whole = {p: engines.speaker.embed(a) for p, a in audio.items()}
    quality = {p: calibration.measure_quality(a, engines.vad.seconds(a)) for p, a in audio.items()}
    voices = {t.enroll: centroid(np.stack([whole[p] for p in t.enroll])) for t in speech.trials}

    def decided(embedding, trial):
        return decide.verify(embedding, voices[trial.enroll], "user", policy, quality[trial.test], cohort=cohort)

    exact = [decided(whole[t.test], t) for t in speech.trials]
    # The replay check: the highest cosine to the speaker's other clips (as to the enrollment clips),
    # of ECAPA's part where the models are fused (verification.replay_similarity).
    speaker_files = {u.path: [v.path for v in speech.utterances if v.speaker == u.speaker and v.path != u.path]
                     for u in speech.utterances}
    copies = {p: max((cosine(in_space(whole[p], PART_DIM), in_space(whole[q], PART_DIM))
                      for q in speaker_files.get(p, []) if q in whole), default=None)
              for p in files}
    out = {"trials": len(speech.trials), "files": len(files),
           "whole_accepts": sum(m.state == "accept" for m in exact), "by_late_seconds": {}}
    for seconds in late:
        # The service's bands for this lateness; past its last, the last one's (to see how they hold).
        bands = early.bands(min(seconds, early.MAX_LATE_SECONDS))
        estimates, timings = {}, []
        for path in {t.test for t in speech.trials}:
            samples = audio[path]
            cut = samples.size - int(seconds * 16000)
            if cut < early.MIN_SECONDS * 16000:
                continue  # too short for a prefix: decided on the whole utterance, as the service does
            prefix = engines.speaker.prefix(samples[:cut])
            estimates[path] = engines.speaker.embed_after(samples, prefix)
            timings.append(_left_after_stop(samples, prefix))
        changed = redecided = changed_after_rule = accepts = accepts_standing = 0
        raw_moves, calibrated_moves = [], []
        for trial, whole_match in zip(speech.trials, exact):
            if trial.test not in estimates:
                continue
            match = decided(estimates[trial.test], trial)
            raw_moves.append(abs(match.score - whole_match.score))
            calibrated_moves.append(abs(match.calibrated - whole_match.calibrated))
            changed += match.state != whole_match.state
            accepts += whole_match.state == "accept"
            if not early.settled(match, policy, bands):
                redecided += 1
            elif whole_match.state == "accept":
                accepts_standing += 1
            else:
                changed_after_rule += match.state != whole_match.state
        estimated = len(raw_moves)
        copy_moves, replay_changed, replay_redecided, replay_changed_after = [], 0, 0, 0
        for path, estimate in estimates.items():
            if copies.get(path) is None:
                continue
            copy = max(cosine(in_space(estimate, PART_DIM), in_space(whole[q], PART_DIM))
                       for q in speaker_files[path] if q in whole)
            copy_moves.append(abs(copy - copies[path]))
            flipped = (copy >= policy.replay_similarity) != (copies[path] >= policy.replay_similarity)
            replay_changed += flipped
            if abs(copy - policy.replay_similarity) < bands.replay:
                replay_redecided += 1
            else:
                replay_changed_after += flipped
        out["by_late_seconds"][f"{seconds:g}"] = {
            "trials_estimated": estimated, "bands": vars(bands),
            "raw_score_change": _spread(raw_moves), "calibrated_score_change": _spread(calibrated_moves),
            "decisions_changed_by_the_estimate": changed,
            "redecided_on_the_whole_utterance": redecided,
            "redecided_share": round(redecided / max(1, estimated), 4),
            "accepts_standing_on_the_estimate": accepts_standing, "accepts": accepts,
            "decisions_changed_after_the_rule": changed_after_rule,
            "replay_cosine_change": _spread(copy_moves),
            "replay_decisions_changed_by_the_estimate": replay_changed,
            "replay_redecided_on_the_whole_utterance": replay_redecided,
            "replay_decisions_changed_after_the_rule": replay_changed_after,
            "share_of_frames_left_after_stop": _spread(timings),
        }
        logger.info("%s: %g s late: %s", speech.root.name, seconds, out["by_late_seconds"][f"{seconds:g}"])
    return out


def _left_after_stop(samples: np.ndarray, prefix) -> float:
    """Return the share of the utterance's frames that ``embed_after`` computes (the work left after stop)."""
    from app.engines.speaker import PREFIX_CONTEXT

    frames = 1 + samples.size // 160
    start = getattr(prefix, "ecapa", prefix).frames.shape[1]  # fused: ECAPA's part is what is left
    return round((frames - max(0, start - PREFIX_CONTEXT)) / frames, 4)


def _spread(values: list[float]) -> dict:
    if not values:
        return {}
    array = np.array(values)
    return {"median": round(float(np.median(array)), 4), "p99": round(float(np.percentile(array, 99)), 4),
            "max": round(float(array.max()), 4)}


def main(argv: list[str] | None = None) -> int:
    """Measure each set given and write the results."""
    parser = argparse.ArgumentParser(prog="python -m bench.early", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, nargs="+", default=[SPEECH_MORE])
    parser.add_argument("--late", type=float, nargs="+", default=list(LATE))
    parser.add_argument("--out", type=Path, default=RESULTS / "early.json")
    args = parser.parse_args(argv)
    quiet_logging()
    from app.config import Config
    from app.engines.runtime import load_engines

    engines = load_engines(Config.MODELS_DIR, Config.WHISPER_MODEL, workers=1, queue=4)
    if not engines.speaker.streams:
        parser.error("ECAPA runs without its ONNX export here: run 'flask models fetch' first")
    results = {path.resolve().name: measure(SpeechSet(path), engines, tuple(args.late)) for path in args.data}
    results["run"] = {"command": " ".join([".venv/bin/python -m bench.early", *(argv or [])])}
    save(results, args.out, shown=results)
    engines.pool.shutdown()
    if args.out.resolve() == (RESULTS / "early.json").resolve():
        from .report import put_section

        put_section(DEV_REPORT, "Deciding while the person speaks", report_section(results))
    return 0


def report_section(results: dict) -> list[str]:
    """Return the "Deciding while the person speaks" section of docs/benchmarks.md."""
    from app.gate import early

    lines = [f"Generated by `{results['run']['command']}`; every figure is in [early.json](../bench/results/early.json). "
             "A streamed voice login is decided on an estimate of its embedding: ECAPA's frame features of what was "
             "said so far, and CAM++'s embedding of it, are computed while the person speaks, and after `stop` only "
             "ECAPA's frames after that prefix (`app/gate/early.py`); CAM++'s part of the estimate has not heard the "
             "last fraction of a second. Every trial is decided on the estimate and on the whole utterance with the "
             "service's scoring, the prefix ending the given time before the end of the audio. A decision the "
             "estimate makes stands only when it is an accept farther than "
             f"{early.MARGIN:g} times the largest change measured here from every threshold (the calibrated one, the "
             "raw floor, the replay cosine: `early.MEASURED_CHANGES`); every refusal and every close call is made "
             f"again on the whole utterance. The service uses prefixes up to {early.MAX_LATE_SECONDS:g} s late.", "",
             "| set | prefix ends before the end | trials | raw score change p99 / max | calibrated change p99 / max "
             "| replay cosine change p99 / max | decisions changed by the estimate (verify / replay) "
             "| re-decided on the whole utterance (all / of the accepts) | decisions changed after that "
             "| frames left after stop (median) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, result in results.items():
        if name == "run":
            continue
        for late, row in result["by_late_seconds"].items():
            raw, calibrated, replay = row["raw_score_change"], row["calibrated_score_change"], row["replay_cosine_change"]
            lines.append(
                f"| {name} | {late} s | {row['trials_estimated']} | {raw['p99']:.3f} / {raw['max']:.3f} "
                f"| {calibrated['p99']:.2f} / {calibrated['max']:.2f} | {replay['p99']:.3f} / {replay['max']:.3f} "
                f"| {row['decisions_changed_by_the_estimate']} / {row['replay_decisions_changed_by_the_estimate']} "
                f"| {row['redecided_share']:.0%} / {1 - row['accepts_standing_on_the_estimate'] / max(1, row['accepts']):.0%} "
                f"| {row['decisions_changed_after_the_rule']} / "
                f"{row['replay_decisions_changed_after_the_rule']} | {row['share_of_frames_left_after_stop']['median']:.0%} |")
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
