"""Describe the machine and the code a run measured, so runs can be compared."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from contextlib import contextmanager
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


@contextmanager
def limited(cpus: list[int] | None = None, neighbours: int = 0):
    """Run the body on ``cpus`` only (and so the server it starts), beside ``neighbours`` busy processes.

    A figure measured on a fast, quiet machine must not hide a slow or shared one (issue 27): the
    CPU set is inherited by every process started inside, and each neighbour is a plain busy loop
    at normal priority, as another tenant of a shared machine would be. Yields what was applied.
    """
    before = os.sched_getaffinity(0)
    if cpus:
        os.sched_setaffinity(0, cpus)
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(neighbours)]
    try:
        yield {"cpus": sorted(os.sched_getaffinity(0)), "busy_neighbours": neighbours}
    finally:
        for process in busy:
            process.kill()
            process.wait()
        os.sched_setaffinity(0, before)


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
