"""Enrollment refuses clips it cannot trust, says why, and stores nothing until complete."""
from __future__ import annotations

import numpy as np
import pytest

from clients.voicegate import Conversation
from app.store.db import db
from app.store.models import User

from .conftest import BACKENDS, PCM16K, pcm


def _enroll(live, name: str, clips: list[np.ndarray]) -> list[dict]:
    """Send each clip in an enrollment session; return the replies to the clips."""
    conversation = Conversation(live.ws_url, {"type": "start", "mode": "enroll", "invite": live.invite(name),
                                              "format": PCM16K}, echo=lambda _: None)
    try:
        assert conversation.wait_for("ready")["type"] == "ready"
        replies = []
        for clip in clips:
            seen = len(conversation.replies)
            conversation.send_audio(pcm(clip), PCM16K, realtime=False)
            conversation.stop()
            replies.append(conversation.wait_for("progress", after=seen))
        if replies and replies[-1].get("percent") == 100:
            replies.append(conversation.wait_for("result"))
        return replies
    finally:
        conversation.close()


def test_clips_are_refused_with_a_reason_and_progress_counts_only_good_ones(live, speech):
    lj = [speech.load(f"wav/ljspeech/LJ001-000{i}.wav") for i in (1, 3, 5, 7)]
    other_voice = speech.load("wav/vctk-p287/p287_003.wav")
    clips = [
        np.zeros(16000 * 4, dtype=np.float32),  # silence
        lj[0],
        lj[1][: int(16000 * 2.0)],  # two seconds of speech
        lj[1] * 0.003,  # far from the microphone
        np.clip(lj[1] * 12, -1, 1),  # overdriven
        other_voice,  # somebody else
        lj[1],
        lj[2],
    ]
    replies = _enroll(live, "ada", clips)
    reasons = [reply["clip"]["reason"] for reply in replies[:-1]]
    print("\n" + "\n".join(f"{r['clip']}  {r['percent']}%" for r in replies[:-1]))
    assert reasons == ["no_speech", None, "too_short", "too_quiet", "clipped", "inconsistent_voice", None, None]
    assert [reply["clips_accepted"] for reply in replies[:-1]] == [0, 1, 1, 1, 1, 1, 2, 3]
    assert [reply["percent"] for reply in replies[:-1]] == sorted(reply["percent"] for reply in replies[:-1])
    assert replies[-1]["type"] == "result" and replies[-1]["state"] == "enrolled" and replies[-1]["clips"] == 3


@pytest.mark.parametrize("db_backend", BACKENDS)
def test_nothing_is_stored_until_enrollment_completes(live, speech):
    clips = [speech.load("wav/ljspeech/LJ001-0001.wav")]
    replies = _enroll(live, "bea", clips)
    assert replies[0]["clip"]["accepted"] and replies[0]["percent"] < 100
    with live.app.app_context():
        assert User.by_name("bea").voiceprint is None


@pytest.mark.parametrize("db_backend", BACKENDS)
def test_re_enrollment_replaces_the_voiceprint(live, speech):
    first = [speech.load(f"wav/ljspeech/LJ001-000{i}.wav") for i in (1, 3, 5)]
    second = [speech.load(f"wav/ljspeech/LJ001-000{i}.wav") for i in (3, 5, 7)]
    assert _enroll(live, "cy", first)[-1]["state"] == "enrolled"
    with live.app.app_context():
        before = User.by_name("cy").voiceprint.centroid_vector().copy()
    assert _enroll(live, "cy", second)[-1]["state"] == "enrolled"
    with live.app.app_context():
        rows = db.session.execute(db.text("SELECT COUNT(*) FROM voiceprints")).scalar()
        after = User.by_name("cy").voiceprint.centroid_vector()
        channels = User.by_name("cy").voiceprint.channel_vectors()
    assert rows == 1 and not np.allclose(before, after)
    # The voiceprint keeps the clips' telephone copy as an embedding (for phone-band logins), never audio.
    assert set(channels) == {"phone"} and np.isclose(np.linalg.norm(channels["phone"]), 1.0, atol=1e-4)
    assert 0.5 < float(channels["phone"] @ after) < 0.99
