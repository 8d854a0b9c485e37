"""The paper's GenEval tables (1–3) and per-sweep ablation tables, built from loaded runs.

A table is a :class:`Table`: a title, notes (world, prompt set, provenance, what was left out), and
blocks of rows. Paper rows and studio rows are always in separate blocks; studio rows are grouped by
(world, prompt set), and a block scored anywhere but the real world on the official prompts is labelled
as not comparable. Bold marks the best value per column *within a block*. :func:`render` writes
Markdown, LaTeX or CSV (``lightgen.analysis.render``).

Cells of studio rows are the means over seeds of the logged ``geneval/…`` metrics; the CI comes from a
crossed bootstrap over the per-image results (seeds × one prompt resample shared by all seeds) when they were logged, else from
a bootstrap over the seeds' logged scores (several seeds), else the run's own logged CI (one seed).
"""

from __future__ import annotations

import io
import math
from importlib import resources

import numpy as np
import pandas as pd

from lightgen.analysis import stats
from lightgen.analysis.loader import SweepData, param_values, standard_results
from lightgen.errors import UserError
from lightgen.config import size_label
from lightgen.analysis.render import Block, Table, _cell, render  # noqa: F401 - re-exported (scripts, tests)
from lightgen.geneval.tasks import LABELS as TASK_REGISTRY_LABELS
from lightgen.geneval.tasks import TASKS as GENEVAL_TASKS

PAPER_CITATION = ("Wu et al., \"LightGen: Efficient Image Generation through Knowledge Distillation and "
                  "Direct Preference Optimization\", arXiv:2503.08619 (2025)")
TASK_LABELS = TASK_REGISTRY_LABELS  # the registry's labels (lightgen.geneval.tasks.LABELS)
PAPER_TASK_ORDER = ["single_object", "two_object", "colors", "counting", "position", "color_attr"]
SCORE_COLUMNS = [TASK_LABELS[t] for t in PAPER_TASK_ORDER] + ["Overall"]
PAPER_COLUMNS = ["Model", "#Params", "Pre-train Data"] + SCORE_COLUMNS + ["CI (95%)", "World", "Prompt set", "Seeds"]
TABLE_TITLES = {1: "Table 1: GenEval at 256×256", 2: "Table 2: GenEval at 512×512",
                3: "Table 3: GenEval as reported"}
TABLE_RESOLUTION = {1: 256, 2: 512}
# Knobs that distinguish the points of a sweep, in the order rows are sorted by.
KNOBS = ["model.size", "data.resolution", "data.scale", "data.caption_diversity", "data.coverage",
         "data.variety", "data.density", "train.iterations", "train.batch_size", "dpo.mode", "dpo.beta"]
KNOB_LABELS = {"data.scale": "Scale", "data.caption_diversity": "Diversity", "data.coverage": "Coverage",
               "data.variety": "Variety", "data.density": "Density", "train.iterations": "Iterations",
               "train.batch_size": "Batch", "dpo.mode": "Mode", "dpo.beta": "β", "model.size": "Model",
               "data.resolution": "Res."}
# Params never treated as a sweep's knob even when they differ between points (bookkeeping).
NOT_KNOBS = ("seed", "data.seed", "preset", "data.scale_label", "data.actual_size", "lightgen.", "tracking.",
             "sweep.", "data.cache_dir", "data.num_workers", "data.storage", "train.device", "train.num_threads",
             "dpo.base", "dpo.pairs")
# The per-run composition splits of the toy prompt sets (metrics geneval_<split>/…) and their column names.
SPLIT_PREFIXES = ("geneval_intrain", "geneval_novel", "geneval_heldout")
SPLIT_LABELS = {"geneval_intrain": "In-train", "geneval_novel": "Novel", "geneval_heldout": "Held-out"}
SPLIT_NOTE = ("In-train / Novel / Held-out: prompts all of whose compositions occur in this run's training data "
              "(stated by a caption and shown by its scene) / that use a composition absent from this run's data "
              "but not held out globally / that use a composition held out of every training set (toy prompt sets; "
              "metrics geneval_intrain/…, geneval_novel/…, geneval_heldout/…).")
