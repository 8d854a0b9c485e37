"""Summary numbers, the official folder layout, run_geneval and the `lightgen geneval` commands."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from lightgen.cli import app
from lightgen.config import load_config
from lightgen.geneval.evaluate import read_folder, run_geneval, sample_to_folder
from lightgen.geneval.summary import read_results, summarize, write_results
from lightgen.world.toy import ToyWorld

runner = CliRunner()


def row(tag, prompt_id, correct, split=None):
    meta = {"tag": tag, "prompt": f"p{prompt_id}", "include": [{"class": "x", "count": 1}]}
    if split is not None:
        meta["split"] = split
    return {"filename": "", "tag": tag, "prompt": meta["prompt"], "correct": correct, "reason": "",
            "metadata": json.dumps(meta), "details": "{}"}


def test_summary_numbers_as_geneval_reports_them():
    rows = (
        [row("single_object", 0, True)] * 4                                   # task A: 4/4
        + [row("counting", 1, True), row("counting", 1, False)]
        + [row("counting", 2, False)] * 6                                     # task B: 1/8
    )
    s = summarize(rows, bootstrap=0)
    assert s["geneval/single_object"] == 1.0 and s["geneval/counting"] == 0.125
    assert s["geneval/overall"] == pytest.approx(0.5625)                       # unweighted mean of tasks
    assert s["geneval/correct_images"] == pytest.approx(5 / 12)                # mean over images
    assert s["geneval/correct_prompts"] == pytest.approx(2 / 3)                # any correct image
    assert not any(k.startswith(("geneval_intrain", "geneval_novel", "geneval_heldout", "geneval_seen")) for k in s)
    assert np.isnan(s["geneval/overall_ci_low"])


def test_bootstrap_ci_and_splits():
    rng = np.random.default_rng(0)
    rows = [row(t, i, bool(rng.random() < 0.7), split=("intrain", "novel", "heldout")[i % 3])
            for t in ("colors", "position") for i in range(40) for _ in range(2)]
    a = summarize(rows, bootstrap=300, seed=1)
    assert a == summarize(rows, bootstrap=300, seed=1)
    assert a["geneval/overall_ci_low"] < a["geneval/overall"] < a["geneval/overall_ci_high"]
    assert 0.05 < a["geneval/overall_ci_high"] - a["geneval/overall_ci_low"] < 0.4
    def split(r):
        return json.loads(r["metadata"])["split"]

    for name in ("intrain", "novel", "heldout"):
        mine = [r for r in rows if split(r) == name]
        assert a[f"geneval_{name}/colors"] == pytest.approx(np.mean([r["correct"] for r in mine if r["tag"] == "colors"]))
        assert a[f"geneval_{name}/n_prompts"] == len({(r["tag"], r["prompt"]) for r in mine})
    # geneval/… is the standard set: every prompt that is not held out
    std = [r for r in rows if split(r) != "heldout"]
    assert a["geneval/position"] == pytest.approx(np.mean([r["correct"] for r in std if r["tag"] == "position"]))
    assert not any("seen" in k for k in a)


def test_read_results_errors(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text('{"tag": "colors"}\n')
    with pytest.raises(Exception, match="missing field"):
        read_results(p)
    rows = [row("colors", 0, True)]
    write_results(rows, p)
    assert read_results(p) == rows


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.getbasetemp() / "gvroot"  # shared classifier cache (see test_geneval_toy)
    sets = [f"tracking.root={root}", "eval.n_prompts=3", "eval.images_per_prompt=2", "eval.bootstrap=50"]
    cfg = load_config("smoke", sets)
    world = ToyWorld(cfg.world)
    return cfg, world, sets


def test_run_geneval_writes_layout_and_scores(setup, tmp_path):
    cfg, world, _ = setup
    from lightgen.geneval.evaluate import prompt_set

    every = prompt_set(cfg, world)
    SPECS = {s["prompt"]: s for s in every}  # the teacher renders each prompt exactly
    n = len(every)
    assert n == 18 + sum(s.get("split") == "heldout" for s in every) and n > 18  # standard set + held-out set
    seen_seeds = []

    def sampler(prompts, seeds):
        seen_seeds.extend(seeds)
        return world.render([SPECS[p] for p in prompts], cfg.data.resolution, seeds)

    summary, results = run_geneval(cfg, world, sampler, tmp_path / "gv")
    assert len(results) == n * 2 and summary["geneval/overall"] >= 0.97
    assert summary["geneval_heldout/overall"] >= 0.9 and summary["geneval_heldout/n_prompts"] == n - 18
    assert sorted(seen_seeds) == list(range(2 * n))
    metas, paths = read_folder(tmp_path / "gv")
    assert len(metas) == n and all(len(p) == 2 for p in paths) and paths[0][0].endswith("00000/samples/0000.png")
    assert json.loads((tmp_path / "gv" / "summary.json").read_text()) == summary
    assert len(read_results(tmp_path / "gv" / "results.jsonl")) == 2 * n

    # CLI evaluate on the folder reproduces the in-memory scores; summary prints GenEval's table
    out = tmp_path / "res.jsonl"
    r = runner.invoke(app, ["geneval", "evaluate", str(tmp_path / "gv"), "--out", str(out), "--config", "smoke",
                            *sum((["--set", s] for s in setup[2]), [])])
    assert r.exit_code == 0, r.output
    assert [x["correct"] for x in read_results(out)] == [x["correct"] for x in results]
    r = runner.invoke(app, ["geneval", "summary", str(out), "--bootstrap", "50"])
    assert r.exit_code == 0 and "Overall score (avg. over tasks)" in r.output and "counting" in r.output
    r = runner.invoke(app, ["geneval", "summary", str(out), "--json", "--bootstrap", "0"])
    assert json.loads(r.output)["geneval/overall"] == pytest.approx(summary["geneval/overall"])


def test_sampling_seeds_independent_of_batch_size():
    metas = [{"prompt": f"p{i}"} for i in range(3)]

    def sampler(prompts, seeds):
        return np.stack([np.full((2, 2, 3), s, np.uint8) for s in seeds])

    a = sample_to_folder(sampler, metas, None, images_per_prompt=4, seed=0, batch_size=5)
    b = sample_to_folder(sampler, metas, None, images_per_prompt=4, seed=0, batch_size=64)
    assert all((x == y).all() for x, y in zip(a, b))
    assert a[2][3, 0, 0, 0] == 11


def test_cli_prompts_toy_and_errors(setup, tmp_path):
    _, world, sets = setup
    r = runner.invoke(app, ["geneval", "prompts", "--set", "toy", "--out", str(tmp_path), "-o", "eval.n_prompts=5"])
    assert r.exit_code == 0, r.output
    lines = (tmp_path / "evaluation_metadata.jsonl").read_text().splitlines()
    metas = [json.loads(x) for x in lines]
    assert len([m for m in metas if m.get("split") != "heldout"]) == 30 and not any("seen" in m for m in metas)
    held = [m for m in metas if m.get("split") == "heldout"]
    assert held and all(world.is_heldout(m) for m in held)
    r = runner.invoke(app, ["geneval", "evaluate", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "GenEval folder not found" in r.output
    bad = tmp_path / "bad" / "00000"
    (bad / "samples").mkdir(parents=True)
    (bad / "metadata.jsonl").write_text("{oops")
    r = runner.invoke(app, ["geneval", "evaluate", str(tmp_path / "bad"), *sum((["--set", s] for s in sets), [])])
    assert r.exit_code == 2 and "metadata.jsonl: not valid JSON" in r.output


def test_cli_import_logs_metrics_and_artifact(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("gv", artifact_location=str(tmp_path / "art"))).info.run_id
    rows = [row(t, i, i % 2 == 0) for t in ("colors", "counting") for i in range(4)]
    src = tmp_path / "official_output.jsonl"
    write_results(rows, src)
    r = runner.invoke(app, ["geneval", "import", str(src), "--run", run_id, "--tracking-uri", uri, "--bootstrap", "20"])
    assert r.exit_code == 0, r.output
    metrics = client.get_run(run_id).data.metrics
    assert metrics["geneval/overall"] == pytest.approx(0.5) and "geneval/overall_ci_high" in metrics
    arts = [a.path for a in client.list_artifacts(run_id, "geneval")]
    assert arts == ["geneval/results.jsonl"]
    r = runner.invoke(app, ["geneval", "import", str(src), "--run", "nope", "--tracking-uri", uri])
    assert r.exit_code == 2 and "no such MLflow run" in r.output


def test_cli_sample_writes_official_layout(setup, tmp_path, monkeypatch):
    """`geneval sample` with a stand-in model API (the real one lives in lightgen.model / train)."""
    cfg, world, sets = setup
    from lightgen.commands import geneval as gcli
    from lightgen.geneval.evaluate import prompt_set

    specs = {s["prompt"]: s for s in prompt_set(cfg, world)}
    calls = []

    def load_checkpoint(path):
        return "model", cfg

    def sample_images(model, captions, eval_cfg, seeds):
        calls.append(list(seeds))
        return world.render([specs[c] for c in captions], cfg.data.resolution, seeds)

    monkeypatch.setattr(gcli, "_model_api", lambda: (load_checkpoint, sample_images))
    (tmp_path / "ckpt").mkdir()
    out = tmp_path / "gv"
    r = runner.invoke(app, ["geneval", "sample", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(out),
                            "--images-per-prompt", "3", "--seed", "1"])
    assert r.exit_code == 0, r.output
    metas, paths = read_folder(out)
    n = len(specs)  # the standard set (18) and the held-out set
    assert len(metas) == n and all(len(p) == 3 for p in paths)
    assert metas[0] == json.loads((out / "evaluation_metadata.jsonl").read_text().splitlines()[0])
    assert sorted(s for c in calls for s in c) == [1_000_003 + k for k in range(3 * n)]
    r = runner.invoke(app, ["geneval", "sample", "--checkpoint", str(tmp_path / "nope"), "--out", str(out)])
    assert r.exit_code == 2 and "checkpoint not found" in r.output
    r = runner.invoke(app, ["geneval", "sample", "--out", str(out)])
    assert r.exit_code == 2 and "exactly one of --checkpoint PATH or --teacher" in r.output


def test_cli_teacher_sample_evaluate_shuffle(setup, tmp_path):
    """The 'done when' check through the CLI: teacher renders score >= 0.97, shuffled images collapse."""
    _, _, sets = setup
    opts = sum((["--set", s] for s in sets), [])
    out = tmp_path / "teacher"
    r = runner.invoke(app, ["geneval", "sample", "--teacher", "--out", str(out), *opts])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["geneval", "evaluate", str(out), *opts])
    assert r.exit_code == 0, r.output
    overall = float(r.output.split("Overall score (avg. over tasks): ")[1].split()[0])
    assert overall >= 0.97
    # shuffle the prompt folders' metadata: every image is now scored against another prompt
    metas = [(d / "metadata.jsonl").read_text() for d in sorted(out.glob("0*"))]
    for d, m in zip(sorted(out.glob("0*")), metas[7:] + metas[:7]):
        (d / "metadata.jsonl").write_text(m)
    r = runner.invoke(app, ["geneval", "evaluate", str(out), *opts])
    assert float(r.output.split("Overall score (avg. over tasks): ")[1].split()[0]) < 0.35


def test_config_field_detector_train_images():
    from lightgen.config import ConfigError

    assert load_config("smoke").eval.detector_train_images == 1200
    assert load_config("smoke", ["eval.detector_train_images=500"]).eval.detector_train_images == 500
    with pytest.raises(ConfigError, match="eval.detector_train_images"):
        load_config("smoke", ["eval.detector_train_images=10"])
