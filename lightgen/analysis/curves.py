"""The paper's Fig. 6 curves and the diversity / DPO plots, from loaded runs.

Every ``plot_*`` function takes a :class:`~lightgen.analysis.loader.SweepData`, draws one figure in the
studio's style (seaborn, mean ± s.d. over seeds), writes it as PNG and PDF under ``out_dir`` (when given)
and returns the long DataFrame it plotted (one row per run, or per run and step), so tests can check
the data rather than pixels (``draw=False`` skips the drawing). ``df.attrs["files"]`` lists the files
written. A plot whose data is absent
from the selection returns an empty frame and ``df.attrs["skipped"]`` says why.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Iterable

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from lightgen.analysis.loader import SweepData, param_values  # noqa: E402
from lightgen.analysis.tables import TASK_LABELS  # noqa: E402
from lightgen.config import size_label  # noqa: E402
from lightgen.geneval.tasks import TASKS as GENEVAL_TASKS  # noqa: E402
from lightgen.utils import write_atomic  # noqa: E402

ERRORBAR = "sd"  # error bars: standard deviation over seeds
METRIC_LABELS = {"overall": "Overall", **TASK_LABELS}
DIVERSITY_KNOBS = ["data.caption_diversity", "data.coverage", "data.variety", "data.density"]
FORMATS = ("png", "pdf")


def set_style() -> None:
    """One look for every figure of the studio."""
    sns.set_theme(style="whitegrid", context="paper", palette="colorblind", font_scale=1.1)


def _skip(reason: str) -> pd.DataFrame:
    df = pd.DataFrame()
    df.attrs.update(skipped=reason, files=[])
    return df


def _save(fig: plt.Figure, out_dir: str | Path | None, name: str, formats: Iterable[str]) -> list[Path]:
    files = []
    if out_dir is not None:
        for fmt in formats:
            buf = io.BytesIO()
            fig.savefig(buf, format=fmt, bbox_inches="tight", dpi=150)
            files.append(write_atomic(Path(out_dir) / f"{name}.{fmt}", buf.getvalue()))
    plt.close(fig)
    return files


def _finish(df: pd.DataFrame, fig, out_dir, name: str, formats) -> pd.DataFrame:
    """Save the figure (if any; ``draw=False`` passes none) and return the plotted data."""
    df = df.reset_index(drop=True)
    df.attrs.update(files=_save(fig, out_dir, name, formats) if fig is not None else [], skipped=None)
    return df


def run_scores(data: SweepData, metrics: Iterable[str] = ("overall",), prefix: str = "geneval") -> pd.DataFrame:
    """Long table: one row per (run, metric) with the run's point, seed and knob values."""
    runs = data.runs
    arm = runs["tags.lightgen.arm"] if "tags.lightgen.arm" in runs.columns else pd.Series(None, index=runs.index)
    base = pd.DataFrame({"run_id": runs["run_id"], "point_id": runs["point_id"], "seed": runs["seed"],
                         "sweep": runs["sweep"], "arm": arm.fillna("all").astype(str)})
    for k in ("data.scale", "data.scale_label", "data.actual_size", "train.iterations", "train.batch_size", "dpo.beta",
              "dpo.mode", *DIVERSITY_KNOBS):
        base[k] = param_values(runs, k).to_numpy()
    for c in runs.columns:
        if c.startswith("metrics.compute/") or c.startswith("metrics.data/"):
            base[c[len("metrics."):]] = runs[c].astype(float).to_numpy()
    parts = []
    for m in metrics:
        col = f"metrics.{prefix}/{m}"
        if col in runs.columns:
            parts.append(base.assign(metric=METRIC_LABELS.get(m, m), value=runs[col].astype(float).to_numpy()))
    if not parts:
        return pd.DataFrame()
    return pd.concat(parts, ignore_index=True).dropna(subset=["value"])


