"""Point identity includes the job kind (pre-train, DPO with its base, SFT): a DPO point never shares a
checkpoint folder, a run tag or a finished trial with a pre-training point of the same config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lightgen.sweep import job_point_id, load_sweep, plan_sweep

REPO = Path(__file__).resolve().parent.parent
# CPU-seconds versions of the smoke trials: the orchestration, not the learning, is under test
FAST = ["train.iterations=4", "train.checkpoint_every=2", "eval.n_prompts=1", "eval.detector_train_images=200",
        "eval.num_iter=2", "eval.diffusion_steps=2", "data.diversity_subsample=20", "dpo.iterations=2",
        "dpo.num_pairs=8", "dpo.batch_size=4"]


def test_dpo_points_never_share_an_identity_with_pretraining_points():
    scale = plan_sweep(load_sweep("data-scale"), "smoke")
    dpo = plan_sweep(load_sweep("dpo-beta"), "smoke")
    assert not {p.point_id for p in scale.points} & {p.point_id for p in dpo.points}
    default_beta = next(p for p in dpo.points if p.overrides.get("dpo.beta") is not None)
    assert default_beta.point_id.startswith("dpo-")
    assert next(p for p in dpo.points if p.arm == "sft").point_id.startswith("sft-")
    # the base is part of a DPO point's identity; pre-training keeps the plain config hash
    cfg = default_beta.cfg
    assert job_point_id(cfg, "dpo", base="a") != job_point_id(cfg, "dpo", base="b")
    assert job_point_id(cfg, "pretrain") == cfg.point_id()
    assert dpo.base_point_id.startswith("base-") and scale.base_point_id is None


def _sweep(cwd: Path, name: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "lightgen", "sweep", name, "--preset", "smoke", "--workers", "2"]  # 2 cores
    for s in FAST:
        cmd += ["--set", s]
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_LOGGING_LEVEL": "WARNING"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.fault
def test_data_scale_then_dpo_beta_in_one_folder(tmp_path):
    """As a new user would: the pre-training sweep, then the DPO sweep in the same folder. The DPO point
    at the default β must not try to resume the 100K pre-training checkpoint."""
    res = _sweep(tmp_path, "data-scale")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    res = _sweep(tmp_path, "dpo-beta")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True)
    assert not (runs["status"] == "RUNNING").any()
    trials = runs[runs["tags.lightgen.kind"] == "trial"]
    assert (trials["status"] == "FINISHED").all() and len(trials) == 5 + 6
    assert trials["tags.lightgen.point_id"].nunique() == 11  # one identity per point, across both sweeps
    folders = {p.name for p in (tmp_path / "mlruns" / "checkpoints").iterdir()}
    assert sum(f.startswith("dpo-") for f in folders) == 5 and sum(f.startswith("sft-") for f in folders) == 1
    assert sum(f.startswith("base-") for f in folders) == 1
