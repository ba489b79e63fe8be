"""The rules a decision is made by: thresholds, speech minimums, lockout, limits."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

# How the defaults were chosen: docs/threshold.md (bench/calibrate.py). A decision accepts when
# the calibrated score reaches the target false-accept rate AND the raw cosine reaches the floor.
DEFAULT_TARGET_FAR = 0.005
DEFAULT_THRESHOLD = 0.25


@dataclass(frozen=True)
class Policy:
    """Every tunable of enrollment, verification and dictation; seconds are of speech unless named."""

    target_far: float = DEFAULT_TARGET_FAR
    # The raw cosine floor of a decision, and of an enrollment clip's consistency with the others.
    threshold: float = DEFAULT_THRESHOLD
    identify_margin: float = 0.10
    # Calibration makes short speech stricter by itself: 0.8 s keeps the false-accept rate (docs/threshold.md).
    min_verify_speech: float = 0.8
    # A phrase with less speech than min_verify_speech is still decided, against this stricter
    # threshold, when it starts at most short_context_seconds after the user's accepted speech
    # in the same dictation (0 turns this off). How they were chosen: docs/threshold.md.
    short_threshold: float = 0.50
    short_context_seconds: float = 30.0
    enroll_min_clips: int = 3
    enroll_min_clip_speech: float = 3.0
    enroll_min_total_speech: float = 15.0
    # Failed voice attempts from one client address: for one claimed user (or 1:N) each failure
    # makes the next wait longer (lockout_delay s, doubling), and lockout_attempts of them within
    # lockout_seconds refuse that client (only) until they age out; lockout_client_attempts across
    # all users do the same for the whole address.
    lockout_attempts: int = 5
    lockout_seconds: int = 300
    lockout_delay: float = 1.0
    lockout_client_attempts: int = 20
    token_seconds: int = 3600
    # Replay refusal: an attempt whose embedding reaches this cosine to one of the user's
    # enrollment clips or accepted attempts of the last replay_seconds is a recording of it
    # (how it was chosen: docs/threshold.md, bench/replay.py).
    replay_similarity: float = 0.92
    replay_seconds: int = 86400
    # Voice login reads a random challenge aloud: "digits" (6 random digits) or "off".
    challenge: str = "digits"
    # A login whose calibrated score falls less than this under the threshold may be asked for one
    # more utterance, decided with the first (second_chance.py; 0: never). At most MAX_BAND.
    second_chance_band: float = 1.0
    # Limits on one session, in seconds of audio received.
    max_clip_seconds: float = 30.0
    max_dictation_seconds: float = 600.0
    idle_seconds: float = 15.0
    max_frame_bytes: int = 1 << 20
    # Dictation: silence that ends an utterance, and the longest utterance before a forced cut.
    end_silence_ms: int = 600
    max_utterance_seconds: float = 30.0
    partial_interval: float = 1.0
    # The languages spoken here (ISO-639-1 codes, comma-separated): a transcription asked for no
    # language is written in the likeliest of them. Empty: whichever the model hears.
    languages: str = ""

    @property
    def detect_among(self) -> tuple[str, ...]:
        """Return the languages a detection chooses from (empty: any)."""
        return language_codes(self.languages)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Policy:
        """Build the policy from ``POLICY_<FIELD>`` config keys (``VOICEGATE_POLICY_<FIELD>``)."""
        values = {}
        for field in fields(cls):
            key = f"POLICY_{field.name.upper()}"
            if key in config:
                values[field.name] = type(field.default)(config[key])
        return cls(**values)


def language_codes(text: str) -> tuple[str, ...]:
    """Return the language codes in ``text`` (separated by commas or spaces), lower-case, each once, in order."""
    return tuple(dict.fromkeys(code.lower() for code in text.replace(",", " ").split()))
