"""Describe the machine and the code a run measured, so runs can be compared."""
from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from .paths import ROOT

SIMD_FLAGS = {"sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
              "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8"}
PACKAGES = ("torch", "speechbrain", "faster-whisper", "ctranslate2", "onnxruntime", "flask", "gunicorn")


def describe() -> dict:
    """Return cores, CPU model, memory, OS, Python, key package versions, and the code's commit."""
    return {
        "cores": os.cpu_count(),
        "cpu": _cpuinfo("model name") or platform.processor() or None,
        "cpu_vendor": _cpuinfo("vendor_id"),
        # The instruction sets that decide which kernels the runtimes pick.
        "cpu_flags": sorted(set((_cpuinfo("flags") or "").split()) & SIMD_FLAGS),
        "memory_gb": _memory_gb(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in PACKAGES},
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "commit": _git("rev-parse", "--short", "HEAD"),
        "uncommitted_changes": bool(_git("status", "--porcelain")),
    }


def _cpuinfo(key: str) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == key:
                return value.strip()
    except OSError:
        pass
    return None


def _memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    """Run a read-only git command in the repository; None when git or the repository is missing."""
    try:
        result = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None
