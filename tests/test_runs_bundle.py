"""Export → import into an empty store reproduces the runs, histories, per-prompt results and tables."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from lightgen.config import load_config
from lightgen.tracking import GENEVAL_TASKS, TAG_STUDY, TAG_SWEEP, tracked_run


def _make_store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'src' / 'mlflow.db'}"
    (tmp_path / "src").mkdir()
    monkeypatch.chdir(tmp_path / "src")
    from mlflow.tracking import MlflowClient

    from lightgen.tracking import get_or_create_experiment

    exp = get_or_create_experiment("lightgen/data-scale", uri)
    client = MlflowClient(uri)
    parent = client.create_run(exp, tags={"lightgen.kind": "sweep", TAG_SWEEP: "data-scale", TAG_STUDY: "st1"}).info.run_id
    for i, scale in enumerate(["100k", "200k"]):
        cfg = load_config("smoke", [f"data.scale={scale}", f"tracking.tracking_uri={uri}"])
        with tracked_run(cfg, experiment="lightgen/data-scale", parent_run_id=parent, kind="trial",
                         tags={TAG_SWEEP: "data-scale", TAG_STUDY: "st1", "lightgen.job": f"job{i}"}) as tr:
            for step in (10, 20):
                tr.log_metrics({"geneval/overall": 0.1 * (i + 1) + step / 1000}, step=step)
            tr.log_metrics({f"geneval/{t}": 0.5 for t in GENEVAL_TASKS}, step=20)
            rows = [{"filename": f"{p:05d}/samples/0000.png", "tag": "colors", "prompt": f"p{p}", "correct": bool((p + i) % 2),
                     "reason": "", "metadata": {"tag": "colors", "prompt": f"p{p}", "seen": p < 2}, "details": {}}
                    for p in range(4)]
            tr.log_text("\n".join(json.dumps(r) for r in rows) + "\n", "geneval/results.jsonl")
    client.set_terminated(parent)
    return uri


@pytest.mark.timeout(120)
def test_export_import_roundtrip(tmp_path, monkeypatch):
    from lightgen.analysis.loader import load_prompt_results, load_runs
    from lightgen.runs import export_runs, import_runs

    src = _make_store(tmp_path, monkeypatch)
    stats = export_runs(tmp_path / "bundle", src, sweep="data-scale")
    assert stats["runs"] == 3 and stats["results"] == 8 and stats["metric_points"] >= 2 * (2 + 6)
    dst = f"sqlite:///{tmp_path / 'dst.db'}"
    assert import_runs(tmp_path / "bundle", dst) == {"imported": 3, "skipped": 0}
    assert import_runs(tmp_path / "bundle", dst) == {"imported": 0, "skipped": 3}  # no duplicates

    a = load_runs(tracking_uri=src, sweep="data-scale")
    b = load_runs(tracking_uri=dst, sweep="data-scale")
    cols = ["params.data.scale", "metrics.geneval/overall"]
    pd.testing.assert_frame_equal(a.sort_values(cols)[cols].reset_index(drop=True),
                                  b.sort_values(cols)[cols].reset_index(drop=True))
    # step-indexed history survives
    from mlflow.tracking import MlflowClient

    client = MlflowClient(dst)
    child = b.iloc[0]["run_id"]
    assert [m.step for m in client.get_metric_history(child, "geneval/overall")] == [10, 20]
    # nesting is kept: children point at the imported parent
    parents = {r.data.tags.get("mlflow.parentRunId") for r in client.search_runs(
        [client.get_experiment_by_name("lightgen/data-scale").experiment_id], "tags.`lightgen.kind` = 'trial'")}
    assert len(parents) == 1 and None not in parents
    pa = load_prompt_results(tracking_uri=src, sweep="data-scale")
    pb = load_prompt_results(tracking_uri=dst, sweep="data-scale")
    assert len(pa) == len(pb) == 8 and pa["correct"].sum() == pb["correct"].sum()