def _arms_varying(df: pd.DataFrame, knobs: list[str]) -> pd.DataFrame:
    """Runs of the arms in which every one of ``knobs`` takes two or more values (arms are separate
    experiments: a coverage arm says nothing about the caption-diversity knob, and vice versa)."""
    keep = [a for a, g in df.groupby("arm") if all(pd.to_numeric(g[k], errors="coerce").nunique() >= 2 for k in knobs)]
    return df[df["arm"].isin(keep)]


def _scale_ticks(ax, df: pd.DataFrame) -> None:
    scales = sorted(df["data.scale"].dropna().unique())
    ax.set_xscale("log")
    ax.set_xticks(scales)
    ax.set_xticklabels([size_label(int(s)) for s in scales])
    ax.minorticks_off()


def plot_vs_scale(data: SweepData, out_dir=None, formats=FORMATS, draw: bool = True) -> pd.DataFrame:
    """Fig. 6a: GenEval overall and per task vs nominal data scale (log x, labels 100K…2M)."""
    df = run_scores(data, ("overall", *GENEVAL_TASKS))
    df = _arms_varying(df, ["data.scale"]) if not df.empty else df
    if df.empty:
        return _skip("needs runs at two or more data scales")
    if not draw:
        return _finish(df, None, None, "", ())
    set_style()
    g = sns.relplot(data=df, x="data.scale", y="value", col="metric", col_wrap=4, kind="line", marker="o",
                    hue="arm" if df["arm"].nunique() > 1 else None, errorbar=ERRORBAR, height=2.6, aspect=1.1,
                    facet_kws={"sharey": False})
    for ax in g.axes.flat:
        _scale_ticks(ax, df)
    g.set_axis_labels("data scale (nominal)", "GenEval")
    g.set_titles("{col_name}")
    g.figure.suptitle("GenEval vs data scale (mean ± s.d. over seeds)", y=1.02)
    return _finish(df, g.figure, out_dir, "fig6a_scale", formats)


def plot_vs_samples_seen(data: SweepData, out_dir=None, formats=FORMATS, draw: bool = True) -> pd.DataFrame:
    """Fig. 6a, iso-compute view: GenEval overall vs samples seen and vs epochs, one colour per scale.

    At fixed iterations every scale sees the same number of samples, so a small set is repeated for
    many epochs and a large one is seen about once: the epochs panel shows that trade.
    """
    df = run_scores(data, ("overall",))
    if df.empty or "compute/samples_seen" not in df.columns or df["compute/samples_seen"].isna().all():
        return _skip("needs the compute/samples_seen metric")
    if df["data.scale"].nunique() < 2 and df["compute/samples_seen"].nunique() < 2:
        return _skip("needs runs at two or more data scales or compute budgets")
    epochs = df["compute/epochs"] if "compute/epochs" in df.columns else pd.Series(float("nan"), index=df.index)
    actual = pd.to_numeric(df["data.actual_size"], errors="coerce")
    df = df.assign(scale=df["data.scale"].map(lambda s: size_label(int(s)) if pd.notna(s) else "?"),
                   epochs=epochs.fillna(df["compute/samples_seen"] / actual))
    if not draw:
        return _finish(df, None, None, "", ())
    set_style()
    fig, axes = plt.subplots(1, 2, figsize=(8.5, 3.2), sharey=True)
    for ax, x, label in ((axes[0], "compute/samples_seen", "samples seen (iterations × batch)"),
                         (axes[1], "epochs", "epochs over the training set")):
        sns.lineplot(data=df, x=x, y="value", hue="scale", style="arm" if df["arm"].nunique() > 1 else None,
                     markers=True, errorbar=ERRORBAR, err_style="bars", ax=ax, legend=ax is axes[1])
        if df[x].notna().any():
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("GenEval overall")
    fig.suptitle("GenEval vs compute (iso-compute view; mean ± s.d. over seeds)")
    fig.tight_layout()
    return _finish(df, fig, out_dir, "fig6a_samples_seen", formats)


