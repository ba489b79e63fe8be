"""The benchmark suite: its measures on hand-built scores and strings, and one smoke run on two dev speakers."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import jiwer
import pytest

from bench import metrics

from .conftest import ROOT, SPEECH_DEV

REQUIRED_KEYS = (
    "sv.eer", "sv.min_dcf", "sv.far_at_default", "sv.frr_at_default", "sv.threshold", "sv.states",
    "sv.baseline.eer", "sv.baseline.far_at_0_25", "asr.wer", "asr.baseline.wer",
    "latency.verify_p50_ms", "latency.verify_p95_ms", "latency.final_p50_ms", "latency.final_p95_ms",
    "memory.rss_mb", "machine.cores", "models",
)


# --------------------------------------------------------------------------- measures

def test_eer_is_zero_when_every_genuine_score_beats_every_impostor():
    assert metrics.eer([0.9, 0.8, 0.7], [0.1, 0.2, 0.65]) == 0.0


def test_eer_is_one_half_when_the_scores_cannot_be_told_apart():
    assert metrics.eer([0.5, 0.5], [0.5, 0.5]) == pytest.approx(0.5)


def test_eer_where_one_genuine_and_one_impostor_swap_places():
    # At threshold 0.7 one of three impostors is accepted and one of three genuine rejected.
    assert metrics.eer([0.9, 0.8, 0.3], [0.7, 0.2, 0.1]) == pytest.approx(1 / 3)


def test_eer_interpolates_between_unequal_class_sizes():
    # Raising the threshold from 0.6 to 0.7 moves FRR from 0 to 1/2 while FAR stays at 1/4:
    # the curves cross at 1/4, between two trial scores.
    genuine, impostor = [0.6, 0.9], [0.1, 0.2, 0.3, 0.7]
    assert metrics.rates_at(genuine, impostor, 0.6) == (0.25, 0.0)
    assert metrics.rates_at(genuine, impostor, 0.7) == (0.25, 0.5)
    assert metrics.eer(genuine, impostor) == pytest.approx(0.25)


def test_min_dcf_of_a_perfect_system_is_zero():
    assert metrics.min_dcf([0.9, 0.8], [0.1, 0.2]) == 0.0


def test_min_dcf_by_hand():
    # Accepting only 0.9 misses one target of two and accepts no impostor:
    # (1 * 0.01 * 0.5 + 1 * 0.99 * 0) / min(0.01, 0.99) = 0.5; rejecting everything costs 1.
    assert metrics.min_dcf([0.9, 0.3], [0.5, 0.1], p_target=0.01) == pytest.approx(0.5)
    # At P_target 0.5 the cost of a false accept equals a miss: the best is one error of four, 0.5 * 0.5 / 0.5.
    assert metrics.min_dcf([0.9, 0.3], [0.5, 0.1], p_target=0.5) == pytest.approx(0.5)


def test_min_dcf_never_exceeds_the_cost_of_rejecting_everything():
    assert metrics.min_dcf([0.1, 0.2], [0.8, 0.9]) == pytest.approx(1.0)


def test_a_score_equal_to_the_threshold_is_accepted_as_the_service_does():
    assert metrics.rates_at([0.40, 0.39], [0.40, 0.1], 0.40) == (0.5, 0.5)


def test_det_points_run_from_accept_all_to_reject_all():
    far, frr = metrics.det_points([0.9, 0.3], [0.5, 0.1])
    assert (far[0], frr[0]) == (1.0, 0.0)
    assert (far[-1], frr[-1]) == (0.0, 1.0)


@pytest.mark.parametrize(("references", "hypotheses"), [
    (["the cat sat on the mat"], ["the cat sat on the mat"]),
    (["the cat sat on the mat"], ["the cat sit on mat"]),
    (["the cat sat", "a dog barked twice"], ["the cat sat down", "a frog barked"]),
    (["hello world"], [""]),
])
def test_wer_is_jiwers_corpus_figure(references, hypotheses):
    assert metrics.word_errors(references, hypotheses).wer == pytest.approx(jiwer.wer(references, hypotheses))


def test_wer_counts_by_hand():
    errors = metrics.word_errors(["the cat sat on the mat"], ["cat sit on the mat today"])
    assert (errors.substitutions, errors.deletions, errors.insertions, errors.words) == (1, 1, 1, 6)
    assert errors.wer == pytest.approx(3 / 6)


def test_wer_skips_references_without_words():
    assert metrics.word_errors(["", "one two"], ["noise", "one two"]).wer == 0.0
    assert metrics.word_errors([""], ["x"]).wer is None


def test_whisper_normalisation_before_wer():
    normalise = metrics.normaliser("en")
    assert normalise("Mr. Smith's colour, twenty-five!") == normalise("mister smith's color 25")
    assert metrics.normaliser("de")("Grüße, Welt!").split() == ["grüße", "welt"]


def test_latency_summary_in_milliseconds():
    summary = metrics.summary_ms([0.1, 0.2, 0.3, 0.4, 1.0])
    assert summary == {"n": 5, "p50_ms": 300.0, "p95_ms": pytest.approx(880.0), "max_ms": 1000.0}
    assert metrics.summary_ms([])["p50_ms"] is None


# --------------------------------------------------------------------------- smoke run

SMOKE_FILES = {
    "ljspeech": ["wav/ljspeech/LJ001-0004.wav", "wav/ljspeech/LJ001-0006.wav"],
    "vctk-p287": ["wav/vctk-p287/p287_004.wav", "wav/vctk-p287/p287_006.wav"],
}


def _smoke_data(tmp_path):
    """Write a two-speaker set whose tables name the dev set's wav files by absolute path."""
    data = tmp_path / "data"
    data.mkdir()
    wanted = {f for files in SMOKE_FILES.values() for f in files}
    header, *rows = (SPEECH_DEV / "speakers.tsv").read_text().splitlines()
    kept = [row.split("\t") for row in rows if row.split("\t")[0] in wanted]
    assert len(kept) == len(wanted)
    lines = [header] + ["\t".join([str(SPEECH_DEV / row[0]), *row[1:]]) for row in kept]
    (data / "speakers.tsv").write_text("\n".join(lines) + "\n")
    lj, vctk = ([str(SPEECH_DEV / f) for f in files] for files in SMOKE_FILES.values())
    # A genuine and an impostor trial per voice, on two enrollments: each trial the other way
    # round would pair the same two files again (the same cosine) at the cost of two more.
    trials = [(lj[0], lj[1], 1), (lj[0], vctk[0], 0), (vctk[1], vctk[0], 1), (vctk[1], lj[1], 0)]
    (data / "trials.tsv").write_text("enroll_files\ttest_file\tlabel\n"
                                     + "".join(f"{e}\t{t}\t{label}\n" for e, t, label in trials))
    return data


