"""Read a sweep's runs from MLflow (any tracking URI) or from an export bundle, and clean them up.

Both analysis scripts go through :func:`load_sweep`, so they agree on which runs count:

* only trial runs are analysed (a sweep's parent run, tag ``lightgen.kind=sweep``, is kept aside so the
  scripts can log their tables and figures to it);
* only FINISHED runs are kept; FAILED / KILLED / RUNNING ones are counted and reported, and they make
  the result *partial* when no finished run replaces them;
* one run per (point, seed): when a trial was retried, the latest finished run wins and the others are
  reported as duplicates.

The naming contract (tags ``lightgen.point_id``, ``lightgen.seed``, ``lightgen.sweep``, metrics
``geneval/…``, artifact ``geneval/results.jsonl``) is the one in :mod:`lightgen.tracking`.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from lightgen.analysis import bundle as bundle_mod
from lightgen.errors import UserError
from lightgen.geneval.tasks import TASKS as GENEVAL_TASKS
from lightgen.tracking import (
    TAG_KIND,
    TAG_POINT,
    TAG_SEED,
    TAG_SWEEP,
    TAG_WORLD,
    check_reachable,
    resolve_tracking_uri,
)

RESULTS_ARTIFACT = "geneval/results.jsonl"
PROMPT_COLUMNS = ["run_id", "point_id", "seed", "sweep", "prompt", "task", "split", "correct", "filename"]


class NoData(UserError):
    """Nothing to analyse (empty store, unknown sweep with no runs): the scripts exit 0 with the message."""


@dataclass
class SweepData:
    """Runs chosen for analysis plus what was left out and why."""

    runs: pd.DataFrame                    # kept trial runs, one per (point_id, seed)
    parents: pd.DataFrame                 # sweep parent runs (tag lightgen.kind=sweep)
    source: "RunSource"
    notes: list[str] = field(default_factory=list)
    partial: bool = False
    partial_sweeps: set = field(default_factory=set)   # the sweeps whose own runs are partial (each table says it of
    #                                                    itself: parent running, runs open, unequal seeds)
    _results: pd.DataFrame | None = None
    _history: dict[str, pd.DataFrame] = field(default_factory=dict)

    def prompt_results(self) -> pd.DataFrame:
        """The long per-image table of the kept runs (loaded once)."""
        if self._results is None:
            self._results, notes = _prompt_table(self.source, self.runs)
            self.notes.extend(notes)
        return self._results

    def history(self, prefix: str = "geneval/") -> pd.DataFrame:
        """Step-indexed metric history (run_id, key, step, value) of the kept runs for keys with ``prefix``."""
        if prefix not in self._history:
            keys = [c[len("metrics."):] for c in self.runs.columns
                    if c.startswith("metrics." + prefix)]
            self._history[prefix] = self.source.history(list(self.runs["run_id"]), keys)
        return self._history[prefix]

    def subset(self, sweep: str) -> "SweepData":
        """The runs of one sweep only (figures never mix points of different sweeps)."""
        runs = self.runs[self.runs["sweep"] == sweep].reset_index(drop=True)
        parents = self.parents[self.parents["sweep"] == sweep].reset_index(drop=True)
        res = None if self._results is None else self._results[self._results["run_id"].isin(runs["run_id"])]
        return SweepData(runs=runs, parents=parents, source=self.source, notes=self.notes,
                         partial=sweep in self.partial_sweeps, partial_sweeps=self.partial_sweeps & {sweep},
                         _results=res)

    def parent_run_id(self, sweep: str | None = None) -> str | None:
        """The newest parent run of ``sweep`` (or of the only sweep loaded), if the source is MLflow."""
        if self.parents.empty or self.source.client is None:
            return None
        p = self.parents
        if sweep is not None:
            p = p[p["sweep"] == sweep]
        elif p["sweep"].nunique() > 1:
            return None
        if p.empty:
            return None
        return str(p.sort_values("start_time").iloc[-1]["run_id"])


class RunSource:
    """Where runs come from: an MLflow tracking URI or an export bundle (directory or .parquet)."""

    def __init__(self, tracking_uri: str | None = None, bundle: str | Path | None = None):
        self.client = None
        self.bundle = None
        if bundle is not None:
            self.bundle = Path(bundle)
            self._runs, self._hist, self._res = bundle_mod.read_bundle(self.bundle)
            self.description = f"bundle {self.bundle}"
            return
        uri = resolve_tracking_uri(tracking_uri)
        if uri.startswith("sqlite:///"):
            db = Path(uri[len("sqlite:///"):])
            if not db.is_file():  # never create an empty store as a side effect of reading
                raise NoData(f"no MLflow store at {db} (tracking URI {uri}); run a sweep first, or pass "
                             "--tracking-uri or --from BUNDLE")
        if uri.startswith(("http://", "https://")):
            try:
                check_reachable(uri)  # fail in seconds, not after MLflow's long retry loop
            except ConnectionError as e:
                raise UserError(str(e)) from None
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.client = MlflowClient(uri)
        self.description = f"MLflow store {uri}"

    # -- runs --------------------------------------------------------------------------------------
    def runs_frame(self, experiment: str | None = None, sweep: str | None = None) -> pd.DataFrame:
        """All runs (any status) of the experiment / sweep, columns like ``mlflow.search_runs``."""
        if self.client is None:
            df = self._runs.copy()
            if experiment is not None:
                col = "experiment" if "experiment" in df.columns else "experiment_id"
                df = df[df[col].astype(str) == experiment]
                if df.empty:
                    raise UserError(f"{self.description}: no runs of experiment '{experiment}'")
            return df
        exps = self._experiments(experiment, sweep)
        if not exps:
            return pd.DataFrame(columns=["run_id", "experiment_id", "experiment", "status", "start_time"])
        rows = []
        for exp_id, name in exps.items():
            token = None
            while True:
                page = self.client.search_runs([exp_id], max_results=1000, page_token=token)
                rows.extend(_run_row(r, name) for r in page)
                token = page.token
                if not token:
                    break
        df = pd.DataFrame(rows)
        if df.empty:
            return pd.DataFrame(columns=["run_id", "experiment_id", "experiment", "status", "start_time"])
        for col in ("start_time", "end_time"):
            df[col] = pd.to_datetime(df[col], unit="ms", utc=True)
        return df

    def _experiments(self, experiment: str | None, sweep: str | None) -> dict[str, str]:
        from mlflow.entities import ViewType

        all_exps = self.client.search_experiments(view_type=ViewType.ACTIVE_ONLY, max_results=5000)
        by_name = {e.name: e.experiment_id for e in all_exps}
        if experiment is not None:
            if experiment in by_name:
                return {by_name[experiment]: experiment}
            ids = {e.experiment_id: e.name for e in all_exps}
            if experiment in ids:
                return {experiment: ids[experiment]}
            raise UserError(f"{self.description}: no experiment named '{experiment}'; available: "
                            f"{', '.join(sorted(by_name)) or '(none)'}")
        if sweep is not None and f"lightgen/{sweep}" in by_name:
            return {by_name[f"lightgen/{sweep}"]: f"lightgen/{sweep}"}
        return {e.experiment_id: e.name for e in all_exps}

    # -- histories and results ---------------------------------------------------------------------
    def history(self, run_ids: list[str], keys: list[str]) -> pd.DataFrame:
        if self.client is None:
            h = self._hist
            return h[h["run_id"].isin(run_ids) & h["key"].isin(keys)].reset_index(drop=True)
        rows = []
        for rid in run_ids:
            for key in keys:
                for m in self.client.get_metric_history(rid, key):
                    rows.append({"run_id": rid, "key": key, "step": int(m.step), "value": float(m.value),
                                 "timestamp": int(m.timestamp)})
        return pd.DataFrame(rows) if rows else bundle_mod.empty_history()

    def results(self, run_ids: list[str]) -> tuple[pd.DataFrame, list[str]]:
        """Per-image GenEval records (bundle results table layout) and notes on runs without any."""
        notes: list[str] = []
        if self.client is None:
            r = self._res
            r = r[r["run_id"].isin(run_ids)] if "run_id" in r.columns else r.iloc[0:0]
            missing = sorted(set(run_ids) - set(r["run_id"])) if len(run_ids) else []
            if missing:
                notes.append(f"{len(missing)} run(s) have no per-image results in the bundle")
            return r.reset_index(drop=True), notes
        # MLflow draws a progress bar per download on stderr; one per run drowns the scripts' messages
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        records: dict[str, list[dict[str, Any]]] = {}
        missing = []
        with tempfile.TemporaryDirectory(prefix="lightgen-results-") as tmp:
            for rid in run_ids:
                try:
                    local = self.client.download_artifacts(rid, RESULTS_ARTIFACT, str(Path(tmp) / rid))
                except Exception:  # noqa: BLE001 - MLflow raises several types for a missing artifact
                    missing.append(rid)
                    continue
                try:
                    records[rid] = _read_jsonl(Path(local))
                except (ValueError, UserError) as e:
                    notes.append(f"run {rid}: unreadable {RESULTS_ARTIFACT} ({e}); its CI falls back "
                                 "to the logged one")
        if missing:
            notes.append(f"{len(missing)} run(s) have no {RESULTS_ARTIFACT} artifact")
        return bundle_mod.results_frame(records), notes


def _run_row(run: Any, experiment_name: str) -> dict[str, Any]:
    info, data = run.info, run.data
    row: dict[str, Any] = {
        "run_id": info.run_id, "experiment_id": info.experiment_id, "experiment": experiment_name,
        "status": info.status, "artifact_uri": info.artifact_uri,
        "start_time": info.start_time, "end_time": info.end_time,
    }
    row.update({f"metrics.{k}": v for k, v in data.metrics.items()})
    row.update({f"params.{k}": v for k, v in data.params.items()})
    row.update({f"tags.{k}": v for k, v in data.tags.items()})
    return row


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    from lightgen.utils import read_text

    for i, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"line {i}: {e.msg}") from None
        if not isinstance(rec, dict) or "correct" not in rec:
            raise ValueError(f"line {i}: not a GenEval record with a 'correct' field")
        out.append(rec)
    return out


def _col(df: pd.DataFrame, name: str) -> pd.Series:
    return df[name] if name in df.columns else pd.Series([None] * len(df), index=df.index, dtype=object)


def _annotate(df: pd.DataFrame) -> pd.DataFrame:
    """Add the columns the analysis groups by: kind, sweep, point_id, seed, world, prompt_set."""
    df = df.copy()
    df["kind"] = _col(df, f"tags.{TAG_KIND}")
    df["sweep"] = _col(df, f"tags.{TAG_SWEEP}").fillna(_col(df, f"params.{TAG_SWEEP}"))
    df["point_id"] = _col(df, f"tags.{TAG_POINT}").fillna(df["run_id"])  # untagged runs stand alone
    seed = pd.to_numeric(_col(df, f"tags.{TAG_SEED}").fillna(_col(df, "params.seed")), errors="coerce")
    df["seed"] = seed.fillna(0).astype(int)
    df["world"] = _col(df, f"tags.{TAG_WORLD}").fillna(_col(df, "params.world.kind")).fillna("unknown")
    df["prompt_set"] = _col(df, "params.eval.prompt_set").fillna("unknown")
    if "start_time" in df.columns:
        df["start_time"] = pd.to_datetime(df["start_time"], utc=True)
    else:
        df["start_time"] = pd.Timestamp(0, tz="UTC")
    return df


def load_sweep(tracking_uri: str | None = None, sweep: str | None = None, experiment: str | None = None,
               bundle: str | Path | None = None) -> SweepData:
    """Load and clean the runs of one sweep (or experiment, or everything) for the analysis scripts.

    Raises :class:`NoData` when there is nothing to analyse at all and ``UserError`` for bad arguments.
    """
    source = RunSource(tracking_uri, bundle)
    raw = source.runs_frame(experiment=experiment, sweep=sweep)
    where = source.description + (f", sweep '{sweep}'" if sweep else "") + (
        f", experiment '{experiment}'" if experiment else "")
    if raw.empty:
        raise NoData(f"no runs in {where}: nothing to show")
    df = _annotate(raw)
    if sweep is not None:
        df = df[df["sweep"] == sweep]
        if df.empty:
            known = sorted(set(_annotate(raw)["sweep"].dropna()))
            raise UserError(f"no runs of sweep '{sweep}' in {source.description}; sweeps found: "
                         f"{', '.join(known) or '(none)'}")
    parents = df[df["kind"] == "sweep"].reset_index(drop=True)
    # a sweep's points are its trial runs; helper runs of a sweep (e.g. the DPO sweep's "base"
    # pre-training run) are not points. Runs outside any sweep (train/dpo/eval) are kept.
    in_sweep = df["sweep"].notna()
    is_point = (df["kind"] != "sweep") & (~in_sweep | df["kind"].isna() | (df["kind"] == "trial"))
    helpers = df[(df["kind"] != "sweep") & ~is_point]
    trials = df[is_point]
    notes: list[str] = []
    if len(helpers):
        kinds = ", ".join(sorted(set(helpers["kind"].astype(str))))
        notes.append(f"{len(helpers)} helper run(s) of kind {kinds} are not sweep points and are left out")
    partial = False
    partial_sweeps: set[str] = set()
    running_parents = parents[parents["status"] == "RUNNING"]
    if len(running_parents):
        partial = True
        partial_sweeps |= set(running_parents["sweep"].dropna())
        notes.append(f"sweep still running ({', '.join(sorted(set(running_parents['sweep'].dropna())))}): "
                     "results are partial")
    # a job retried within a sweep leaves several runs of one (point, seed): the latest counts. The same
    # config in two sweeps (e.g. the A/A control's point is also a data-scale point) is a point of each.
    key = ["sweep", "point_id", "seed"]
    finished = trials[trials["status"] == "FINISHED"].sort_values("start_time", kind="stable")
    kept = finished.drop_duplicates(key, keep="last")
    n_dup = len(finished) - len(kept)
    if n_dup:
        notes.append(f"{n_dup} duplicate finished run(s) of the same (sweep, point, seed) ignored; the latest is kept")
    others = trials[trials["status"] != "FINISHED"]
    done = set(zip(*(kept[k] for k in key)))
    open_ = others[np.array([t not in done for t in zip(*(others[k] for k in key))], dtype=bool)]
    for status, grp in open_.groupby("status"):
        partial = True
        partial_sweeps |= set(grp["sweep"].dropna())
        notes.append(f"{len(grp)} {status} trial run(s) without a finished replacement are left out")
    if kept.empty:
        raise NoData(f"no finished trial runs in {where}"
                     + (f" ({'; '.join(notes)})" if notes else "") + ": nothing to show")
    # unequal seeds say a sweep is unfinished only within one sweep: two sweeps may differ in seeds by design
    for sw, grp in kept.groupby("sweep"):
        seeds_per_point = grp.groupby("point_id")["seed"].nunique()
        if seeds_per_point.nunique() > 1:
            partial = True
            partial_sweeps.add(sw)
            notes.append(f"sweep {sw}: points have unequal numbers of seeds "
                         f"({seeds_per_point.min()}–{seeds_per_point.max()})")
    if "metrics.geneval/overall" not in kept.columns or kept["metrics.geneval/overall"].isna().any():
        n = len(kept) if "metrics.geneval/overall" not in kept.columns else int(kept["metrics.geneval/overall"].isna().sum())
        notes.append(f"{n} finished run(s) have no geneval/overall metric; their cells are empty")
    return SweepData(runs=kept.reset_index(drop=True), parents=parents, source=source, notes=notes,
                     partial=partial, partial_sweeps=partial_sweeps)


def load_runs(tracking_uri: str | None = None, sweep: str | None = None, experiment: str | None = None,
              bundle: str | Path | None = None) -> pd.DataFrame:
    """FINISHED trial runs, one per (point_id, seed) — the latest — as a ``mlflow.search_runs``-like table.

    Extra columns: ``kind, sweep, point_id, seed, world, prompt_set``. ``df.attrs`` carries ``notes``
    (what was left out) and ``partial``. An empty selection gives an empty frame with a note.
    """
    try:
        data = load_sweep(tracking_uri, sweep, experiment, bundle)
    except NoData as e:
        df = pd.DataFrame(columns=["run_id", "point_id", "seed", "sweep", "status"])
        df.attrs.update(notes=[str(e)], partial=False)
        return df
    df = data.runs.copy()
    df.attrs.update(notes=list(data.notes), partial=data.partial)
    return df


def _prompt_table(source: RunSource, runs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    res, notes = source.results(list(runs["run_id"]))
    if res.empty:
        return pd.DataFrame(columns=PROMPT_COLUMNS), notes
    meta = runs.set_index("run_id")[["point_id", "seed", "sweep"]]
    out = res.join(meta, on="run_id", how="inner")
    out = out.rename(columns={"tag": "task"})
    out["correct"] = out["correct"].astype(bool)
    if "split" not in out.columns:
        out["split"] = [bundle_mod.split_of(None, v) for v in _col(out, "seen")]
    out["split"] = [bundle_mod.split_of(v) for v in out["split"]]
    # a prompt is an entry of the prompt list (GenEval's folder <index>/samples/…), not its text: a small
    # world's 40 prompts of a task repeat texts, and GenEval's score weights every entry alike
    folder = out["filename"].astype(str).str.extract(r"^(\d+)/samples/", expand=False)
    out["prompt"] = np.where(folder.notna(), folder.fillna("") + " · " + out["prompt"].astype(str), out["prompt"])
    unknown = sorted(set(out["task"].dropna()) - set(GENEVAL_TASKS))
    if unknown:
        notes.append(f"per-image results with unknown task(s) {', '.join(unknown)} are ignored")
        out = out[out["task"].isin(GENEVAL_TASKS)]
    return out[PROMPT_COLUMNS].reset_index(drop=True), notes


def standard_results(results: pd.DataFrame) -> pd.DataFrame:
    """The rows of the standard prompt set: every prompt not held out (what ``geneval/overall`` scores,
    :mod:`lightgen.geneval.summary`); the held-out prompt set is reported on its own."""
    if not len(results) or "split" not in results.columns:
        return results
    return results[results["split"] != "heldout"]


def load_prompt_results(tracking_uri: str | None = None, sweep: str | None = None,
                        experiment: str | None = None, bundle: str | Path | None = None) -> pd.DataFrame:
    """Long per-image table of the kept runs: run_id, point_id, seed, sweep, prompt, task, split, correct,
    filename (one row per generated image; ``split`` is "intrain", "novel", "heldout", or None for prompt
    sets without it; old bundles' ``seen`` False reads as "heldout", True as None)."""
    try:
        data = load_sweep(tracking_uri, sweep, experiment, bundle)
    except NoData:
        return pd.DataFrame(columns=PROMPT_COLUMNS)
    return data.prompt_results()


def param_values(runs: pd.DataFrame, name: str) -> pd.Series:
    """A param column as numbers where every value parses as one, else as text (None if absent)."""
    col = f"params.{name}"
    if col not in runs.columns:
        return pd.Series([None] * len(runs), index=runs.index, dtype=object)
    s = runs[col]
    num = pd.to_numeric(s, errors="coerce")
    return num if num.notna().sum() == s.notna().sum() else s


def varying_params(runs: pd.DataFrame, candidates: Iterable[str]) -> list[str]:
    """Which of ``candidates`` take more than one value across the runs."""
    return [c for c in candidates if f"params.{c}" in runs.columns and runs[f"params.{c}"].nunique(dropna=True) > 1]