# Per-dataset numbers shown beside a point's scores (means over its seeds' datasets; lightgen.data.compositions)
DATA_COLUMNS = (("data/trainable_coverage", "Realised coverage", 2), ("data/repetition", "Items per composition", 1))
DATA_NOTE = ("Realised coverage: the share of the world's trainable compositions that the run's training items "
             "both state and show; Items per composition: training items per realised composition (means over "
             "the seeds' datasets; metrics data/trainable_coverage, data/repetition).")
DPO_NOTE = ("Abs. margin: the mean |Δ_l − Δ_w| of the last logged DPO batch (dpo/abs_margin), means over seeds; "
            "β acts once β × abs. margin reaches about 1 (below it every β trains alike: lightgen/train/dpo.py); "
            "Reward acc.: the share of that batch's pairs with a positive margin (dpo/reward_accuracy).")
EXTRA = "param:"   # prefix of point columns holding other params that distinguish points


def knob_label(k: str) -> str:
    return KNOB_LABELS.get(k, k[len(EXTRA):] if k.startswith(EXTRA) else k)


def _extra_knobs(runs: pd.DataFrame) -> list[str]:
    """Params outside KNOBS that are constant within every point but differ between points."""
    out = []
    for c in runs.columns:
        name = c[len("params."):]
        if not c.startswith("params.") or name in KNOBS or any(
                name == e or (e.endswith(".") and name.startswith(e)) for e in NOT_KNOBS):
            continue
        col = runs[c].astype(str)
        if col.nunique() > 1 and (col.groupby(runs["point_id"]).nunique() == 1).all():
            out.append(name)
    return out


# --------------------------------------------------------------------------------------------------
# Paper rows
# --------------------------------------------------------------------------------------------------
def paper_rows(table: int) -> pd.DataFrame:
    """The paper's rows of Table ``table`` (1, 2 or 3), from the project's copy of the published numbers."""
    text = resources.files("lightgen.analysis").joinpath("paper_tables.csv").read_text()
    df = pd.read_csv(io.StringIO(text), dtype={"table": int, "resolution": str})
    df = df[df["table"] == table]
    out = pd.DataFrame({
        "Model": df["model"], "#Params": df["params"], "Pre-train Data": df["pretrain_data"],
        **{TASK_LABELS[t]: df[t] for t in PAPER_TASK_ORDER}, "Overall": df["overall"],
        "CI (95%)": "not reported", "World": "real", "Prompt set": "official", "Seeds": "",
    })
    return out.reset_index(drop=True)


def paper_notes(table: int) -> list[tuple[str, str]]:
    """(model, remark) pairs attached to the paper's rows in the project's copy (e.g. swapped columns)."""
    text = resources.files("lightgen.analysis").joinpath("paper_tables.csv").read_text()
    df = pd.read_csv(io.StringIO(text), dtype={"table": int, "resolution": str, "note": str})
    df = df[(df["table"] == table) & df["note"].notna()]
    return list(zip(df["model"], df["note"]))


# --------------------------------------------------------------------------------------------------
# Studio points
# --------------------------------------------------------------------------------------------------
def _metric(runs: pd.DataFrame, key: str) -> pd.Series:
    col = f"metrics.{key}"
    return runs[col].astype(float) if col in runs.columns else pd.Series(np.nan, index=runs.index)


