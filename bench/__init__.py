"""VoiceGate's benchmark suite: the service measured as a client meets it (python -m bench).

Each module here that runs (``python -m bench.<name>``) checks figures that docs/benchmarks.md,
docs/threshold.md, docs/deployment.md, docs/konele.md or the README quote; studies whose
decision is made are in bench/studies/. Shared locations: bench/paths.py; the held-out cohort
speakers: bench/cohort.py.
"""
