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
    """Percentile CI of one point's GenEval score from a *crossed* bootstrap over seeds and prompts.

    Each replicate draws one seed resample and ONE prompt resample per task that every drawn seed shares:
    the prompt set is common to all seeds (a crossed design), so resampling prompts independently per seed
    would divide the prompt-set variance by the number of seeds (study-validity review, T4).
    """
    if n_boot < 1:
        raise ValueError("n_boot must be >= 1")
    ps = prompt_scores(df)
    if ps.empty:
        nan = float("nan")
        return BootstrapResult(nan, nan, nan)
    seeds = sorted(ps["seed"].unique())
    tasks = ordered(sorted(set(ps["task"])))
    rng = np.random.default_rng(seed)
    n_s = len(seeds)
    seed_idx = rng.integers(n_s, size=(n_boot, n_s))
    task_samples = np.empty((len(tasks), n_boot))
    for ti, t in enumerate(tasks):
        wide = ps[ps["task"] == t].pivot_table(index="seed", columns="prompt", values="score").reindex(seeds)
        x = wide.to_numpy()                                         # seeds x prompts (NaN: not scored)
        n_p = x.shape[1]
        counts = _prompt_counts(rng, n_p, n_boot)                   # one prompt resample per replicate
        ok = np.isfinite(x)
        num = np.where(ok, x, 0.0) @ counts.T                       # seeds x replicates
        den = ok.astype(float) @ counts.T
        with np.errstate(invalid="ignore", divide="ignore"):
            per_seed = np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)
        drawn = per_seed[seed_idx, np.arange(n_boot)[:, None]]      # replicates x drawn seeds
        task_samples[ti] = _nanmean_rows(drawn)
    overall = _nanmean_rows(task_samples.T)
    alpha = (1.0 - level) / 2
    est, per_task_est = geneval_score(df)
    lo, hi = np.nanquantile(overall, [alpha, 1 - alpha])
    per_task = {}
    for ti, t in enumerate(tasks):
        tlo, thi = np.nanquantile(task_samples[ti], [alpha, 1 - alpha])
        per_task[t] = (per_task_est[t], float(tlo), float(thi))
    return BootstrapResult(est, float(lo), float(hi), per_task, overall, n_s, int(ps["prompt"].nunique()))


def _prompt_counts(rng: np.random.Generator, n: int, n_boot: int) -> np.ndarray:
    """How often each of ``n`` prompts is drawn in each of ``n_boot`` resamples (n_boot x n)."""
    if n == 0:
        return np.zeros((n_boot, 0))
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float)


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


# --------------------------------------------------------------------------------------------------
# Seed-level inference: the unit is the training seed
# --------------------------------------------------------------------------------------------------
# A study asks whether two *training procedures* differ, not whether two particular trained models do.
# Each training seed is one draw of the procedure (data sample, init, noise), so the seed is the unit of
# replication; prompts are a second, crossed, random factor shared by every model of the study. The
# prompt-level ``paired_test`` above holds the models fixed: it stays in the tables as a descriptive
# "same models, same prompts" comparison only (its false-positive rate for procedures is far above α
# once seeds differ, tests/test_stats_seed.py).

@dataclass
class SeedLevelResult:
    """A contrast Σ_a w_a·score(a) between arms, tested on per-seed scores."""

    estimate: float
    p_value: float            # t-test: one-sample t on per-unit contrasts (paired) or Welch (unpaired)
    p_perm: float             # sign-flip (paired) or label permutation (unpaired) on the same per-seed scores
    perm_exact: bool          # all sign patterns / relabelings enumerated
    n_units: int              # paired: complete (stratum, seed) units; unpaired: seeds in all arms together
    paired: bool
    df: float                 # degrees of freedom of the t-test
    method: str


@dataclass
class ContrastCI:
    estimate: float
    low: float
    high: float
    se: float
    df: float
    samples: np.ndarray | None = None
    method: str = ""


def per_seed_scores(df: pd.DataFrame, by: tuple[str, ...] = ("arm", "stratum", "seed")) -> pd.DataFrame:
    """Task-balanced score of every seed run: per task the mean prompt score, then the mean over tasks."""
    _check(df, (*by, "task", "prompt", "correct"))
    d = df.assign(correct=df["correct"].astype(float))
    ps = d.groupby([*by, "task", "prompt"], sort=True)["correct"].mean()
    per_task = ps.groupby(level=[*by, "task"]).mean()
    return per_task.groupby(level=list(by)).mean().rename("score").reset_index()


