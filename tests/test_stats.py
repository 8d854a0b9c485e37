"""Statistics of the analysis against cases small enough to compute by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from lightgen.analysis.stats import geneval_score, hierarchical_bootstrap, holm, paired_test, seed_bootstrap


def table(rows):
    """rows: (seed, task, prompt, correct) tuples → the per-image long table."""
    return pd.DataFrame(rows, columns=["seed", "task", "prompt", "correct"])


def test_holm_hand_computed():
    # sorted: 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06; original order back
    assert np.allclose(holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    assert np.allclose(holm([0.5, 0.9]), [1.0, 1.0])          # capped at 1
    out = holm([0.02, np.nan, 0.01])                          # NaN: not counted, stays NaN
    assert np.isnan(out[1]) and np.allclose(out[[0, 2]], [0.02, 0.02])
    assert holm([]).size == 0


def test_geneval_score_is_task_balanced_and_counts_images():
    df = table([(0, "colors", "p1", 1), (0, "colors", "p1", 0),        # one prompt, 2 images: 0.5
                (0, "counting", "q1", 1), (0, "counting", "q2", 1),
                (0, "counting", "q3", 1), (0, "counting", "q4", 1)])   # 1.0
    overall, per_task = geneval_score(df)
    assert per_task == {"counting": 1.0, "colors": 0.5}
    assert overall == pytest.approx(0.75)                              # not the per-image mean 5/6


def test_paired_test_exact_three_wins():
    a = table([(0, "colors", f"p{i}", 1) for i in range(3)])
    b = table([(0, "colors", f"p{i}", 0) for i in range(3)])
    r = paired_test(a, b)
    # 2^3 sign patterns; only all-plus / all-minus reach |mean| = 1: p = 2/8
    assert r.diff == 1.0 and r.p_value == pytest.approx(0.25) and r.exact
    assert (r.n_shared, r.n_informative) == (3, 3)


def test_paired_test_equals_exact_mcnemar():
    # 6 prompts only A gets right, 1 only B, 13 both/neither: McNemar exact = binomial(6 of 7)
    a_ok = [1] * 6 + [0] + [1] * 7 + [0] * 6
    b_ok = [0] * 6 + [1] + [1] * 7 + [0] * 6
    a = table([(0, "position", f"p{i}", v) for i, v in enumerate(a_ok)])
    b = table([(1, "position", f"p{i}", v) for i, v in enumerate(b_ok)])
    r = paired_test(a, b)
    assert r.n_informative == 7
    assert r.p_value == pytest.approx(sps.binomtest(6, 7, 0.5).pvalue) == pytest.approx(0.125)
    assert r.diff == pytest.approx(5 / 20)


def test_paired_test_weights_tasks_and_uses_shared_prompts_only():
    a = table([(0, "colors", "c1", 1), (0, "counting", "n1", 1), (0, "counting", "n2", 1),
               (0, "counting", "n3", 1), (0, "colors", "only-a", 1)])
    b = table([(0, "colors", "c1", 0), (0, "counting", "n1", 1), (0, "counting", "n2", 1),
               (0, "counting", "n3", 1), (0, "counting", "only-b", 0)])
    r = paired_test(a, b)
    assert r.n_shared == 4
    assert r.diff == pytest.approx(0.5)      # task-balanced: (1 + 0) / 2, not 1/4
    assert r.p_value == pytest.approx(1.0)   # one informative pair: both sign patterns are as extreme


def test_paired_test_no_difference_and_no_overlap():
    a = table([(0, "colors", "c1", 1)])
    assert paired_test(a, a).p_value == 1.0
    r = paired_test(a, table([(0, "colors", "other", 1)]))
    assert r.n_shared == 0 and np.isnan(r.p_value)


def test_paired_test_monte_carlo_is_reproducible():
    rng = np.random.default_rng(3)
    a = table([(0, "colors", f"p{i}", int(v)) for i, v in enumerate(rng.random(40) < 0.7)])
    b = table([(0, "colors", f"p{i}", int(v)) for i, v in enumerate(rng.random(40) < 0.4)])
    r1, r2 = paired_test(a, b, n_resamples=999, seed=5), paired_test(a, b, n_resamples=999, seed=5)
    assert not r1.exact and r1.p_value == r2.p_value
    assert 1 / 1000 <= r1.p_value <= 1.0


def test_hierarchical_bootstrap_seed_level_hand_computed():
    # seed 0 gets both prompts right, seed 1 none: prompt resampling changes nothing, seed resampling
    # gives 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4
    df = table([(0, "colors", "p1", 1), (0, "colors", "p2", 1), (1, "colors", "p1", 0), (1, "colors", "p2", 0)])
    r = hierarchical_bootstrap(df, n_boot=4000, seed=0)
    assert r.estimate == 0.5 and (r.low, r.high) == (0.0, 1.0)
    assert set(np.unique(r.samples)) == {0.0, 0.5, 1.0}
    assert np.mean(r.samples == 0.5) == pytest.approx(0.5, abs=0.03)
    assert r.n_seeds == 2 and r.n_prompts == 2


def test_hierarchical_bootstrap_prompt_level_variance():
    # one seed, prompts [1, 0, 0, 0]: the bootstrap mean has variance p(1-p)/n = 0.1875/4
    df = table([(0, "counting", f"p{i}", int(i == 0)) for i in range(4)])
    r = hierarchical_bootstrap(df, n_boot=4000, seed=1)
    assert r.estimate == 0.25
    assert np.var(r.samples) == pytest.approx(0.046875, rel=0.1)
    assert r.per_task["counting"][0] == 0.25


def test_hierarchical_bootstrap_constant_and_reproducible():
    df = table([(s, t, f"p{i}", 1) for s in (0, 1) for t in ("colors", "position") for i in range(3)])
    r = hierarchical_bootstrap(df, n_boot=200)
    assert (r.estimate, r.low, r.high) == (1.0, 1.0, 1.0)
    mixed = table([(s, "colors", f"p{i}", (i + s) % 2) for s in (0, 1, 2) for i in range(5)])
    a, b = hierarchical_bootstrap(mixed, n_boot=300, seed=7), hierarchical_bootstrap(mixed, n_boot=300, seed=7)
    assert (a.low, a.high) == (b.low, b.high) and a.low <= a.estimate <= a.high


def test_seed_bootstrap_two_seeds():
    est, lo, hi = seed_bootstrap([0.2, 0.4], n_boot=2000)
    assert est == pytest.approx(0.3) and lo == pytest.approx(0.2) and hi == pytest.approx(0.4)
    assert all(np.isnan(seed_bootstrap([])))


def test_missing_columns_are_reported():
    with pytest.raises(ValueError, match="prompt"):
        hierarchical_bootstrap(pd.DataFrame({"seed": [0], "task": ["colors"], "correct": [1]}))
