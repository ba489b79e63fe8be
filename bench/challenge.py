"""Voice login with the spoken challenge on, on the digits set: false rejects and false accepts.

    nice python -m bench.challenge [--digits DIR] [--trials 8] [--out bench/results/challenge.json]

Each speaker of ../shared/data/digits enrolls from three clips of "0 1 2 ... 9" (repetitions
0, 1 and 2 of each digit, joined with pauses). Every attempt asks the running app for a
challenge (POST /api/v1/challenge) and answers it (POST /api/v1/verify with challenge=ID):

- genuine: the speaker says the challenge's digits (repetitions 3 and 4, never enrolled);
- impostor: another speaker says the right digits;
- replay_enrollment: an enrollment clip played back, as is and through Opus 12 kbit/s;
- replay_accepted: the audio of an earlier accepted login sent for a new challenge, as is and through Opus;
- spliced: the challenge's digits cut from the speaker's own enrollment clips (an attacker who
  recorded the enrollment), as is and through Opus.

Reports the false-reject rate of genuine attempts and the false-accept rate of the others,
with the states they got; docs/benchmarks.md and docs/threshold.md record the figures.
"""
from __future__ import annotations

import argparse
import io
import os
import random
import tempfile
import wave
from collections import Counter
from pathlib import Path

import numpy as np

from app import create_app
from app.engines.runtime import load_engines

from .data import wav_bytes
from .output import save
from .replay import opus
from .paths import RESULTS, ROOT

DEFAULT_DIGITS = Path(os.environ.get("VOICEGATE_DIGITS", ROOT.parent / "shared" / "data" / "digits"))
ENROLL_REPS, TEST_REPS = (0, 1, 2), (3, 4)


def load(path: Path) -> np.ndarray:
    with wave.open(str(path)) as handle:
        return np.frombuffer(handle.readframes(handle.getnframes()), dtype="<i2").astype(np.float32) / 32768


def join(parts: list[np.ndarray], rng: random.Random) -> np.ndarray:
    """Join digit recordings with pauses of 0.25-0.5 s, as a person reading digits would."""
    out = [np.zeros(int(16000 * 0.3), np.float32)]
    for part in parts:
        out += [part, np.zeros(int(16000 * rng.uniform(0.25, 0.5)), np.float32)]
    return np.concatenate(out)