def _get(results: dict, dotted: str):
    value = results
    for key in dotted.split("."):
        assert isinstance(value, dict) and key in value, f"results lack {dotted}"
        value = value[key]
    return value


def test_smoke_run_of_the_suite_on_two_speakers(tmp_path):
    data = _smoke_data(tmp_path)
    out = tmp_path / "results" / "smoke.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--data", str(data), "--out", str(out), "--streams", "1", "--samples", "1",
         "--other-threads-files", "1", "--cpus", ",".join(map(str, sorted(os.sched_getaffinity(0))))],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    results = json.loads(out.read_text())
    for key in REQUIRED_KEYS:
        _get(results, key)

    sv, asr, latency = results["sv"], results["asr"], results["latency"]
    assert 0 < sv["threshold"] < 1
    assert sum(sv["states"].values()) == 4 and sv["trials"] == 4
    assert sv["far_at_default"] == 0.0 and sv["frr_at_default"] <= 1 / 3  # two clearly different voices
    for figure in (sv["eer"], sv["min_dcf"], sv["baseline"]["eer"], sv["baseline"]["far_at_0_25"]):
        assert 0.0 <= figure <= 1.0
    assert sv["baseline"]["eer"] == 0.0
    assert sv["http"]["same_state_as_ws"] == 1.0
    # The suite verifies as an admin: every trial, rejects too, has the calibrated score its EER needs.
    for record in results["details"]["sv_trials"]:
        for reply in (record["ws"], record["http"]):
            assert isinstance(reply.get("calibrated_score"), float), record
    assert sv["highest_impostor"] > -100 and sv["lowest_genuine"] > sv["highest_impostor"]
    assert asr["files"] == 4 and asr["words"] > 40
    assert asr["baseline"]["wer"] <= 0.2 and asr["wer"] <= 0.5
    for key in ("verify_p50_ms", "verify_p95_ms", "final_p50_ms", "final_p95_ms"):
        assert latency[key] is not None and -2000 < latency[key] < 120_000, (key, latency[key])
    assert latency["verify_p50_ms"] > 0 and latency["verify_p95_ms"] >= latency["verify_p50_ms"]
    assert results["memory"]["rss_mb"] > 100  # ECAPA and Whisper are in there
    assert results["machine"]["cores"] == os.cpu_count() and results["machine"]["cpu"]
    assert results["models"]["whisper"] and results["models"]["speaker"]
    assert [level["streams"] for level in results["speed"]["concurrency"]] == [1]
    assert results["speed"]["rtf"]["other_threads"]["transcription"]["calls"] == 1  # --other-threads-files
    assert results["targets"]["verify_p50_ms"] is not None
    assert results["run"]["cpu_limit"] == {"cpus": sorted(os.sched_getaffinity(0)), "busy_neighbours": 0}

    report = out.with_suffix(".md").read_text()
    rendered = subprocess.run([sys.executable, "-m", "bench", "--render", str(out)], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)
    assert rendered.returncode == 0, rendered.stderr[-2000:]
    assert out.with_suffix(".md").read_text() == report  # the JSON alone regenerates the report
    assert "VOICEGATE_POLICY_ENROLL_MIN_CLIPS=1" in report and "EER" in report
    for plot in ("smoke-sv-scores.png", "smoke-sv-det.png", "smoke-streams.png"):
        assert f"]({plot})" in report
        size = (out.parent / plot).stat().st_size
        assert 5_000 < size < 200_000, (plot, size)
