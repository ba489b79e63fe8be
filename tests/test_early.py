"""A voice login spoken live is decided from the work done while the person spoke (app/gate/early.py).

The server embeds the frames of what was said so far during the login; after ``stop`` only the
last frames are left. The estimate is close to the whole utterance's embedding, and a decision
near a threshold is made on the whole utterance.
"""
from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import websocket

from app.engines.speaker import PREFIX_CONTEXT, Cancel, Cancelled, cosine
from app.gate import early
from bench.data import pcm16

from .conftest import PCM16K, serve_enrolled

LOGIN = "wav/ljspeech/LJ001-0004.wav"  # 5.1 s, not one of the enrollment clips
STRANGER = "wav/librivox-sas01/sense_and_sensibility_01_austen_64kb-0930.wav"
SAME = 2e-4  # scores of one embedding, rounded, computed on one thread or two


@pytest.fixture(scope="module")
def server(tmp_path_factory, engines, speech):
    live, stop = serve_enrolled(tmp_path_factory.mktemp("early"), engines, speech)
    yield live
    stop()


def speak(live, user: str, audio: np.ndarray, live_pace: bool = True) -> dict:
    """Log in as ``user`` over the WebSocket; return the result.

    ``live_pace``: all but the last 0.3 s of ``audio`` is sent in 100 ms frames at 1.5 times
    real-time pace; once the server has finished its work on what came (its inference pool is
    idle, as it is while a person speaks in real time on a machine that keeps up), 10 ms more,
    which start its work on all of it; once that is done too, the rest and ``stop``. Else
    everything at once, as a file is sent.
    """
    ws = websocket.create_connection(live.ws_url, timeout=60)
    try:
        ws.send(json.dumps({"type": "start", "mode": "verify", "user": user, "format": PCM16K}))
        assert json.loads(ws.recv())["type"] == "ready"
        end = audio.size - 4800
        if live_pace:
            for start in range(0, end, 1600):
                ws.send_binary(pcm16(audio[start:min(start + 1600, end)]))
                time.sleep(0.1 / 1.5)
            _wait_until_idle(live)
            ws.send_binary(pcm16(audio[end:end + 160]))
            _wait_until_idle(live)
            end += 160
        else:
            ws.send_binary(pcm16(audio[:end]))
        ws.send_binary(pcm16(audio[end:]))
        ws.send(json.dumps({"type": "stop"}))
        while True:
            reply = json.loads(ws.recv())
            if reply["type"] in ("result", "error"):
                return reply
    finally:
        ws.close()


def _wait_until_idle(live, bound: float = 120.0) -> None:
    """Wait until the server's inference pool has no call running or queued (GET /metrics), at most ``bound`` s.

    A frame starts a prefix only once the server has read it: a pause first lets it do so.
    """
    deadline = time.monotonic() + bound
    time.sleep(0.5)
    while time.monotonic() < deadline:
        text = requests.get(f"{live.url}/metrics", timeout=10).text
        if re.search(r"^voicegate_pool_queue_depth 0(\.0)?$", text, re.M):
            return
        time.sleep(0.05)
    raise AssertionError(f"the server's inference pool was still busy after {bound:g} s")