def plot_vs_iterations(data: SweepData, out_dir=None, formats=FORMATS, draw: bool = True) -> pd.DataFrame:
    """Fig. 6b: GenEval vs training iterations (step-indexed metrics, else final metrics per run)."""
    hist = data.history("geneval/")
    hist = hist[hist["key"].isin([f"geneval/{m}" for m in ("overall", *GENEVAL_TASKS)])]
    if not hist.empty and hist["step"].nunique() >= 2:
        seeds = data.runs.set_index("run_id")["seed"]
        points = data.runs.set_index("run_id")["point_id"]
        df = hist.assign(seed=hist["run_id"].map(seeds), point_id=hist["run_id"].map(points),
                         metric=hist["key"].str.slice(len("geneval/")).map(lambda m: METRIC_LABELS.get(m, m)),
                         iteration=hist["step"])[["run_id", "point_id", "seed", "metric", "iteration", "value"]]
    else:
        df = run_scores(data, ("overall", *GENEVAL_TASKS))
        if df.empty or df["train.iterations"].nunique() < 2:
            return _skip("needs step-indexed GenEval metrics or runs with two or more iteration counts")
        df = df.rename(columns={"train.iterations": "iteration"})
    if not draw:
        return _finish(df, None, None, "", ())
    return _facets(df, out_dir, "fig6b_iterations", formats, ("training iterations", "GenEval"),
                   "GenEval vs training iterations (mean ± s.d. over seeds)", 1.02,
                   x="iteration", col="metric", col_wrap=4, kind="line", marker="o",
                   hue="point_id" if df["point_id"].nunique() > 1 else None,  # never average across points
                   errorbar=ERRORBAR, height=2.6, facet_kws={"sharey": False})


def plot_vs_diversity_knobs(data: SweepData, out_dir=None, formats=FORMATS, draw: bool = True) -> pd.DataFrame:
    """GenEval overall vs each diversity knob that varies in the selection (at fixed volume per line)."""
    df = run_scores(data, ("overall",))
    parts = [] if df.empty else [
        _arms_varying(df, [k]).assign(knob=k.split(".")[1], knob_value=lambda d, k=k: pd.to_numeric(d[k], errors="coerce"))
        for k in DIVERSITY_KNOBS]
    parts = [p for p in parts if len(p)]
    if not parts:
        return _skip("needs runs at two or more values of a diversity knob")
    long = pd.concat(parts, ignore_index=True).dropna(subset=["knob_value"])
    long["scale"] = _scale_labels(long)
    if not draw:
        return _finish(long, None, None, "", ())
    return _facets(long, out_dir, "diversity_knobs", formats, ("knob value", "GenEval overall"),
                   "GenEval vs caption-diversity knobs (one line per data scale)", 1.04,
                   x="knob_value", col="knob", hue="scale", kind="line", marker="o",
                   errorbar=ERRORBAR, height=2.8, facet_kws={"sharex": False})


def plot_vs_measured_diversity(data: SweepData, out_dir=None, formats=FORMATS,
                               metrics: Iterable[str] | None = None, draw: bool = True) -> pd.DataFrame:
    """GenEval overall vs each measured diversity metric (``data/…``) of the training set."""
    df = run_scores(data, ("overall",))
    cols = [c for c in df.columns if c.startswith("data/")] if not df.empty else []
    if metrics is not None:
        cols = [c for c in cols if c[len("data/"):] in set(metrics)]
    cols = [c for c in cols if df[c].nunique() >= 2]
    if not cols:
        return _skip("needs a data/<diversity metric> that varies across runs")
    long = pd.concat([df.assign(measure=c[len("data/"):], measured=df[c]) for c in cols], ignore_index=True)
    long = long.dropna(subset=["measured"])
    long["scale"] = _scale_labels(long)
    if not draw:
        return _finish(long, None, None, "", ())
    return _facets(long, out_dir, "diversity_measured", formats, ("measured diversity", "GenEval overall"),
                   "GenEval vs measured diversity of the training captions", 1.04,
                   x="measured", col="measure", col_wrap=4, hue="scale", kind="scatter",
                   height=2.6, facet_kws={"sharex": False})


