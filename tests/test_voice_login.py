"""Enrollment and voice login against a real server: the dev trials over WebSocket and HTTP."""
from __future__ import annotations

import hashlib
import threading
from dataclasses import replace

import numpy as np
import pytest
import requests
from sqlalchemy import inspect, text

from app.engines.fused import FUSED_DIM
from app.store.db import db
from clients import voicegate as client

from .conftest import BACKENDS, make_app, module_database_url, serve

QUIET = {"echo": lambda _line: None}

# The trials enroll on one to three short clips, fewer than the default policy asks for;
# these minimums let every trial's enrollment list stand as a user (lockout is off so that
# the impostor trials do not lock anyone out half-way).
TRIAL_POLICY = {"POLICY_ENROLL_MIN_CLIPS": 1, "POLICY_ENROLL_MIN_CLIP_SPEECH": 1.5,
                "POLICY_ENROLL_MIN_TOTAL_SPEECH": 1.5, "POLICY_LOCKOUT_ATTEMPTS": 1000,
                "POLICY_LOCKOUT_CLIENT_ATTEMPTS": 1000, "POLICY_LOCKOUT_DELAY": 0}


class RememberingEncoder:
    """The session's speaker encoder, embedding each distinct audio once and answering again from memory.

    The models keep no state between calls (app/engines/speaker.py; test_speaker checks that the
    same audio gives the same embedding), so a remembered answer is the one they would give.
    Everything else (the early frames of a streamed login, the model id) is the encoder's own.
    """

    def __init__(self, speaker):
        self._speaker = speaker
        self._embeddings: dict[bytes, np.ndarray] = {}
        self._lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self._speaker, name)

    def embed(self, audio: np.ndarray) -> np.ndarray:
        """Return the encoder's embedding of ``audio``, computed the first time this exact audio comes."""
        key = hashlib.sha256(np.ascontiguousarray(audio, dtype=np.float32).tobytes()).digest()
        with self._lock:
            known = self._embeddings.get(key)
        if known is None:
            known = self._speaker.embed(audio)
            with self._lock:
                self._embeddings[key] = known
        return known.copy()


@pytest.fixture(scope="module")
def trial_server(tmp_path_factory, engines, speech):
    """A server with one user per distinct enrollment list of the dev trials.

    The 34 lists and 80 trials are made of 21 files: they ask the encoder for 146 embeddings, of
    39 distinct audios (each clip is enrolled as heard and through the telephone channel, and
    most test files are some list's clip). The server's encoder remembers them, so the trials
    cost what the files do rather than what the lists and trials do.
    """
    app = make_app(tmp_path_factory.mktemp("trials"), replace(engines, speaker=RememberingEncoder(engines.speaker)),
                   **TRIAL_POLICY)
    server, stop = serve(app)
    users = {}
    for enroll_files, _, _ in speech.trials:
        key = ",".join(enroll_files)
        if key in users:
            continue
        name = f"trial{len(users)}"
        reply = client.run("enroll", [speech.path(f) for f in enroll_files], server.ws_url,
                           invite=server.invite(name), **QUIET)
        assert reply["state"] == "enrolled", reply
        users[key] = name
    yield server, users
    stop()


def _rates(decisions: list[tuple[bool, str]]) -> tuple[int, int, int, int]:
    false_accepts = sum(1 for same, state in decisions if not same and state == "accept")
    false_rejects = sum(1 for same, state in decisions if same and state != "accept")
    return false_accepts, sum(1 for same, _ in decisions if not same), false_rejects, sum(1 for same, _ in decisions if same)


def _verify_over_websocket(server, user: str, path) -> str:
    reply = client.run("verify", [path], server.ws_url, user=user, **QUIET)
    assert reply["type"] == "result" and ("score" in reply) == (reply["state"] == "accept")
    return reply["state"]