def whole(live, user: str, path) -> dict:
    """Verify the file in one HTTP request: decided on the whole utterance."""
    reply = requests.post(f"{live.url}/api/v1/verify", params={"user": user}, data=path.read_bytes(),
                          headers={"Content-Type": "audio/wav"}, timeout=60)
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_the_estimate_from_a_prefix_is_the_embedding_or_close_to_it(engines, speech):
    speaker = engines.speaker
    assert speaker.streams  # the service's ONNX runtime splits ECAPA into frames and pooling
    audio = speech.load(LOGIN)
    exact = speaker.embed(audio)
    # ECAPA's part: a prefix too short to keep any frame leaves every frame to compute, the embedding itself.
    ecapa = speaker.ecapa
    assert cosine(ecapa.embed_after(audio, ecapa.prefix(audio[:4000])), ecapa.embed(audio)) > 0.99999
    # A prefix that ends 0.5 s before the end leaves under half of ECAPA's frames, and CAM++'s
    # embedding of the beginning stands for the whole: the fused vector moves little.
    prefix = speaker.prefix(audio[:audio.size - 8000])
    assert prefix.samples == audio.size - 8000
    left = audio.size // 160 + 1 - (prefix.ecapa.frames.shape[1] - PREFIX_CONTEXT)
    assert left < 0.5 * (audio.size // 160 + 1)
    assert 0.98 < cosine(speaker.embed_after(audio, prefix), exact) < 0.99999
    with pytest.raises(ValueError):
        speaker.embed_after(audio[:8000], prefix)


@pytest.mark.parametrize("part", ["fused", "campplus"])
def test_a_prefix_in_flight_ends_when_cancelled(engines, speech, part):
    # Both models' calls stop, so that the login's own decision finds the cores free.
    work = engines.speaker.prefix if part == "fused" else engines.speaker.campplus.embed
    clip = speech.load(LOGIN)
    began = time.monotonic()
    work(clip, Cancel())
    one = time.monotonic() - began  # on this machine as loaded now: the 41 s below take about 8 times as long
    audio = np.tile(clip, 8)  # 41 s: seconds of work, caught while running
    cancel = Cancel()
    with ThreadPoolExecutor(1) as runner:
        running = runner.submit(work, audio, cancel)
        time.sleep(0.05)
        began = time.monotonic()
        cancel()
        with pytest.raises(Cancelled):
            running.result(timeout=60)
        # Ended in well under half of the uncancelled work's time, however loaded the machine.
        assert time.monotonic() - began < max(1.0, 4 * one)


def embedded(live) -> dict[str, float]:
    """Return the server's counts of streamed logins by how they were embedded (GET /metrics)."""
    text = requests.get(f"{live.url}/metrics", timeout=10).text
    found = re.findall(r'^voicegate_streamed_login_embeddings_total\{source="(\w+)"\} (\S+)$', text, re.M)
    return {source: float(count) for source, count in found}


def test_a_login_spoken_live_is_decided_from_the_work_done_while_speaking(server, speech):
    audio = speech.load(LOGIN)
    reference = whole(server, "lj", speech.path(LOGIN))
    before = embedded(server)
    live = speak(server, "lj", audio)
    after = embedded(server)
    assert (live["state"], reference["state"]) == ("accept", "accept"), (live, reference)
    assert after.get("estimate", 0) == before.get("estimate", 0) + 1, (before, after, live, reference)
    assert abs(live["score"] - reference["score"]) < early.bands(early.MAX_LATE_SECONDS).raw, (live, reference)
    # Audio that arrives all at once leaves no finished prefix: decided on the whole utterance.
    at_once = speak(server, "lj", audio, live_pace=False)
    assert embedded(server).get("whole", 0) == after.get("whole", 0) + 1
    assert at_once["score"] == pytest.approx(reference["score"], abs=SAME), (at_once, reference)


def test_a_refusal_and_a_close_call_are_decided_on_the_whole_utterance(server, speech):
    audio = speech.load(LOGIN)
    reference = whole(server, "lj", speech.path(LOGIN))
    floor = server.app.config.get("POLICY_THRESHOLD")
    # The raw floor, just under the score: within any estimate's band of it.
    server.app.config["POLICY_THRESHOLD"] = reference["score"] - early.bands(0).raw / 4
    before = embedded(server)
    try:
        live = speak(server, "lj", audio)
    finally:
        if floor is None:
            server.app.config.pop("POLICY_THRESHOLD")
        else:
            server.app.config["POLICY_THRESHOLD"] = floor
    assert _on_the_whole(before, embedded(server)), (before, embedded(server))
    assert live["state"] == "accept" and live["score"] == pytest.approx(reference["score"], abs=SAME), (live, reference)
    # A refusal, however clear, is made on the whole utterance too (last: it counts as a failure).
    before = embedded(server)
    refused = speak(server, "lj", speech.load(STRANGER))
    assert refused["state"] == "reject" and "score" not in refused, refused
    assert _on_the_whole(before, embedded(server)), (before, embedded(server))


def _on_the_whole(before: dict[str, float], after: dict[str, float]) -> bool:
    """Return True when the one login between the two counts was decided on the whole utterance.

    Redecided after an estimate, or (on a machine too busy for the early pass to finish by
    ``stop``: seen beside two CPU-bound processes) embedded whole from the start; never on the
    estimate alone.
    """
    grew = {source: after.get(source, 0) - before.get(source, 0) for source in ("estimate", "redecided", "whole")}
    return grew["estimate"] == 0 and grew["redecided"] + grew["whole"] == 1
