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
# How long a page may take to show what the server decided (ms): a bound, not a wait. On a busy
# machine model calls queue behind other tests' (seen: a decision over 60 s, a meeting's third line too).
DECISION_TIMEOUT = 180_000

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


# Installed in every page before its own scripts: keeps the page's AudioContexts reachable (to
# stall one, as a starved audio thread would) and notes when the level meter last showed a voice.
WATCH_AUDIO = """
(() => {
  const contexts = [];
  window.__audioContexts = contexts;
  const Original = window.AudioContext;
  if (Original) {
    window.AudioContext = class extends Original {
      constructor(...args) { super(...args); contexts.push(this); }
    };
  }
  window.__lastVoiced = null;
  document.addEventListener("DOMContentLoaded", () => {
    const meter = document.getElementById("level");
    if (!meter) return;
    new MutationObserver(() => {
      if (Number(meter.getAttribute("aria-valuenow")) > 0) window.__lastVoiced = performance.now();
    }).observe(meter, { attributes: true, attributeFilter: ["aria-valuenow"] });
  });
})();
"""

# True while the fake microphone is early in a pause after speech: quiet for at least `quiet`
# seconds, and for at most `quiet + early` (so the next clip has not begun).
EARLY_IN_A_PAUSE = """([quiet, early]) => {
  if (window.__lastVoiced === null) return false;
  const silent = (performance.now() - window.__lastVoiced) / 1000;
  return silent >= quiet && silent <= quiet + early;
}"""


def new_page(browser: Browser, base_url: str, **options) -> tuple[BrowserContext, Page]:
    """Open a fresh context (own cookies) and page on ``base_url``, with the microphone allowed."""
    options.setdefault("permissions", ["microphone"])
    context = browser.new_context(base_url=base_url, **options)
    context.add_init_script(WATCH_AUDIO)
    return context, context.new_page()


def wait_for_a_pause(page: Page, quiet: float = 0.8, early: float = 1.2, timeout: float = 120) -> None:
    """Wait, as a person would, until the looping fake microphone has just finished a clip.

    The page's level meter is the evidence (the fake device plays in real time, whatever the
    page or server are doing), so a Record press made now lands before the next clip begins,
    however slow the machine was to get here: a missed pause only means waiting for the next.
    """
    page.wait_for_function(EARLY_IN_A_PAUSE, arg=[quiet, early], polling=50, timeout=timeout * 1000)


def stall_audio(page: Page, seconds: float) -> None:
    """Stop the page's audio thread for ``seconds``, as a starved machine does: the microphone's frames are lost."""
    page.evaluate("""async (ms) => {
        const context = window.__audioContexts[window.__audioContexts.length - 1];
        await context.suspend();
        await new Promise((resolve) => setTimeout(resolve, ms));
        await context.resume();
    }""", int(seconds * 1000))


def screenshot(page: Page, name: str) -> Path:
    """Save a full-page screenshot as tests/artifacts/screenshots/<name>.png and return its path."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / (re.sub(r"[^\w.-]+", "-", name) + ".png")
    page.screenshot(path=str(path), full_page=True)
    return path