def contrast_units(scores: pd.DataFrame, weights: dict) -> pd.Series:
    """Paired design: per (stratum, seed) unit the contrast Σ w·score over the arms; incomplete units dropped."""
    wide = scores.pivot_table(index=["stratum", "seed"], columns="arm", values="score")
    arms = list(weights)
    missing = [a for a in arms if a not in wide.columns]
    if missing:
        raise ValueError(f"no per-seed scores for arm(s) {', '.join(map(str, missing))}")
    wide = wide[arms].dropna()
    return pd.Series(wide.to_numpy() @ np.array([weights[a] for a in arms], dtype=float), index=wide.index)


def _sign_flip_p(d: np.ndarray, n_resamples: int, rng: np.random.Generator) -> tuple[float, bool]:
    n = len(d)
    obs = abs(d.sum())
    tol = 1e-12 * max(1.0, np.abs(d).sum())
    if n <= 16:
        signs = 1 - 2 * ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1)
        return float(np.mean(np.abs(signs @ d) >= obs - tol)), True
    signs = rng.choice([-1.0, 1.0], size=(n_resamples, n))
    return float((1 + np.sum(np.abs(signs @ d) >= obs - tol)) / (n_resamples + 1)), False


def _label_perm_p(x: np.ndarray, y: np.ndarray, n_resamples: int, rng: np.random.Generator) -> tuple[float, bool]:
    from itertools import combinations
    from math import comb

    pooled = np.r_[x, y]
    n, k = len(pooled), len(x)
    obs = abs(x.mean() - y.mean())
    tol = 1e-12 * max(1.0, np.abs(pooled).max())
    total = pooled.sum()
    if comb(n, k) <= max(n_resamples, 1):
        idx = np.array(list(combinations(range(n), k)))
        sx = pooled[idx].sum(axis=1)
        stat = np.abs(sx / k - (total - sx) / (n - k))
        return float(np.mean(stat >= obs - tol)), True
    perm = np.argsort(rng.random((n_resamples, n)), axis=1)[:, :k]
    sx = pooled[perm].sum(axis=1)
    stat = np.abs(sx / k - (total - sx) / (n - k))
    return float((1 + np.sum(stat >= obs - tol)) / (n_resamples + 1)), False


def seed_level_test(scores: pd.DataFrame, weights: dict, paired: bool = True, n_resamples: int = 20000,
                    seed: int = 0) -> SeedLevelResult:
    """Test the contrast Σ_a w_a·mean score(a) = 0 with the training seed as the unit.

    ``scores``: columns ``arm, stratum, seed, score`` (from :func:`per_seed_scores`). Paired (seeds matched
    by index within a stratum, e.g. a world seed): a one-sample t-test on the per-unit contrasts plus an
    exact sign-flip test (all 2^n patterns up to 16 units). Unpaired (two arms, weights +w/−w, e.g. an A/A
    control on disjoint seeds): Welch's t-test plus an exact label permutation of the seeds.
    """
    _check(scores, ("arm", "stratum", "seed", "score"))
    if paired:
        return seed_test_arrays([contrast_units(scores, weights).to_numpy()], None, True, n_resamples, seed)
    arms = list(weights)
    groups = [scores.loc[scores["arm"] == a, "score"].to_numpy(dtype=float) for a in arms]
    empty = [a for a, v in zip(arms, groups) if len(v) == 0]
    if empty:
        raise ValueError(f"no per-seed scores for arm(s) {', '.join(map(str, empty))}")
    return seed_test_arrays(groups, np.array([weights[a] for a in arms], dtype=float), False, n_resamples, seed)


