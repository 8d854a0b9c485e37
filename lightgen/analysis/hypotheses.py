"""The pre-registered hypotheses (``study/hypotheses.yaml``) computed from logged runs: one table, H1–H4 + controls.

For each hypothesis the runs of its sweep are matched to its arms by point selectors (param values, the arm
tag ``arm``, the training ``seeds``); the contrast Σ_a w_a·score(a) is the task-balanced GenEval score on the
hypothesis' prompt split (and tasks). The unit of inference is the training seed: the estimate and p come
from :func:`lightgen.analysis.stats.seed_level_test` on per-seed scores (paired by seed index within strata,
e.g. world seeds, or unpaired), the CI from :func:`lightgen.analysis.stats.crossed_bootstrap` over the
per-image results (one prompt resample shared by all seeds per replicate). Holm's correction runs within
each family (confirmatory: H1–H4; controls). Verdicts: supported / not supported / not run (arms missing,
named); controls: detected / not detected, and whether that is what the control must show.

Splits: ``standard`` is the standard prompt set (every prompt not held out; what ``geneval/overall``
scores), ``intrain`` / ``novel`` / ``heldout`` the per-run splits (:mod:`lightgen.data.compositions`), ``all``
every prompt scored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats as sps
from pydantic import BaseModel, ConfigDict, Field, model_validator

from lightgen.analysis import stats
from lightgen.analysis.loader import standard_results
from lightgen.analysis.render import Block, Table
from lightgen.config import REPO_ROOT
from lightgen.errors import UserError
from lightgen.sizes import parse_size
from lightgen.yamlfile import load_model

HYPOTHESES_FILE = REPO_ROOT / "study" / "hypotheses.yaml"
SPLITS = ("standard", "intrain", "novel", "heldout", "all")
SPLIT_LABELS = {"standard": "standard", "all": "all prompts", "intrain": "In-train", "novel": "Novel",
                "heldout": "Held-out"}
COLUMNS = ["ID", "Family", "Hypothesis", "Sweep", "Split", "Seeds", "Estimate", "CI (95%)", "p (seed t)",
           "p (seed perm.)", "p (Holm)", "Verdict", "Per-seed values"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Hypothesis(_Strict):
    id: str
    family: str = "confirmatory"
    text: str = ""
    sweep: str
    split: Literal["standard", "intrain", "novel", "heldout", "all"] = "standard"
    tasks: list[str] | None = None
    paired: bool = True
    strata: str | None = None
    arms: dict[str, dict[str, Any]]
    contrast: dict[str, float]
    direction: Literal["greater", "less", "two-sided"] = "greater"
    expect: Literal["detect", "no-effect"] | None = None

    @model_validator(mode="after")
    def _arms(self) -> "Hypothesis":
        unknown = sorted(set(self.contrast) - set(self.arms))
        if unknown:
            raise ValueError(f"contrast names unknown arm(s) {', '.join(unknown)}")
        if not self.paired and (len(self.contrast) != 2 or sum(self.contrast.values()) != 0):
            raise ValueError("an unpaired contrast needs exactly two arms with weights +w and -w")
        return self


class HypothesisFile(_Strict):
    alpha: float = Field(0.05, gt=0, lt=1)
    hypotheses: list[Hypothesis]


def load_hypotheses(path: str | Path | None = None) -> HypothesisFile:
    p = Path(path) if path is not None else HYPOTHESES_FILE
    if not p.is_file():
        raise UserError(f"hypotheses file not found: {p}")
    return load_model(p, HypothesisFile, "hypotheses file", not_mapping="a hypotheses file must be a mapping",
                      error=UserError)


@dataclass
class HypothesisResult:
    h: Hypothesis
    estimate: float = float("nan")
    low: float = float("nan")
    high: float = float("nan")
    p_value: float = float("nan")
    p_perm: float = float("nan")
    p_holm: float = float("nan")
    n_seeds: dict[str, int] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    note: str = ""
    verdict: str = ""
    units: str = ""            # the values the seed-level test is made of (per-unit contrasts, or per-arm scores)


def _same(value: Any, want: Any, key: str) -> bool:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return False
    if key == "data.scale":
        try:
            return parse_size(value) == parse_size(want)
        except Exception:  # noqa: BLE001 - an unparsable logged value simply does not match
            return False
    try:
        return float(value) == float(want)
    except (TypeError, ValueError):
        return str(value) == str(want)


def _param(runs: pd.DataFrame, key: str) -> pd.Series:
    if key == "arm":
        col = "tags.lightgen.arm"
    else:
        col = f"params.{key}"
    return runs[col] if col in runs.columns else pd.Series([None] * len(runs), index=runs.index, dtype=object)


def select_arm(runs: pd.DataFrame, selector: dict[str, Any]) -> pd.DataFrame:
    """The runs whose params (``arm``: the arm tag; ``seeds``: training seeds) match ``selector``."""
    mask = np.ones(len(runs), dtype=bool)
    for key, want in selector.items():
        if key == "seeds":
            mask &= runs["seed"].isin([int(s) for s in want]).to_numpy()
            continue
        col = _param(runs, key)
        mask &= np.array([_same(v, want, key) for v in col], dtype=bool)
    return runs[mask]


def _verdict(h: Hypothesis, r: HypothesisResult, alpha: float) -> str:
    if r.missing:
        return "not run (no runs for: " + ", ".join(r.missing) + ")"
    if not np.isfinite(r.p_holm):
        return "not run (" + (r.note or "too few seeds") + ")"
    signif = r.p_holm < alpha
    right_sign = (h.direction == "two-sided" or (h.direction == "greater" and r.estimate > 0)
                  or (h.direction == "less" and r.estimate < 0))
    detected = signif and right_sign
    if h.expect == "detect":
        return "detected (control passes)" if detected else "NOT detected (control FAILS)"
    if h.expect == "no-effect":
        return "detected (control FAILS)" if signif else "not detected (control passes)"
    return "supported" if detected else "not supported"


def evaluate(h: Hypothesis, runs: pd.DataFrame, results: pd.DataFrame, n_boot: int = 2000,
             seed: int = 0) -> HypothesisResult:
    """Estimate, CI and seed-level p of one hypothesis (Holm and the verdict are set by :func:`evaluate_all`)."""
    r = HypothesisResult(h)
    runs = runs[runs["sweep"] == h.sweep] if "sweep" in runs.columns else runs.iloc[0:0]
    arm_of: dict[str, str] = {}
    for name, sel in h.arms.items():
        picked = select_arm(runs, sel)
        taken = sorted({arm_of[rid] for rid in picked["run_id"] if rid in arm_of})
        if taken:   # one run in two arms would enter the contrast twice: the selectors are wrong
            r.missing.append(f"{name} (its runs are also in {', '.join(taken)}: selectors overlap)")
        arm_of.update({rid: name for rid in picked["run_id"]})
        r.n_seeds[name] = int(picked["seed"].nunique())
        if picked.empty:
            r.missing.append(name)
    if r.missing:
        return r
    sel = runs[runs["run_id"].isin(arm_of)]
    strata = _param(sel, h.strata).astype(str) if h.strata else pd.Series("0", index=sel.index)
    meta = pd.DataFrame({"run_id": sel["run_id"], "arm": sel["run_id"].map(arm_of), "stratum": strata.to_numpy(),
                         "seed": sel["seed"].to_numpy()})
    dup = meta[meta.duplicated(["arm", "stratum", "seed"], keep=False)]
    if len(dup):   # two runs would be merged into one seed's score: the arm mixes points (strata missing?)
        r.missing += [f"{a} (several runs for one seed: its selector matches more than one point; "
                      f"strata?)" for a in sorted(set(dup["arm"]))]
        return r
    res = results[results["run_id"].isin(arm_of)] if len(results) else results
    if h.split == "standard" and len(res):
        res = standard_results(res)
    elif h.split != "all" and len(res):
        res = res[res["split"] == h.split]
    if h.tasks and len(res):
        res = res[res["task"].isin(h.tasks)]
    have = set(res["run_id"]) if len(res) else set()
    if have >= set(arm_of):
        long = res.drop(columns=["seed"], errors="ignore").merge(meta, on="run_id")
        scores = stats.per_seed_scores(long)
        ci = stats.crossed_bootstrap(long, h.contrast, paired=h.paired, n_boot=n_boot, seed=seed)
        r.low, r.high = ci.low, ci.high
    else:
        if h.split == "all":
            r.note = "no per-image results (a metric for every prompt together is not logged)"
            return r
        metric = "geneval" if h.split == "standard" else f"geneval_{h.split}"
        cols = [f"metrics.{metric}/{t}" for t in (h.tasks or ["overall"])]
        score = (pd.concat([pd.to_numeric(sel[c], errors="coerce") for c in cols], axis=1).mean(axis=1, skipna=False)
                 if all(c in sel.columns for c in cols) else None)
        if score is None or score.isna().all():
            r.note = f"no per-image results and no logged {metric} metric"
            return r
        scores = meta.assign(score=score.to_numpy()).dropna(subset=["score"])
        r.note = "logged metrics (no per-image results): CI from seeds only"
    t = stats.seed_level_test(scores, h.contrast, paired=h.paired, seed=seed)
    r.units = _units_text(scores, h)
    r.estimate, r.p_value, r.p_perm = t.estimate, t.p_value, t.p_perm
    if not np.isfinite(r.low):   # no per-image results: t-interval over seeds
        if h.paired and t.n_units >= 2:
            d = stats.contrast_units(scores, h.contrast).to_numpy()
            half = sps.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
            r.low, r.high = r.estimate - half, r.estimate + half
    return r


def _units_text(scores: pd.DataFrame, h: Hypothesis) -> str:
    """Paired: the contrast of every (stratum, seed) unit, in that order; unpaired: each arm's per-seed scores."""
    fmt = lambda v: " / ".join(f"{x:+.3f}" if h.paired else f"{x:.3f}" for x in v)  # noqa: E731
    if h.paired:
        units = stats.contrast_units(scores, h.contrast).sort_index()
        if units.index.get_level_values("stratum").nunique() > 1:
            return "; ".join(f"{h.strata} {s}: {fmt(g.to_numpy())}"
                             for s, g in units.groupby(level="stratum", sort=True))
        return fmt(units.to_numpy())
    return "; ".join(f"{a}: {fmt(scores[scores['arm'] == a].sort_values('seed')['score'].to_numpy())}"
                     for a in h.contrast)


