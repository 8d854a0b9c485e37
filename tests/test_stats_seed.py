"""Seed-level inference calibrated by simulation (study-validity review, T4).

A simulated study: two training procedures, 5 seeds each, scored on one shared prompt set of 40 prompts
× 6 tasks × 4 images. A prompt's difficulty (logit, SD 1) is shared by every model; each trained model
(seed) adds its own logit offset (SD 0.3, the "modest" seed effect of the review); images are Bernoulli.
Everything is seeded and vectorised so each test takes seconds.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from lightgen.analysis import stats

N_TASKS, N_PROMPTS, N_IMAGES, N_SEEDS = 6, 40, 4, 5
SEED_SD, PROMPT_SD, BASE = 0.3, 1.0, 0.0


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def simulate(rng, n_studies, effect=0.0, n_seeds=N_SEEDS):
    """Per-prompt scores (studies, arms=2, seeds, tasks, prompts): fraction of 4 images correct."""
    u = rng.normal(0, PROMPT_SD, size=(n_studies, 1, 1, N_TASKS, N_PROMPTS))
    s = rng.normal(0, SEED_SD, size=(n_studies, 2, n_seeds, 1, 1))
    shift = np.array([0.0, effect]).reshape(1, 2, 1, 1, 1)
    k = rng.binomial(N_IMAGES, _sigmoid(BASE + u + s + shift))
    return k / N_IMAGES


def true_score(shift):
    """Population score E[σ(base + shift + u + s)] over prompt and seed effects (Gauss–Hermite)."""
    x, w = np.polynomial.hermite_e.hermegauss(60)
    w = w / w.sum()
    u, s = np.meshgrid(PROMPT_SD * x, SEED_SD * x)
    return float(np.sum(np.outer(w, w) * _sigmoid(BASE + shift + u + s)))


def rejection_rates(studies, paired):
    rej_t = rej_p = 0
    per_seed = studies.mean(axis=4).mean(axis=3)           # studies x arms x seeds
    for x in per_seed:
        groups = [x[1] - x[0]] if paired else [x[1], x[0]]
        r = stats.seed_test_arrays(groups, None if paired else np.array([1.0, -1.0]), paired)
        rej_t += r.p_value < 0.05
        rej_p += r.p_perm < 0.05
    return rej_t / len(studies), rej_p / len(studies)


def test_seed_level_test_false_positive_rate_with_seed_effect():
    studies = simulate(np.random.default_rng(20261203), 600)
    fpr_t, fpr_perm = rejection_rates(studies, paired=False)
    print(f"FPR at alpha 0.05 over {len(studies)} studies: Welch t {fpr_t:.3f}, label permutation {fpr_perm:.3f}")
    assert fpr_t <= 0.06 and fpr_perm <= 0.06, (fpr_t, fpr_perm)
    fpr_paired, _ = rejection_rates(studies, paired=True)   # pairing by seed index is valid too
    print(f"FPR paired t {fpr_paired:.3f}")
    assert fpr_paired <= 0.06, fpr_paired


def test_old_pooled_prompt_test_fails_the_bound():
    """The prompt-level test (seeds pooled, prompts permuted) rejects far too often: the simulation can fail."""
    studies = simulate(np.random.default_rng(7), 80)
    rej = 0
    for sc in studies:
        a, i, t, p = (g.ravel() for g in np.indices(sc.shape))
        df = pd.DataFrame({"arm": a, "seed": i, "task": np.char.add("t", t.astype(str)),
                           "prompt": np.char.add("p", p.astype(str)), "correct": sc.ravel()})
        res = stats.paired_test(df[df.arm == 1], df[df.arm == 0], n_resamples=999, seed=0)
        rej += res.p_value < 0.05
    print(f"pooled prompt-level test FPR {rej / len(studies):.3f}")
    assert rej / len(studies) > 0.2, rej / len(studies)


def test_seed_level_test_has_power_for_a_real_effect():
    studies = simulate(np.random.default_rng(11), 200, effect=0.8)   # ≈ +16 accuracy points
    power_t, power_perm = rejection_rates(studies, paired=False)
    print(f"power at +0.8 logit: t {power_t:.3f}, permutation {power_perm:.3f}")
    assert power_t >= 0.8 and power_perm >= 0.8, (power_t, power_perm)


@pytest.mark.parametrize("effect", [0.0, 0.4])
def test_crossed_bootstrap_covers_the_true_difference(effect):
    rng = np.random.default_rng(99 + int(effect * 10))
    studies = simulate(rng, 500, effect=effect)
    truth = true_score(effect) - true_score(0.0)
    hits = 0
    for k, sc in enumerate(studies):
        arrays = [[sc[:, :, t, :] for t in range(N_TASKS)]]
        ci = stats.crossed_bootstrap_arrays(arrays, np.array([-1.0, 1.0]), paired=False, n_boot=200, seed=k)
        hits += ci.low <= truth <= ci.high
    print(f"coverage of the difference (effect {effect}): {hits / len(studies):.3f}")
    assert hits / len(studies) >= 0.93, hits / len(studies)


def test_crossed_bootstrap_covers_one_point_score():
    """One arm's score: the prompt set is shared by all seeds, so its variance must not shrink with seeds."""
    rng = np.random.default_rng(5)
    studies = simulate(rng, 500)
    truth = true_score(0.0)
    hits = 0
    for k, sc in enumerate(studies):
        ci = stats.crossed_bootstrap_arrays([[sc[:1, :, t, :] for t in range(N_TASKS)]], np.array([1.0]),
                                            paired=False, n_boot=200, seed=k)
        hits += ci.low <= truth <= ci.high
    print(f"coverage of one point's score: {hits / len(studies):.3f}")
    assert hits / len(studies) >= 0.93, hits / len(studies)