def seed_test_arrays(groups: list[np.ndarray], weights: np.ndarray | None, paired: bool,
                     n_resamples: int = 20000, seed: int = 0) -> SeedLevelResult:
    """The core of :func:`seed_level_test`: paired → ``groups == [per-unit contrasts]``; unpaired → one
    array of per-seed scores per arm and the arms' ``weights``."""
    rng = np.random.default_rng(seed)
    nan = float("nan")
    if paired:
        d = np.asarray(groups[0], dtype=float)
        n = len(d)
        est = float(d.mean()) if n else nan
        if n < 2:
            return SeedLevelResult(est, nan, nan, False, n, True, nan, "paired by seed (needs ≥ 2 units)")
        sd = d.std(ddof=1)
        if sd == 0:
            p_t = 1.0 if est == 0 else 0.0
        else:
            p_t = float(2 * sps.t.sf(abs(est) / (sd / np.sqrt(n)), n - 1))
        p_perm, exact = _sign_flip_p(d, n_resamples, rng)
        return SeedLevelResult(est, p_t, p_perm, exact, n, True, float(n - 1),
                               "paired t-test over seeds; sign-flip permutation")
    w = np.asarray(weights, dtype=float)
    means = np.array([g.mean() for g in groups])
    est = float(w @ means)
    ns = np.array([len(g) for g in groups])
    n_units = int(ns.sum())
    if (ns < 2).any():
        return SeedLevelResult(est, nan, nan, False, n_units, False, nan, "unpaired (needs ≥ 2 seeds per arm)")
    var = np.array([g.var(ddof=1) for g in groups]) / ns
    se2 = float(np.sum(w ** 2 * var))
    if se2 == 0:
        p_t, dof = (1.0 if est == 0 else 0.0), float(n_units - len(groups))
    else:
        dof = se2 ** 2 / float(np.sum((w ** 2 * var) ** 2 / (ns - 1)))
        p_t = float(2 * sps.t.sf(abs(est) / np.sqrt(se2), dof))
    p_perm, exact = nan, False
    if len(groups) == 2 and w[0] == -w[1]:
        p_perm, exact = _label_perm_p(groups[0], groups[1], n_resamples, rng)
    return SeedLevelResult(est, p_t, p_perm, exact, n_units, False, float(dof),
                           "Welch t-test over seeds; label permutation")


