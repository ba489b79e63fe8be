"""bench.fusion's pieces on hand-built scores: the speaker halves, the threshold at a FAR, the logistic fusion."""
from __future__ import annotations

import numpy as np
import pytest

from bench import fusion


def test_halves_split_every_collection_and_share_no_speaker():
    speakers = [f"vctk-p22{i}" for i in range(4)] + [f"speechocean-{i:04d}" for i in range(5)] + ["asterisk-it-x"]
    first, second = fusion.folds(speakers)
    assert first.isdisjoint(second) and first | second == set(speakers)
    for collection in ("vctk", "speechocean"):
        assert {s for s in first if s.startswith(collection)} and {s for s in second if s.startswith(collection)}
    assert abs(len(first) - len(second)) <= 1


def test_threshold_at_a_far_accepts_at_most_that_share_of_impostors():
    impostor = np.arange(1000, dtype=float)
    cut = fusion.threshold_at(impostor, 0.005)
    assert (impostor >= cut).sum() == 5
    genuine = np.array([994.0, 995.0, 996.0, 2000.0])
    assert fusion.frr_at_far(genuine, impostor, 0.005) == pytest.approx(0.25)


def test_fusion_learns_to_lean_on_the_score_that_separates():
    rng = np.random.default_rng(0)
    target = np.repeat([True, False], [500, 5000])
    good = np.where(target, 0.7, 0.1) + rng.normal(0, 0.1, target.size)
    noise = rng.normal(0, 0.1, target.size)  # tells nothing about who speaks
    trials = fusion.Trials({"ecapa": noise, "campplus": good}, np.full(target.size, 4.0), target,
                           np.full(target.size, "clean"))
    fitted = fusion.Fusion(speech=False).fit(trials)
    weights = fitted.about()["weights"]
    assert weights["z_campplus"] > 5 * abs(weights["z_ecapa"])
    scores = fitted(trials)
    assert fusion.figures(scores, target)["eer"] <= fusion.figures(good, target)["eer"] + 1e-9
