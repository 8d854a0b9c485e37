"""Analysis end to end: loader, bundles, tables and curves on a small MLflow store of known runs.

The store (built once for the module) holds runs of known metrics and per-image results.

Layout (all toy world, toy prompt set, 32 px, unless said otherwise), 4 prompts per task, 1 image each;
prompts 0–1 are split "intrain", 2–3 "novel" (the standard set; held-out prompts are added where a test needs them); a run with n correct per task gets prompts 0..n-1 right in
every task, so every per-task score, the overall score and in-train/held-out scores are n/4, min(n,2)/2,
max(n-2,0)/2:

* sweep ``data-scale`` (parent FINISHED): scale 100K / 200K / 500K × seeds 0, 1 with n = (1, 2), (2, 3),
  (4, 4); samples seen 60*32 = 1920 everywhere;
* sweep ``caption-diversity`` (parent RUNNING = still running): diversity 0.5 seeds 0, 1 (n = 2, 2) and
  diversity 1.0 seed 0 finished twice (older n = 0, newer n = 3: the newer wins), seed 1 FAILED;
* sweep ``dpo-beta``: SFT arm (n = 2, seeds 0, 1), β 1000 (n = 3, 3), β 5000 (n = 4, 3); geneval_before = 0.25;
* sweep ``iterations``: seeds 0, 1, geneval/overall history at steps 20, 40, 60 = 0.25, 0.5, 0.75 (+0.25 for
  seed 1, capped at 1.0), no per-image results;
* sweep ``paper-repro``: one real-world point at 256 px on the official prompt set, n = 3, no results.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
N_PROMPTS = 4
T0 = 1_700_000_000_000


def records(n_correct: int) -> list[dict]:
    out = []
    for t in TASKS:
        for i in range(N_PROMPTS):
            out.append({"filename": f"{t}_{i}.png", "tag": t, "prompt": f"{t} prompt {i}",
                        "correct": i < n_correct, "reason": "", "details": {"n": i},
                        "metadata": {"tag": t, "prompt": f"{t} prompt {i}",
                                     "split": "intrain" if i < 2 else "novel"}})
    return out


def metrics_for(n: int) -> dict[str, float]:
    acc, seen, unseen = n / 4, min(n, 2) / 2, max(n - 2, 0) / 2
    m = {f"geneval/{t}": acc for t in TASKS} | {f"geneval_intrain/{t}": seen for t in TASKS}
    m |= {f"geneval_novel/{t}": unseen for t in TASKS}
    m |= {"geneval/overall": acc, "geneval_intrain/overall": seen, "geneval_novel/overall": unseen,
          "geneval/overall_ci_low": max(0.0, acc - 0.1), "geneval/overall_ci_high": min(1.0, acc + 0.1)}
    return m


class StoreBuilder:
    def __init__(self, root: Path):
        self.uri = f"sqlite:///{root / 'mlflow.db'}"
        self.client = MlflowClient(self.uri)
        self.root = root
        self.clock = T0
        self.exp: dict[str, str] = {}

    def experiment(self, sweep: str) -> str:
        if sweep not in self.exp:
            self.exp[sweep] = self.client.create_experiment(
                f"lightgen/{sweep}", artifact_location=(self.root / "artifacts" / sweep).as_uri())
        return self.exp[sweep]

    def parent(self, sweep: str, status: str = "FINISHED") -> str:
        self.clock += 1000
        run = self.client.create_run(self.experiment(sweep), start_time=self.clock, tags={
            "lightgen.kind": "sweep", "lightgen.sweep": sweep})
        self.client.log_batch(run.info.run_id, params=[Param("lightgen.sweep", sweep)])
        if status != "RUNNING":
            self.client.set_terminated(run.info.run_id, status)
        return run.info.run_id

    def trial(self, sweep: str, parent: str, point: str, seed: int, params: dict, metrics: dict | None,
              results: list[dict] | None = None, status: str = "FINISHED", world: str = "toy",
              history: list[tuple[int, dict]] | None = None) -> str:
        self.clock += 1000
        tags = {"lightgen.kind": "trial", "lightgen.sweep": sweep, "lightgen.point_id": point,
                "lightgen.seed": str(seed), "lightgen.world": world, "mlflow.parentRunId": parent}
        run = self.client.create_run(self.experiment(sweep), start_time=self.clock, tags=tags)
        rid = run.info.run_id
        base = {"seed": seed, "world.kind": world, "eval.prompt_set": "toy", "data.resolution": 32,
                "model.size": "tiny", "train.iterations": 60, "train.batch_size": 32, "data.scale": 100000,
                "data.scale_label": "100K", "data.actual_size": 100, "data.caption_diversity": 1.0,
                "dpo.mode": "dpo", "dpo.beta": 5000.0}
        base.update(params)
        ms = [Metric(k, float(v), self.clock, 0) for k, v in (metrics or {}).items()]
        for step, hm in history or []:
            ms += [Metric(k, float(v), self.clock + step, step) for k, v in hm.items()]
        self.client.log_batch(rid, metrics=ms, params=[Param(k, str(v)) for k, v in base.items()],
                              tags=[RunTag("lightgen.preset", "smoke")])
        if results is not None:
            self.client.log_text(rid, "\n".join(json.dumps(r) for r in results) + "\n", "geneval/results.jsonl")
        if status != "RUNNING":
            self.client.set_terminated(rid, status, end_time=self.clock + 500)
        return rid


def build(root: Path) -> StoreBuilder:
    t = time.perf_counter()
    b = StoreBuilder(root)
    compute = {"compute/samples_seen": 1920, "compute/train_flops": 1e12, "compute/device_hours": 0.01}
    # data-scale
    p = b.parent("data-scale")
    for scale, label, ns in ((100_000, "100K", (1, 2)), (200_000, "200K", (2, 3)), (500_000, "500K", (4, 4))):
        for seed, n in enumerate(ns):
            m = metrics_for(n) | compute | {"compute/epochs": 1920 / (scale / 1000),
                                            "data/vendi_caption": scale / 100_000,
                                            "data/trainable_coverage": min(1.0, scale / 500_000 + 0.1 * seed),
                                            "data/repetition": scale / 10_000}
            b.trial("data-scale", p, f"scale{label}", seed,
                    {"data.scale": scale, "data.scale_label": label, "data.actual_size": scale // 1000},
                    m, records(n))
    # caption-diversity (still running)
    p = b.parent("caption-diversity", status="RUNNING")
    for seed in (0, 1):
        b.trial("caption-diversity", p, "div0.5", seed, {"data.caption_diversity": 0.5},
                metrics_for(2) | {"data/vendi_caption": 2.0}, records(2))
    b.trial("caption-diversity", p, "div1.0", 0, {"data.caption_diversity": 1.0},
            metrics_for(0) | {"data/vendi_caption": 4.0}, records(0))
    b.trial("caption-diversity", p, "div1.0", 0, {"data.caption_diversity": 1.0},
            metrics_for(3) | {"data/vendi_caption": 4.0}, records(3))
    b.trial("caption-diversity", p, "div1.0", 1, {"data.caption_diversity": 1.0}, None, None, status="FAILED")
    # dpo-beta
    p = b.parent("dpo-beta")
    before = {f"geneval_before/{t}": 0.25 for t in TASKS} | {"geneval_before/overall": 0.25}
    for point, params, ns in (("sft", {"dpo.mode": "sft"}, (2, 2)), ("b1000", {"dpo.beta": 1000.0}, (3, 3)),
                              ("b5000", {"dpo.beta": 5000.0}, (4, 3))):
        for seed, n in enumerate(ns):
            dstats = {"dpo/abs_margin": 0.002 * (1 + seed), "dpo/reward_accuracy": 0.5 + 0.25 * seed}
            b.trial("dpo-beta", p, point, seed, params, metrics_for(n) | before | dstats, records(n))
    base = b.trial("dpo-beta", p, "base", 0, {}, metrics_for(1), None)      # the sweep's base run: no point
    b.client.set_tag(base, "lightgen.kind", "base")
    # iterations: step-indexed history, no results
    p = b.parent("iterations")
    for seed in (0, 1):
        hist = [(s, {"geneval/overall": min(1.0, v + 0.25 * seed)}) for s, v in ((20, 0.25), (40, 0.5), (60, 0.75))]
        b.trial("iterations", p, "iters", seed, {}, None, None, history=hist)
    # a real-world point at 256 px
    p = b.parent("paper-repro")
    b.trial("paper-repro", p, "real256", 0, {"data.resolution": 256, "eval.prompt_set": "official",
                                              "world.kind": "real", "model.size": "L"},
            metrics_for(3), None, world="real")
    # a run whose results.jsonl is corrupt
    p = b.parent("broken")
    rid = b.trial("broken", p, "bad", 0, {}, metrics_for(2), None)
    b.client.log_text(rid, '{"correct": true, "tag": "colors"}\n{not json\n', "geneval/results.jsonl")
    b.build_seconds = time.perf_counter() - t
    return b


# ==================================================================================================
# Tests
# ==================================================================================================
import importlib.util  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from lightgen.analysis import curves as C  # noqa: E402
from lightgen.analysis import tables as T  # noqa: E402
from lightgen.analysis.bundle import read_bundle, write_bundle  # noqa: E402
from lightgen.analysis.loader import (  # noqa: E402
    NoData, RunSource, SweepData, load_prompt_results, load_runs, load_sweep)
from lightgen.cliutil import UserError  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build(tmp_path_factory.mktemp("analysis-store"))


@pytest.fixture(scope="module")
def scale_data(store):
    return load_sweep(store.uri, sweep="data-scale")


@pytest.fixture(scope="module")
def scale_points(scale_data):
    return T.point_summary(scale_data, n_boot=300)


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "analysis" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def cells(table: T.Table, column: str) -> list:
    return list(table.blocks[0].rows[column])


# -- loading ---------------------------------------------------------------------------------------
def test_load_runs_one_finished_run_per_point_and_seed(store):
    df = load_runs(store.uri, sweep="data-scale")
    assert len(df) == 6 and set(df["status"]) == {"FINISHED"}
    assert sorted(df.groupby("point_id")["seed"].apply(sorted).tolist()) == [[0, 1]] * 3
    assert df.attrs["partial"] is False and df.attrs["notes"] == []
    assert {"params.data.scale", "metrics.geneval/overall", "tags.lightgen.point_id"} <= set(df.columns)


def test_load_runs_duplicates_failures_and_running_sweep(store):
    df = load_runs(store.uri, sweep="caption-diversity")
    assert len(df) == 3
    latest = df[(df["point_id"] == "div1.0") & (df["seed"] == 0)]
    assert latest["metrics.geneval/overall"].tolist() == [0.75]          # the newer duplicate wins
    notes = " ".join(df.attrs["notes"])
    assert df.attrs["partial"] is True
    assert "still running" in notes and "1 duplicate" in notes and "1 FAILED" in notes


def test_the_same_point_in_two_sweeps_is_a_point_of_each(tmp_path):
    """One config run by two sweeps (the A/A control's point is a data-scale point too) counts in both;
    a retried job within one sweep still counts once (the latest run)."""
    b = StoreBuilder(tmp_path)
    pa, pb = b.parent("a"), b.parent("b")
    b.trial("a", pa, "shared", 0, {}, metrics_for(1), records(1))
    b.trial("a", pa, "shared", 0, {}, metrics_for(2), records(2))          # the retry: this one counts
    b.trial("b", pb, "shared", 0, {}, metrics_for(3), records(3))
    b.trial("a", pa, "other", 1, {}, None, None, status="FAILED")
    b.trial("b", pb, "other", 1, {}, metrics_for(0), records(0))          # finished in b, not in a
    df = load_runs(b.uri)
    assert sorted(zip(df["sweep"], df["point_id"], df["seed"])) == [("a", "shared", 0), ("b", "other", 1),
                                                                    ("b", "shared", 0)]
    assert df.loc[df["sweep"] == "a", "metrics.geneval/overall"].tolist() == [metrics_for(2)["geneval/overall"]]
    notes = " ".join(df.attrs["notes"])
    assert "1 duplicate" in notes and "1 FAILED" in notes and df.attrs["partial"] is True
    pts = T.point_summary(load_sweep(b.uri), n_boot=50)                   # a table row per sweep's point
    assert sorted(zip(pts["sweep"], pts["point_id"], pts["seeds"])) == [("a", "shared", 1), ("b", "other", 1),
                                                                        ("b", "shared", 1)]


def test_load_prompt_results_long_table(store):
    res = load_prompt_results(store.uri, sweep="data-scale")
    assert len(res) == 6 * 24
    assert list(res.columns) == ["run_id", "point_id", "seed", "sweep", "prompt", "task", "split", "correct", "filename"]
    one = res[(res["point_id"] == "scale200K") & (res["seed"] == 1)]
    assert one["correct"].sum() == 6 * 3 and (one["split"] == "intrain").sum() == 6 * 2
    assert (one["split"] == "novel").sum() == 6 * 2
    assert set(res["task"]) == set(TASKS)


def test_empty_and_unknown_selections(store, tmp_path):
    df = load_runs(f"sqlite:///{tmp_path / 'none.db'}")
    assert df.empty and "no MLflow store" in df.attrs["notes"][0]
    assert not (tmp_path / "none.db").exists()                           # reading never creates a store
    with pytest.raises(UserError, match="sweeps found: broken, caption-diversity"):
        load_sweep(store.uri, sweep="no-such-sweep")
    with pytest.raises(UserError, match="no experiment named"):
        load_sweep(store.uri, experiment="nope")
    with pytest.raises(UserError, match="unreachable"):
        load_sweep("http://127.0.0.1:9")                                 # nothing listens on port 9


def test_corrupt_results_artifact_is_reported_not_fatal(store):
    data = load_sweep(store.uri, sweep="broken")
    assert data.prompt_results().empty
    assert any("unreadable geneval/results.jsonl (line 2" in n for n in data.notes)
    pts = T.point_summary(data, n_boot=50)
    assert pts["ci_method"].tolist() == ["logged (prompts)"] and pts["ci_low"].tolist() == [0.4]


def test_bundle_round_trip_gives_the_same_tables(store, scale_data, scale_points, tmp_path):
    src = RunSource(store.uri)
    runs = src.runs_frame(sweep="data-scale")
    res, _ = src.results(list(runs["run_id"]))
    hist = src.history(list(runs["run_id"]), ["geneval/overall"])
    path = write_bundle(runs, hist, res, tmp_path / "bundle")
    r2, h2, res2 = read_bundle(path)
    assert len(r2) == len(runs) and len(res2) == len(res) == 6 * 24 and len(h2) == 6
    data = load_sweep(bundle=path)
    pts = T.point_summary(data, n_boot=300)
    a = T.build_ablation_table(data, "data-scale", pts)
    b = T.build_ablation_table(scale_data, "data-scale", scale_points)
    pd.testing.assert_frame_equal(a.frame(), b.frame())
    assert data.parent_run_id("data-scale") is None                      # nothing to log to in a bundle


def test_bundle_errors(tmp_path, store):
    src = RunSource(store.uri)
    runs = src.runs_frame(sweep="data-scale")
    res, _ = src.results(list(runs["run_id"])[:1])
    with pytest.raises(UserError, match="single .parquet"):
        write_bundle(runs, None, res, tmp_path / "b.parquet")
    write_bundle(runs, None, None, tmp_path / "runs.parquet")             # runs-only bundle
    assert len(load_runs(bundle=tmp_path / "runs.parquet", sweep="data-scale")) == 6
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="missing runs.parquet"):
        read_bundle(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "runs.parquet").write_text("not parquet")
    with pytest.raises(UserError, match="not a readable Parquet"):
        read_bundle(tmp_path / "bad")
    write_bundle(pd.DataFrame({"run_id": pd.Series(dtype=str)}), None, None, tmp_path / "nothing")
    with pytest.raises(NoData):
        load_sweep(bundle=tmp_path / "nothing")


# -- tables ----------------------------------------------------------------------------------------
def test_point_summary_means_and_cis(scale_points):
    p = scale_points.set_index("point_id")
    assert p.loc["scale100K", "geneval/overall"] == pytest.approx(0.375)
    assert p.loc["scale500K", "geneval_novel/overall"] == 1.0
    assert p.loc["scale100K", "seeds"] == 2
    assert set(p["ci_method"]) == {"bootstrap (seeds, prompts)"}
    assert (p.loc["scale500K", "ci_low"], p.loc["scale500K", "ci_high"]) == (1.0, 1.0)
    assert p.loc["scale100K", "ci_low"] <= 0.375 <= p.loc["scale100K", "ci_high"]
    assert p["label"].tolist() == ["Scale 100K", "Scale 200K", "Scale 500K"]


def test_ablation_table_exact_cells_and_paired_tests(scale_data, scale_points):
    t = T.build_ablation_table(scale_data, "data-scale", scale_points)
    assert cells(t, "Scale") == ["100K", "200K", "500K"]
    assert cells(t, "Overall") == [0.375, 0.625, 1.0]
    assert cells(t, "In-train") == [0.75, 1.0, 1.0] and cells(t, "Novel") == [0.0, 0.25, 1.0]
    assert all(np.isnan(cells(t, "Held-out")))
    assert cells(t, "Samples seen") == [1920, 1920, 1920]
    assert cells(t, "Epochs") == [19.2, 9.6, 3.84]
    assert np.isnan(cells(t, "Δ Overall")[0]) and cells(t, "Δ Overall")[1:] == [0.25, 0.375]
    # 12 shared prompts differ, all in favour of the larger set: exact p = 2 / 2^12; Holm doubles both
    assert cells(t, "p (same models, same prompts)")[1:] == [round(2 / 4096, 4)] * 2
    assert cells(t, "p (Holm, same models, same prompts)")[1:] == [round(4 / 4096, 4)] * 2
    assert cells(t, "vs")[1:] == ["Scale 100K", "Scale 200K"] and not t.partial
    # what each point's data realised, the mean over its seeds' datasets (seed 1's coverage is 0.1 higher)
    assert cells(t, "Realised coverage") == [0.25, 0.45, 1.0] and cells(t, "Items per composition") == [10, 20, 50]
    assert any("Realised coverage:" in n for n in t.notes)
    md = T.render(t, "markdown")
    assert "| 500K | 2 | **1.00** | [1.00, 1.00] |" in md


def test_dpo_table_compares_each_beta_to_the_sft_arm(store):
    data = load_sweep(store.uri, sweep="dpo-beta")
    assert "1 helper run(s) of kind base" in data.notes[0] and "base" not in set(data.runs["point_id"])
    t = T.build_ablation_table(data, "dpo-beta", T.point_summary(data, n_boot=200))
    assert cells(t, "Mode") == ["sft", "dpo", "dpo"] and cells(t, "β") == ["–", "1000", "5000"]
    assert cells(t, "Overall") == [0.5, 0.75, 0.875]
    assert cells(t, "Before DPO") == [0.25] * 3
    assert cells(t, "vs")[1:] == ["Mode sft", "Mode sft"]
    assert cells(t, "Δ Overall")[1:] == [0.25, 0.375]
    # did β act: the margin the runs reached (means over seeds) times β; β means nothing in the SFT arm
    assert cells(t, "Abs. margin") == pytest.approx([0.003] * 3) and cells(t, "Reward acc.") == [0.625] * 3
    bm = cells(t, "β × abs. margin")
    assert np.isnan(bm[0]) and bm[1:] == pytest.approx([3.0, 15.0])
    assert "| sft | – | 2 |" in T.render(t) and any(n.startswith("Abs. margin:") for n in t.notes)


def test_partial_and_iterations_tables(store):
    data = load_sweep(store.uri, sweep="caption-diversity")
    t = T.build_ablation_table(data, "caption-diversity", T.point_summary(data, n_boot=200))
    assert t.partial and "PARTIAL" in T.render(t)
    assert cells(t, "Overall") == [0.5, 0.75] and cells(t, "Seeds") == ["2", "1"]
    it = load_sweep(store.uri, sweep="iterations")
    t = T.build_ablation_table(it, "iterations", T.point_summary(it, n_boot=200))
    assert cells(t, "Step") == [20, 40, 60]
    assert cells(t, "Overall") == [0.375, 0.625, 0.875]
    assert cells(t, "Samples seen") == [640.0, 1280.0, 1920.0]


def test_paper_tables_rows_placement_and_bold(store):
    data = load_sweep(store.uri)
    pts = T.point_summary(data, n_boot=200)
    t1, t2, t3 = (T.build_paper_table(n, pts) for n in (1, 2, 3))
    paper1 = t1.blocks[0].rows.set_index("Model")
    assert len(paper1) == 8 and paper1.loc["LightGen w/o DPO", "Overall"] == 0.53
    assert t2.blocks[0].rows.set_index("Model").loc["LightGen", "Counting"] == 0.60
    assert len(t3.blocks[0].rows) == 11
    # the 256-px real-world point goes to Table 1 only; toy points (32 px) only to Table 3
    assert [b.label.split(" — ")[1] for b in t1.blocks[1:]] == ["world: real, prompt set: official"]
    assert len(t2.blocks) == 1
    toy = [b for b in t3.blocks if "world: toy" in b.label]
    assert len(toy) == 1 and "NOT comparable" in toy[0].label and len(toy[0].rows) == 3 + 2 + 3 + 1 + 1
    md = T.render(t3)
    sd3 = next(line for line in md.splitlines() if line.startswith("| Stable Diffusion 3 "))
    assert "**0.68**" in sd3 and "arXiv:2503.08619" in md
    assert "| Flux | - | 12B |" in T.render(t1) and "appear swapped" in T.render(t1)
    tex = T.render(t1, "latex")
    assert r"\textbf{0.99}" in tex and r"\midrule" in tex and "NOT" not in tex.split("Studio")[0]
    csv_rows = pd.read_csv(__import__("io").StringIO(T.render(t1, "csv")))
    assert set(csv_rows["block"].str[:5]) == {"Paper", "Light"} and len(csv_rows) == 9


def test_paper_table_copy_matches_reference():
    ref = Path("/work/shared/reference/paper_geneval_tables.csv")
    if not ref.is_file():
        pytest.skip("shared reference not present on this machine")
    ours = REPO / "lightgen" / "analysis" / "paper_tables.csv"
    assert ours.read_text() == ref.read_text()


# -- curves ----------------------------------------------------------------------------------------
def test_scale_curve_data_and_files(scale_data, tmp_path):
    df = C.plot_vs_scale(scale_data, out_dir=tmp_path, formats=("png",))
    overall = C.mean_by(df[df["metric"] == "Overall"], ["data.scale"])
    assert overall["data.scale"].tolist() == [100000, 200000, 500000]
    assert overall["mean"].tolist() == [0.375, 0.625, 1.0] and overall["n"].tolist() == [2, 2, 2]
    assert sorted(df["metric"].unique()) == sorted(["Overall", *T.TASK_LABELS.values()])
    assert {p.name for p in df.attrs["files"]} == {"fig6a_scale.png"}
    assert all(p.stat().st_size > 1000 for p in df.attrs["files"])


def test_other_curves_data(store, scale_data):
    seen = C.plot_vs_samples_seen(scale_data, draw=False)
    assert seen["compute/samples_seen"].unique().tolist() == [1920] and seen["scale"].nunique() == 3
    assert C.mean_by(seen, ["epochs"])["epochs"].tolist() == [3.84, 9.6, 19.2]
    measured = C.plot_vs_measured_diversity(scale_data, draw=False)
    vendi = measured[measured["measure"] == "vendi_caption"]
    assert C.mean_by(vendi, ["measured"])["measured"].tolist() == [1.0, 2.0, 5.0]
    assert {"vendi_caption", "trainable_coverage", "repetition"} <= set(measured["measure"])
    it = C.plot_vs_iterations(load_sweep(store.uri, sweep="iterations"), draw=False)
    m = C.mean_by(it[it["metric"] == "Overall"], ["iteration"])
    assert m["iteration"].tolist() == [20, 40, 60] and m["mean"].tolist() == [0.375, 0.625, 0.875]
    div = C.plot_vs_diversity_knobs(load_sweep(store.uri, sweep="caption-diversity"), draw=False)
    assert C.mean_by(div, ["knob_value"])["mean"].tolist() == [0.5, 0.75]
    dpo = C.plot_dpo_beta(load_sweep(store.uri, sweep="dpo-beta"), draw=False)
    o = dpo[dpo["metric"] == "Overall"]
    assert C.mean_by(o[o["arm"] == "DPO"], ["dpo.beta"])["mean"].tolist() == [0.75, 0.875]
    assert o[o["arm"] == "SFT"]["value"].mean() == 0.5 and o[o["arm"] == "before"]["value"].mean() == 0.25
    assert C.plot_dpo_beta(scale_data).attrs["skipped"]                  # no β sweep there


def test_heatmap_grid_and_skip(store, tmp_path):
    everything = load_sweep(store.uri)
    keep = everything.runs["sweep"].isin(["data-scale", "caption-diversity"])
    grid = SweepData(runs=everything.runs[keep].reset_index(drop=True), parents=everything.parents,
                     source=everything.source)
    df = C.plot_scale_diversity_heatmap(grid, out_dir=tmp_path, formats=("png",)).set_index(["data.scale", "diversity"])
    assert df.loc[(100000, 0.5), "mean"] == 0.5
    assert df.loc[(100000, 1.0), "mean"] == pytest.approx(0.5)           # (0.25 + 0.5 + 0.75) / 3
    assert df.loc[(500000, 1.0), "mean"] == 1.0 and len(df) == 4
    assert (tmp_path / "scale_diversity_heatmap.png").stat().st_size > 1000
    assert "two or more" in C.plot_scale_diversity_heatmap(load_sweep(store.uri, sweep="dpo-beta")).attrs["skipped"]


# -- scripts ---------------------------------------------------------------------------------------
def test_make_tables_script(store, tmp_path, capsys):
    mt = script("make_tables")
    out = tmp_path / "t.md"
    rc = mt.run_main(mt.main, ["--tracking-uri", store.uri, "--sweep", "data-scale", "--out", str(out),
                               "--n-boot", "100", "--n-resamples", "999"])
    assert rc == 0
    text = out.read_text()
    assert "### Table 1: GenEval at 256×256" in text and "### Ablation: data-scale" in text
    assert "### Per-seed scores (the units of inference)" in text and "| Scale 100K | 0, 1 | 0.250 / 0.500 |" in text
    rid = load_sweep(store.uri, sweep="data-scale").parent_run_id("data-scale")
    logged = {a.path for a in store.client.list_artifacts(rid, "analysis")}
    assert {"analysis/tables.md", "analysis/ablation_data-scale.json", "analysis/table3.json"} <= logged
    rc = mt.run_main(mt.main, ["--tracking-uri", store.uri, "--sweep", "paper-repro", "--format", "latex",
                               "--only", "paper", "--no-log", "--n-boot", "100"])
    assert rc == 0 and r"\begin{tabular}" in capsys.readouterr().out
    # nothing to show: exit 0 with a message; bad arguments: exit 2 with a message
    assert mt.run_main(mt.main, ["--tracking-uri", f"sqlite:///{tmp_path / 'x.db'}"]) == 0
    assert "nothing to show" in capsys.readouterr().err
    assert mt.run_main(mt.main, ["--from", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert mt.run_main(mt.main, ["--tracking-uri", store.uri, "--sweep", "nope"]) == 2
    with pytest.raises(SystemExit) as e:
        mt.main(["--format", "html"])
    assert e.value.code == 2


def test_make_curves_script(store, tmp_path, capsys):
    mc = script("make_curves")
    assert mc.PLOT_NAMES == list(C.ALL_PLOTS)
    rc = mc.run_main(mc.main, ["--tracking-uri", store.uri, "--sweep", "dpo-beta", "--only", "dpo",
                               "--out", str(tmp_path)])
    assert rc == 0
    assert {p.name for p in tmp_path.iterdir()} == {"dpo_beta.png", "dpo_beta.pdf", "dpo_beta.csv"}
    rid = load_sweep(store.uri, sweep="dpo-beta").parent_run_id("dpo-beta")
    assert {a.path for a in store.client.list_artifacts(rid, "analysis/figures")} == {
        "analysis/figures/dpo_beta.png", "analysis/figures/dpo_beta.pdf", "analysis/figures/dpo_beta.csv"}
    rc = mc.run_main(mc.main, ["--tracking-uri", store.uri, "--sweep", "paper-repro", "--only", "scale",
                               "--out", str(tmp_path / "none"), "--no-log"])
    assert rc == 0 and "nothing to show" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        mc.main(["--formats", "gif"])
    assert e.value.code == 2


def test_scripts_run_from_the_repo_root():
    import subprocess

    for name in ("make_curves",):  # bad arguments: exit 2, usage message, no traceback
        r = subprocess.run([sys.executable, f"analysis/{name}.py", "--sweep"], cwd=REPO, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 2 and "usage:" in r.stderr and "Traceback" not in r.stderr


def test_other_knobs_missing_metrics_and_unscored_points(tmp_path):
    """A bundle-only sweep: eval.cfg distinguishes the points, dpo.base differs per run (not a knob)."""
    rows = []
    for i, (point, cfg, seed, overall) in enumerate([("a", "2.0", 0, 0.5), ("a", "2.0", 1, None),
                                                    ("b", "4.0", 0, 0.7), ("b", "4.0", 1, 0.9),
                                                    ("c", "8.0", 0, None)]):
        rows.append({"run_id": f"r{i}", "experiment": "lightgen/cfg", "status": "FINISHED",
                     "start_time": pd.Timestamp(1_700_000_000 + i, unit="s", tz="UTC"),
                     "tags.lightgen.kind": "trial", "tags.lightgen.sweep": "cfg", "tags.lightgen.point_id": point,
                     "tags.lightgen.seed": str(seed), "params.eval.cfg": cfg, "params.dpo.base": f"run{i}",
                     "params.data.resolution": "32", "metrics.geneval/overall": overall})
    path = write_bundle(pd.DataFrame(rows), None, None, tmp_path / "cfg")
    data = load_sweep(bundle=path)
    pts = T.point_summary(data, n_boot=50)
    t = T.build_ablation_table(data, "cfg", pts)
    assert cells(t, "eval.cfg") == ["2", "4", "8"] and "dpo.base" not in t.columns
    assert cells(t, "Overall")[:2] == [0.5, 0.8] and np.isnan(cells(t, "Overall")[2])
    assert any("missing in 1 of 2 seed runs" in n for n in data.notes)
    t3 = T.build_paper_table(3, pts)
    assert len(t3.blocks[1].rows) == 2 and any("without any GenEval score" in n for n in t3.notes)


def test_arms_are_separate_blocks_and_curves(tmp_path):
    """caption-diversity style arms: a diversity arm and a coverage arm are compared only within themselves."""
    rows = []
    spec = [("div", "d0.5", {"params.data.caption_diversity": "0.5"}, 0.4),
            ("div", "d1.0", {"params.data.caption_diversity": "1.0"}, 0.6),
            ("cov", "c0.5", {"params.data.coverage": "0.5"}, 0.3),
            ("cov", "c1.0", {"params.data.coverage": "1.0"}, 0.5)]
    for i, (arm, point, params, overall) in enumerate(spec):
        for seed in (0, 1):
            rows.append({"run_id": f"r{i}{seed}", "experiment": "lightgen/cd", "status": "FINISHED",
                         "start_time": pd.Timestamp(1_700_000_000 + 10 * i + seed, unit="s", tz="UTC"),
                         "tags.lightgen.kind": "trial", "tags.lightgen.sweep": "cd", "tags.lightgen.arm": arm,
                         "tags.lightgen.point_id": point, "tags.lightgen.seed": str(seed),
                         "params.data.scale": "500000", "params.data.caption_diversity": "1.0",
                         **params, "metrics.geneval/overall": overall + 0.1 * seed})
    data = load_sweep(bundle=write_bundle(pd.DataFrame(rows), None, None, tmp_path / "cd"))
    t = T.build_ablation_table(data, "cd", T.point_summary(data, n_boot=50))
    assert [b.label for b in t.blocks] == ["arm div", "arm cov"]
    div, cov = (b.rows for b in t.blocks)
    assert div["Overall"].tolist() == [0.45, 0.65] and div["vs"].tolist() == ["–", "Diversity 0.5"]
    assert cov["Coverage"].tolist() == ["0.5", "1"] and cov["Δ Overall"].tolist()[1] == pytest.approx(0.2)
    knobs = C.plot_vs_diversity_knobs(data, draw=False)
    per = C.mean_by(knobs, ["knob", "knob_value"])
    # the coverage arm stays out of the caption-diversity panel and vice versa
    assert per[per["knob"] == "caption_diversity"]["mean"].tolist() == pytest.approx([0.45, 0.65])
    assert per[per["knob"] == "coverage"]["mean"].tolist() == pytest.approx([0.35, 0.55])


def test_make_tables_hypotheses_table(store, tmp_path, capsys):
    """`make_tables.py` builds the pre-registered table from the runs: β 1000 vs SFT on novel prompts
    (n = 3, 3 vs 2, 2 correct of 4: novel scores 0.5 vs 0) is +0.5 at every seed."""
    hyp = tmp_path / "h.yaml"
    hyp.write_text("hypotheses:\n  - id: H4\n    sweep: dpo-beta\n    split: novel\n    arms:\n"
                   "      dpo: {dpo.mode: dpo, dpo.beta: 1000}\n      sft: {dpo.mode: sft}\n"
                   "    contrast: {dpo: 1, sft: -1}\n"
                   "  - id: H9\n    sweep: no-such-sweep\n    arms: {a: {}}\n    contrast: {a: 1}\n")
    mt = script("make_tables")
    out = tmp_path / "h.csv"
    rc = mt.run_main(mt.main, ["--tracking-uri", store.uri, "--sweep", "dpo-beta", "--only", "hypotheses",
                               "--hypotheses", str(hyp), "--format", "csv", "--out", str(out), "--no-log",
                               "--n-boot", "200"])
    assert rc == 0
    rows = pd.read_csv(out).set_index("ID")
    assert rows.loc["H4", "Estimate"] == pytest.approx(0.5) and rows.loc["H4", "Verdict"] == "supported"
    assert rows.loc["H4", "Seeds"] == "dpo 2, sft 2" and rows.loc["H4", "Split"] == "Novel"
    assert rows.loc["H9", "Verdict"].startswith("not run")
    # the default run shows it only when a hypothesis' sweep is among the runs (data-scale is, in the
    # shipped file), never for sweeps it does not name
    rc = mt.run_main(mt.main, ["--tracking-uri", store.uri, "--sweep", "paper-repro", "--no-log", "--n-boot", "100"])
    assert rc == 0 and "Hypotheses (pre-registered)" not in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("hypotheses: 3\n")
    assert mt.run_main(mt.main, ["--tracking-uri", store.uri, "--only", "hypotheses", "--hypotheses", str(bad)]) == 2
    assert "bad.yaml" in capsys.readouterr().err


def test_held_out_prompts_stay_out_of_the_standard_overall(scale_data, scale_points):
    """geneval/overall scores the standard prompt set (every prompt not held out, lightgen.geneval.summary):
    held-out rows added to the per-image table change neither the CI, nor the paired tests, nor raise a
    'logged differs from per-image' note."""
    res = scale_data.prompt_results()
    held = res.assign(split="heldout", correct=False, prompt=res["prompt"] + " (held out)")
    data = SweepData(runs=scale_data.runs, parents=scale_data.parents, source=scale_data.source, notes=[],
                     _results=pd.concat([res, held], ignore_index=True))
    pts = T.point_summary(data, n_boot=200)
    assert not [n for n in data.notes if "differs" in n]
    ref = T.point_summary(SweepData(runs=scale_data.runs, parents=scale_data.parents, source=scale_data.source,
                                    notes=[], _results=res), n_boot=200)
    assert pts[["ci_low", "ci_high"]].equals(ref[["ci_low", "ci_high"]])
    t = T.build_ablation_table(data, "data-scale", pts)
    assert cells(t, "p (same models, same prompts)")[1:] == [round(2 / 4096, 4)] * 2


def test_a_prompt_is_an_entry_of_the_list_not_its_text():
    """Two entries of a task's prompt list with the same text (a small world repeats texts) stay two prompts,
    as GenEval scores them (every entry weighs alike): 3 of 4 entries right is 0.75, not the text mean 0.5."""
    from lightgen.analysis import bundle as B
    from lightgen.analysis import loader as L
    from lightgen.analysis import stats as S

    recs = {"r1": [{"filename": f"{i:05d}/samples/0000.png", "tag": "colors", "prompt": txt, "correct": ok,
                    "metadata": json.dumps({"tag": "colors", "prompt": txt, "split": "intrain"})}
                   for i, (txt, ok) in enumerate([("a red circle", True), ("a red circle", True),
                                                   ("a red circle", True), ("a blue square", False)])]}

    class Src:
        def results(self, run_ids):
            return B.results_frame(recs), []

    runs = pd.DataFrame({"run_id": ["r1"], "point_id": ["p"], "seed": [0], "sweep": ["s"]})
    table, _ = L._prompt_table(Src(), runs)
    assert table["prompt"].nunique() == 4
    assert S.geneval_score(table)[1]["colors"] == pytest.approx(0.75)


def test_partial_is_said_of_the_sweep_that_is_partial(store):
    """All sweeps at once: caption-diversity's parent is still running, so its table is PARTIAL; the finished
    data-scale sweep's table is not, though the selection as a whole is."""
    data = load_sweep(store.uri)
    pts = T.point_summary(data, n_boot=100)
    assert data.partial and "caption-diversity" in data.partial_sweeps and "data-scale" not in data.partial_sweeps
    # seeds differ between sweeps (data-scale 2, paper-repro 1): by design, not partial; within one sweep it is
    assert data.partial_sweeps == {"caption-diversity"}
    assert [n for n in data.notes if "unequal numbers of seeds" in n] == [
        "sweep caption-diversity: points have unequal numbers of seeds (1–2)"]
    assert not T.build_ablation_table(data, "data-scale", pts).partial
    assert T.build_ablation_table(data, "caption-diversity", pts).partial


def test_seed_table_lists_every_runs_own_score_in_seed_order(store):
    data = load_sweep(store.uri)
    t = T.build_seed_table(data, T.point_summary(data, n_boot=100))
    by_block = {b.label: b.rows.set_index("Point") for b in t.blocks}
    ds = by_block["sweep data-scale"]
    assert list(ds.index) == ["Scale 100K", "Scale 200K", "Scale 500K"]
    # seeds 0, 1 of 100K scored 1/4 and 2/4 of their prompts: each value, not the mean
    assert ds.loc["Scale 100K", "Seeds"] == "0, 1" and ds.loc["Scale 100K", "Overall by seed"] == "0.250 / 0.500"
    assert ds.loc["Scale 500K", "Held-out by seed"] == "– / –"      # not logged
    it = by_block["sweep iterations (GenEval along training)"]
    assert it.loc["step 40", "Overall by seed"] == "0.500 / 0.750"
    dpo = by_block["sweep dpo-beta"]
    assert dpo.loc["Mode dpo, β 5000", "Overall by seed"] == "1.000 / 0.750"
    assert "– / –" not in set(dpo["Overall by seed"])
    md = T.render(t, "markdown")
    assert "| Scale 200K | 0, 1 | 0.500 / 0.750 | – / – |" in md


def test_a_knob_logged_as_unset_shows_as_a_dash():
    assert T._fmt_knob("data.coverage", "None") == "–" and T._fmt_knob("data.coverage", None) == "–"
    assert T._fmt_knob("data.coverage", 0.05) == "0.05" and T._fmt_knob("data.scale", 2000) == "2K"


def test_heatmap_takes_the_grid_row_another_arm_ran(tmp_path):
    """cpu preset of caption-diversity: the grid's 250 row is planned once, under the diversity arm."""
    rows = []
    spec = [("grid", 500, {"params.data.caption_diversity": "0.0"}, 0.40),
            ("grid", 500, {"params.data.caption_diversity": "1.0"}, 0.50),
            ("grid", 2000, {"params.data.caption_diversity": "0.0"}, 0.42),
            ("grid", 2000, {"params.data.caption_diversity": "1.0"}, 0.54),
            ("div", 250, {"params.data.caption_diversity": "0.0"}, 0.30),
            ("div", 250, {"params.data.caption_diversity": "0.5"}, 0.35),      # not a diversity of the grid
            ("div", 250, {"params.data.caption_diversity": "1.0"}, 0.52),
            ("cov", 250, {"params.data.coverage": "0.5"}, 0.9),                 # another knob set: not a cell
            ("long", 250, {"params.data.caption_diversity": "1.0", "params.train.iterations": "6000"}, 0.9)]
    for i, (arm, scale, params, overall) in enumerate(spec):
        rows.append({"run_id": f"r{i}", "experiment": "lightgen/cd", "status": "FINISHED",
                     "start_time": pd.Timestamp(1_700_000_000 + 10 * i, unit="s", tz="UTC"),
                     "tags.lightgen.kind": "trial", "tags.lightgen.sweep": "cd", "tags.lightgen.arm": arm,
                     "tags.lightgen.point_id": f"p{i}", "tags.lightgen.seed": "0", "params.data.scale": str(scale),
                     "params.data.caption_diversity": "1.0", "params.train.iterations": "3000",
                     **params, "metrics.geneval/overall": overall})
    data = load_sweep(bundle=write_bundle(pd.DataFrame(rows), None, None, tmp_path / "cd"))
    df = C.plot_scale_diversity_heatmap(data, draw=False).set_index(["data.scale", "diversity"])["mean"]
    assert df.to_dict() == pytest.approx({(250, 0.0): 0.30, (250, 1.0): 0.52, (500, 0.0): 0.40, (500, 1.0): 0.50,
                                          (2000, 0.0): 0.42, (2000, 1.0): 0.54})
