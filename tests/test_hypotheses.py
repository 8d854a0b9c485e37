"""The pre-registered hypotheses table (lightgen.analysis.hypotheses) against hand-computed examples.

H1's difference of differences is built from per-image results whose per-seed scores are chosen by hand
(k of 4 held-out prompts right), so the estimate, the paired t-test's p and the exact sign-flip p can be
worked out on paper; a standard (in-train) prompt that is always right in one arm must not enter a held-out
contrast, and runs of another sweep with the same params must not enter at all.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from lightgen.analysis import hypotheses as H
from lightgen.errors import UserError

REPO = Path(__file__).resolve().parent.parent

# k correct of 4 held-out prompts, per (world seed, arm) and training seed 0, 1, 2
K = {
    (0, "d1_n"): [4, 3, 4], (0, "d0_n"): [1, 0, 1], (0, "d05_2n"): [2, 2, 3], (0, "d05_n"): [2, 1, 2],
    (1, "d1_n"): [3, 3, 2], (1, "d0_n"): [1, 1, 0], (1, "d05_2n"): [2, 3, 2], (1, "d05_n"): [2, 2, 2],
}
ARM_PARAMS = {"d1_n": (1.0, 250), "d0_n": (0.0, 250), "d05_2n": (0.5, 500), "d05_n": (0.5, 250)}
# per (world seed, training seed): d1 - d0 - d05_2n + d05_n in quarters: 3, 2, 2 | 2, 1, 2
UNITS = np.array([3, 2, 2, 2, 1, 2]) / 4


def h1_frames(sweep: str = "confirmatory") -> tuple[pd.DataFrame, pd.DataFrame]:
    runs, res = [], []
    for (ws, arm), ks in K.items():
        d, n = ARM_PARAMS[arm]
        for seed, k in enumerate(ks):
            rid = f"{sweep}-w{ws}-{arm}-s{seed}"
            runs.append({"run_id": rid, "sweep": sweep, "seed": seed, "params.world.seed": str(ws),
                         "params.data.caption_diversity": str(d), "params.data.scale": str(n),
                         "tags.lightgen.arm": "h1", "metrics.geneval_heldout/overall": k / 4})
            for i in range(4):
                res.append({"run_id": rid, "seed": seed, "task": "position", "prompt": f"w{ws} heldout {i}",
                            "split": "heldout", "correct": i < k})
            # a standard prompt: always right at D = 0, never elsewhere (moves a standard contrast, not H1)
            res.append({"run_id": rid, "seed": seed, "task": "position", "prompt": "standard 0",
                        "split": "intrain", "correct": arm == "d0_n"})
    return pd.DataFrame(runs), pd.DataFrame(res)


def h1_spec(**over) -> H.Hypothesis:
    spec = {"id": "H1", "family": "confirmatory", "sweep": "confirmatory", "split": "heldout", "paired": True,
            "strata": "world.seed", "direction": "greater",
            "arms": {a: {"arm": "h1", "data.caption_diversity": d, "data.scale": n}
                     for a, (d, n) in ARM_PARAMS.items()},
            "contrast": {"d1_n": 1, "d0_n": -1, "d05_2n": -1, "d05_n": 1}}
    spec.update(over)
    return H.Hypothesis.model_validate(spec)


def test_h1_difference_of_differences_by_hand():
    runs, res = h1_frames()
    other_runs, other_res = h1_frames(sweep="caption-diversity")   # same params, another sweep: ignored
    runs, res = pd.concat([runs, other_runs]), pd.concat([res, other_res])
    r = H.evaluate(h1_spec(), runs, res, n_boot=400, seed=1)
    assert r.estimate == pytest.approx(UNITS.mean()) and r.estimate == pytest.approx(0.5)
    t = UNITS.mean() / (UNITS.std(ddof=1) / np.sqrt(len(UNITS)))
    assert r.p_value == pytest.approx(2 * sps.t.sf(t, len(UNITS) - 1))
    # exact sign flip: only the observed pattern and its mirror reach |sum| = 3 of 2^6 patterns
    flips = [abs(np.dot(s, UNITS)) >= UNITS.sum() - 1e-12 for s in itertools.product([-1, 1], repeat=6)]
    assert r.p_perm == pytest.approx(np.mean(flips)) and r.p_perm == pytest.approx(2 / 64)
    assert r.low < 0.5 < r.high and r.high - r.low < 1.0
    assert r.n_seeds == {"d1_n": 3, "d0_n": 3, "d05_2n": 3, "d05_n": 3}
    # the units the test is made of, per world seed and in seed order (3, 2, 2 | 2, 1, 2 quarters)
    assert r.units == "world.seed 0: +0.750 / +0.500 / +0.500; world.seed 1: +0.500 / +0.250 / +0.500"


def test_h1_from_logged_metrics_when_no_per_image_results():
    runs, _ = h1_frames()
    r = H.evaluate(h1_spec(), runs, pd.DataFrame(), seed=1)
    assert r.estimate == pytest.approx(0.5) and "logged metrics" in r.note
    half = sps.t.ppf(0.975, 5) * UNITS.std(ddof=1) / np.sqrt(6)
    assert (r.low, r.high) == pytest.approx((0.5 - half, 0.5 + half))


def test_standard_split_leaves_held_out_prompts_out():
    runs, res = h1_frames()
    h = h1_spec(split="standard", contrast={"d0_n": 1, "d1_n": -1})
    r = H.evaluate(h, runs, res, n_boot=200)
    assert r.estimate == pytest.approx(1.0)      # only the standard prompt: 1 at D = 0, 0 at D = 1
    r_all = H.evaluate(h1_spec(split="all", contrast={"d0_n": 1, "d1_n": -1}), runs, res, n_boot=200)
    # every prompt (4 held-out + 1 standard, one task): D=0 mean of (k+1)/5, D=1 of k/5
    want = np.mean([(k + 1) / 5 for ws in (0, 1) for k in K[(ws, "d0_n")]]) - np.mean(
        [k / 5 for ws in (0, 1) for k in K[(ws, "d1_n")]])
    assert r_all.estimate == pytest.approx(want)
    # without strata the two world seeds' runs of one seed would be merged into one score: refused
    merged = H.evaluate(h1_spec(strata=None), runs, res, n_boot=200)
    assert merged.missing and "several runs for one seed" in merged.missing[0]


def test_holm_counts_the_whole_family_and_verdicts():
    runs, res = h1_frames()
    missing = h1_spec(id="H2", sweep="data-scale")              # no runs of that sweep
    hf = H.HypothesisFile(alpha=0.05, hypotheses=[h1_spec(), missing])
    out = H.evaluate_all(hf, runs, res, n_boot=200)
    assert out[0].p_holm == pytest.approx(min(1.0, 2 * out[0].p_value))   # the H2 not run counts as p = 1
    assert out[0].verdict == "supported"
    assert out[1].verdict.startswith("not run (no runs for: d1_n")
    # the same data, the opposite prediction: not supported (the sign is wrong)
    flipped = H.evaluate_all(H.HypothesisFile(hypotheses=[h1_spec(direction="less")]), runs, res, n_boot=200)
    assert flipped[0].verdict == "not supported"
    table = H.hypotheses_table(out)
    frame = table.frame()
    assert list(frame["ID"]) == ["H1", "H2"] and frame.loc[0, "Split"] == "Held-out"
    assert "not run" in frame.loc[1, "Verdict"]


def test_overlapping_selectors_are_not_run():
    runs, res = h1_frames()
    h = h1_spec(arms={"a": {"arm": "h1"}, "b": {"arm": "h1", "data.scale": 250}}, contrast={"a": 1, "b": -1})
    r = H.evaluate(h, runs, res)
    assert r.missing and "overlap" in r.missing[0]


def test_aa_control_unpaired_welch_and_verdicts():
    rng = np.random.default_rng(3)
    runs, res = [], []
    for seed in range(10):
        rid = f"aa-{seed}"
        k = int(rng.integers(1, 4))
        runs.append({"run_id": rid, "sweep": "controls", "seed": seed, "tags.lightgen.arm": "aa"})
        res += [{"run_id": rid, "seed": seed, "task": "colors", "prompt": f"p{i}", "split": "intrain",
                 "correct": i < k} for i in range(4)]
    runs, res = pd.DataFrame(runs), pd.DataFrame(res)
    scores = res.groupby("run_id")["correct"].mean()
    a, b = scores[[f"aa-{s}" for s in range(5)]], scores[[f"aa-{s}" for s in range(5, 10)]]
    spec = {"id": "C0", "family": "controls", "sweep": "controls", "split": "standard", "paired": False,
            "expect": "no-effect", "direction": "two-sided",
            "arms": {"first": {"arm": "aa", "seeds": [0, 1, 2, 3, 4]}, "second": {"arm": "aa", "seeds": [5, 6, 7, 8, 9]}},
            "contrast": {"first": 1, "second": -1}}
    out = H.evaluate_all(H.HypothesisFile(hypotheses=[H.Hypothesis.model_validate(spec)]), runs, res, n_boot=200)
    assert out[0].estimate == pytest.approx(a.mean() - b.mean())
    assert out[0].p_value == pytest.approx(sps.ttest_ind(a, b, equal_var=False).pvalue)
    assert out[0].verdict == ("detected (control FAILS)" if out[0].p_value < 0.05 else "not detected (control passes)")
    assert out[0].units == (f"first: {' / '.join(f'{v:.3f}' for v in a)}; "
                            f"second: {' / '.join(f'{v:.3f}' for v in b)}")
    row = H.hypotheses_table(out).blocks[0].rows.iloc[0]
    assert row["Per-seed values"] == out[0].units
    # a positive control on a real difference: arm "second" made all-correct
    res2 = res.copy()
    res2.loc[res2["run_id"].isin([f"aa-{s}" for s in range(5, 10)]), "correct"] = True
    pos = {**spec, "id": "C+", "expect": "detect", "direction": "less"}
    out = H.evaluate_all(H.HypothesisFile(hypotheses=[H.Hypothesis.model_validate(pos)]), runs, res2, n_boot=200)
    assert out[0].estimate < 0 and out[0].verdict == "detected (control passes)"


def test_shipped_hypotheses_file_matches_the_shipped_sweeps():
    """Every arm of study/hypotheses.yaml selects points the cpu sweeps actually run, one point per arm."""
    from lightgen.sweep import load_sweep, plan_sweep

    hf = H.load_hypotheses()
    assert [h.id for h in hf.hypotheses] == ["H1", "H2", "H3a", "H3b", "H4", "C+", "C+b", "C0"]
    plans = {}
    for h in hf.hypotheses:
        plan = plans.setdefault(h.sweep, plan_sweep(load_sweep(h.sweep), "cpu"))
        rows = pd.DataFrame([{"run_id": f"{p.point_id}-{s}", "seed": s, "tags.lightgen.arm": p.arm,
                              **{f"params.{k}": str(v) for k, v in _flat(p.cfg.model_dump(mode="json")).items()}}
                             for p in plan.points for s in range(plan.seeds)])
        for name, sel in h.arms.items():
            picked = H.select_arm(rows, sel)
            points = {rid.rsplit("-", 1)[0] for rid in picked["run_id"]}
            assert len(points) == (2 if h.strata else 1), (h.id, name, points)   # H1: one per world seed


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_bad_hypotheses_file_is_one_line(tmp_path):
    bad = tmp_path / "h.yaml"
    bad.write_text("hypotheses:\n  - id: X\n    sweep: s\n    arms: {a: {}}\n    contrast: {b: 1}\n")
    with pytest.raises(UserError, match=r"h.yaml: hypotheses.0: contrast names unknown arm\(s\) b"):
        H.load_hypotheses(bad)
    with pytest.raises(UserError, match="not found"):
        H.load_hypotheses(tmp_path / "none.yaml")
