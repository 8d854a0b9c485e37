"""The real pipeline end to end through `lightgen sweep`: toy world (data → MAR → GenEval → MLflow →
tables) and real world on tiny random diffusers/transformers components (plumbing, not quality)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.store_readers import mlflow_runs as _runs  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
# a CPU-minute version of the smoke preset: the pipeline, not the learning, is under test
FAST = ["train.iterations=4", "train.checkpoint_every=2", "eval.n_prompts=1", "eval.detector_train_images=200",
        "eval.num_iter=2", "eval.diffusion_steps=2", "data.diversity_subsample=20"]


def _env() -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_LOGGING_LEVEL": "WARNING"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _sweep(cwd: Path, sweep: str, sets: list[str], *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "lightgen", "sweep", sweep, "--preset", "smoke", *extra]
    for s in sets:
        cmd += ["--set", s]
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=900)


def test_toy_sweep_end_to_end_with_tracking_contract_and_tables(tmp_path):
    sweep = tmp_path / "two-scales.yaml"
    sweep.write_text("name: two-scales\narms:\n  - name: iso-iteration\n    grid:\n      data.scale: [100k, 200k]\n")
    res = _sweep(tmp_path, str(sweep), FAST, "--workers", "1")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    runs = _runs(tmp_path)
    assert not (runs["status"] == "RUNNING").any()
    trials = runs[runs["tags.lightgen.kind"] == "trial"]
    assert len(trials) == 2 and (trials["status"] == "FINISHED").all()
    parent = runs[runs["tags.lightgen.kind"] == "sweep"]
    assert (trials["tags.mlflow.parentRunId"] == parent["run_id"].iloc[0]).all()
    assert sorted(trials["params.data.scale_label"]) == ["100K", "200K"]
    assert sorted(trials["params.data.actual_size"].astype(int)) == [100, 200]
    row = trials.iloc[0]
    tasks = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
    for key in ([f"metrics.geneval/{t}" for t in tasks] + ["metrics.geneval/overall", "metrics.geneval/overall_ci_low",
                "metrics.geneval/overall_ci_high", "metrics.geneval_intrain/overall", "metrics.geneval_heldout/n_prompts", "metrics.compute/samples_seen",
                "metrics.compute/epochs", "metrics.compute/train_flops", "metrics.compute/device_hours",
                "metrics.data/distinct_2", "metrics.data/vendi_caption", "metrics.data/realised_coverage", "metrics.data/trainable_coverage", "metrics.data/heldout_leaks",
                "metrics.train/loss"]):
        assert key in runs.columns and row[key] == row[key], key  # present and not NaN
    assert 0.0 <= row["metrics.geneval/overall"] <= 1.0
    assert row["metrics.compute/samples_seen"] == 4 * 32
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    rid = row["run_id"]
    top = {a.path for a in client.list_artifacts(rid)}
    assert {"config.yaml", "pip-freeze.txt", "geneval", "samples", "data"} <= top
    assert "geneval/results.jsonl" in {a.path for a in client.list_artifacts(rid, "geneval")}
    assert client.get_run(rid).inputs.dataset_inputs  # the dataset is logged as an MLflow input
    lines = Path(client.download_artifacts(rid, "geneval/results.jsonl", str(tmp_path))).read_text().splitlines()
    metas = [json.loads(json.loads(x)["metadata"]) for x in lines]
    # 6 standard prompts (one per task) with their per-run split, then the held-out set
    assert len([m for m in metas if m["split"] != "heldout"]) == 6 and len(lines) > 6
    assert {m["split"] for m in metas} <= {"intrain", "novel", "heldout"}
    assert {"filename", "tag", "prompt", "correct", "reason", "metadata"} <= set(json.loads(lines[0]))
    # checkpoints keyed by point and seed, safetensors only
    ckpts = list((tmp_path / "mlruns" / "checkpoints").glob("*/seed0/step-0000004"))
    assert len(ckpts) == 2 and all((c / "model.safetensors").is_file() for c in ckpts)
    # the analysis rebuilds the ablation table from this store
    t = subprocess.run([sys.executable, str(REPO / "analysis" / "make_tables.py"), "--sweep", "two-scales",
                        "--only", "ablation", "--no-log"], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                       timeout=300)
    assert t.returncode == 0, t.stderr[-2000:]
    assert "100K" in t.stdout and "200K" in t.stdout


def test_real_world_sweep_on_tiny_random_components(tmp_path):
    from tests.tiny_models import build_detector_models, build_generation_models

    import torch

    torch.set_num_threads(1)
    models = build_generation_models(tmp_path / "gen")
    det = build_detector_models(tmp_path / "det")
    words = ["red", "blue", "green"]
    shapes = ["circle", "star", "square", "ring"]
    caps = [f"a photo of a {c} {s}" if i % 2 else f"a {c} {s} left of a {s2}"
            for i, (c, s, s2) in enumerate((c, s, s2) for c in words for s in shapes for s2 in shapes)]
    (tmp_path / "captions.txt").write_text("\n".join(caps * 3) + "\n")  # 144 captions
    sets = FAST + [
        "world.kind=real", f"world.teacher={models / 'teacher'}", f"world.caption_file={tmp_path / 'captions.txt'}",
        "world.teacher_steps=2", "world.teacher_batch_size=8", "world.teacher_device=cpu",
        "model.tokenizer=vae", f"model.vae={models / 'vae'}", "model.patch_size=2",
        f"model.text_encoder={models / 't5'}", "model.text_encoder_mode=frozen", "model.max_text_len=12",
        "model.head_width=32", "data.scale_divisor=20000", "data.n_clusters=4", "data.shard_size=16",
        "eval.prompt_set=official", "eval.detector=real", f"eval.segmenter={det / 'seg'}", f"eval.clip={det / 'clip'}",
    ]
    sweep = tmp_path / "real-scales.yaml"
    sweep.write_text("name: real-scales\narms:\n  - name: iso-iteration\n    grid:\n      data.scale: [1M, 2M]\n")
    res = _sweep(tmp_path, str(sweep), sets, "--workers", "1")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    runs = _runs(tmp_path)
    trials = runs[runs["tags.lightgen.kind"] == "trial"]
    assert len(trials) == 2 and (trials["status"] == "FINISHED").all()
    assert set(trials["tags.lightgen.world"]) == {"real"}
    assert sorted(trials["params.data.actual_size"].astype(int)) == [50, 100]
    assert trials["metrics.geneval/overall"].between(0, 1).all()
    assert "metrics.geneval_intrain/overall" not in runs.columns or trials["metrics.geneval_intrain/overall"].isna().all()
