"""Decided: ECAPA runs on ONNX Runtime float32 and Whisper on CTranslate2 int8 (docs/benchmarks.md, "Runtimes").

Which runtime should run ECAPA and Whisper on this CPU: speed as ratios within one run, and equal scores.

    python -m bench.studies.runtimes [--data DIR] [--files N] [--out FILE.json]

ECAPA: PyTorch float32 and bfloat16 (1 and 2 threads), and ONNX Runtime float32 and int8 when
``flask models fetch`` has exported them. Each is scored on every trial of the set (cosine of
the test file against the centroid of its enrollment files): the largest change of a score
against PyTorch float32, and how many decisions at the raw threshold differ. Whisper: the
CTranslate2 compute types at 1 and 2 threads, WER beside int8. Times are medians per file;
the machine may be shared, so compare the ratios, not the milliseconds.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from pathlib import Path

import numpy as np

from .. import machine, metrics
from ..data import SAMPLE_RATE, SpeechSet
from ..paths import DEFAULT_DATA, DEV_REPORT, RESULTS

logger = logging.getLogger(__name__)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.studies.runtimes", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a speech set in the speech-dev format")
    parser.add_argument("--files", type=int, default=0, help="time only the first N files (default: all)")
    parser.add_argument("--out", type=Path, default=RESULTS / "runtimes.json", help="the results JSON")
    parser.add_argument("--skip-whisper", action="store_true", help="compare the ECAPA runtimes only")
    return parser.parse_args(argv)


def _timed(fn, items, repeats: int = 1) -> tuple[list, float]:
    """Return fn(item) for every item, and the median seconds per second of audio over all calls."""
    outputs, ratios = [], []
    for item in items:
        best = None
        for _ in range(repeats):
            started = time.perf_counter()
            output = fn(item)
            elapsed = time.perf_counter() - started
            best = elapsed if best is None else min(best, elapsed)
        outputs.append(output)
        ratios.append(best / (item.size / SAMPLE_RATE))
    return outputs, statistics.median(ratios)


def _encoders(directory: Path, threads: int, scratch: Path):
    """Yield (name, encoder) for every ECAPA runtime, on ``threads`` threads per call."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from app.engines.speaker import FRAMES_FILE, SpeakerEncoder, onnx_session

    torch.set_num_threads(threads)
    yield "torch float32", SpeakerEncoder(directory, threads=threads, precision="float32", runtime="torch")
    yield "torch bfloat16", SpeakerEncoder(directory, threads=threads, precision="bfloat16", runtime="torch")
    if not (directory / FRAMES_FILE).is_file():
        logger.warning("no ONNX export in %s: run 'flask models fetch' first", directory)
        return
    yield "onnx float32", SpeakerEncoder(directory, threads=threads, runtime="onnx")
    quantized = scratch / "int8.onnx"
    if not quantized.is_file():
        quantize_dynamic(str(directory / FRAMES_FILE), str(quantized), weight_type=QuantType.QInt8)
    encoder = SpeakerEncoder(directory, threads=threads, runtime="onnx")
    encoder._frames = onnx_session(quantized, threads)  # the frame part: all but the pooling
    yield "onnx int8", encoder


def ecapa(speech: SpeechSet, files: list[Path], models_dir: Path) -> dict:
    """Time every ECAPA runtime on ``files`` and compare its trial scores with PyTorch float32."""
    import tempfile

    from app.engines import modelstore
    from app.engines.speaker import centroid, cosine
    from app.gate.policy import Policy

    directory = modelstore.model_dir(models_dir, "ecapa")
    audio = [speech.audio(path) for path in files]
    every = sorted({p for t in speech.trials for p in (*t.enroll, t.test)})
    every_audio = [speech.audio(path) for path in every]
    threshold = Policy().threshold
    variants: dict[str, dict] = {}
    reference = None
    with tempfile.TemporaryDirectory(prefix="voicegate-runtimes-") as scratch:
        for threads in (1, 2):
            for name, encoder in _encoders(directory, threads, Path(scratch)):
                encoder.embed(audio[0])  # the first call of a process is slower
                _, rtf = _timed(encoder.embed, audio, repeats=2)
                row = variants.setdefault(name, {})
                row[f"rtf_{threads}_thread"] = round(rtf, 4)
                if threads == 1:
                    vectors = dict(zip(every, (encoder.embed(a) for a in every_audio)))
                    scores = np.array([cosine(vectors[t.test], centroid(np.stack([vectors[p] for p in t.enroll])))
                                       for t in speech.trials])
                    if reference is None:
                        reference = scores
                    row["max_score_change"] = round(float(np.max(np.abs(scores - reference))), 5)
                    row["decisions_changed_at_raw_threshold"] = int(np.sum((scores >= threshold) != (reference >= threshold)))
                    row["trials"] = len(scores)
                logger.info("%s, %d thread(s): %s", name, threads, row)
                del encoder
    base = variants["torch float32"]["rtf_1_thread"]
    for row in variants.values():
        row["speed_vs_torch_float32_1_thread"] = round(base / row["rtf_1_thread"], 2)
    return variants


