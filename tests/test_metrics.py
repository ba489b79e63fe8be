"""GET /metrics on a real server: counters move with a real verification; access is local or by token."""
from __future__ import annotations

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from app.protocols.openapi import SPEC

from .conftest import make_app, serve_enrolled

GENUINE = "wav/ljspeech/LJ001-0004.wav"


def scrape(url: str, **headers) -> dict[tuple[str, tuple], float]:
    """Return every sample of /metrics by (name, sorted labels)."""
    response = requests.get(f"{url}/metrics", headers=headers, timeout=10)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


@pytest.fixture(scope="module")
def server(tmp_path_factory, engines, speech):
    # Enrolled here, not copied: the scrape below counts this enrollment.
    live, stop = serve_enrolled(tmp_path_factory.mktemp("metrics"), engines, speech, enroll_here=True,
                                POLICY_LOCKOUT_ATTEMPTS=1000)
    yield live
    stop()


def test_a_scrape_after_a_verification_shows_the_counters_moving(server, speech):
    accept = ("voicegate_decisions_total", (("kind", "verify"), ("state", "accept"), ("surface", "http")))
    checks = ("voicegate_verification_seconds_count", ())
    before = scrape(server.url)
    assert before[("voicegate_model_loaded", (("model", "speaker"), ("name", "ecapa")))] == 1
    assert before[("voicegate_model_load_failed", ())] == 0
    assert before[("voicegate_pool_queue_depth", ())] == 0 and before[("voicegate_live_streams", ())] == 0
    assert before[("voicegate_live_streams_limit", ())] >= 1
    # The enrollment of the fixture was counted too.
    assert before[("voicegate_decisions_total", (("kind", "enroll"), ("state", "enrolled"), ("surface", "ws")))] >= 1

    with open(speech.path(GENUINE), "rb") as handle:
        audio = handle.read()
    # One voice login: one decision, one voice check.
    answer = requests.post(f"{server.url}/api/v1/verify", params={"user": "lj"}, data=audio, timeout=60).json()
    assert answer["state"] == "accept"
    # (A real accept has the documented shape too: schemathesis' random audio never gets this far.)
    assert set(SPEC["components"]["schemas"]["Decision"]["required"]) <= set(answer) and answer["token"]
    after = scrape(server.url)
    assert after[accept] == before.get(accept, 0) + 1
    assert after[checks] == before[checks] + 1
    assert after[("voicegate_verification_seconds_sum", ())] > before[("voicegate_verification_seconds_sum", ())]

    # One transcription: its segments are decided (each checked on sliding windows) and transcribed.
    answer = requests.post(f"{server.url}/api/v1/transcribe", params={"user": "lj"}, data=audio, timeout=60).json()
    assert answer["state"] == "accept" and answer["text"]
    accepted = sum(segment["state"] == "accept" for segment in answer["segments"])
    final = scrape(server.url)
    transcribe = ("voicegate_decisions_total", (("kind", "transcribe"), ("state", "accept"), ("surface", "http")))
    assert final[transcribe] == after.get(transcribe, 0) + accepted
    finals = ("voicegate_final_transcript_seconds_count", ())
    assert final[finals] >= after[finals] + 1 and final[checks] > after[checks]
    assert final[accept] == after[accept]  # a transcription is not a login


def test_metrics_are_for_this_machine_or_for_the_token(tmp_path, engines):
    local = make_app(tmp_path / "local", engines)
    client = local.test_client()
    assert client.get("/metrics").status_code == 200  # the test client comes from 127.0.0.1
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "10.1.2.3"}).status_code == 403
    guarded = make_app(tmp_path / "token", engines, METRICS_TOKEN="s3cret-metrics")
    client = guarded.test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    answer = client.get("/metrics", headers={"Authorization": "Bearer s3cret-metrics"},
                        environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert answer.status_code == 200 and b"voicegate_decisions_total" in answer.data
