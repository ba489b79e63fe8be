"""Dictation gated by identity: the enrolled voice gets text, any other voice gets none."""
from __future__ import annotations

import json

import jiwer
import numpy as np
import pytest
from whisper_normalizer.english import EnglishTextNormalizer

from app.gate.stream import joined
from bench import calls
from clients import voicegate as client

from .conftest import metric, pause_decodes, serve_enrolled

normalise = EnglishTextNormalizer()


@pytest.fixture(scope="module")
def server(tmp_path_factory, engines, speech):
    """A server where the LJ Speech reader is enrolled as 'lj'."""
    # Impostor tests reject utterances of 'lj' from this one address; limits are tested elsewhere.
    live, stop = serve_enrolled(tmp_path_factory.mktemp("dictation"), engines, speech, POLICY_LOCKOUT_ATTEMPTS=1000,
                                POLICY_LOCKOUT_CLIENT_ATTEMPTS=1000, POLICY_LOCKOUT_DELAY=0)
    yield live
    stop()


def _dictate(server, speech, files, realtime=False):
    replies = []
    final = client.run("dictate", [speech.path(f) for f in files], server.ws_url, user="lj", realtime=realtime,
                       echo=lambda line: replies.append(json.loads(line)))
    assert final["type"] == "result", final
    return replies, final


def _transcript(speech, file):
    return next(u.transcript for u in speech.utterances if u.file == file)


def _finals_decoded_ahead(server) -> float:
    """Return the server's count of live finals decoded mostly while the person spoke (/metrics)."""
    return metric(server.url, 'voicegate_live_final_transcripts_total{source="ahead"}')


def test_the_enrolled_voice_gets_partials_and_its_words(server, speech):
    """Spoken in real time, the sentence is decoded while it is spoken: its final waits only for the rest."""
    file = "wav/ljspeech/LJ001-0001.wav"
    before = _finals_decoded_ahead(server)
    # Pieces are decoded ahead only on a worker nothing else needs (courtesy work), and a loaded CI
    # machine (2026-12-07: beside a CPU-bound process and another test) gave one dictation none of
    # its pauses with a worker free: a few tries, each held to every other assertion.
    for attempt in range(3):
        replies, final = _dictate(server, speech, [file], realtime=True)
        finals = [r for r in replies if r["type"] == "final"]
        partials = [r for r in replies if r["type"] == "partial"]
        text = " ".join(r["text"] for r in finals if r["state"] == "accept")
        wer = jiwer.wer(normalise(_transcript(speech, file)), normalise(text))
        print(f"\nattempt {attempt + 1}: {len(partials)} partials, {len(finals)} finals, WER {wer:.1%}: {text}")
        assert final["accepted"] >= 1 and final["rejected"] == 0
        # About one a second while a 9.7 s sentence is spoken on an idle server; partials wait for an
        # idle worker (they never delay a decision), so a loaded machine shows fewer, never none.
        assert partials
        assert wer <= 0.15
        # Its pauses (a 9.7 s sentence has several) let settled pieces be decoded on an idle worker.
        if _finals_decoded_ahead(server) >= before + 1:
            break
    else:
        pytest.fail("no final of three was decoded ahead, while the person spoke")


def test_an_impostor_gets_no_text_at_all(server, speech):
    replies, final = _dictate(server, speech, ["wav/vctk-p287/p287_003.wav", "wav/librivox-sas01/sense_and_sensibility_01_austen_64kb-0870.wav"])
    assert final["accepted"] == 0 and final["rejected"] >= 1
    assert not [r for r in replies if r["type"] == "partial"]
    assert all(r["text"] is None and r["state"] == "reject" for r in replies if r["type"] == "final")


def test_when_another_voice_takes_over_only_the_first_half_is_written(server, speech):
    first, second = "wav/ljspeech/LJ001-0004.wav", "wav/vctk-p287/p287_003.wav"
    # In real time: what is decoded while the owner speaks must hold no word of the voice after.
    replies, final = _dictate(server, speech, [first, second], realtime=True)
    finals = [r for r in replies if r["type"] == "final"]
    text = normalise(" ".join(r["text"] for r in finals if r["state"] == "accept"))
    print(f"\nfinals: {[(r['state'], r['start'], r['end'], r['text']) for r in finals]}")
    assert final["accepted"] >= 1 and final["rejected"] >= 1
    assert jiwer.wer(normalise(_transcript(speech, first)), text) <= 0.2
    intruder_words = set(normalise(_transcript(speech, second)).split()) - set(normalise(_transcript(speech, first)).split())
    assert not intruder_words & set(text.split()), text