def evaluate_all(hf: HypothesisFile, runs: pd.DataFrame, results: pd.DataFrame, n_boot: int = 2000,
                 seed: int = 0) -> list[HypothesisResult]:
    out = [evaluate(h, runs, results, n_boot=n_boot, seed=seed) for h in hf.hypotheses]
    for fam in dict.fromkeys(h.family for h in hf.hypotheses):
        idx = [i for i, r in enumerate(out) if r.h.family == fam]
        # Holm over the whole pre-registered family: a hypothesis not (yet) run counts as p = 1, so running
        # part of the family never makes the others' correction milder
        ps = [out[i].p_value if np.isfinite(out[i].p_value) else 1.0 for i in idx]
        for i, a in zip(idx, stats.holm(ps)):
            out[i].p_holm = float(a) if np.isfinite(out[i].p_value) else float("nan")
    for r in out:
        r.verdict = _verdict(r.h, r, hf.alpha)
    return out


def _fmt(v: float, digits: int = 4) -> float:
    return round(float(v), digits) if np.isfinite(v) else float("nan")


def hypotheses_table(results: list[HypothesisResult], alpha: float = 0.05) -> Table:
    blocks = []
    for fam in dict.fromkeys(r.h.family for r in results):
        rows = [{
            "ID": r.h.id, "Family": fam, "Hypothesis": r.h.text, "Sweep": r.h.sweep,
            "Split": SPLIT_LABELS[r.h.split]
                     + (f" ({', '.join(r.h.tasks)})" if r.h.tasks else ""),
            "Seeds": ", ".join(f"{a} {n}" for a, n in r.n_seeds.items()),
            "Estimate": _fmt(r.estimate),
            "CI (95%)": "n/a" if not (np.isfinite(r.low) and np.isfinite(r.high)) else f"[{r.low:.3f}, {r.high:.3f}]",
            "p (seed t)": _fmt(r.p_value), "p (seed perm.)": _fmt(r.p_perm), "p (Holm)": _fmt(r.p_holm),
            "Verdict": r.verdict, "Per-seed values": r.units or "–",
        } for r in results if r.h.family == fam]
        blocks.append(Block(f"family: {fam}", pd.DataFrame(rows, columns=COLUMNS), bold=False))
    notes = [f"Pre-registered in study/hypotheses.yaml; α = {alpha}; Holm within each family. Unit of inference: "
             "the training seed — p (seed t): paired t-test on per-seed contrasts (seeds matched by index, within "
             "strata such as world seeds) or Welch's t-test when unpaired; p (seed perm.): exact sign-flip / label "
             "permutation on the same per-seed scores; CI: crossed bootstrap (seeds × one prompt resample shared "
             "by all seeds), est ± t·SE.",
             "p values are two-sided; a verdict 'supported' (or 'detected') needs p (Holm) < α and the predicted "
             "sign. Holm counts every member of a family, a member not run as p = 1; 'not run' names the arms "
             "without runs.",
             "Per-seed values: what the seed-level test is made of, seeds in order: paired, each unit's contrast "
             "Σ w·score (per stratum when there are strata); unpaired, each arm's per-seed scores."]
    notes += [f"{r.h.id}: {r.note}" for r in results if r.note and not r.missing]
    return Table("Hypotheses (pre-registered) and controls", COLUMNS, blocks, notes, False,
                 numeric=[], name="hypotheses")
