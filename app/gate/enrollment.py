"""Enrollment: check clip after clip, and store the voiceprint once there is enough good speech."""
from __future__ import annotations

import numpy as np

from ..audio.augment import CHANNELS, channel
from . import decide, store
from ..errors import SessionError
from .base import ClipBuffer, Context, new_request_id, run_model, seconds
from .calibration import band_edge


class EnrollSession:
    """Enrollment: check clip after clip; store the voiceprint once there is enough good speech."""

    mode = "enroll"

    def __init__(self, ctx: Context, user_id: int, user_name: str, invite_id: int | None):
        self.ctx, self.user_id, self.user_name, self.invite_id = ctx, user_id, user_name, invite_id
        self.request_id = new_request_id()
        self.done = False
        self._buffer = ClipBuffer(ctx.policy.max_clip_seconds, "a clip")
        self._embeddings: list[np.ndarray] = []
        # Embeddings of the accepted clips through each channel (the copies' audio is dropped at once).
        self._channels: dict[str, list[np.ndarray]] = {name: [] for name in CHANNELS}
        self._edges: list[float] = []  # each accepted clip's band edge (dB): the band the voice was recorded in
        self._speech = 0.0

    def audio(self, samples: np.ndarray) -> list[dict]:
        """Take more of the current clip."""
        self._buffer.add(samples)
        return []

    def stop(self, lost_seconds: float = 0.0) -> list[dict]:
        """End the current clip: accept or refuse it, report progress, and finish when complete.

        ``lost_seconds``: audio the client says it lost while capturing this clip.
        """
        longest_gap = self._buffer.longest_gap
        messages = [self._clip(self._buffer.take(), lost_seconds, longest_gap)]
        if self._complete():
            messages.append(self._finish())
        return messages

    def poll(self) -> list[dict]:
        """Nothing arrives between clips."""
        return []

    def close(self) -> None:
        """Nothing to give back: an unfinished enrollment has stored nothing."""

    def _clip(self, audio: np.ndarray, lost_seconds: float, longest_gap: float) -> dict:
        policy = self.ctx.policy
        quality = decide.measure(audio, self.ctx.engines.vad.segments(audio))
        reason = decide.delivery_problem(quality, policy.enroll_min_clip_speech, lost_seconds, longest_gap)
        score = None
        if reason is None:
            embedding = run_model(self.ctx, self.ctx.engines.speaker.embed, audio)
            score = decide.consistency(embedding, self._embeddings)
            if score is not None and score < policy.threshold:
                reason = "inconsistent_voice"
            else:
                self._embeddings.append(embedding)
                self._edges.append(band_edge(audio))
                self._speech += quality.speech_seconds
                for name, copies in self._channels.items():
                    copies.append(run_model(self.ctx, _embed_through, self.ctx.engines.speaker, name, audio))
        store.record(self.ctx.audit(
            self.request_id, "enroll", "clip_accepted" if reason is None else "clip_refused",
            claimed_user=self.user_name, score=score, threshold=policy.threshold if score is not None else None,
            reason=reason, audio_seconds=seconds(audio.size),
        ))
        return {
            "type": "progress",
            "clip": {"accepted": reason is None, "reason": reason, "speech_seconds": round(quality.speech_seconds, 2),
                     "level_dbfs": round(quality.speech_dbfs, 1), "consistency": None if score is None else round(score, 4),
                     # How the clip arrived, counted on both sides: what the client lost, the longest stall here.
                     "lost_seconds": round(lost_seconds, 2), "longest_gap_seconds": round(longest_gap, 2)},
            "clips_accepted": len(self._embeddings),
            "clips_required": policy.enroll_min_clips,
            "speech_seconds": round(self._speech, 2),
            "speech_required": policy.enroll_min_total_speech,
            "percent": self._percent(),
        }

    def _percent(self) -> int:
        policy = self.ctx.policy
        speech = min(1.0, self._speech / policy.enroll_min_total_speech) if policy.enroll_min_total_speech else 1.0
        clips = min(1.0, len(self._embeddings) / policy.enroll_min_clips)
        # Both requirements must be met; the bar shows the one further from done.
        return int(100 * min(speech, clips))

    def _complete(self) -> bool:
        policy = self.ctx.policy
        return len(self._embeddings) >= policy.enroll_min_clips and self._speech >= policy.enroll_min_total_speech

    def _finish(self) -> dict:
        clips = np.stack(self._embeddings)
        audit = self.ctx.audit(self.request_id, "enroll", "enrolled", claimed_user=self.user_name,
                               matched_user=self.user_name, audio_seconds=round(self._speech, 2))
        try:
            store.save_voiceprint(self.user_id, clips, self.ctx.engines.speaker.model_id, self._speech,
                                  self.invite_id, audit, {n: np.stack(v) for n, v in self._channels.items()},
                                  float(np.median(self._edges)))
        except store.InviteUsed as error:
            raise SessionError("invite_used", str(error)) from None
        self.done = True
        self._embeddings, self._edges = [], []
        self._channels = {name: [] for name in CHANNELS}
        return {"type": "result", "mode": "enroll", "state": "enrolled", "user": self.user_name,
                "clips": len(clips), "speech_seconds": round(self._speech, 2), "request_id": self.request_id}


def _embed_through(speaker, name: str, audio: np.ndarray) -> np.ndarray:
    """Return the embedding of ``audio`` through the channel ``name`` (on the model pool)."""
    return speaker.embed(channel(name, audio))
