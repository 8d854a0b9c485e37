"""The uncertainty the paper never reported: bootstrap CIs, paired tests, Holm correction.

All functions take the long per-image table of :func:`lightgen.analysis.loader.load_prompt_results`
(columns ``seed, task, prompt, correct``; several images per prompt are allowed).

GenEval's score is task-balanced: the overall score is the mean of the six per-task accuracies. Every
statistic here keeps that weighting, so a CI or a difference is always about the number in the table.

* :func:`hierarchical_bootstrap` — percentile CI from resampling seeds (training noise), then prompts
  within each task of each drawn seed (prompt-set noise); images of one prompt stay together.
* :func:`paired_test` — two points scored on the same prompts: a sign-flip permutation test of the
  task-balanced difference of per-prompt accuracies. Pairs with no difference carry no information and
  are dropped; the test is exact (all 2^n sign patterns) when the rest are few and Monte Carlo otherwise.
  With one image per prompt and one task it is exactly McNemar's exact (binomial) test.
* :func:`holm` — Holm's step-down adjustment for a table that tests several differences.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats as sps

from lightgen.geneval.tasks import TASKS as GENEVAL_TASKS, ordered


@dataclass
class BootstrapResult:
    estimate: float
    low: float
    high: float
    per_task: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # task -> (est, low, high)
    samples: np.ndarray | None = None
    n_seeds: int = 0
    n_prompts: int = 0


@dataclass
class PairedResult:
    diff: float          # task-balanced mean of (a - b) over shared prompts
    p_value: float
    n_shared: int        # prompts scored by both
    n_informative: int   # shared prompts whose scores differ
    exact: bool


def _check(df: pd.DataFrame, need: tuple[str, ...]) -> None:
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise ValueError(f"per-image table lacks column(s): {', '.join(missing)}")


def prompt_scores(df: pd.DataFrame) -> pd.DataFrame:
    """Mean correctness per (seed, task, prompt): the unit the bootstrap resamples."""
    _check(df, ("seed", "task", "prompt", "correct"))
    g = df.assign(correct=df["correct"].astype(float)).groupby(["seed", "task", "prompt"], sort=True)
    return g["correct"].mean().rename("score").reset_index()


def geneval_score(df: pd.DataFrame) -> tuple[float, dict[str, float]]:
    """Task-balanced score: per task the mean over seeds of each seed's mean prompt score; then the mean."""
    ps = prompt_scores(df)
    per_seed = ps.groupby(["task", "seed"])["score"].mean()
    per_task = per_seed.groupby(level="task").mean()
    per_task = {t: float(per_task[t]) for t in GENEVAL_TASKS if t in per_task.index} | {
        t: float(v) for t, v in per_task.items() if t not in GENEVAL_TASKS}
    return (float(np.mean(list(per_task.values()))) if per_task else float("nan")), per_task


def hierarchical_bootstrap(df: pd.DataFrame, n_boot: int = 1000, seed: int = 0,
                           level: float = 0.95) -> BootstrapResult:
    """Percentile CI of the GenEval score by resampling seeds, then prompts within (seed, task)."""
    if n_boot < 1:
        raise ValueError("n_boot must be >= 1")
    ps = prompt_scores(df)
    if ps.empty:
        nan = float("nan")
        return BootstrapResult(nan, nan, nan)
    seeds = sorted(ps["seed"].unique())
    tasks = ordered(sorted(set(ps["task"])))
    cells = {(s, t): g["score"].to_numpy() for (s, t), g in ps.groupby(["seed", "task"])}
    rng = np.random.default_rng(seed)
    n_s = len(seeds)
    seed_idx = rng.integers(n_s, size=(n_boot, n_s))
    task_samples = np.empty((len(tasks), n_boot))
    for ti, t in enumerate(tasks):
        m = np.full((n_boot, n_s), np.nan)
        for si, s in enumerate(seeds):
            x = cells.get((s, t))
            mask = seed_idx == si
            k = int(mask.sum())
            if x is None or k == 0:
                continue
            draws = rng.integers(len(x), size=(k, len(x)))
            m[mask] = x[draws].mean(axis=1)
        task_samples[ti] = _nanmean_rows(m)
    overall = _nanmean_rows(task_samples.T)
    alpha = (1.0 - level) / 2
    est, per_task_est = geneval_score(df)
    lo, hi = np.nanquantile(overall, [alpha, 1 - alpha])
    per_task = {}
    for ti, t in enumerate(tasks):
        tlo, thi = np.nanquantile(task_samples[ti], [alpha, 1 - alpha])
        per_task[t] = (per_task_est[t], float(tlo), float(thi))
    return BootstrapResult(est, float(lo), float(hi), per_task, overall, n_s, int(ps["prompt"].nunique()))


def _nanmean_rows(m: np.ndarray) -> np.ndarray:
    """Row means ignoring NaN; a row of only NaN (all drawn seeds lack the task) stays NaN, quietly."""
    out = np.full(m.shape[0], np.nan)
    ok = np.isfinite(m).any(axis=1)
    out[ok] = np.nanmean(m[ok], axis=1)
    return out


def paired_test(a: pd.DataFrame, b: pd.DataFrame, n_resamples: int = 9999, seed: int = 0) -> PairedResult:
    """Sign-flip permutation test of score(a) - score(b) over the prompts both were scored on.

    Per prompt, each side's score is its mean correctness over all its seeds and images; prompts are
    matched by (task, prompt text). The statistic is task-balanced like GenEval's overall score.
    """
    sa = prompt_scores(a).groupby(["task", "prompt"])["score"].mean()
    sb = prompt_scores(b).groupby(["task", "prompt"])["score"].mean()
    shared = sa.index.intersection(sb.index)
    if len(shared) == 0:
        return PairedResult(float("nan"), float("nan"), 0, 0, True)
    d = (sa.loc[shared] - sb.loc[shared]).to_numpy()
    task_of = shared.get_level_values("task")
    counts = pd.Series(task_of).value_counts()
    w = np.array([1.0 / (len(counts) * counts[t]) for t in task_of])
    diff = float(np.sum(w * d))
    nz = d != 0
    if not nz.any():
        return PairedResult(diff, 1.0, len(shared), 0, True)
    if nz.sum() == 1:  # both sign patterns are equally extreme
        return PairedResult(diff, 1.0, len(shared), 1, True)
    dn, wn = d[nz], w[nz]
    res = sps.permutation_test(
        (dn,), lambda x, axis: np.sum(x * wn, axis=axis), permutation_type="samples", vectorized=True,
        n_resamples=n_resamples, alternative="two-sided", rng=np.random.default_rng(seed),
    )
    exact = 2 ** int(nz.sum()) <= n_resamples
    return PairedResult(diff, float(min(1.0, res.pvalue)), len(shared), int(nz.sum()), exact)


def holm(p_values: list[float] | np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values (same order as given; NaN entries stay NaN and are not counted)."""
    p = np.asarray(p_values, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adj = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    out[order] = adj
    return out


def seed_bootstrap(values: list[float] | np.ndarray, n_boot: int = 1000, seed: int = 0,
                   level: float = 0.95) -> tuple[float, float, float]:
    """Percentile CI of a mean over seeds (the fallback when no per-image results were logged)."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if len(v) == 0:
        return (float("nan"),) * 3
    rng = np.random.default_rng(seed)
    means = v[rng.integers(len(v), size=(n_boot, len(v)))].mean(axis=1)
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(v.mean()), float(lo), float(hi)