def whisper(speech: SpeechSet, files: list[Path], models_dir: Path, model: str) -> dict:
    """Time the CTranslate2 compute types for Whisper and their WER on ``files``."""
    import ctranslate2

    from app.engines.runtime import resolve_whisper
    from app.engines.transcriber import Transcriber

    utterances = [u for u in speech.utterances if u.path in set(files) and u.transcript and u.language == "en"]
    audio = [speech.audio(u.path) for u in utterances]
    normalise = metrics.normaliser("en")
    references = [normalise(u.transcript) for u in utterances]
    supported = ctranslate2.get_supported_compute_types("cpu")
    rows = {}
    for compute_type in ("int8", "int8_float32", "int8_bfloat16", "bfloat16", "float32"):
        if compute_type not in supported:
            rows[compute_type] = {"error": "not supported on this CPU"}
            continue
        row = {}
        for threads in (1, 2):
            transcriber = Transcriber(resolve_whisper(models_dir, model), threads=threads, compute_type=compute_type)
            transcriber.transcribe(audio[0])
            texts, rtf = _timed(lambda a: transcriber.transcribe(a).text, audio)
            row[f"rtf_{threads}_thread"] = round(rtf, 4)
            row["wer"] = round(metrics.word_errors(references, [normalise(t) for t in texts]).wer, 4)
            del transcriber
        rows[compute_type] = row
        logger.info("whisper %s: %s", compute_type, row)
    base = rows["int8"]["rtf_1_thread"]
    for row in rows.values():
        if "rtf_1_thread" in row:
            row["speed_vs_int8_1_thread"] = round(base / row["rtf_1_thread"], 2)
    return {"model": model, "files": len(utterances), "compute_types": rows}


def main(argv: list[str] | None = None) -> int:
    """Measure, print and write the comparison."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from app.config import Config

    models_dir = Path(os.environ.get("VOICEGATE_MODELS_DIR", Config.MODELS_DIR))
    speech = SpeechSet(args.data.resolve())
    files = speech.files()[:args.files] if args.files else speech.files()
    results = {"machine": machine.describe(), "files": len(files),
               "ecapa": ecapa(speech, files, models_dir)}
    if not args.skip_whisper:
        results["whisper"] = whisper(speech, files, models_dir, os.environ.get("VOICEGATE_WHISPER_MODEL", Config.WHISPER_MODEL))
    results["run"] = {"command": " ".join([".venv/bin/python -m bench.studies.runtimes", *(argv or [])]),
                      "load_average_at_end": [round(x, 2) for x in os.getloadavg()]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "machine"}, indent=1))
    print(f"wrote {args.out}")
    if args.out.resolve() == (RESULTS / "runtimes.json").resolve():
        from ..report import put_section

        put_section(DEV_REPORT, "Runtimes", report_section(results))
        print(f"wrote the runtimes section of {DEV_REPORT}")
    return 0


def report_section(results: dict) -> list[str]:
    """Return the "Runtimes" section of docs/benchmarks.md for a results JSON of this benchmark."""
    machine, run = results["machine"], results["run"]
    lines = [f"Generated by `{run['command']}` on {machine['cores']} cores ({machine['cpu']}; "
             f"{' '.join(machine.get('cpu_flags') or [])}), load average {machine['load_average_at_start'][0]} at the "
             f"start and {run['load_average_at_end'][0]} at the end; every figure is in "
             "[runtimes.json](../bench/results/runtimes.json). Real-time factors are medians over "
             f"{results['files']} dev files (compute seconds per audio second); compare the ratios, as the machine "
             "may have been shared.", "",
             "| ECAPA runtime | RTF 1 thread | RTF 2 threads | speed vs PyTorch float32 | largest trial score change | "
             "decisions changed (raw threshold) |", "|---|---|---|---|---|---|"]
    for name, row in results["ecapa"].items():
        if "rtf_1_thread" not in row:
            lines.append(f"| {name} | {row.get('error', '–')} | | | | |")
            continue
        lines.append(f"| {name} | {row['rtf_1_thread']:.3f} | {row.get('rtf_2_thread', 0):.3f} | "
                     f"{row['speed_vs_torch_float32_1_thread']:.2f}× | {row['max_score_change']:.4f} | "
                     f"{row['decisions_changed_at_raw_threshold']} of {row['trials']} |")
    whisper = results.get("whisper")
    if whisper:
        lines += ["", f"| Whisper `{whisper['model']}` (CTranslate2) compute type | RTF 1 thread | RTF 2 threads | "
                  f"speed vs int8 | WER ({whisper['files']} files) |", "|---|---|---|---|---|"]
        for name, row in whisper["compute_types"].items():
            if "rtf_1_thread" not in row:
                lines.append(f"| {name} | {row.get('error', '–')} | | | |")
                continue
            lines.append(f"| {name} | {row['rtf_1_thread']:.3f} | {row['rtf_2_thread']:.3f} | "
                         f"{row['speed_vs_int8_1_thread']:.2f}× | {row['wer']:.1%} |")
    return lines + [""]


if __name__ == "__main__":
    raise SystemExit(main())
