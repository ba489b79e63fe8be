"""Two speaker models as one voice (ECAPA and CAM++ fused), and voiceprints of ECAPA alone that keep working.

Real models on real dev speech, over the real HTTP API and the admin screens.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from app.engines.fused import ECAPA_SHARE, FUSED_DIM, PART_DIM, FusedEncoder, ecapa_part
from app.engines.speaker import MODEL_ID, cosine
from app.gate import calibration
from app.store.db import db
from app.store.models import User, Voiceprint

from .conftest import LJ_ENROLL, make_app
from .test_admin import add_admin, sign_in

LJ_TEST = "wav/ljspeech/LJ001-0004.wav"
P287_ENROLL = ["wav/vctk-p287/p287_002.wav", "wav/vctk-p287/p287_003.wav", "wav/vctk-p287/p287_004.wav"]
P287_TEST = "wav/vctk-p287/p287_006.wav"
_addresses = (f"10.8.0.{n}" for n in itertools.count(1))


def test_a_fused_voice_is_a_fixed_blend_of_both_models_cosines(engines, speech):
    speaker = engines.speaker
    assert isinstance(speaker, FusedEncoder), "the server fuses ECAPA and CAM++ by default"
    a, b = speech.load(LJ_TEST), speech.load(P287_TEST)
    fused = [speaker.embed(a), speaker.embed(b)]
    ecapa = [speaker.ecapa.embed(a), speaker.ecapa.embed(b)]
    campplus = [speaker.campplus.embed(a), speaker.campplus.embed(b)]
    assert fused[0].shape == (FUSED_DIM,) and abs(np.linalg.norm(fused[0]) - 1) < 1e-5
    blend = ECAPA_SHARE * cosine(*ecapa) + (1 - ECAPA_SHARE) * cosine(*campplus)
    assert abs(cosine(*fused) - blend) < 1e-5
    # A voiceprint of ECAPA alone is scored on the test's ECAPA part: ECAPA's own embedding.
    assert cosine(ecapa_part(fused[0]), ecapa[0]) > 0.9999


def _verify(app, file: str, speech, user: str | None) -> dict:
    query = f"?user={user}" if user else ""
    reply = app.test_client().post(f"/api/v1/verify{query}", data=speech.path(file).read_bytes(),
                                   content_type="audio/wav", environ_base={"REMOTE_ADDR": next(_addresses)})
    assert reply.status_code == 200, reply.text
    return reply.get_json()


def test_a_voiceprint_of_ecapa_alone_still_verifies_and_is_told_apart_beside_fused_ones(tmp_path, engines, speech):
    """An upgrade keeps every enrolled user: the older voiceprint is compared in ECAPA's space, the new in both."""
    app = make_app(tmp_path, engines)
    with app.app_context():
        # p287 enrolled before CAM++ joined: the clips' ECAPA embeddings, as that server stored them.
        old = User(name="p287", display_name="")
        old.voiceprint = Voiceprint.from_embeddings(
            np.stack([engines.speaker.ecapa.embed(speech.load(f)) for f in P287_ENROLL]), MODEL_ID, 12.0)
        new = User(name="lj", display_name="")
        new.voiceprint = Voiceprint.from_embeddings(
            np.stack([engines.speaker.embed(speech.load(f)) for f in LJ_ENROLL]), engines.speaker.model_id, 20.0)
        db.session.add_all([old, new])
        db.session.commit()
        assert old.voiceprint.ecapa_only and old.voiceprint.dim == PART_DIM
        assert not new.voiceprint.ecapa_only and new.voiceprint.dim == FUSED_DIM

    # 1:1, each their own voice and not the other's.
    assert _verify(app, P287_TEST, speech, "p287")["state"] == "accept"
    assert _verify(app, LJ_TEST, speech, "lj")["state"] == "accept"
    assert _verify(app, LJ_TEST, speech, "p287")["state"] == "reject"
    assert _verify(app, P287_TEST, speech, "lj")["state"] == "reject"
    # 1:N among both kinds: compared where both have a voice (ECAPA's), each found by name.
    for file, name in ((P287_TEST, "p287"), (LJ_TEST, "lj")):
        found = _verify(app, file, speech, None)
        assert (found["state"], found["user"]) == ("accept", name), found

    # The admin screens say whose voiceprint is of the older model alone, and why it stays so.
    add_admin(app)
    admin = app.test_client()
    sign_in(admin)
    with app.app_context():
        ids = {user.name: user.id for user in db.session.scalars(db.select(User))}
    page = admin.get(f"/admin/users/{ids['p287']}").text
    assert "ECAPA alone" in page and "cannot be redone" in page
    assert "ECAPA and CAM++" in admin.get(f"/admin/users/{ids['lj']}").text


def test_an_altered_fused_cohort_decides_nothing(tmp_path):
    altered = tmp_path / "cohort-fused.npz"
    data = bytearray(calibration.FUSED_COHORT_PATH.read_bytes())
    data[-100] ^= 1
    altered.write_bytes(bytes(data))
    with pytest.raises(calibration.CalibrationError):
        calibration.load_cohort(altered, calibration.FUSED_COHORT_SHA256)
    cohort = calibration.cohort_for(FUSED_DIM)
    assert cohort.embeddings.shape[1] == FUSED_DIM and cohort.sha256 == calibration.FUSED_COHORT_SHA256


def test_both_models_asked_for_and_cam_plus_plus_missing_loads_nothing(tmp_path):
    from app.engines import modelstore
    from app.engines.runtime import load_second_speaker

    with pytest.raises(modelstore.ModelError, match="CAM\\+\\+"):
        load_second_speaker(tmp_path, object(), "ecapa+campplus", 1)


def test_a_server_running_ecapa_alone_checks_fused_voiceprints_on_their_ecapa_part(tmp_path, engines, speech):
    """VOICEGATE_SPEAKER_MODELS=ecapa after users enrolled with both: they are still told apart, by ECAPA."""
    from dataclasses import replace

    app = make_app(tmp_path, replace(engines, speaker=engines.speaker.ecapa), SPEAKER_MODELS="ecapa")
    with app.app_context():
        for name, files in (("lj", LJ_ENROLL), ("p287", P287_ENROLL)):
            user = User(name=name, display_name="")
            user.voiceprint = Voiceprint.from_embeddings(
                np.stack([engines.speaker.embed(speech.load(f)) for f in files]), engines.speaker.model_id, 15.0)
            db.session.add(user)
        db.session.commit()
    assert _verify(app, LJ_TEST, speech, "lj")["state"] == "accept"
    assert _verify(app, P287_TEST, speech, "lj")["state"] == "reject"
    found = _verify(app, P287_TEST, speech, None)
    assert (found["state"], found["user"]) == ("accept", "p287"), found
