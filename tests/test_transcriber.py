"""faster-whisper tiny.en on the dev transcripts: word error rate after normalisation."""
from __future__ import annotations

import jiwer
from whisper_normalizer.english import EnglishTextNormalizer


def test_tiny_en_word_error_rate_is_at_most_ten_percent(engines, speech):
    normalise = EnglishTextNormalizer()
    references, hypotheses = [], []
    for utterance in speech.utterances:
        if not utterance.transcript or utterance.language != "en":
            continue
        text = engines.transcriber.transcribe(speech.load(utterance.file)).text
        references.append(normalise(utterance.transcript))
        hypotheses.append(normalise(text))
    wer = jiwer.wer(references, hypotheses)
    print(f"\ntiny.en WER on {len(references)} dev utterances: {wer:.1%}")
    assert len(references) == 21
    assert wer <= 0.10