def test_crossed_bootstrap_from_table_matches_arrays_and_shares_prompts():
    rng = np.random.default_rng(3)
    sc = simulate(rng, 1)[0]
    rows = [(a, 0, i, f"t{t}", f"p{p:02d}", sc[a, i, t, p]) for a in range(2) for i in range(N_SEEDS)
            for t in range(N_TASKS) for p in range(N_PROMPTS)]
    df = pd.DataFrame(rows, columns=["arm", "stratum", "seed", "task", "prompt", "correct"])
    ci = stats.crossed_bootstrap(df, {1: 1.0, 0: -1.0}, paired=True, n_boot=500, seed=1)
    per_seed = sc.mean(axis=3).mean(axis=2)
    assert ci.estimate == pytest.approx((per_seed[1] - per_seed[0]).mean())
    assert ci.low < ci.estimate < ci.high
    t = stats.seed_level_test(stats.per_seed_scores(df), {1: 1.0, 0: -1.0}, paired=True)
    assert t.estimate == pytest.approx(ci.estimate) and t.n_units == N_SEEDS and t.perm_exact


def test_seed_level_test_hand_computed():
    # paired differences 0.1, 0.2, 0.3: mean 0.2, sd 0.1 → t = 0.2/(0.1/√3) = 3.464, df 2; sign flips:
    # |sum| ≥ 0.6 only for all + or all − → p = 2/8
    sc = pd.DataFrame({"arm": ["a"] * 3 + ["b"] * 3, "stratum": 0, "seed": [0, 1, 2] * 2,
                       "score": [0.5, 0.6, 0.7, 0.4, 0.4, 0.4]})
    r = stats.seed_level_test(sc, {"a": 1.0, "b": -1.0}, paired=True)
    assert r.estimate == pytest.approx(0.2) and r.df == 2
    assert r.p_value == pytest.approx(2 * (1 - __import__("scipy").stats.t.cdf(2 * np.sqrt(3), 2)))
    assert r.p_perm == pytest.approx(0.25) and r.perm_exact
    # unpaired 3 vs 3: the observed split is the most extreme of C(6,3)=20 → p = 2/20
    u = stats.seed_level_test(sc, {"a": 1.0, "b": -1.0}, paired=False)
    assert u.p_perm == pytest.approx(0.1) and u.perm_exact


def test_split_read_from_records_and_old_bundles():
    from lightgen.analysis import bundle

    recs = {"r": [{"tag": "colors", "prompt": "a", "correct": True, "metadata": {"split": "novel"}},
                  {"tag": "colors", "prompt": "b", "correct": True, "metadata": {"seen": False}},
                  {"tag": "colors", "prompt": "c", "correct": True, "metadata": {"seen": True}},
                  {"tag": "colors", "prompt": "d", "correct": True, "split": "intrain", "metadata": {}},
                  # GenEval's own layout (what lightgen.geneval.evaluate writes): metadata as JSON text
                  {"tag": "colors", "prompt": "e", "correct": True, "metadata": json.dumps({"split": "heldout"})}]}
    frame = bundle.results_frame(recs)
    got = frame["split"].tolist()
    assert got[:2] == ["novel", "heldout"] and got[3] == "intrain" and pd.isna(got[2]) and got[4] == "heldout"
    assert json.loads(frame["metadata"].iloc[4]) == {"split": "heldout"}   # stored once-encoded
