"""Export bundles: a sweep's runs, metric histories and per-image GenEval results as Parquet files.

A bundle lets the analysis run on a machine that cannot reach the MLflow store the sweep wrote to
(``lightgen runs export`` writes one, ``python analysis/make_tables.py --from BUNDLE`` reads one).

Layout (a directory)::

    BUNDLE/
      runs.parquet             one row per run, columns exactly like ``mlflow.search_runs`` output:
                               run_id, experiment_id, experiment, status, start_time, end_time,
                               artifact_uri, metrics.<key>, params.<key>, tags.<key>
      metrics_history.parquet  run_id, key, step, value, timestamp   (step-indexed metrics)
      results.parquet          run_id + one row per image of the run's ``geneval/results.jsonl``:
                               filename, tag, prompt, correct, reason, split,
                               metadata (JSON text), details (JSON text)
      bundle.json              format version and row counts (written last: a bundle without it is
                               incomplete)

A single ``.parquet`` file is accepted as a runs-only bundle (the history and results tables are
then empty). The exporter may write any subset of columns it has; the readers only rely on
``run_id`` and the ``metrics.``/``params.``/``tags.`` naming.

Usage by the sweep engineer::

    from lightgen.analysis.bundle import write_bundle, read_bundle, results_frame
    write_bundle(runs_df, history_df, results_frame(records_by_run), "export/data-scale")
    runs, history, results = read_bundle("export/data-scale")
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from lightgen.errors import UserError
from lightgen.utils import write_atomic

BUNDLE_VERSION = 1
RUNS_FILE = "runs.parquet"
HISTORY_FILE = "metrics_history.parquet"
RESULTS_FILE = "results.parquet"
MANIFEST_FILE = "bundle.json"

HISTORY_COLUMNS = ["run_id", "key", "step", "value", "timestamp"]
RESULTS_COLUMNS = ["run_id", "filename", "tag", "prompt", "correct", "reason", "split", "metadata", "details"]
SPLITS = ("intrain", "novel", "heldout")  # a prompt's composition split for its run (geneval/results.jsonl)


def split_of(split: Any, seen: Any = None) -> str | None:
    """A record's split: ``split`` when it is one of SPLITS, else from an old bundle's boolean ``seen``
    (False: held out of every training set → "heldout"; True: only "not held out" → unknown, None)."""
    if isinstance(split, str) and split in SPLITS:
        return split
    if seen is None or (isinstance(seen, float) and seen != seen):
        return None
    return None if bool(seen) else "heldout"


def empty_history() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in
                         zip(HISTORY_COLUMNS, ["object", "object", "int64", "float64", "int64"])})


def empty_results() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="object") for c in RESULTS_COLUMNS})


def results_frame(records_by_run: Mapping[str, Iterable[Mapping[str, Any]]]) -> pd.DataFrame:
    """Flatten ``{run_id: [results.jsonl record, …]}`` into the bundle's results table.

    ``metadata`` and ``details`` are nested and heterogeneous, so they are kept as JSON text (Parquet
    cannot store free-form dicts); ``split`` is lifted out of the metadata because the analysis needs it.
    """
    rows = []
    for run_id, records in records_by_run.items():
        for rec in records:
            meta = rec.get("metadata") or {}
            if isinstance(meta, str):   # GenEval's own layout: the metadata as JSON text
                try:
                    meta = json.loads(meta)
                except json.JSONDecodeError:
                    pass
            meta_ok = isinstance(meta, Mapping)
            split = split_of(rec.get("split", meta.get("split") if meta_ok else None),
                             meta.get("seen") if meta_ok else None)
            rows.append({
                "run_id": run_id,
                "filename": rec.get("filename"),
                "tag": rec.get("tag") or (meta.get("tag") if isinstance(meta, Mapping) else None),
                "prompt": rec.get("prompt") or (meta.get("prompt") if isinstance(meta, Mapping) else None),
                "correct": bool(rec.get("correct")),
                "reason": rec.get("reason"),
                "split": split,
                "metadata": json.dumps(meta, sort_keys=True, default=str),
                "details": json.dumps(rec.get("details"), sort_keys=True, default=str),
            })
    return pd.DataFrame(rows, columns=RESULTS_COLUMNS) if rows else empty_results()


def _parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.reset_index(drop=True).to_parquet(buf, index=False)
    return buf.getvalue()


def write_bundle(runs_df: pd.DataFrame, history_df: pd.DataFrame | None, results_df: pd.DataFrame | None,
                 path: str | Path) -> Path:
    """Write a bundle directory (each file atomically, the manifest last) and return its path.

    A path ending in ``.parquet`` writes a runs-only bundle; that is refused when there are histories
    or results to write, so nothing is silently dropped.
    """
    path = Path(path)
    history_df = empty_history() if history_df is None else history_df
    results_df = empty_results() if results_df is None else results_df
    if "run_id" not in runs_df.columns:
        raise UserError(f"bundle {path}: the runs table has no 'run_id' column")
    if path.suffix == ".parquet":
        if len(history_df) or len(results_df):
            raise UserError(
                f"bundle {path}: a single .parquet file holds only the runs table; write metric "
                "histories and per-image results to a bundle directory instead (a path without .parquet)"
            )
        write_atomic(path, _parquet_bytes(runs_df))
        return path
    if path.exists() and not path.is_dir():
        raise UserError(f"bundle {path}: exists and is not a directory")
    path.mkdir(parents=True, exist_ok=True)
    write_atomic(path / RUNS_FILE, _parquet_bytes(runs_df))
    write_atomic(path / HISTORY_FILE, _parquet_bytes(history_df))
    write_atomic(path / RESULTS_FILE, _parquet_bytes(results_df))
    manifest = {"format": "lightgen-bundle", "version": BUNDLE_VERSION, "runs": len(runs_df),
                "history_rows": len(history_df), "result_rows": len(results_df)}
    write_atomic(path / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")
    return path


def _read_parquet(file: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(file)
    except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid (a ValueError), OSError and more:
        # whatever fails while decoding one file is that file's fault
        raise UserError(f"bundle file {file} is not a readable Parquet file: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def read_bundle(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Read ``(runs, metrics_history, results)`` from a bundle directory or a runs-only .parquet file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"bundle {path} does not exist")
    if path.is_file():
        return _read_parquet(path), empty_history(), empty_results()
    runs_file = path / RUNS_FILE
    if not runs_file.is_file():
        raise UserError(f"bundle {path}: missing {RUNS_FILE} (is this an export bundle?)")
    manifest_file = path / MANIFEST_FILE
    if manifest_file.is_file():
        try:
            manifest = json.loads(manifest_file.read_bytes().decode("utf-8"))
        except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise UserError(f"bundle {path}: unreadable {MANIFEST_FILE}: {e}") from None
        version = manifest.get("version", BUNDLE_VERSION) if isinstance(manifest, dict) else None
        if not isinstance(version, int) or isinstance(version, bool):
            raise UserError(f"bundle {path}: {MANIFEST_FILE} is not a bundle manifest (expected an object with "
                            f"an integer 'version')")
        if version > BUNDLE_VERSION:
            raise UserError(f"bundle {path}: format version {manifest.get('version')} is newer than this "
                            f"reader ({BUNDLE_VERSION}); update LightGen Studio")
    runs = _read_parquet(runs_file)
    if "run_id" not in runs.columns:
        raise UserError(f"bundle {path}: {RUNS_FILE} has no 'run_id' column")
    history = _read_parquet(path / HISTORY_FILE) if (path / HISTORY_FILE).is_file() else empty_history()
    results = _read_parquet(path / RESULTS_FILE) if (path / RESULTS_FILE).is_file() else empty_results()
    for name, df, cols in (("history", history, ["run_id", "key", "step", "value"]),
                           ("results", results, ["run_id", "correct"])):
        missing = [c for c in cols if c not in df.columns]
        if missing and len(df.columns):
            raise UserError(f"bundle {path}: the {name} table lacks column(s) {', '.join(missing)}")
    if len(results.columns) and "split" not in results.columns:   # a bundle written before the split
        seen = results["seen"] if "seen" in results.columns else pd.Series([None] * len(results), index=results.index)
        results = results.assign(split=[split_of(None, v) for v in seen])
    return runs, history, results