def point_summary(data: SweepData, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per point: knob values, mean scores over seeds, CI, compute and a display label."""
    runs = data.runs
    results = standard_results(data.prompt_results())   # Overall, its CI and the check: the standard set
    extra = _extra_knobs(runs)
    rows = []
    # a point of each sweep: the same config run by two sweeps (the A/A point is a data-scale point) is a row of each
    for (_, pid), grp in runs.groupby(["sweep", "point_id"], sort=False, dropna=False):
        first = grp.iloc[0]
        arm = first.get("tags.lightgen.arm")
        row: dict = {"point_id": pid, "sweep": first["sweep"], "arm": arm if isinstance(arm, str) else None,
                     "world": first["world"],
                     "prompt_set": first["prompt_set"], "seeds": int(grp["seed"].nunique()),
                     "run_ids": list(grp["run_id"])}
        for k in KNOBS:
            v = param_values(runs, k).loc[grp.index]
            row[k] = v.iloc[0] if v.notna().any() else None
        for k in extra:
            v = param_values(runs, k).loc[grp.index]
            row[EXTRA + k] = v.iloc[0] if v.notna().any() else None
        row["data.scale_label"] = grp.get("params.data.scale_label", pd.Series([None])).iloc[0]
        row["data.actual_size"] = pd.to_numeric(grp.get("params.data.actual_size", pd.Series([None])),
                                                errors="coerce").iloc[0]
        for prefix in ("geneval", *SPLIT_PREFIXES, "geneval_before"):
            for t in (*GENEVAL_TASKS, "overall"):
                row[f"{prefix}/{t}"] = _metric(grp, f"{prefix}/{t}").mean()
        n_missing = int(_metric(grp, "geneval/overall").isna().sum())
        if 0 < n_missing < len(grp):
            data.notes.append(f"point {pid}: geneval/overall missing in {n_missing} of {len(grp)} seed runs; "
                              "its cells average the others")
        for k in ("compute/samples_seen", "compute/epochs", "compute/train_flops", "compute/device_hours",
                  "model/params", "model/n_params"):
            row[k] = _metric(grp, k).mean()
        for c in grp.columns:
            if c.startswith("metrics.data/") or c.startswith("metrics.dpo/"):
                row[c[len("metrics."):]] = grp[c].astype(float).mean()
        per_image = results[results["run_id"].isin(grp["run_id"])] if len(results) else results
        row["ci_low"], row["ci_high"], row["ci_method"] = _ci(grp, per_image, n_boot, seed)
        if len(per_image) and np.isfinite(row["geneval/overall"]):
            recomputed, _ = stats.geneval_score(per_image)
            if abs(recomputed - row["geneval/overall"]) > 1e-6 and per_image["run_id"].nunique() == len(grp):
                data.notes.append(f"point {pid}: logged geneval/overall {row['geneval/overall']:.4f} differs "
                                  f"from the per-image results ({recomputed:.4f})")
        rows.append(row)
    pts = pd.DataFrame(rows)
    pts["label"] = _labels(pts)
    return pts


def _ci(grp: pd.DataFrame, per_image: pd.DataFrame, n_boot: int, seed: int) -> tuple[float, float, str]:
    if len(per_image) and per_image["run_id"].nunique() == len(grp):
        b = stats.hierarchical_bootstrap(per_image, n_boot=n_boot, seed=seed)
        return b.low, b.high, "bootstrap (seeds, prompts)"
    overall = _metric(grp, "geneval/overall").dropna()
    if len(overall) >= 2:
        _, lo, hi = stats.seed_bootstrap(overall.to_numpy(), n_boot=n_boot, seed=seed)
        return lo, hi, "bootstrap (seeds)"
    lo, hi = _metric(grp, "geneval/overall_ci_low").mean(), _metric(grp, "geneval/overall_ci_high").mean()
    if np.isfinite(lo) and np.isfinite(hi):
        return lo, hi, "logged (prompts)"
    return float("nan"), float("nan"), "n/a"


def _fmt_knob(k: str, v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v == "None":   # "None": logged as unset
        return "–"
    if k == "data.scale":
        return size_label(int(v))
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return f"{v:g}" if isinstance(v, float) else str(v)


def _varying(pts: pd.DataFrame) -> list[str]:
    """The knobs that take several values among these points (the studio's knobs first, then others)."""
    names = KNOBS + [c for c in pts.columns if c.startswith(EXTRA)]
    return [k for k in names if k in pts.columns and pts[k].astype(str).nunique() > 1]


def _labels(pts: pd.DataFrame) -> list[str]:
    labels = []
    # label by the knobs that vary within the point's own sweep arm (all of the sweep without arms)
    keys = pts["sweep"].astype(str) + "\x00" + pts["arm"].fillna("").astype(str)
    if pts.groupby("sweep", dropna=False)["arm"].nunique().le(1).all() or "dpo.mode" in _varying(pts):
        keys = pts["sweep"].astype(str)
    by_group = {k: _varying(g) for k, g in pts.groupby(keys)}
    for key, (_, r) in zip(keys, pts.iterrows()):
        knobs = by_group.get(key, [])
        if r.get("dpo.mode") == "sft":
            knobs = [k for k in knobs if k != "dpo.beta"]
        desc = ", ".join(f"{knob_label(k)} {_fmt_knob(k, r[k])}" for k in knobs)
        labels.append(desc or str(r["point_id"]))
    return labels


def _num(v: float, digits: int = 2) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def _ci_text(lo: float, hi: float) -> str:
    return "n/a" if not (np.isfinite(lo) and np.isfinite(hi)) else f"[{lo:.2f}, {hi:.2f}]"


def _params_text(r: pd.Series) -> str:
    n = r.get("model/params")
    n = n if n is not None and np.isfinite(n) else r.get("model/n_params")
    if n is not None and np.isfinite(n):
        return size_label(int(n))
    return str(r.get("model.size") or "–")


def _data_text(r: pd.Series) -> str:
    label = r.get("data.scale_label")
    if not isinstance(label, str) or not label:
        label = _fmt_knob("data.scale", r.get("data.scale"))
    actual, scale = r.get("data.actual_size"), r.get("data.scale")
    if actual is not None and scale is not None and np.isfinite(actual) and np.isfinite(scale) and actual != scale:
        return f"{label} (actual {int(actual):,})"
    return label


def _comparable(world: str, prompt_set: str) -> bool:
    return world == "real" and prompt_set == "official"


# --------------------------------------------------------------------------------------------------
# Tables 1–3
# --------------------------------------------------------------------------------------------------
def build_paper_table(table: int, points: pd.DataFrame | None, notes: list[str] | None = None,
                      partial: bool = False) -> Table:
    """Table ``table`` in the paper's layout: the paper's rows, then the studio's rows in their own blocks.

    Studio points go to Table 1 / 2 by ``data.resolution`` (256 / 512); Table 3 ("as reported") lists
    every studio point at its own resolution.
    """
    if table not in TABLE_TITLES:
        raise UserError(f"--table must be 1, 2 or 3, got {table}")
    blocks = [Block(f"Paper (Table {table} of arXiv:2503.08619; numbers copied from the paper)",
                    paper_rows(table))]
    tnotes = [f"Paper rows: {PAPER_CITATION}, Table {table}; the paper reports no confidence intervals."]
    tnotes += [f"{m}: {n}." for m, n in paper_notes(table)]
    if points is not None and len(points):
        pts = points
        if table in TABLE_RESOLUTION:
            pts = pts[pd.to_numeric(pts["data.resolution"], errors="coerce") == TABLE_RESOLUTION[table]]
        scored = pts[[f"geneval/{t}" for t in (*PAPER_TASK_ORDER, "overall")]].notna().any(axis=1)
        if (~scored).any():
            tnotes.append(f"{int((~scored).sum())} studio point(s) without any GenEval score are not listed.")
        pts = pts[scored]
        for (world, pset), grp in pts.groupby(["world", "prompt_set"], sort=True):
            # by sweep, then by the swept values (numeric: 100K, 200K, 500K…), not in the order runs were logged
            grp = _sort_points(grp, [c for c in ("sweep",) if c in grp.columns] + _varying(grp))
            rows = pd.DataFrame({
                "Model": [_studio_model(r, table) for _, r in grp.iterrows()],
                "#Params": [_params_text(r) for _, r in grp.iterrows()],
                "Pre-train Data": [_data_text(r) for _, r in grp.iterrows()],
                **{TASK_LABELS[t]: grp[f"geneval/{t}"].round(4).to_numpy() for t in PAPER_TASK_ORDER},
                "Overall": grp["geneval/overall"].round(4).to_numpy(),
                "CI (95%)": [_ci_text(lo, hi) for lo, hi in zip(grp["ci_low"], grp["ci_high"])],
                "World": world, "Prompt set": pset, "Seeds": grp["seeds"].astype(str).to_numpy(),
            })
            verdict = ("same world and prompt set as the paper, scored by the studio's detector"
                       if _comparable(world, pset) else "NOT comparable to the paper's rows")
            blocks.append(Block(f"LightGen Studio — world: {world}, prompt set: {pset} — {verdict}", rows))
            methods = sorted(set(grp["ci_method"]))
            tnotes.append(f"Studio rows (world {world}, prompt set {pset}): cells are means over seeds; "
                          f"CI: {', '.join(methods)}.")
        if len(blocks) == 1:
            tnotes.append(f"No studio runs at {TABLE_RESOLUTION.get(table)} px in this selection.")
    else:
        tnotes.append("No studio runs in this selection.")
    tnotes.append("Bold: best value per column within each block.")
    return Table(TABLE_TITLES[table], PAPER_COLUMNS, blocks, tnotes + list(notes or []), partial,
                 numeric=SCORE_COLUMNS, name=f"table{table}")


def _studio_model(r: pd.Series, table: int) -> str:
    res = _fmt_knob("data.resolution", r.get("data.resolution"))
    name = f"Studio {r.get('model.size') or ''} [{r['sweep'] or 'no sweep'}] {r['label']}".replace("  ", " ")
    return f"{name} @{res}px" if table == 3 else name


# --------------------------------------------------------------------------------------------------
# Ablation tables
# --------------------------------------------------------------------------------------------------
def build_ablation_table(data: SweepData, sweep: str, points: pd.DataFrame, n_resamples: int = 9999,
                         seed: int = 0, per_task_split: bool = False) -> Table:
    """Per-point scores (all / in-train / novel / held-out), compute, and the paired difference to the reference point.

    The reference is the previous point along the sweep's last varying knob (other knobs equal); in a
    DPO sweep with an SFT arm it is the SFT arm. Holm's correction covers all tests in the table.
    """
    pts = points[points["sweep"] == sweep].copy()
    if pts.empty:
        raise UserError(f"no points of sweep '{sweep}'")
    history = _step_history(data, pts)
    if history is not None:
        return _iterations_table(sweep, history, data)
    knobs = _varying(pts) or []
    # Arms of a sweep (tag lightgen.arm) are separate experiments: each gets its own block, sorted and
    # compared within itself. A DPO sweep stays one block: every β is compared with the SFT arm.
    arms = [a for a in pts["arm"].dropna().unique()] if "arm" in pts.columns else []
    dpo_vs_sft = "dpo.mode" in knobs and (pts["dpo.mode"] == "sft").any()
    if len(arms) > 1 and not dpo_vs_sft:
        groups = [(str(a), pts[pts["arm"] == a]) for a in arms]
        if pts["arm"].isna().any():
            groups.append(("(no arm)", pts[pts["arm"].isna()]))
    else:
        groups = [(f"sweep {sweep}", pts)]
    results = standard_results(data.prompt_results())   # the paired tests compare Overall: the standard set
    ordered, group_of, refs = [], [], []
    for gi, (_, g) in enumerate(groups):
        gk = _varying(g) if len(groups) > 1 else knobs
        g = _sort_points(g, gk)
        offset = sum(len(x) for x in ordered)
        refs += [None if r is None else r + offset for r in _references(g, gk)]
        ordered.append(g)
        group_of += [gi] * len(g)
    pts = pd.concat(ordered, ignore_index=True)
    deltas, pvals, vs = [], [], []
    for i, ref in enumerate(refs):
        if ref is None:
            deltas.append(np.nan); pvals.append(np.nan); vs.append("–")  # noqa: E702
            continue
        a, b = pts.iloc[i], pts.iloc[ref]
        deltas.append(a["geneval/overall"] - b["geneval/overall"])
        vs.append(b["label"])
        ra = results[results["run_id"].isin(a["run_ids"])] if len(results) else results
        rb = results[results["run_id"].isin(b["run_ids"])] if len(results) else results
        if len(ra) and len(rb):
            pvals.append(stats.paired_test(ra, rb, n_resamples=n_resamples, seed=seed).p_value)
        else:
            pvals.append(np.nan)
    holm = stats.holm(pvals)
    cols: dict[str, object] = {knob_label(k): [_fmt_knob(k, v) for v in pts[k]] for k in knobs}
    if "dpo.beta" in knobs and "dpo.mode" in pts.columns:  # β means nothing in the SFT control arm
        cols[knob_label("dpo.beta")] = ["–" if m == "sft" else b for m, b in
                                        zip(pts["dpo.mode"], cols[knob_label("dpo.beta")])]
    if not knobs:
        cols["Point"] = pts["point_id"].to_numpy()
    cols["Seeds"] = pts["seeds"].astype(str).to_numpy()
    cols["Overall"] = pts["geneval/overall"].round(4).to_numpy()
    cols["CI (95%)"] = [_ci_text(lo, hi) for lo, hi in zip(pts["ci_low"], pts["ci_high"])]
    for prefix in SPLIT_PREFIXES:
        cols[SPLIT_LABELS[prefix]] = pts[f"{prefix}/overall"].round(4).to_numpy()
    for key, label, digits in DATA_COLUMNS:   # what the run's data realised (logged with its dataset)
        if key in pts.columns and pts[key].notna().any():
            cols[label] = pts[key].round(digits).to_numpy()
    if pts["geneval_before/overall"].notna().any():
        cols["Before DPO"] = pts["geneval_before/overall"].round(4).to_numpy()
    if "dpo/abs_margin" in pts.columns and pts["dpo/abs_margin"].notna().any():
        # did β act? it does once β·|m| reaches ~1 (lightgen/train/dpo.py); the SFT arm has no β
        dpo_rows = (pts["dpo.mode"] != "sft").to_numpy() if "dpo.mode" in pts.columns else np.ones(len(pts), bool)
        beta = pd.to_numeric(pts.get("dpo.beta"), errors="coerce").to_numpy(dtype=float)
        cols["Abs. margin"] = pts["dpo/abs_margin"].to_numpy(dtype=float)
        cols["β × abs. margin"] = np.where(dpo_rows, beta * cols["Abs. margin"], np.nan)
        if "dpo/reward_accuracy" in pts.columns:
            cols["Reward acc."] = pts["dpo/reward_accuracy"].round(4).to_numpy()
    for t in PAPER_TASK_ORDER:
        cols[TASK_LABELS[t]] = pts[f"geneval/{t}"].round(4).to_numpy()
        if per_task_split:
            for prefix in SPLIT_PREFIXES:
                cols[f"{TASK_LABELS[t]} {SPLIT_LABELS[prefix]}"] = pts[f"{prefix}/{t}"].round(4).to_numpy()
    cols["Samples seen"] = pts["compute/samples_seen"].to_numpy()
    cols["Epochs"] = pts["compute/epochs"].round(2).to_numpy()
    cols["Train FLOPs"] = pts["compute/train_flops"].to_numpy()
    cols["Device h"] = pts["compute/device_hours"].round(4).to_numpy()
    cols["Δ Overall"] = np.round(deltas, 4)
    cols["vs"] = vs
    cols["p (same models, same prompts)"] = np.round(pvals, 4)
    cols["p (Holm, same models, same prompts)"] = np.round(holm, 4)
    rows = pd.DataFrame(cols)
    blocks = [Block(label if len(groups) == 1 else f"arm {label}", rows[np.asarray(group_of) == gi].reset_index(drop=True))
              for gi, (label, _) in enumerate(groups)]
    first = pts.iloc[0]
    notes = [f"Sweep '{sweep}', world {first['world']}, prompt set {first['prompt_set']}; cells are means "
             "over seeds; p: DESCRIPTIVE only — same models, same prompts: a paired sign-flip test over shared "
             "prompts with seeds pooled (exact when few prompts differ), Holm-adjusted over the table's tests. "
             "It asks whether these trained models differ, not whether the training procedures do; the "
             "confirmatory, seed-level tests are in the hypotheses table (H1–H4).",
             SPLIT_NOTE]
    if any(label in cols for _, label, _ in DATA_COLUMNS):
        notes.append(DATA_NOTE)
    if "Abs. margin" in cols:
        notes.append(DPO_NOTE)
    if not len(results):
        notes.append("No per-image results were loaded: no paired tests; CIs from seeds or logged values.")
    numeric = ["Overall", *SPLIT_LABELS.values()] + [TASK_LABELS[t] for t in PAPER_TASK_ORDER]
    return Table(f"Ablation: {sweep}", list(rows.columns), blocks, notes + list(data.notes), sweep in data.partial_sweeps, numeric=numeric, name=f"ablation_{sweep}")


def _sort_points(pts: pd.DataFrame, knobs: list[str]) -> pd.DataFrame:
    keys = []
    for k in knobs:
        col = pts[k]
        if k == "dpo.mode":  # the SFT control arm first
            keys.append(col.map(lambda m: (0 if m == "sft" else 1, str(m))))
        else:
            num = pd.to_numeric(col, errors="coerce")
            keys.append(num.where(num.notna(), np.inf) if num.notna().any() else col.astype(str))
    if not keys:
        return pts.reset_index(drop=True)
    order = sorted(range(len(pts)), key=lambda i: tuple(k.iloc[i] for k in keys))
    return pts.iloc[order].reset_index(drop=True)


def _references(pts: pd.DataFrame, knobs: list[str]) -> list[int | None]:
    if "dpo.mode" in knobs and (pts["dpo.mode"] == "sft").any():
        sft = int(np.flatnonzero(pts["dpo.mode"].to_numpy() == "sft")[0])
        return [None if m == "sft" else sft for m in pts["dpo.mode"]]
    refs: list[int | None] = []
    others = knobs[:-1]
    for i in range(len(pts)):
        if i == 0 or not knobs:
            refs.append(None)
            continue
        same = all(str(pts.iloc[i][k]) == str(pts.iloc[i - 1][k]) for k in others)
        refs.append(i - 1 if same else None)
    return refs


def _step_history(data: SweepData, pts: pd.DataFrame) -> pd.DataFrame | None:
    """The step-indexed GenEval history when the sweep's single point logged GenEval at several steps.

    With several points the per-point table (final metrics) is shown instead: steps of different points
    must not be averaged together.
    """
    if len(pts) != 1:
        return None
    run_ids = [r for ids in pts["run_ids"] for r in ids]
    hist = data.history("geneval")
    hist = hist[hist["run_id"].isin(run_ids)]
    if hist.empty or hist[hist["key"] == "geneval/overall"]["step"].nunique() < 2:
        return None
    seeds = data.runs.set_index("run_id")["seed"]
    batch = param_values(data.runs, "train.batch_size")
    batch = pd.Series(batch.to_numpy(), index=data.runs["run_id"])
    hist = hist.assign(seed=hist["run_id"].map(seeds), batch=hist["run_id"].map(batch))
    return hist


def _iterations_table(sweep: str, hist: pd.DataFrame, data: SweepData) -> Table:
    wide = hist.pivot_table(index=["step", "run_id"], columns="key", values="value", aggfunc="last")
    by_step = wide.groupby(level="step")
    batch = hist.groupby("step")["batch"].first()
    cols: dict[str, object] = {"Step": list(by_step.groups)}
    cols["Seeds"] = by_step.size().astype(str).to_numpy()
    get = lambda k: by_step[k].mean().round(4).to_numpy() if k in wide.columns else np.full(len(cols["Step"]), np.nan)  # noqa: E731
    cols["Overall"] = get("geneval/overall")
    for prefix in SPLIT_PREFIXES:
        cols[SPLIT_LABELS[prefix]] = get(f"{prefix}/overall")
    for t in PAPER_TASK_ORDER:
        cols[TASK_LABELS[t]] = get(f"geneval/{t}")
    steps = np.asarray(cols["Step"], dtype=float)
    cols["Samples seen"] = steps * pd.to_numeric(batch, errors="coerce").to_numpy()
    overall = np.asarray(cols["Overall"], dtype=float)
    cols["Δ Overall"] = np.round(np.r_[np.nan, np.diff(overall)], 4)
    rows = pd.DataFrame(cols)
    notes = [f"Sweep '{sweep}': GenEval logged at several training steps of the same runs (means over seeds). "
             "No paired tests: per-image results are logged only for the final step."]
    numeric = ["Overall", *SPLIT_LABELS.values()] + [TASK_LABELS[t] for t in PAPER_TASK_ORDER]
    return Table(f"Ablation: {sweep} (GenEval vs training step)", list(rows.columns),
                 [Block(f"sweep {sweep}", rows)], notes + list(data.notes), sweep in data.partial_sweeps, numeric=numeric,
                 name=f"ablation_{sweep}")


# --------------------------------------------------------------------------------------------------
# Per-seed scores: the units every seed-level test is made of
# --------------------------------------------------------------------------------------------------
SEED_COLUMNS = ["Point", "Seeds", "Overall by seed", "Held-out by seed"]


def _by_seed(seeds: pd.Series, values: pd.Series) -> str:
    """'0.517 / 0.562 / –' in the order of ``seeds`` (a missing value is '–')."""
    order = np.argsort(seeds.to_numpy(dtype=float), kind="stable")
    vals = values.to_numpy(dtype=float)[order]
    return " / ".join("–" if not np.isfinite(v) else f"{v:.3f}" for v in vals)


def build_seed_table(data: SweepData, points: pd.DataFrame) -> Table:
    """Every run's own score, a row per point (per step for a sweep logged along training), seeds in order.

    The means of the ablation tables and the seed-level tests of the hypotheses table are made of these
    values: a reader can check a mean, a spread or a per-seed claim against them.
    """
    def row(point: str, seeds: pd.Series, overall: pd.Series, heldout: pd.Series) -> dict[str, str]:
        return {"Point": point, "Seeds": ", ".join(str(int(x)) for x in sorted(seeds)),
                "Overall by seed": _by_seed(seeds, overall), "Held-out by seed": _by_seed(seeds, heldout)}

    runs = data.runs.set_index("run_id")
    blocks = []
    for sweep in sorted(points["sweep"].dropna().unique()):
        pts = points[points["sweep"] == sweep]
        history = _step_history(data, pts)
        if history is not None:   # one point (``_step_history``): a run per seed at each step
            wide = history.pivot_table(index=["step", "seed"], columns="key", values="value", aggfunc="last")
            rows = []
            for step, g in wide.groupby(level="step"):
                g = g.reset_index()
                col = lambda k: g[k] if k in g.columns else pd.Series(np.nan, index=g.index)  # noqa: E731
                rows.append(row(f"step {int(step)}", g["seed"], col("geneval/overall"), col("geneval_heldout/overall")))
            blocks.append(Block(f"sweep {sweep} (GenEval along training)", pd.DataFrame(rows, columns=SEED_COLUMNS),
                                bold=False))
            continue
        knobs = _varying(pts)
        pts = _sort_points(pts.assign(_arm=pts["arm"].fillna("")), ["_arm", *knobs])
        rows = []
        for _, p in pts.iterrows():
            grp = runs.loc[p["run_ids"]]
            label = p["label"]
            if label == p["point_id"]:   # the only point of its arm: name it by the sweep's knobs it sets
                label = ", ".join(f"{knob_label(k)} {_fmt_knob(k, p[k])}" for k in knobs
                                  if _fmt_knob(k, p[k]) != "–") or label
            label = label if not isinstance(p["arm"], str) else f"{p['arm']}: {label}"
            rows.append(row(label, grp["seed"], _metric(grp, "geneval/overall"), _metric(grp, "geneval_heldout/overall")))
        blocks.append(Block(f"sweep {sweep}", pd.DataFrame(rows, columns=SEED_COLUMNS), bold=False))
    notes = ["Each run's own logged score (geneval/overall: the standard prompt set; geneval_heldout/overall: "
             "the held-out prompts), three decimals, in the order of the seeds listed; '–': not logged by that "
             "run. The ablation tables' cells are the means of these values, and the hypotheses' seed-level "
             "tests are made of them (per prompt split and task as each hypothesis states)."]
    return Table("Per-seed scores (the units of inference)", SEED_COLUMNS, blocks, notes + list(data.notes),
                 data.partial, numeric=[], name="seeds")
