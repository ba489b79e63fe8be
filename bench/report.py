"""Plots (PNG, matplotlib's Agg backend) and the Markdown report of one run's results."""
from __future__ import annotations

import json

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display; set before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from . import metrics  # noqa: E402
from .sv import NO_SCORE, SPEECHBRAIN_THRESHOLD  # noqa: E402

DPI = 90
DET_TICKS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.4)


def plot_scores(path: Path, scores: dict, threshold: float) -> None:
    """Draw genuine and impostor score histograms of the service and the baseline, thresholds marked."""
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    bins = np.arange(-0.3, 1.0001, 0.05)
    for axis, (title, (genuine, impostor)) in zip(axes, (("service (WebSocket)", scores["service"]),
                                                          ("baseline (ECAPA cosine, centroid)", scores["baseline"]))):
        scored_g = [s for s in genuine if s != NO_SCORE]
        scored_i = [s for s in impostor if s != NO_SCORE]
        axis.hist(scored_i, bins=bins, alpha=0.6, color="tab:red", label=f"impostor (n={len(scored_i)})")
        axis.hist(scored_g, bins=bins, alpha=0.6, color="tab:blue", label=f"genuine (n={len(scored_g)})")
        axis.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"service threshold {threshold:.2f}")
        if title.startswith("baseline"):
            axis.axvline(SPEECHBRAIN_THRESHOLD, color="grey", linestyle=":", linewidth=1,
                         label=f"SpeechBrain default {SPEECHBRAIN_THRESHOLD:.2f}")
        unscored = (len(genuine) - len(scored_g)) + (len(impostor) - len(scored_i))
        if unscored:
            axis.text(0.02, 0.95, f"{unscored} trials without a score", transform=axis.transAxes, va="top", fontsize=8)
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("cosine score")
        axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, 0.88) if unscored else (0, 1))
    axes[0].set_ylabel("trials")
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)


def plot_det(path: Path, scores: dict, threshold: float, decided: tuple[float, float] | None = None) -> None:
    """Draw the DET curves (FRR against FAR on normal-deviate axes) of the service and the baseline.

    The service's curve is of its calibrated scores when there are any; ``decided`` is the
    (FAR, FRR) of its own decisions at the default.
    """
    figure, axis = plt.subplots(figsize=(4.6, 4.4))
    curves = {"service": scores.get("service_calibrated", scores["service"]), "baseline": scores["baseline"]}
    for (name, (genuine, impostor)), style in zip(curves.items(), ("-", "--")):
        far, frr = metrics.det_points(genuine, impostor)
        x, y = metrics.probit(far, len(impostor)), metrics.probit(frr, len(genuine))
        eer = metrics.eer(genuine, impostor)
        axis.plot(x, y, style, drawstyle="steps-post", label=f"{name} (EER {eer:.1%})")
        if name == "service":
            point_far, point_frr = decided or metrics.rates_at(genuine, impostor, threshold)
            axis.plot(metrics.probit([point_far], len(impostor)), metrics.probit([point_frr], len(genuine)), "ko",
                      markersize=5, label="service at its default")
    ticks = metrics.probit(np.array(DET_TICKS), 10**6)
    labels = [f"{t:.0%}" for t in DET_TICKS]
    axis.set_xticks(ticks, labels)
    axis.set_yticks(ticks, labels)
    limit = metrics.probit(np.array([0.005, 0.5]), 10**6)
    axis.set_xlim(*limit)
    axis.set_ylim(*limit)
    axis.plot(limit, limit, color="lightgrey", linewidth=0.8)
    axis.set_xlabel("false accept rate")
    axis.set_ylabel("false reject rate")
    axis.set_title("DET curve (rates clipped half a trial from 0)", fontsize=9)
    axis.grid(True, linewidth=0.3)
    axis.legend(fontsize=7, loc="upper right")
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)


def plot_streams(path: Path, levels: list[dict], fall_behind_s: float) -> None:
    """Draw final-transcript latency against the number of simultaneous real-time streams."""
    figure, axis = plt.subplots(figsize=(5, 3.2))
    counts = [level["streams"] for level in levels]
    for key, marker in (("latency_p50_ms", "o-"), ("latency_p95_ms", "s--"), ("latency_max_ms", "^:")):
        values = [level[key] / 1000 if level[key] is not None else np.nan for level in levels]
        axis.plot(counts, values, marker, label=key.split("_")[1])
    axis.axhline(fall_behind_s, color="tab:red", linewidth=1, label=f"fallen behind ({fall_behind_s:g} s)")
    axis.set_xscale("log", base=2)
    axis.set_xticks(counts, [str(c) for c in counts])
    axis.set_xlabel("simultaneous real-time dictation streams")
    axis.set_ylabel("end of audio → last final (s)")
    axis.grid(True, linewidth=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)