def crossed_bootstrap_arrays(strata: list[list[np.ndarray]], weights: np.ndarray, paired: bool = True,
                             n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> ContrastCI:
    """The crossed bootstrap on arrays: ``strata[k][t]`` is an (arms, seeds, prompts) array of per-prompt
    scores for task t of stratum k (NaN where a seed did not run or a prompt was not scored).

    Each replicate draws, per (stratum, task), ONE prompt resample shared by every arm and seed, and a seed
    resample (paired: one draw of seed indices for all arms; unpaired: one per arm). The seed part is
    rescaled by √(n/(n−1)) so its variance is unbiased, and the interval is est ± t_{df}·SE with the
    seed-level df (n − 1 paired, Welch unpaired): with 5 seeds a normal/percentile interval under-covers.
    The estimate weights strata equally and tasks equally within a seed (GenEval's task balance).
    """
    weights = np.asarray(weights, dtype=float)
    rng = np.random.default_rng(seed)
    stratum_rep, stratum_est, dfs = [], [], []
    for tasks in strata:
        n_arms, n_seeds = tasks[0].shape[:2]
        full = np.zeros((n_arms, n_seeds, 1 + n_boot))     # column 0: the original prompt set
        cnt = np.zeros((n_arms, n_seeds, 1))
        for x in tasks:
            n_p = x.shape[2]
            counts = np.vstack([np.ones((1, n_p)), _prompt_counts(rng, n_p, n_boot)])  # (1+B) x P
            ok = np.isfinite(x)
            num = np.where(ok, x, 0.0) @ counts.T
            den = ok.astype(float) @ counts.T
            with np.errstate(invalid="ignore", divide="ignore"):
                sc = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
            has = np.isfinite(sc[..., :1])
            full += np.where(np.isfinite(sc), sc, 0.0)
            cnt += has
        with np.errstate(invalid="ignore", divide="ignore"):
            seed_sc = np.where(cnt > 0, full / np.where(cnt > 0, cnt, 1.0), np.nan)  # arms x seeds x (1+B)
        if paired:
            complete = np.isfinite(seed_sc[:, :, 0]).all(axis=0)
            d = np.einsum("a,asb->sb", weights, seed_sc[:, complete, :])        # units x (1+B)
            n = d.shape[0]
            if n == 0:
                continue
            stratum_est.append(d[:, 0].mean())
            dbar = d[:, 1:].mean(axis=0)
            if n > 1:
                idx = rng.integers(n, size=(n_boot, n))
                drawn = d[idx, np.arange(1, n_boot + 1)[:, None]].mean(axis=1)
                rep = dbar + np.sqrt(n / (n - 1)) * (drawn - dbar)
            else:
                rep = dbar
            stratum_rep.append(rep)
            dfs.append(n - 1)
        else:
            est_a, rep_a = [], []
            for a in range(n_arms):
                s = seed_sc[a][np.isfinite(seed_sc[a, :, 0])]                    # seeds x (1+B)
                n = s.shape[0]
                if n == 0:
                    raise ValueError(f"arm {a} has no scored seed")
                est_a.append(s[:, 0].mean())
                sbar = s[:, 1:].mean(axis=0)
                if n > 1:
                    idx = rng.integers(n, size=(n_boot, n))
                    drawn = s[idx, np.arange(1, n_boot + 1)[:, None]].mean(axis=1)
                    rep_a.append(sbar + np.sqrt(n / (n - 1)) * (drawn - sbar))
                else:
                    rep_a.append(sbar)
                dfs.append(n - 1)
            stratum_est.append(float(weights @ np.array(est_a)))
            stratum_rep.append(weights @ np.vstack(rep_a))
    if not stratum_rep:
        nan = float("nan")
        return ContrastCI(nan, nan, nan, nan, nan, None, "crossed bootstrap: no complete unit")
    rep = np.mean(stratum_rep, axis=0)
    est = float(np.mean(stratum_est))
    se = float(np.std(rep, ddof=1)) if n_boot > 1 else float("nan")
    dof = float(sum(dfs))   # paired: Σ (units − 1) over strata; unpaired: Σ (seeds − 1) over arms and strata
    if dof < 1 or not np.isfinite(se):
        alpha = (1.0 - level) / 2
        lo, hi = np.quantile(rep, [alpha, 1 - alpha])
        return ContrastCI(est, float(lo), float(hi), se, dof, rep, "crossed bootstrap (percentile; one seed)")
    q = float(sps.t.ppf(0.5 + level / 2, max(dof, 1.0)))
    return ContrastCI(est, est - q * se, est + q * se, se, dof, rep,
                      "crossed bootstrap: seeds × one prompt resample shared by all seeds; est ± t·SE")


def crossed_bootstrap(df: pd.DataFrame, weights: dict, paired: bool = True, n_boot: int = 2000, seed: int = 0,
                      level: float = 0.95) -> ContrastCI:
    """CI of the contrast Σ_a w_a·score(a) from the per-image table (columns ``arm, stratum, seed, task,
    prompt, correct``); see :func:`crossed_bootstrap_arrays`. Within a stratum all arms are scored on the
    same prompts (a prompt missing for some cell is NaN there)."""
    _check(df, ("arm", "stratum", "seed", "task", "prompt", "correct"))
    arms = list(weights)
    missing = [a for a in arms if not (df["arm"] == a).any()]
    if missing:
        raise ValueError(f"no per-image results for arm(s) {', '.join(map(str, missing))}")
    d = df[df["arm"].isin(arms)].assign(correct=lambda x: x["correct"].astype(float))
    ps = d.groupby(["stratum", "task", "arm", "seed", "prompt"], sort=True)["correct"].mean()
    strata = []
    for st, g in ps.groupby(level="stratum", sort=True):
        seeds = sorted(g.index.get_level_values("seed").unique())
        tasks = []
        for _, gt in g.groupby(level="task", sort=True):
            prompts = sorted(gt.index.get_level_values("prompt").unique())
            full = pd.MultiIndex.from_product([arms, seeds, prompts], names=["arm", "seed", "prompt"])
            x = gt.droplevel(["stratum", "task"]).reindex(full).to_numpy().reshape(len(arms), len(seeds), len(prompts))
            tasks.append(x)
        strata.append(tasks)
    return crossed_bootstrap_arrays(strata, np.array([weights[a] for a in arms], dtype=float), paired=paired,
                                    n_boot=n_boot, seed=seed, level=level)
