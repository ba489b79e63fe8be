"""Real headless Chromium for the page tests: Debian's /usr/bin/chromium driven by Playwright.

The microphone can be fed from a WAV file, so pages are tested with real speech.
Screenshots go to tests/artifacts/screenshots/ (git-ignored) for a person to look at.
"""
from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("VOICEGATE_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = ROOT / "tests" / "artifacts" / "screenshots"

# Without the background-networking flags Chromium keeps reaching for Google's hosts,
# which this machine's closed network refuses.
FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]


def microphone_flags(wav: Path, loop: bool = False) -> list[str]:
    """Return the flags that make ``wav`` (16-bit PCM) the microphone; played once unless ``loop``."""
    spec = str(wav) if loop else f"{wav}%noloop"
    return [
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={spec}",
    ]


@contextmanager
def chromium(microphone: Path | None = None, loop: bool = False, extra_args: list[str] = ()) -> Iterator[Browser]:
    """Launch headless Chromium, with ``microphone`` as its audio input when given."""
    args = FLAGS + (microphone_flags(microphone, loop) if microphone else []) + list(extra_args)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser: Browser, base_url: str, **options) -> tuple[BrowserContext, Page]:
    """Open a fresh context (own cookies) and page on ``base_url``, with the microphone allowed."""
    options.setdefault("permissions", ["microphone"])
    context = browser.new_context(base_url=base_url, **options)
    return context, context.new_page()


def screenshot(page: Page, name: str) -> Path:
    """Save a full-page screenshot as tests/artifacts/screenshots/<name>.png and return its path."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / (re.sub(r"[^\w.-]+", "-", name) + ".png")
    page.screenshot(path=str(path), full_page=True)
    return path