# --------------------------------------------------------------------------- Markdown

def _pct(value) -> str:
    return "–" if value is None else f"{value:.1%}"


def _ms(value) -> str:
    return "–" if value is None else f"{value:.0f} ms"


def _num(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _met(flag) -> str:
    return "–" if flag is None else ("met" if flag else "**missed**")


def _counts(counts: dict) -> str:
    return ", ".join(f"{k}: {v}" for k, v in counts.items())


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def markdown(results: dict, report_path: Path, plots: dict[str, Path], json_path: Path) -> str:
    """Return the report of one run, linking the plots relative to ``report_path``."""
    def link(name: str) -> str:
        return os.path.relpath(plots[name], report_path.parent)

    run, sv, asr, latency, speed, targets = (results.get(k) for k in ("run", "sv", "asr", "latency", "speed", "targets"))
    machine, models, memory = results["machine"], results["models"], results.get("memory")
    lines = [
        f"# Benchmarks: {run['name']}",
        "",
        f"Generated by `{run['command']}` on {run['started']} ({run['duration_s'] / 60:.1f} min); "
        f"every figure below is in [{json_path.name}]({os.path.relpath(json_path, report_path.parent)}).",
        f"Measured on {machine['cores']} cores ({machine['cpu']}), {machine['memory_gb']} GB RAM, commit "
        f"`{machine['commit']}`{' with uncommitted changes' if machine['uncommitted_changes'] else ''}; "
        f"load average {machine['load_average_at_start'][0]} at the start and {run['load_average_at_end'][0]} at "
        "the end (other work on the machine slows every timing: compare ratios within one run, medians across runs)."
        + _limit_sentence(run.get("cpu_limit")),
        "",
        "## Summary",
        "",
    ]
    rows = []
    if sv:
        rows += [
            ["SV equal error rate", _pct(sv["eer"]), _pct(sv["baseline"]["eer"]), ""],
            ["SV minDCF (P_target 0.01)", _num(sv["min_dcf"]), _num(sv["baseline"]["min_dcf"]), ""],
            [f"false accepts at the default (service: target FAR {sv.get('target_far')}; baseline: cosine {sv['baseline'].get('threshold', sv['threshold']):.2f})", _pct(sv["far_at_default"]),
             _pct(sv["baseline"]["far_at_default"]), ""],
            ["false rejects at the default", _pct(sv["frr_at_default"]), _pct(sv["baseline"]["frr_at_default"]), ""],
            [f"false accepts / rejects at {SPEECHBRAIN_THRESHOLD:.2f} (SpeechBrain's default)", "",
             f"{_pct(sv['baseline']['far_at_0_25'])} / {_pct(sv['baseline']['frr_at_0_25'])}", ""],
        ]
    if asr:
        rows.append(["word error rate (all scored files)", _pct(asr["wer"]), _pct(asr["baseline"]["wer"]), ""])
    rows += [
        ["verification latency, end of audio → result (all trials, p50 / p95)",
         f"{_ms(latency['verify_p50_ms'])} / {_ms(latency['verify_p95_ms'])}", "", ""],
        [f"final-transcript latency, end of audio → last final ({latency['final_pace']}, p50 / p95)",
         f"{_ms(latency['final_p50_ms'])} / {_ms(latency['final_p95_ms'])}", "", ""],
        ["verification latency after a ~5 s utterance (p50)", _ms(targets["verify_p50_ms"]), "",
         f"≤ {targets['verify_target_ms']} ms: {_met(targets['verify_met'])}"],
        [f"final transcript after a ~5 s utterance, {models['whisper']} (p50)", _ms(targets["final_p50_ms"]), "",
         f"≤ {targets['final_target_ms']} ms: {_met(targets['final_met'])}"],
    ]
    for count, level in (targets.get("streams_by_level") or {}).items():
        goal = f"none behind: {_met(targets['streams_met'])}" if int(count) == targets["streams"] else ""
        rows.append([f"{count} simultaneous real-time dictations: admitted / busy / behind",
                     f"{level['admitted']} / {level['busy']} / {level['behind']}", "", goal])
    if "wer_met" in targets:
        rows.append(["dictation WER: service vs plain faster-whisper (same model, same files)",
                     _pct(targets["service_wer"]), _pct(targets["plain_wer"]), f"service ≤ plain: {_met(targets['wer_met'])}"])
    rows += [
        ["server resident memory (models loaded, after the run)",
         "–" if not memory or memory.get("rss_mb") is None else f"{memory['rss_mb']:.0f} MB", "",
         f"≤ {targets['rss_target_mb']} MB: {_met(targets['rss_met'])}" if "rss_target_mb" in targets else ""],
    ]
    lines += _table(["measure", "service", "baseline (models in-process)", "issue-19 goal"], rows)
    lines += ["", "## Set-up", ""]
    lines += _setup(results)
    if sv:
        lines += ["", "## Speaker verification", ""]
        lines += _sv_section(sv, link)
    if asr:
        lines += ["", "## Transcription", ""]
        lines += _asr_section(asr, models)
    lines += ["", "## Speed", ""]
    lines += _speed_section(results, link)
    load = report_path.parent.parent / "bench" / "results" / "load.json"
    if load.exists():  # written by python -m bench.load, kept when this report is regenerated
        from .load import report_section

        lines += ["", "## Load and memory", ""] + report_section(json.loads(load.read_text()))
    lines += ["", "## How the figures are made", ""]
    lines += _method(results)
    lines += ["", "## Regenerate", "", "From the repository root (about "
              f"{run['duration_s'] / 60:.0f} min here; it starts and stops its own server):", "",
              "```sh", run["command"], "```", "",
              "`--data DIR` takes any set in the speech-dev format (trial paths relative to DIR or absolute; without "
              "speakers.tsv only the trials are measured) and writes `bench/results/<folder>.json` with the plots and "
              "report beside it; `--out FILE.json` and `--name` choose other names; `--url URL --database-url DB` "
              "measures a server that is already running (users are created in DB; memory is then not measured); "
              "`--streams` and `--samples` set the concurrency levels and the number of ~5 s latency requests; `--cpus 0` (as taskset) and `--neighbours N` (busy processes beside the run) measure a slower or shared machine on this one; "
              "`VOICEGATE_WHISPER_MODEL=base` measures the multilingual model; `--render FILE.json` redraws the plots and "
              "rewrites the report of an earlier run without measuring. Scratch: the server's log, "
              "`bench/results/*-server.log`, is not committed.", ""]
    return "\n".join(lines)


def keep_sections(old: str, new: str) -> str:
    """Return ``new`` with the sections of ``old`` it does not have (measured apart, by other commands) put back.

    They go before "How the figures are made", in their old order.
    """
    def sections(text: str) -> dict[str, str]:
        parts = text.split("\n## ")
        return {part.split("\n", 1)[0].strip(): "## " + part.rstrip() + "\n" for part in parts[1:]}

    have = sections(new)
    kept = [body for title, body in sections(old).items() if title not in have]
    if not kept:
        return new
    marker = "\n## How the figures are made"
    before, found, after = new.partition(marker)
    if not found:
        return new.rstrip() + "\n\n" + "\n".join(kept)
    return before.rstrip() + "\n\n" + "\n".join(kept) + marker + after


def put_section(report: Path, title: str, lines: list[str]) -> None:
    """Put the section ``## title`` into ``report`` (replacing it, else before "How the figures are made")."""
    text = report.read_text() if report.exists() else ""
    section = "\n".join([f"## {title}", "", *lines]).rstrip() + "\n"
    head = f"## {title}\n"
    if head in text:
        before, rest = text.split(head, 1)
        after = rest[rest.find("\n## ") + 1:] if "\n## " in rest else ""
        text = before + section + ("\n" + after if after else "")
    elif "## How the figures are made" in text:
        before, after = text.split("## How the figures are made", 1)
        text = before + section + "\n## How the figures are made" + after
    else:
        text = text.rstrip() + "\n\n" + section
    report.write_text(text)


def _setup(results: dict) -> list[str]:
    run, data, models, machine = results["run"], results["data"], results["models"], results["machine"]
    server = results["server"]
    lines = [
        f"- **Data**: `{data['path']}`: {data['files']} files, {data['speakers']} speakers, {data['trials']} trials "
        f"({data['targets']} same-speaker, {data['trials'] - data['targets']} different-speaker).",
        f"- **Models**: speaker `{models['speaker']}`; Whisper `{models['whisper']}` (beam {models['whisper_beam_size']}, "
        f"int8 on the CPU, {_threads(models.get('threads_per_call', 0))} per model call); VAD: {models['vad']}.",
    ]
    if server["started_by_suite"]:
        policy = ", ".join(f"`{k}={v}`" for k, v in sorted(server["policy"].items()))
        lines.append(f"- **Server**: started by the suite with `scripts/serve.sh` (gunicorn, one process, threaded) on "
                     f"127.0.0.1 with a fresh SQLite database, with relaxed enrollment minimums and lockout off: "
                     f"{policy}. The trial lists hold one to three clips of 2-15 s, fewer than the default policy "
                     "(3 clips, 15 s of speech) asks for; impostor trials would otherwise lock users out.")
    else:
        lines.append(f"- **Server**: already running at `{server['url']}`, with its own policy (not changed by the suite).")
    lines += [
        f"- **Pace**: the transcription pass sent audio {run['pace']}; the ~5 s latency checks and the "
        "concurrency sweep always send at real-time pace; verification trials are sent as fast as possible "
        "(verification decides on `stop`, so the pace does not change its work).",
        f"- **Machine**: {machine['cores']} cores, {machine['cpu']}, {machine['memory_gb']} GB, {machine['os']}, "
        f"Python {machine['python']}; " + ", ".join(f"{k} {v}" for k, v in machine["packages"].items() if v) + "; "
        f"CPU flags that pick the kernels: {' '.join(machine.get('cpu_flags') or []) or 'not recorded'}"
        + (f"; ECAPA runs on {models['speaker_runtime']}" if models.get("speaker_runtime") else "") + ".",
    ]
    return lines


def _sv_section(sv: dict, link) -> list[str]:
    enrollment = sv["enrollment"]
    lines = [
        f"{sv['trials']} trials ({sv['targets']} same-speaker, {sv['nontargets']} different-speaker). The service: one "
        f"user per distinct enrollment list ({enrollment['lists']} lists, {enrollment['enrolled']} enrolled), enrolled "
        "over the WebSocket, every trial verified over the WebSocket and again over HTTP (`POST /api/v1/verify`) "
        "as a signed-in admin, who is shown the calibrated score of a reject too (a caller who is not an admin is "
        "shown none): the service's EER, minDCF and DET are of every trial's calibrated score. "
        "The baseline: `SpeakerEncoder` on each whole file in-process, cosine against the centroid of the "
        "enrollment embeddings.",
        "",
    ]
    rows = [
        ["EER", _pct(sv["eer"]), _pct(sv["baseline"]["eer"]), _pct(sv["baseline_first_clip"]["eer"])],
        ["minDCF (P_target 0.01)", _num(sv["min_dcf"]), _num(sv["baseline"]["min_dcf"]), _num(sv["baseline_first_clip"]["min_dcf"])],
        ["FAR at the default", _pct(sv["far_at_default"]), _pct(sv["baseline"]["far_at_default"]),
         _pct(sv["baseline_first_clip"]["far_at_default"])],
        ["FRR at the default", _pct(sv["frr_at_default"]), _pct(sv["baseline"]["frr_at_default"]),
         _pct(sv["baseline_first_clip"]["frr_at_default"])],
        ["lowest same-speaker score", _num(sv["lowest_genuine"]), _num(sv["baseline"]["lowest_genuine"]),
         _num(sv["baseline_first_clip"]["lowest_genuine"])],
        ["highest different-speaker score", _num(sv["highest_impostor"]), _num(sv["baseline"]["highest_impostor"]),
         _num(sv["baseline_first_clip"]["highest_impostor"])],
        [f"FAR at {SPEECHBRAIN_THRESHOLD:.2f}", "", _pct(sv["baseline"]["far_at_0_25"]),
         _pct(sv["baseline_first_clip"]["far_at_0_25"])],
        [f"FRR at {SPEECHBRAIN_THRESHOLD:.2f}", "", _pct(sv["baseline"]["frr_at_0_25"]),
         _pct(sv["baseline_first_clip"]["frr_at_0_25"])],
    ]
    lines += _table(["", "service (WebSocket)", "baseline: centroid of all enrollment files",
                     "baseline: first enrollment file only"], rows)
    if sv["eer"] == 0 and sv["baseline"]["eer"] == 0:
        lines += ["", f"Every same-speaker score is above every different-speaker score, for the service and the "
                  "baseline alike, so EER and minDCF are 0 and the DET curve collapses into its corner: this set is "
                  "too small and too easy to rank the two. What still tells them apart is the gap between the classes "
                  "(lowest same-speaker and highest different-speaker score above) and where the threshold falls in it."]
    stored = ", ".join(f"{k} clip{'s' if int(k) != 1 else ''}: {c} lists" for k, c in enrollment["clips_stored"].items())
    offered = ", ".join(f"{k}: {c}" for k, c in enrollment["clips_offered"].items())
    lines += [
        "",
        f"Clips offered per list ({offered}); clips the server stored ({stored}). The server completes an "
        "enrollment as soon as its minimums are met, so under the relaxed policy it keeps only the first "
        "accepted clip of a list: the *first enrollment file only* column is the baseline that matches what "
        "the service stored." + (f" Refused enrollment clips: {_counts(enrollment['refused_clips'])}." if enrollment["refused_clips"] else ""),
        "",
        "Answers, by trial label:",
        "",
    ]
    states = sorted(set(sv["states_by_label"]["target"]) | set(sv["states_by_label"]["nontarget"]))
    lines += _table(["state", "same speaker", "different speaker"],
                    [[s, sv["states_by_label"]["target"].get(s, 0), sv["states_by_label"]["nontarget"].get(s, 0)] for s in states])
    http = sv["http"]
    lines += [
        "",
        f"Over HTTP: states {_counts(http['states'])}, FAR {_pct(http['far_at_default'])}, FRR {_pct(http['frr_at_default'])}; "
        f"{_pct(http['same_state_as_ws'])} of trials got the same state as over the WebSocket.",
        "",
        f"![Genuine and impostor score histograms]({link('scores')})",
        "",
        f"![DET curve]({link('det')})",
    ]
    return lines


def _asr_section(asr: dict, models: dict) -> list[str]:
    skipped = ", ".join(f"{k}: {v}" for k, v in asr["skipped"].items()) or "none"
    lines = [
        f"{asr['files']} files dictated over the WebSocket, each as a user enrolled on the other files of its "
        f"speaker ({asr['self_enrolled_files']} files whose speaker has no other file were enrolled on themselves); "
        "the text is the accepted finals joined. Baseline: the same Whisper model on the whole file in-process. "
        f"WER after Whisper's text normalisation (English normaliser for `en`, the basic one otherwise); skipped: {skipped}.",
        "",
    ]
    rows = [[language, g["files"], g["service"]["words"], _pct(g["service"]["wer"]), _pct(g["baseline"]["wer"])]
            for language, g in asr["per_language"].items()]
    rows.append(["all", asr["files"], asr["words"], _pct(asr["wer"]), _pct(asr["baseline"]["wer"])])
    lines += _table(["language", "files", "words", f"service WER ({models['whisper']})", "baseline WER"], rows)
    utterances = asr["utterances"]
    e, b = asr["errors"], asr["baseline"]["errors"]
    lines += [
        "",
        f"Service errors: {e['substitutions']} substitutions, {e['deletions']} deletions, {e['insertions']} insertions "
        f"(baseline: {b['substitutions']}, {b['deletions']}, {b['insertions']}).",
        f"Utterances: {utterances['accepted']} accepted, {utterances['rejected']} rejected (the voice did not verify, "
        f"so no text), {utterances['not_enough_speech']} too short to verify; {asr['files_with_rejected_speech']} files "
        f"had some speech left out, {asr['files_with_no_text']} got no text at all. Users by the number of clips "
        f"the server stored for them: {_counts(asr['enrollment_clips_stored'])}.",
        "",
        "<details><summary>Per file</summary>",
        "",
    ]
    lines += _table(["file", "s", "service WER", "baseline WER", "accepted", "rejected", "too short", "error"],
                    [[f["file"], f"{f['seconds']:.1f}", _pct(f["service_wer"]), _pct(f["baseline_wer"]), f["accepted"],
                      f["rejected"], f["not_enough_speech"], f["error"] or ""] for f in asr["per_file"]])
    lines += ["", "</details>"]
    return lines


# How a streamed login was embedded after stop (the server's voicegate_streamed_login_embeddings).
_EMBEDDED = {"estimate": "from the work done while the person spoke",
             "redecided": "that, then the whole utterance again (a refusal or a close call)",
             "whole": "the whole utterance (no prefix near the end)"}


def _speed_section(results: dict, link) -> list[str]:
    latency, speed, memory = results["latency"], results["speed"], results.get("memory")
    rtf = speed["rtf"]
    lines = _table(["request", "n", "p50", "p95", "max"], [
        ["verify over WebSocket, end of audio → result (all trials)", latency["verify"]["n"],
         _ms(latency["verify"]["p50_ms"]), _ms(latency["verify"]["p95_ms"]), _ms(latency["verify"]["max_ms"])],
        ["verify over HTTP, request → response (whole upload)", latency["verify_http"]["n"],
         _ms(latency["verify_http"]["p50_ms"]), _ms(latency["verify_http"]["p95_ms"]), _ms(latency["verify_http"]["max_ms"])],
        [f"dictate, end of audio → last final ({latency['final_pace']})", latency["final"]["n"],
         _ms(latency["final"]["p50_ms"]), _ms(latency["final"]["p95_ms"]), _ms(latency["final"]["max_ms"])],
        [f"verify a ~5 s utterance at real-time pace ({_seconds(speed['verify_5s']['audio_seconds'])})",
         speed["verify_5s"]["n"], _ms(speed["verify_5s"]["p50_ms"]), _ms(speed["verify_5s"]["p95_ms"]),
         _ms(speed["verify_5s"]["max_ms"])],
        *[[f"… of them, embedded after stop: {_EMBEDDED.get(source, source)}", row["n"], _ms(row["p50_ms"]),
           _ms(row["p95_ms"]), _ms(row["max_ms"])]
          for source, row in speed["verify_5s"].get("by_embedding", {}).items()],
        [f"dictate a ~5 s utterance at real-time pace ({_seconds(speed['final_5s']['audio_seconds'])})",
         speed["final_5s"]["n"], _ms(speed["final_5s"]["p50_ms"]), _ms(speed["final_5s"]["p95_ms"]),
         _ms(speed["final_5s"]["max_ms"])],
        *([[f"the same, stop {speed['final_5s_breath']['silence_s']:g} s after the file (a breath)",
            speed["final_5s_breath"]["n"], _ms(speed["final_5s_breath"]["p50_ms"]),
            _ms(speed["final_5s_breath"]["p95_ms"]), _ms(speed["final_5s_breath"]["max_ms"])]]
          if "final_5s_breath" in speed else []),
    ])
    lines += [
        "",
        "Real-time factors in-process (compute seconds per second of audio, whole files, one call at a time; "
        f"p50), with the {_threads(rtf['threads'])} per call the server gives each model, and with "
        f"{rtf['other_threads']['threads']}:",
        "",
    ]
    other = rtf["other_threads"]
    lines += _table(["model", "files", f"RTF, {_threads(rtf['threads'])} (the server's)",
                     f"RTF, {_threads(other['threads'])}"], [
        ["ECAPA embedding", rtf["embedding"]["calls"], _num(rtf["embedding"]["rtf_p50"]),
         _num(other["embedding"]["rtf_p50"])],
        [f"Whisper `{results['models']['whisper']}` transcription", rtf["transcription"]["calls"],
         _num(rtf["transcription"]["rtf_p50"]), _num(other["transcription"]["rtf_p50"])],
    ])
    lines += [""]
    lines += _thread_note(rtf, results["models"]["whisper"])
    if memory and memory.get("rss_mb") is not None:
        lines += [f"Server memory: worker resident {memory['rss_mb']:.0f} MB after the run (peak {memory['peak_rss_mb']:.0f} MB), "
                  f"gunicorn master {memory['master_rss_mb'] or 0:.0f} MB.", ""]
    else:
        lines += ["Server memory: not measured (the suite did not start the server).", ""]
    lines += [f"Simultaneous real-time dictation streams (files of {_seconds(_all_seconds(speed['concurrency']))}):", ""]
    lines += _table(["streams", "p50", "p95", "max", "fallen behind", "of which busy", "late (> 1.5 s)", "rejected utterances"],
                    [[c["streams"], _ms(c["latency_p50_ms"]), _ms(c["latency_p95_ms"]), _ms(c["latency_max_ms"]),
                      c["fell_behind"], c["busy"], c["late"], c["rejected_utterances"]] for c in speed["concurrency"]])
    behind = [c["streams"] for c in speed["concurrency"] if c["fell_behind"]]
    lines += ["", f"Streams first fell behind at {behind[0]} simultaneous streams." if behind
              else "No stream fell behind at any level measured."]
    lines += ["", f"![Latency against simultaneous streams]({link('streams')})"]
    return lines


def _threads(count: int) -> str:
    return f"{count} thread{'s' if count != 1 else ''}"


def _thread_note(rtf: dict, whisper: str) -> list[str]:
    """Say how much the server's threads per call gain or lose against the other setting measured."""
    other = rtf["other_threads"]
    ratios = []
    for key, label in (("embedding", "ECAPA"), ("transcription", f"Whisper `{whisper}`")):
        mine, theirs = rtf[key]["rtf_p50"], other[key]["rtf_p50"]
        if mine and theirs:
            ratios.append(f"{label} {'needs ' if not ratios else ''}{mine / theirs:.2f}×")
    if not ratios:
        return []
    return [f"With the server's {_threads(rtf['threads'])} per call (one call at a time), {' and '.join(ratios)} "
            f"the time each needs with {_threads(other['threads'])}. The server's inference pool runs calls side by side "
            "(one worker per core by default), so what one call gains from more threads, the calls it competes with "
            "lose.", ""]


def _seconds(values: list[float]) -> str:
    if not values:
        return "no files"
    return f"{min(values):.1f}-{max(values):.1f} s" if len(values) > 1 else f"{values[0]:.1f} s"


def _all_seconds(levels: list[dict]) -> list[float]:
    return sorted({s for level in levels for s in level["audio_seconds"]})


def _method(results: dict) -> list[str]:
    sv = results.get("sv") or {}
    return [
        "- **Latency** runs from the moment the client sends `stop` right after the last audio frame to the arrival "
        "of the verification result, or of the last `final` of a dictation. A final that arrives before `stop` "
        "(the server ended the utterance on trailing silence) counts as a negative latency.",
        "- **Fallen behind**: a stream whose last final came more than 1.5 s after the end of its audio, that had "
        "no final, or that the server ended with an error (`busy` counted apart).",
        f"- **Scores without a decision** (`not_enough_speech`, `no_speech`, errors) count as a score of "
        f"{sv.get('no_score_as', NO_SCORE)}: a reject at every threshold. FAR and FRR at the default threshold are the "
        "share of different-speaker trials accepted and of same-speaker trials not accepted.",
        "- **EER** is read where the FRR and FAR curves cross, interpolated linearly between the two trial scores "
        "around the crossing; **minDCF** is the NIST SRE normalised minimum detection cost with C_miss = C_fa = 1 and "
        "P_target = 0.01. With a few dozen trials one trial moves a rate by several points.",
        "- **WER** is the corpus figure: all word errors over all reference words, after Whisper's normaliser on both "
        "sides. Rejected speech gives no text and so counts as deletions.",
        "- **Real-time factors** are measured in the suite's own process while the server it started sits idle "
        "(models loaded, no requests yet), on the same weights, with the threads per call the server is configured "
        "with (`INFERENCE_THREADS`) and again with another count.",
        "- **Memory** is VmRSS of the gunicorn worker that holds the models, read from /proc after the run.",
        "- **Closing**: after each WebSocket session the suite shuts its TCP connection itself. "
        "`clients.voicegate.Conversation.close()` leaves it open when the server closed the session first "
        "(websocket-client then skips the shutdown), and gunicorn's threaded worker waits up to 2 s for it on its "
        "event loop, which delays every other connection; without this, a third of the HTTP requests made right "
        "after a WebSocket session took about 2 s longer.",
        "- **Not measured**: 1:N identification (verify without a user), `POST /api/v1/transcribe`, enrollment "
        "latency, and speech from more than one speaker in one dictation stream (the tests cover those behaviours; "
        "this suite measures the figures above).",
    ]


def _limit_sentence(limit: dict | None) -> str:
    """Say how the run was held back (`python -m bench --cpus/--neighbours`), if it was."""
    if not limit:
        return ""
    cpus = limit.get("cpus") or []
    return (f" **Held back on purpose:** on CPU{'s' if len(cpus) != 1 else ''} {', '.join(map(str, cpus))} only, "
            f"beside {limit.get('busy_neighbours', 0)} busy neighbour process(es).")
