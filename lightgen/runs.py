"""Move runs between machines: export a sweep's runs to one small bundle, import bundles into a store.

A bundle is a folder of three Parquet files (see ``lightgen.analysis.bundle``): ``runs.parquet`` (one row
per run, columns as ``mlflow.search_runs`` gives them: ``run_id``, ``experiment_name``, ``status``,
``start_time``, ``end_time``, ``params.*``, ``tags.*``, ``metrics.*``), ``metrics_history.parquet``
(run_id, key, step, value, timestamp) and ``results.parquet`` (run_id plus one row per image of the run's
``geneval/results.jsonl``). Work done on a lent GPU comes home with ``lightgen runs export`` there and
``lightgen runs import`` here; importing the same bundle twice, or two bundles with the same points,
duplicates nothing: a run is skipped when the store already has it (same source run id) or already has a
FINISHED run of the same study and job.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from lightgen.tracking import TAG_KIND, TAG_STUDY, TAG_SWEEP, get_or_create_experiment, quiet_mlflow, resolve_tracking_uri

SOURCE_TAG = "lightgen.source_run_id"
JOB_TAG = "lightgen.job"


def _client(tracking_uri: str | None):
    from mlflow.tracking import MlflowClient

    quiet_mlflow()
    return MlflowClient(resolve_tracking_uri(tracking_uri))


def collect_runs(tracking_uri: str | None = None, sweep: str | None = None, experiment: str | None = None,
                 with_history: bool = True, with_results: bool = True) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Runs (all statuses) of a sweep or experiment, their metric histories and per-image GenEval rows."""
    import mlflow

    client = _client(tracking_uri)
    mlflow.set_tracking_uri(resolve_tracking_uri(tracking_uri))
    exps = client.search_experiments()
    if experiment:
        exps = [e for e in exps if e.name == experiment]
    elif sweep:
        exps = [e for e in exps if e.name == f"lightgen/{sweep}"] or exps
    if not exps:
        return pd.DataFrame(), pd.DataFrame(), pd.DataFrame()
    frames = []
    for e in exps:
        df = mlflow.search_runs([e.experiment_id], filter_string=f"tags.`{TAG_SWEEP}` = '{sweep}'" if sweep else "",
                                max_results=50_000)
        if len(df):
            df["experiment"] = e.name
            frames.append(df)
    runs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    from lightgen.analysis.bundle import results_frame

    hist_rows: list[dict[str, Any]] = []
    records: dict[str, list[dict[str, Any]]] = {}
    for _, r in runs.iterrows():
        rid = r["run_id"]
        if with_history:
            for key in [c[len("metrics."):] for c in runs.columns if c.startswith("metrics.") and pd.notna(r[c])]:
                for m in client.get_metric_history(rid, key):
                    hist_rows.append({"run_id": rid, "key": key, "step": m.step, "value": m.value, "timestamp": m.timestamp})
        if with_results:
            recs = _results_records(client, rid)
            if recs:
                records[rid] = recs
    return runs, pd.DataFrame(hist_rows), results_frame(records)


def _results_records(client: Any, run_id: str) -> list[dict[str, Any]]:
    """The run's ``geneval/results.jsonl`` (final evaluation), one dict per image."""
    try:
        names = [a.path for a in client.list_artifacts(run_id, "geneval")]
    except Exception:  # noqa: BLE001 - a run without artifacts
        return []
    if "geneval/results.jsonl" not in names:
        return []
    with tempfile.TemporaryDirectory() as d:
        local = client.download_artifacts(run_id, "geneval/results.jsonl", d)
        return [json.loads(line) for line in Path(local).read_text().splitlines() if line.strip()]


def export_runs(out: str | Path, tracking_uri: str | None = None, sweep: str | None = None,
                experiment: str | None = None) -> dict[str, int]:
    from lightgen.analysis.bundle import write_bundle

    runs, hist, res = collect_runs(tracking_uri, sweep, experiment)
    if runs.empty:
        raise LookupError(f"no runs found for sweep {sweep!r}" if sweep else "no runs found in the store")
    write_bundle(runs, hist, res, out)
    return {"runs": len(runs), "metric_points": len(hist), "results": len(res)}