def _scale_labels(long: pd.DataFrame) -> pd.Series:
    return long["data.scale"].map(lambda s: size_label(int(s)) if pd.notna(s) else "?")


def _facets(df: pd.DataFrame, out_dir: Any, name: str, formats: Any, labels: tuple[str, str], title: str,
            title_y: float, **relplot: Any) -> pd.DataFrame:
    """A seaborn relplot of ``value`` in facets titled by their column, axis labels, a figure title, saved."""
    set_style()
    g = sns.relplot(data=df, y="value", aspect=1.1, **relplot)
    g.set_axis_labels(*labels)
    g.set_titles("{col_name}")
    g.figure.suptitle(title, y=title_y)
    return _finish(df, g.figure, out_dir, name, formats)


def _on_the_grid(df: pd.DataFrame, grid: pd.DataFrame) -> pd.DataFrame:
    """The grid arms' runs plus the runs of other arms of the same sweep that are cells of the grid: one of the
    grid's diversity values and every other knob as in the grid, at any scale (a sweep plans a config once,
    so a grid row that another arm also asks for, e.g. the diversity arm's row at one scale, is run, and
    tagged, under that arm only)."""
    if grid.empty:
        return grid
    def key(col: pd.Series) -> pd.Series:   # comparable text, an unset knob ("None", NaN) as ""
        return col.map(lambda v: "" if v is None or v == "None" or (isinstance(v, float) and np.isnan(v)) else str(v))

    others = [k for k in ("train.iterations", "train.batch_size", *DIVERSITY_KNOBS)
              if k != "data.caption_diversity" and k in grid.columns]
    fixed = {k: key(grid[k]).iloc[0] for k in others if key(grid[k]).nunique() == 1}
    if len(fixed) < len(others):
        return grid                   # the grid itself varies another knob: no cell is well defined outside it
    divs = set(key(grid["data.caption_diversity"]))
    cand = df[df["sweep"].isin(set(grid["sweep"])) & ~df["arm"].isin(set(grid["arm"]))
              & ~df["run_id"].isin(set(grid["run_id"]))]
    on = key(cand["data.caption_diversity"]).isin(divs) & cand["data.scale"].notna()
    for k, v in fixed.items():
        on &= key(cand[k]) == v
    return pd.concat([grid, cand[on]], ignore_index=True)


def plot_scale_diversity_heatmap(data: SweepData, out_dir=None, formats=FORMATS, draw: bool = True) -> pd.DataFrame:
    """Mean GenEval overall on the data scale × caption diversity grid: does diversity beat volume?"""
    df = run_scores(data, ("overall",))
    if df.empty:
        return _skip("no GenEval scores")
    df = _on_the_grid(df, _arms_varying(df, ["data.scale", "data.caption_diversity"]))
    div = pd.to_numeric(df["data.caption_diversity"], errors="coerce")
    if df.empty or df["data.scale"].nunique() < 2 or div.nunique() < 2:
        return _skip("needs a grid with two or more data scales and two or more caption diversities")
    grid = (df.assign(diversity=div).groupby(["data.scale", "diversity"])["value"]
            .agg(["mean", "std", "count"]).reset_index())
    pivot = grid.pivot(index="data.scale", columns="diversity", values="mean").sort_index(ascending=False)
    pivot.index = [size_label(int(s)) for s in pivot.index]
    if not draw:
        return _finish(grid, None, None, "", ())
    set_style()
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * pivot.shape[1], 1.0 + 0.6 * pivot.shape[0]))
    sns.heatmap(pivot, annot=True, fmt=".2f", cmap="viridis", vmin=0, vmax=1, ax=ax,
                cbar_kws={"label": "GenEval overall (mean over seeds)"})
    ax.set_xlabel("caption diversity")
    ax.set_ylabel("data scale")
    ax.set_title("Scale × diversity")
    return _finish(grid, fig, out_dir, "scale_diversity_heatmap", formats)


