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

from lightgen.tracking import (TAG_JOB, TAG_KIND, TAG_SOURCE_RUN, TAG_STUDY, TAG_SWEEP, get_or_create_experiment,
                               quiet_mlflow, resolve_tracking_uri)

SOURCE_TAG = TAG_SOURCE_RUN
JOB_TAG = TAG_JOB


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
        df = mlflow.search_runs([e.experiment_id], filter_string=f"tags.`{TAG_SWEEP}` = {_quote(sweep)}" if sweep else "",
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


RUN_STATUSES = ("RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED")


def _quote(value: Any) -> str:
    """A value as an MLflow filter-string literal: single quotes, or double quotes when it holds a
    single quote (MLflow's filter grammar has no escapes; values holding both are refused beforehand)."""
    text = str(value)
    if "'" not in text:
        return f"'{text}'"
    if '"' in text:
        raise ValueError(f"cannot quote {text!r} in an MLflow filter string")
    return f'"{text}"'


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and v != v) or v is pd.NaT


def _number(v: Any) -> float | None:
    """``v`` as a float if it is a real number (not a bool, not text), else None."""
    import numbers

    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return None
    return float(v)


def validate_bundle(bundle: str | Path, runs: pd.DataFrame, hist: pd.DataFrame, res: pd.DataFrame) -> None:
    """Check a whole bundle before anything is written: a UserError naming the bundle, the run and the
    column or row that is wrong. What passes here can be written to any MLflow store."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils import validation as mv

    from lightgen.errors import UserError

    def bad(msg: str) -> UserError:
        return UserError(f"bundle {bundle}: {msg}")

    for col in runs.columns:
        for prefix, check in (("params.", mv._validate_param_name), ("tags.", mv._validate_tag_name),
                              ("metrics.", mv._validate_metric_name)):
            if col.startswith(prefix):
                key = col[len(prefix):]
                if not key.strip():
                    raise bad(f"runs.parquet column '{col}' has an empty {prefix[:-1][:-1]} key")
                try:
                    check(key)
                except MlflowException as e:
                    raise bad(f"runs.parquet column '{col}': {e.message}") from None
    ids = runs["run_id"]
    for i, rid in enumerate(ids):
        if not isinstance(rid, str) or not rid.strip():
            raise bad(f"runs.parquet row {i}: run_id must be a non-empty string, got {rid!r}")
    dup = sorted(set(ids[ids.duplicated()]))
    if dup:
        raise bad(f"runs.parquet: run_id {dup[0]} appears more than once")
    filtered = [f"tags.{t}" for t in (SOURCE_TAG, TAG_STUDY, JOB_TAG)]
    for i, r in runs.iterrows():
        rid = r["run_id"]
        where = f"runs.parquet run {rid}"
        status = r.get("status")
        if not _missing(status) and status not in RUN_STATUSES:
            raise bad(f"{where}: status {status!r} is not one of {', '.join(RUN_STATUSES)}")
        exp = r.get("experiment")
        if not _missing(exp) and (not isinstance(exp, str) or not exp.strip()):
            raise bad(f"{where}: experiment name must be a non-empty string, got {exp!r}")
        if isinstance(exp, str) and len(exp) > mv.MAX_EXPERIMENT_NAME_LENGTH:
            raise bad(f"{where}: experiment name longer than {mv.MAX_EXPERIMENT_NAME_LENGTH} characters")
        for col in runs.columns:
            v = r[col]
            if col.startswith("metrics.") and not _missing(v) and _number(v) is None:
                raise bad(f"{where}: {col} is not a number ({v!r})")
            if col.startswith("params.") and not _missing(v) and len(str(v)) > mv.MAX_PARAM_VAL_LENGTH:
                raise bad(f"{where}: {col} is longer than {mv.MAX_PARAM_VAL_LENGTH} characters")
            if col.startswith("tags.") and not _missing(v) and len(str(v)) > mv.MAX_TAG_VAL_LENGTH:
                raise bad(f"{where}: {col} is longer than {mv.MAX_TAG_VAL_LENGTH} characters")
            if (col in filtered or col == "run_id") and not _missing(v) and "'" in str(v) and '"' in str(v):
                raise bad(f"{where}: {col} holds both ' and \" ({str(v)!r}); it cannot be matched in a store")
        for col in ("start_time", "end_time"):
            v = r.get(col)
            if not _missing(v) and _ms(v) is None:
                raise bad(f"{where}: {col} {v!r} is not a time")
    if not hist.empty:
        known = set(ids)
        for j, h in enumerate(hist.itertuples(index=False)):
            where = f"metrics_history.parquet row {j}"
            if h.run_id not in known:
                raise bad(f"{where}: run_id {h.run_id!r} is not in runs.parquet")
            if not isinstance(h.key, str) or not h.key.strip():
                raise bad(f"{where} (run {h.run_id}): metric key must be a non-empty string, got {h.key!r}")
            try:
                mv._validate_metric_name(h.key)
            except MlflowException as e:
                raise bad(f"{where} (run {h.run_id}): {e.message}") from None
            if _number(h.value) is None:
                raise bad(f"{where} (run {h.run_id}, {h.key}): value is not a number ({h.value!r})")
            step = _number(h.step)
            if step is None or step != step or not step.is_integer():
                raise bad(f"{where} (run {h.run_id}, {h.key}): step must be a whole number, got {h.step!r}")
            ts = getattr(h, "timestamp", 0)
            t = _number(ts)
            if t is None or t != t or not t.is_integer():
                raise bad(f"{where} (run {h.run_id}, {h.key}): timestamp must be whole milliseconds, got {ts!r}")
    if not res.empty:
        known = set(ids)
        for j, rid in enumerate(res["run_id"]):
            if rid not in known:
                raise bad(f"results.parquet row {j}: run_id {rid!r} is not in runs.parquet")


def _rollback(client: Any, run_ids: list[str]) -> None:
    """Remove runs created by a failed import: hard-deleted where the store can, else marked deleted."""
    import contextlib

    store = getattr(client, "_tracking_client", None)
    store = getattr(store, "store", None)
    for rid in run_ids:
        with contextlib.suppress(Exception):
            client.set_terminated(rid, status="KILLED")
        with contextlib.suppress(Exception):
            client.delete_run(rid)
        hard = getattr(store, "_hard_delete_run", None)
        if hard is not None:
            with contextlib.suppress(Exception):
                hard(rid)


def import_runs(bundle: str | Path, tracking_uri: str | None = None) -> dict[str, int]:
    """Recreate a bundle's runs in a store (parents first, nesting kept), skipping what is already there.

    All or nothing: the whole bundle is validated first (:func:`validate_bundle`); should writing still
    fail, the runs this import created are removed again, so the store is left as it was.
    """
    from lightgen.analysis.bundle import read_bundle

    runs, hist, res = read_bundle(bundle)
    stats = {"imported": 0, "skipped": 0}
    if runs.empty:
        return stats
    validate_bundle(bundle, runs, hist, res)
    client = _client(tracking_uri)
    uri = resolve_tracking_uri(tracking_uri)
    created: list[str] = []
    try:
        _write_runs(client, uri, runs, hist, res, stats, created)
    except BaseException:
        _rollback(client, created)
        raise
    return stats


def _write_runs(client: Any, uri: str, runs: pd.DataFrame, hist: pd.DataFrame, res: pd.DataFrame,
                stats: dict[str, int], created: list[str]) -> None:
    from mlflow.entities import Metric, Param
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
        created.append(rid)
        new_ids[r["run_id"]] = rid
        params = [Param(c[len("params."):], str(r[c])) for c in param_cols if pd.notna(r[c])]
        for i in range(0, len(params), 100):
            client.log_batch(rid, params=params[i : i + 100])
        h = hist[hist["run_id"] == r["run_id"]] if not hist.empty else hist
        if h.empty:  # no history in the bundle: the last values
            metrics = [Metric(c[len("metrics."):], float(r[c]), start or 0, 0)
                       for c in runs.columns if c.startswith("metrics.") and pd.notna(r[c])]
        else:
            metrics = [Metric(m.key, float(m.value), int(getattr(m, "timestamp", 0) or 0), int(m.step)) for m in h.itertuples()]
        for i in range(0, len(metrics), 1000):
            client.log_batch(rid, metrics=metrics[i : i + 1000])
        rr = res[res["run_id"] == r["run_id"]] if not res.empty else res
        if not rr.empty:
            lines = []
            for rec in rr.to_dict("records"):
                out = {k: _unjson(rec.get(k)) for k in ("filename", "tag", "prompt", "correct", "reason", "metadata", "details")}
                lines.append(json.dumps(out))
            client.log_text(rid, "\n".join(lines) + "\n", "geneval/results.jsonl")
        status = r.get("status") if isinstance(r.get("status"), str) else "FINISHED"
        client.set_terminated(rid, status=status if status != "RUNNING" else "KILLED", end_time=_ms(r.get("end_time")))
        stats["imported"] += 1


def _find_existing(client: Any, exp_id: str, src: str, r: pd.Series) -> str | None:
    try:
        client.get_run(src)
        return src  # the very same run is in this store
    except Exception:  # noqa: BLE001
        pass
    found = client.search_runs([exp_id], filter_string=f"tags.`{SOURCE_TAG}` = {_quote(src)}", max_results=1)
    if found:
        return found[0].info.run_id
    study, job, kind = r.get(f"tags.{TAG_STUDY}"), r.get(f"tags.{JOB_TAG}"), r.get(f"tags.{TAG_KIND}")
    if kind == "sweep" and isinstance(study, str):
        found = client.search_runs([exp_id], filter_string=f"tags.`{TAG_STUDY}` = {_quote(study)} and tags.`{TAG_KIND}` = 'sweep'",
                                   max_results=1)
        return found[0].info.run_id if found else None
    if isinstance(study, str) and isinstance(job, str) and r.get("status") == "FINISHED":
        found = client.search_runs(
            [exp_id],
            filter_string=f"tags.`{TAG_STUDY}` = {_quote(study)} and tags.`{JOB_TAG}` = {_quote(job)} "
                          "and attributes.status = 'FINISHED'",
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