def import_runs(bundle: str | Path, tracking_uri: str | None = None) -> dict[str, int]:
    """Recreate a bundle's runs in a store (parents first, nesting kept), skipping what is already there."""
    from mlflow.entities import Metric, Param, RunTag

    from lightgen.analysis.bundle import read_bundle

    runs, hist, res = read_bundle(bundle)
    client = _client(tracking_uri)
    uri = resolve_tracking_uri(tracking_uri)
    stats = {"imported": 0, "skipped": 0}
    if runs.empty:
        return stats
    tag_cols = [c for c in runs.columns if c.startswith("tags.")]
    param_cols = [c for c in runs.columns if c.startswith("params.")]
    # parents (sweep runs) first, so children can point at their new ids
    order = runs.assign(_is_parent=runs.get(f"tags.{TAG_KIND}", pd.Series(index=runs.index)).eq("sweep"))
    order = order.sort_values("_is_parent", ascending=False)
    new_ids: dict[str, str] = {}
    for _, r in order.iterrows():
        exp_name = r.get("experiment") if isinstance(r.get("experiment"), str) else "lightgen/imported"
        exp_id = get_or_create_experiment(exp_name, uri)
        src = r.get(f"tags.{SOURCE_TAG}") if pd.notna(r.get(f"tags.{SOURCE_TAG}", None)) else r["run_id"]
        existing = _find_existing(client, exp_id, src, r)
        if existing is not None:
            new_ids[r["run_id"]] = existing
            stats["skipped"] += 1
            continue
        tags = {c[len("tags."):]: str(r[c]) for c in tag_cols if pd.notna(r[c])}
        tags[SOURCE_TAG] = src
        parent = tags.get("mlflow.parentRunId")
        if parent:
            tags["mlflow.parentRunId"] = new_ids.get(parent, parent)
        start = _ms(r.get("start_time"))
        run = client.create_run(exp_id, start_time=start, tags=tags, run_name=tags.get("mlflow.runName"))
        rid = run.info.run_id
        new_ids[r["run_id"]] = rid
        params = [Param(c[len("params."):], str(r[c])) for c in param_cols if pd.notna(r[c])]
        for i in range(0, len(params), 100):
            client.log_batch(rid, params=params[i : i + 100])
        h = hist[hist["run_id"] == r["run_id"]] if not hist.empty else hist
        if h.empty:  # no history in the bundle: the last values
            metrics = [Metric(c[len("metrics."):], float(r[c]), start or 0, 0)
                       for c in runs.columns if c.startswith("metrics.") and pd.notna(r[c])]
        else:
            metrics = [Metric(m.key, float(m.value), int(m.timestamp), int(m.step)) for m in h.itertuples()]
        for i in range(0, len(metrics), 1000):
            client.log_batch(rid, metrics=metrics[i : i + 1000])
        rr = res[res["run_id"] == r["run_id"]] if not res.empty else res
        if not rr.empty:
            lines = []
            for rec in rr.to_dict("records"):
                out = {k: _unjson(rec.get(k)) for k in ("filename", "tag", "prompt", "correct", "reason", "metadata", "details")}
                lines.append(json.dumps(out))
            client.log_text(rid, "\n".join(lines) + "\n", "geneval/results.jsonl")
        status = r.get("status") or "FINISHED"
        client.set_terminated(rid, status=status if status != "RUNNING" else "KILLED", end_time=_ms(r.get("end_time")))
        stats["imported"] += 1
    return stats


def _find_existing(client: Any, exp_id: str, src: str, r: pd.Series) -> str | None:
    try:
        client.get_run(src)
        return src  # the very same run is in this store
    except Exception:  # noqa: BLE001
        pass
    found = client.search_runs([exp_id], filter_string=f"tags.`{SOURCE_TAG}` = '{src}'", max_results=1)
    if found:
        return found[0].info.run_id
    study, job, kind = r.get(f"tags.{TAG_STUDY}"), r.get(f"tags.{JOB_TAG}"), r.get(f"tags.{TAG_KIND}")
    if kind == "sweep" and isinstance(study, str):
        found = client.search_runs([exp_id], filter_string=f"tags.`{TAG_STUDY}` = '{study}' and tags.`{TAG_KIND}` = 'sweep'",
                                   max_results=1)
        return found[0].info.run_id if found else None
    if isinstance(study, str) and isinstance(job, str) and r.get("status") == "FINISHED":
        found = client.search_runs(
            [exp_id],
            filter_string=f"tags.`{TAG_STUDY}` = '{study}' and tags.`{JOB_TAG}` = '{job}' and attributes.status = 'FINISHED'",
            max_results=1,
        )
        return found[0].info.run_id if found else None
    return None


def _ms(t: Any) -> int | None:
    if t is None or (isinstance(t, float) and t != t) or t is pd.NaT:
        return None
    if isinstance(t, (int, float)):
        return int(t)
    try:
        return int(pd.Timestamp(t).timestamp() * 1000)
    except (ValueError, TypeError):
        return None


def _unjson(v: Any) -> Any:
    if isinstance(v, str) and v[:1] in "[{":
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            return v
    return v