def _verify_over_http(server, user: str, path) -> str:
    with open(path, "rb") as handle:
        response = requests.post(f"{server.url}/api/v1/verify", files={"audio": handle}, data={"user": user}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["state"]


def test_every_dev_trial_has_no_false_accept_over_the_websocket_or_http(trial_server, speech):
    # Each trial once, the two doors taking turns: both decide with the same rule (the bench
    # sends every trial through both and reports how often they agree: bench/sv.py), so each door
    # sees half the trials, genuine and impostor alike, and the suite does not pay for every verification twice.
    server, users = trial_server
    decisions = {"WebSocket": [], "HTTP": []}
    for index, (enroll_files, test_file, same) in enumerate(speech.trials):
        # The trials list a genuine and an impostor trial in turn, so the doors take turns by pairs.
        door, verify = [("WebSocket", _verify_over_websocket), ("HTTP", _verify_over_http)][index // 2 % 2]
        decisions[door].append((same, verify(server, users[",".join(enroll_files)], speech.path(test_file))))
    for door, made in decisions.items():
        fa, impostors, fr, targets = _rates(made)
        print(f"\n{door}: false accepts {fa}/{impostors}, false rejects {fr}/{targets} (FRR {fr / targets:.1%})")
        assert impostors >= 10 and targets >= 10  # both kinds of trial through each door
        assert fa == 0, door
    fa, impostors, fr, targets = _rates(decisions["WebSocket"] + decisions["HTTP"])
    assert fr / targets <= 0.05


ENROLLABLE = {  # the dev speakers with enough speech for the default policy (3 clips, 15 s)
    "ljspeech": ["wav/ljspeech/LJ001-0001.wav", "wav/ljspeech/LJ001-0003.wav", "wav/ljspeech/LJ001-0005.wav"],
    "vctk": ["wav/vctk-p287/p287_003.wav", "wav/vctk-p287/p287_005.wav", "wav/vctk-p287/p287_006.wav",
             "wav/vctk-p287/p287_004.wav"],
    "librivox": ["wav/librivox-sas01/sense_and_sensibility_01_austen_64kb-0870.wav",
                 "wav/librivox-sas01/sense_and_sensibility_01_austen_64kb-0890.wav",
                 "wav/librivox-sas01/sense_and_sensibility_01_austen_64kb-0920.wav",
                 "wav/librivox-sas01/sense_and_sensibility_01_austen_64kb-0930.wav"],
}


@pytest.fixture(scope="module", params=BACKENDS)
def default_server(request, tmp_path_factory, engines, speech):
    """A server with the default policy and three dev speakers enrolled over the WebSocket, on each database."""
    folder = tmp_path_factory.mktemp("default")
    app = make_app(folder, engines, DATABASE_URL=module_database_url(request, folder))
    server, stop = serve(app)
    progress = {}
    for name, files in ENROLLABLE.items():
        replies = []
        final = client.run("enroll", [speech.path(f) for f in files], server.ws_url, invite=server.invite(name),
                           echo=replies.append)
        assert final["state"] == "enrolled", final
        progress[name] = [r for r in map(__import__("json").loads, replies) if r["type"] == "progress"]
    yield server, progress
    stop()


def _rows(server, sql: str) -> list[tuple]:
    """Return the rows of a query on the server's database."""
    with server.app.app_context():
        return [tuple(row) for row in db.session.execute(text(sql))]


def test_enrollment_reports_progress_and_stores_only_embeddings(default_server):
    server, progress = default_server
    for name, steps in progress.items():
        percents = [step["percent"] for step in steps]
        assert percents == sorted(percents) and percents[-1] == 100
        assert all(step["clip"]["accepted"] for step in steps)
    rows = _rows(server,
        "SELECT u.name, v.clip_count, v.dim, length(v.centroid), length(v.clip_embeddings), v.speech_seconds "
        "FROM users u JOIN voiceprints v ON v.user_id = u.id ORDER BY u.name")
    assert [r[0] for r in rows] == ["librivox", "ljspeech", "vctk"]
    for _, clips, dim, centroid_bytes, clip_bytes, speech_seconds in rows:
        # float32 embeddings, sealed (app/store/vault.py: a version byte, a nonce and a tag around them).
        sealed = 1 + 12 + 16
        # Both speaker models' embeddings side by side (app/engines/fused.py): 384 floats.
        assert dim == FUSED_DIM and centroid_bytes == dim * 4 + sealed and clip_bytes == clips * dim * 4 + sealed
        assert speech_seconds >= 15.0
    # An invite is good for one enrollment only.
    assert _rows(server, "SELECT COUNT(*) FROM enrollment_invites WHERE used_at IS NULL") == [(0,)]


def test_identification_names_the_speaker_or_nobody(default_server, speech):
    server, _ = default_server
    known = client.run("verify", [speech.path("wav/ljspeech/LJ001-0004.wav")], server.ws_url, **QUIET)
    assert (known["state"], known["user"]) == ("accept", "ljspeech")
    assert known["score"] - known["runner_up_score"] >= 0.10
    stranger = client.run("verify", [speech.path("wav/arctic-aew/arctic_a0001.wav")], server.ws_url, **QUIET)
    assert stranger["state"] == "reject" and stranger["user"] is None and "token" not in stranger


def test_states_for_silence_short_speech_and_unenrolled_users(default_server, speech):
    server, _ = default_server
    silence = np.zeros(16000 * 3, dtype=np.int16).tobytes()
    reply = requests.post(f"{server.url}/api/v1/verify?user=ljspeech&encoding=pcm_s16le&sample_rate=16000",
                          data=silence, timeout=30).json()
    assert reply["state"] == "no_speech" and "score" not in reply
    short = (speech.load("wav/ljspeech/LJ001-0004.wav")[16000:25600] * 32767).astype("<i2").tobytes()
    reply = requests.post(f"{server.url}/api/v1/verify?user=ljspeech&encoding=pcm_s16le&sample_rate=16000",
                          data=short, timeout=30).json()
    assert reply["state"] == "not_enough_speech"
    server.app.test_cli_runner().invoke(args=["users", "create", "newcomer"])
    with open(speech.path("wav/ljspeech/LJ001-0004.wav"), "rb") as handle:
        reply = requests.post(f"{server.url}/api/v1/verify", data={"user": "newcomer"}, files={"audio": handle}, timeout=30)
    # A stranger cannot tell an unenrolled or unknown name from a wrong voice.
    assert reply.status_code == 200 and reply.json()["state"] == "reject"
    with open(speech.path("wav/ljspeech/LJ001-0004.wav"), "rb") as handle:
        unknown = requests.post(f"{server.url}/api/v1/verify", data={"user": "nobody"}, files={"audio": handle}, timeout=30)
    assert unknown.status_code == 200 and unknown.json()["state"] == "reject"
    assert set(unknown.json()) == set(reply.json())


def test_a_token_from_voice_login_lets_the_user_transcribe_their_own_voice_only(default_server, speech):
    server, _ = default_server
    login = client.run("verify", [speech.path("wav/vctk-p287/p287_002.wav")], server.ws_url, user="vctk", **QUIET)
    assert login["state"] == "accept"
    headers = {"Authorization": f"Bearer {login['token']}"}
    with open(speech.path("wav/vctk-p287/p287_002.wav"), "rb") as handle:
        own = requests.post(f"{server.url}/api/v1/transcribe", headers=headers, files={"audio": handle}, timeout=60).json()
    assert own["state"] == "accept" and "with her from the store" in own["text"].lower()
    with open(speech.path("wav/ljspeech/LJ001-0004.wav"), "rb") as handle:
        other = requests.post(f"{server.url}/api/v1/transcribe", headers=headers, files={"audio": handle}, timeout=60).json()
    assert other["state"] == "reject" and other["text"] is None
    forged = requests.post(f"{server.url}/api/v1/transcribe", headers={"Authorization": "Bearer forged.token.here"},
                           data=b"", timeout=30)
    assert forged.status_code == 401 and forged.json()["error"]["code"] == "bad_token"
    status = requests.get(f"{server.url}/api/v1/users/vctk/enrollment", headers=headers, timeout=30)
    assert status.json()["enrolled"] is True and status.json()["clips"] == 3  # 18.8 s of speech after three
    assert requests.get(f"{server.url}/api/v1/users/vctk/enrollment", timeout=30).status_code == 401


def test_every_decision_is_audited_without_audio_or_text(default_server):
    server, _ = default_server
    with server.app.app_context():
        columns = [column["name"] for column in inspect(db.engine).get_columns("audit_events")]
    assert not {"audio", "text", "transcript"} & set(columns)
    kinds = dict(_rows(server, "SELECT kind, COUNT(*) FROM audit_events GROUP BY kind"))
    assert kinds.get("enroll", 0) >= 11 and kinds.get("verify", 0) >= 1 and kinds.get("identify", 0) >= 2
    decisions = {row[0] for row in _rows(server, "SELECT decision FROM audit_events")}
    assert {"clip_accepted", "enrolled", "accept", "reject"} <= decisions


def test_several_sessions_at_once_each_get_their_own_answer(default_server, speech):
    from concurrent.futures import ThreadPoolExecutor

    server, _ = default_server
    cases = [("ljspeech", "wav/ljspeech/LJ001-0004.wav", "accept"), ("vctk", "wav/vctk-p287/p287_002.wav", "accept"),
             ("librivox", "wav/librivox-sas01/sense_and_sensibility_01_austen_64kb-0880.wav", "accept"),
             ("ljspeech", "wav/vctk-p287/p287_002.wav", "reject"), ("vctk", "wav/ljspeech/LJ001-0006.wav", "reject"),
             ("librivox", "wav/arctic-axb/arctic_a0004.wav", "reject")]

    def login(case):
        user, file, _ = case
        return client.run("verify", [speech.path(file)], server.ws_url, user=user, **QUIET)

    with ThreadPoolExecutor(len(cases)) as threads:
        replies = list(threads.map(login, cases))
    # A busy server may refuse (never hang); every answer given must be the right one.
    answered = [(case, reply) for case, reply in zip(cases, replies) if reply.get("code") != "busy"]
    assert len(answered) >= 4
    assert all(reply["state"] == expected for (_, _, expected), reply in answered)