def plot_dpo_beta(data: SweepData, out_dir=None, formats=FORMATS, draw: bool = True) -> pd.DataFrame:
    """GenEval (overall, position, counting) vs DPO β, with the SFT arm and the pre-DPO model as lines."""
    df = run_scores(data, ("overall", "position", "counting"))
    if df.empty or df["dpo.beta"].isna().all():
        return _skip("needs DPO runs (dpo.beta)")
    dpo = df[df["dpo.mode"] != "sft"]
    n_beta = pd.to_numeric(dpo["dpo.beta"], errors="coerce").nunique()
    if dpo.empty or not (n_beta >= 2 or (n_beta == 1 and (df["dpo.mode"] == "sft").any())):
        # every run logs a dpo.beta param; only a β sweep or a DPO-vs-SFT comparison is a DPO figure
        return _skip("needs DPO runs at two or more β, or DPO runs beside an SFT arm")
    before = run_scores(data, ("overall", "position", "counting"), prefix="geneval_before")
    sft = df[df["dpo.mode"] == "sft"]
    df = pd.concat([dpo.assign(arm="DPO"), sft.assign(arm="SFT"),
                    before.assign(arm="before") if not before.empty else None], ignore_index=True)
    if not draw:
        return _finish(df, None, None, "", ())
    set_style()
    metrics = list(dict.fromkeys(df["metric"]))
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.3 * len(metrics), 3.0), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        d = df[(df["metric"] == m) & (df["arm"] == "DPO")]
        sns.lineplot(data=d, x="dpo.beta", y="value", marker="o", errorbar=ERRORBAR, err_style="bars", ax=ax,
                     label="DPO")
        for arm, style in (("SFT", "-"), ("before", ":")):
            ref = df[(df["metric"] == m) & (df["arm"] == arm)]["value"]
            if len(ref):
                mean, sd = ref.mean(), ref.std(ddof=1) if len(ref) > 1 else 0.0
                ax.axhline(mean, ls=style, color="grey" if arm == "before" else "C1",
                           label="SFT control" if arm == "SFT" else "before DPO")
                if arm == "SFT" and sd > 0:
                    ax.axhspan(mean - sd, mean + sd, color="C1", alpha=0.15)
        ax.set_xscale("log")
        betas = sorted(pd.to_numeric(dpo["dpo.beta"], errors="coerce").dropna().unique())
        ax.set_xticks(betas)
        ax.set_xticklabels([f"{b:g}" for b in betas])
        ax.minorticks_off()
        ax.set_xlabel("DPO β")
        ax.set_ylabel("GenEval")
        ax.set_title(m)
        ax.legend(fontsize="small")
    fig.suptitle("DPO: GenEval vs β (mean ± s.d. over seeds)", y=1.03)
    fig.tight_layout()
    return _finish(df, fig, out_dir, "dpo_beta", formats)


ALL_PLOTS = {
    "scale": plot_vs_scale,
    "samples_seen": plot_vs_samples_seen,
    "iterations": plot_vs_iterations,
    "diversity_knobs": plot_vs_diversity_knobs,
    "diversity_measured": plot_vs_measured_diversity,
    "heatmap": plot_scale_diversity_heatmap,
    "dpo": plot_dpo_beta,
}


def mean_by(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Mean and s.d. over seeds of ``value`` per ``keys``: the numbers behind the drawn points."""
    return df.groupby(keys, dropna=False)["value"].agg(mean="mean", sd="std", n="count").reset_index()


__all__ = ["ALL_PLOTS", "mean_by", "run_scores", "set_style", *[f.__name__ for f in ALL_PLOTS.values()]]
