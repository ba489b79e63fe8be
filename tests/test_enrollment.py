"""Enrollment refuses clips it cannot trust, says why, and stores nothing until complete."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import requests
from scipy.signal import butter, sosfilt

from clients.voicegate import Conversation
from app.gate.calibration import NARROW_EDGE_DB, band_edge
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


def test_the_voiceprint_keeps_its_band_and_a_login_in_that_band_meets_the_voiceprint_itself(live, engines, speech):
    """Enrolled through a band-limited microphone, the user logs in through it: not a phone line.

    The voiceprint stores the clips' median band edge (never audio); a narrow login as far down
    as its enrollment is scored against the centroid, whose cosine the answer reports.
    """
    cheap = butter(8, 3700, fs=16000, output="sos")  # a cheap microphone: edges of -34 to -52 dB
    clips = [sosfilt(cheap, speech.load(f"wav/ljspeech/LJ001-000{i}.wav")).astype(np.float32) for i in (1, 3, 5, 6)]
    assert _enroll(live, "mic", clips[:3])[-1]["state"] == "enrolled"
    with live.app.app_context():
        voiceprint = User.by_name("mic").voiceprint
        stored, enrolled = voiceprint.band_edge_db, voiceprint.centroid_vector()
        phone = voiceprint.channel_vectors()["phone"]
    assert stored == pytest.approx(float(np.median([band_edge(c) for c in clips[:3]])), abs=0.1)  # sent as 16-bit PCM
    assert stored < NARROW_EDGE_DB
    reply = requests.post(f"{live.url}/api/v1/verify", params={"user": "mic", "encoding": "pcm_s16le"},
                          data=pcm(clips[3]), timeout=60)
    assert reply.status_code == 200, reply.text
    embedding = engines.speaker.embed(clips[3])
    assert reply.json()["state"] == "accept"
    assert reply.json()["score"] == pytest.approx(float(embedding @ enrolled), abs=0.02)
    assert float(embedding @ phone) < reply.json()["score"] - 0.1


def test_a_clip_that_lost_audio_or_stalled_is_called_broken_not_silent(live, speech):
    """Both sides count: the client's lost audio (capture.lost_seconds) and the server's longest stall."""
    silence = np.zeros(16000 * 4, dtype=np.float32)
    lj = speech.load("wav/ljspeech/LJ001-0001.wav")
    conversation = Conversation(live.ws_url, {"type": "start", "mode": "enroll", "invite": live.invite("dee"),
                                              "format": PCM16K}, echo=lambda _: None)

    def clip(parts: list[np.ndarray], stall: float = 0.0, lost: float | None = None) -> dict:
        seen = len(conversation.replies)
        for index, part in enumerate(parts):
            if index:
                time.sleep(stall)  # the stimulus: a client that stalls mid-clip, as a starved browser does
            conversation.send_audio(pcm(part), PCM16K, realtime=False)
        conversation.ws.send(json.dumps({"type": "stop", **({"capture": {"lost_seconds": lost}} if lost is not None else {})}))
        return conversation.wait_for("progress", after=seen)["clip"]

    try:
        assert conversation.wait_for("ready")["type"] == "ready"
        plain = clip([silence])
        assert plain["reason"] == "no_speech" and plain["longest_gap_seconds"] < 1.0
        stalled = clip([silence[:32000], silence[32000:]], stall=1.5)
        assert stalled["reason"] == "broken_audio" and stalled["longest_gap_seconds"] >= 1.0 and stalled["lost_seconds"] == 0
        lost = clip([lj], lost=1.5)
        assert lost["reason"] == "broken_audio" and lost["lost_seconds"] == 1.5 and not lost["accepted"]
        # A little lost audio harms no voiceprint, but may be why a clip seemed silent.
        assert clip([silence], lost=0.5)["reason"] == "broken_audio"
        # ... but not why two seconds of speech are too few: that clip is short, whatever was lost.
        assert clip([lj[: 2 * 16000]], lost=0.3)["reason"] == "too_short"
        # Late but whole: the words all came, so the clip is judged on them.
        late = clip([lj[: lj.size // 2], lj[lj.size // 2:]], stall=1.5, lost=0.02)
        assert late["accepted"] and late["longest_gap_seconds"] >= 1.0
        seen = len(conversation.replies)
        conversation.ws.send(json.dumps({"type": "stop", "capture": {"lost_seconds": "lots"}}))
        assert conversation.wait_for("error", after=seen)["code"] == "bad_message"
    finally:
        conversation.close()