class Login:
    """Challenge-and-answer logins against one app, each from its own client address."""

    def __init__(self, app):
        self.client = app.test_client()
        self.count = 0

    def attempt(self, user: str, answer) -> tuple[str, bool]:
        """Ask for a challenge, build the audio with ``answer(digits)``, verify; return (state, token given)."""
        self.count += 1
        env = {"REMOTE_ADDR": f"10.{self.count // 250}.{self.count % 250}.1"}
        issued = self.client.post("/api/v1/challenge", data={"user": user}, environ_base=env).get_json()
        audio = answer(issued["text"].replace(" ", ""))
        reply = self.client.post("/api/v1/verify", environ_base=env, content_type="multipart/form-data", data={
            "user": user, "challenge": issued["challenge"], "audio": (io.BytesIO(wav_bytes(audio)), "a.wav")})
        body = reply.get_json()
        if reply.status_code != 200:
            return body["error"]["code"], False
        return body["state"], "token" in body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--digits", type=Path, default=DEFAULT_DIGITS)
    parser.add_argument("--trials", type=int, default=8, help="genuine and impostor attempts per speaker")
    parser.add_argument("--out", type=Path, default=RESULTS / "challenge.json")
    args = parser.parse_args(argv)
    rng = random.Random(12)
    wav = args.digits / "wav"
    speakers = sorted(p.name for p in wav.iterdir() if p.is_dir())
    recordings = {s: {(d, r): load(wav / s / f"{d}_{r}.wav") for d in range(10) for r in range(5)} for s in speakers}
    engines = load_engines(os.environ.get("VOICEGATE_MODELS_DIR", ROOT / "pretrained_models"), "tiny.en",
                           workers=1, queue=8)
    outcomes: dict[str, list[tuple[str, bool]]] = {}
    try:
        with tempfile.TemporaryDirectory() as folder:
            app = create_app({"SECRET_KEY": "bench", "INSTANCE_PATH": folder,
                              "DATABASE_URL": f"sqlite:///{folder}/bench.db", "POLICY_CHALLENGE": "digits",
                              "POLICY_ENROLL_MIN_TOTAL_SPEECH": 6.0, "POLICY_ENROLL_MIN_CLIP_SPEECH": 2.0},
                             engines=engines)
            from flask_migrate import upgrade

            from app.gate import store
            from app.store.db import db
            from app.store.models import User

            enroll_clips = {}
            with app.app_context():
                upgrade()
                for speaker in speakers:
                    clips = [join([recordings[speaker][(d, r)] for d in range(10)], rng) for r in ENROLL_REPS]
                    enroll_clips[speaker] = clips
                    db.session.add(User(name=speaker))
                    db.session.commit()
                    store.save_voiceprint(User.by_name(speaker).id, np.stack([engines.speaker.embed(c) for c in clips]),
                                          engines.speaker.model_id, 15.0, None,
                                          store.Audit("bench", "enroll", "bench", "enrolled", claimed_user=speaker))
            login = Login(app)

            def record(kind: str, outcome: tuple[str, bool]) -> None:
                outcomes.setdefault(kind, []).append(outcome)

            def said(speaker: str, digits: str) -> np.ndarray:
                return join([recordings[speaker][(int(d), rng.choice(TEST_REPS))] for d in digits], rng)

            def spliced(speaker: str, digits: str) -> np.ndarray:
                return join([recordings[speaker][(int(d), rng.choice(ENROLL_REPS))] for d in digits], rng)

            for speaker in speakers:
                accepted_audio = []
                for _ in range(args.trials):
                    kept = {}

                    def genuine(digits, kept=kept):
                        kept["audio"] = said(speaker, digits)
                        return kept["audio"]

                    outcome = login.attempt(speaker, genuine)
                    record("genuine", outcome)
                    if outcome[0] == "accept":
                        accepted_audio.append(kept["audio"])
                others = [s for s in speakers if s != speaker]
                for index in range(args.trials):
                    other = others[index % len(others)]
                    record("impostor", login.attempt(speaker, lambda digits, other=other: said(other, digits)))
                for clip in enroll_clips[speaker]:
                    record("replay_enrollment", login.attempt(speaker, lambda _digits, clip=clip: clip))
                    record("replay_enrollment", login.attempt(speaker, lambda _digits, clip=clip: opus(clip, 12000)))
                for audio in accepted_audio[:3]:
                    record("replay_accepted", login.attempt(speaker, lambda _digits, audio=audio: audio))
                    record("replay_accepted", login.attempt(speaker, lambda _digits, audio=audio: opus(audio, 12000)))
                for _ in range(3):
                    record("spliced", login.attempt(speaker, lambda digits: spliced(speaker, digits)))
                    record("spliced", login.attempt(speaker, lambda digits: opus(spliced(speaker, digits), 12000)))
                print(speaker, {k: Counter(s for s, _ in v[-args.trials:]) for k, v in outcomes.items()}, flush=True)
    finally:
        engines.pool.shutdown()
    result = {"speakers": len(speakers), "trials_per_speaker": args.trials}
    for kind, values in outcomes.items():
        passed = sum(1 for state, token in values if state == "accept" and token)
        rate = (len(values) - passed) / len(values) if kind == "genuine" else passed / len(values)
        result[kind] = {"n": len(values), "frr" if kind == "genuine" else "far": round(rate, 4),
                        "states": dict(Counter(state for state, _ in values))}
    save(result, args.out, shown=result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
