"""Where the benchmarks read and write: the repository, its results folder and report, the speech sets."""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
# The suite's report; benchmarks run apart put their own section into it (bench.report.put_section).
DEV_REPORT = ROOT / "docs" / "benchmarks.md"
DEFAULT_DATA = Path(os.environ.get("VOICEGATE_SPEECH_DEV", ROOT.parent / "shared" / "data" / "speech-dev"))
SPEECH_MORE = Path(os.environ.get("VOICEGATE_SPEECH_MORE", ROOT.parent / "shared" / "data" / "speech-more"))