def test_another_voice_for_under_a_second_after_the_last_word_is_not_written(server, speech, engines):
    """The newest second of the last window is checked alone (dictation.END_SECONDS): 0.6 s of another
    voice right after the user's last word was written as the user's before (docs/protocol.md)."""
    first, second = "wav/ljspeech/LJ001-0004.wav", "wav/vctk-p287/p287_003.wav"
    owner, intruder = speech.load(first), speech.load(second)
    voiced = engines.vad.segments(intruder)[0].start
    spoken_until = engines.vad.segments(owner)[-1].end
    audio = np.concatenate([owner[:spoken_until], intruder[voiced:voiced + 9600]])
    for realtime in (True, False):
        outcome = calls.dictate(server.ws_url, "lj", audio, realtime=realtime)
        print(f"\nfinals: {[(f['state'], f['start'], f['end'], f.get('text')) for f in outcome.finals]}")
        assert outcome.count("accept") >= 1 and outcome.count("reject") >= 1, outcome.finals
        text = normalise(outcome.text)
        assert jiwer.wer(normalise(_transcript(speech, first)), text) <= 0.35, text
        intruder_words = set(normalise(_transcript(speech, second)).split()) - set(normalise(_transcript(speech, first)).split())
        assert not intruder_words & set(text.split()), text


def test_a_final_is_decoded_at_the_pause_that_ends_it(server, speech, engines):
    """Live, an utterance's last checks and its text are done in the pause before the end is known
    (stream.GatedStream._prepare_end): the end then only sends them. Decided as a whole upload is."""
    file = "wav/ljspeech/LJ001-0004.wav"
    owner = speech.load(file)
    audio = np.concatenate([owner[:engines.vad.segments(owner)[-1].end], np.zeros(12800, dtype=np.float32)])
    upload = calls.dictate(server.ws_url, "lj", audio, realtime=False)
    decided = [(f["state"], f["start"], f["end"]) for f in upload.finals]
    used = pause_decodes(server.url, "used")
    # A loaded machine may still be busy with the utterance's other work when the pause ends it, so a few tries.
    for attempt in range(3):
        live = calls.dictate(server.ws_url, "lj", audio, realtime=True)
        print(f"\nattempt {attempt + 1}, finals: {[(f['state'], f['start'], f['end'], f.get('text')) for f in live.finals]}")
        assert [(f["state"], f["start"], f["end"]) for f in live.finals] == decided
        assert jiwer.wer(normalise(_transcript(speech, file)), normalise(live.text)) <= 0.15, live.text
        if pause_decodes(server.url, "used") > used:
            break
    else:
        pytest.fail("no final of three was decoded at its pause")


def test_text_decoded_at_a_pause_is_dropped_when_another_voice_follows(server, speech, engines):
    """0.4 s of silence is a pause that may end the utterance; another voice right after it makes the
    end's text there wrong for the utterance that goes on: it is never sent."""
    first, second = "wav/ljspeech/LJ001-0004.wav", "wav/vctk-p287/p287_003.wav"
    owner, intruder = speech.load(first), speech.load(second)
    voiced = engines.vad.segments(intruder)[0].start
    audio = np.concatenate([owner[:engines.vad.segments(owner)[-1].end], np.zeros(6400, dtype=np.float32),
                            intruder[voiced:]])
    used, dropped = pause_decodes(server.url, "used"), pause_decodes(server.url, "dropped")
    outcome = calls.dictate(server.ws_url, "lj", audio, realtime=True)
    print(f"\nfinals: {[(f['state'], f['start'], f['end'], f.get('text')) for f in outcome.finals]}, "
          f"{pause_decodes(server.url, 'dropped') - dropped:g} decoded at a pause and dropped")
    assert outcome.count("reject") >= 1
    text = normalise(outcome.text)
    intruder_words = set(normalise(_transcript(speech, second)).split()) - set(normalise(_transcript(speech, first)).split())
    assert not intruder_words & set(text.split()), text
    assert jiwer.wer(normalise(_transcript(speech, first)), text) <= 0.35, text
    assert pause_decodes(server.url, "used") == used


def test_short_pauses_split_utterances_and_each_is_verified(server, speech):
    files = ["wav/ljspeech/LJ001-0004.wav", "wav/ljspeech/LJ001-0006.wav"]
    replies, final = _dictate(server, speech, files)
    accepted = [r for r in replies if r["type"] == "final" and r["state"] == "accept"]
    assert final["rejected"] == 0 and len(accepted) >= 1
    text = normalise(" ".join(r["text"] for r in accepted))
    reference = normalise(" ".join(_transcript(speech, f) for f in files))
    assert jiwer.wer(reference, text) <= 0.15


def test_pieces_decoded_ahead_join_into_one_sentence():
    """Whisper closes every piece as a sentence; the next piece, in lower case, says it went on."""
    assert joined(["In the middle of the 15th century.", "may justly be", "", "considered."]) \
        == "In the middle of the 15th century may justly be considered."
    assert joined(["It ended.", "Then another began..."]) == "It ended. Then another began..."
    assert joined(["Wait...", "and see"]) == "Wait... and see"
