"""Checkpoint checksums: written with every checkpoint, verified on load; a corrupt checkpoint is skipped
for the newest verified one (logged, tagged on the run, moved aside), never loaded or called good."""

from __future__ import annotations

import os

import pytest
import torch

from lightgen.cliutil import UserError
from lightgen.config import load_config
from lightgen.train import checkpoint as ckpt
from lightgen.train.pretrain import train
from lightgen.train.squares import SquaresDataset

torch.set_num_threads(1)

from tests.tiny_models import MICRO  # noqa: E402


def cfg_with(*extra: str):
    return load_config("smoke", [*MICRO, *extra])


class TagRecorder:
    def __init__(self):
        self.tags: dict = {}

    def log_metrics(self, metrics, step=0):
        pass

    def set_tags(self, tags):
        self.tags.update(tags)


def garble(path, n=4096):
    """Overwrite ``n`` bytes in the middle of a file with random bytes (same size, header intact)."""
    size = path.stat().st_size
    off = max(0, size // 2 - n // 2)
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(os.urandom(min(n, size - off)))


@pytest.fixture(scope="module")
def ds():
    return SquaresDataset(10, resolution=32)


@pytest.mark.fault
def test_corrupt_newest_checkpoint_is_skipped_for_the_newest_verified_one(ds, tmp_path, capsys):
    full = train(cfg_with("train.iterations=6", "train.checkpoint_every=2"), ds, tmp_path / "a", count_flops=False)
    train(cfg_with("train.iterations=4", "train.checkpoint_every=2"), ds, tmp_path / "b", count_flops=False)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "b")] == ["step-0000002", "step-0000004"]
    assert (tmp_path / "b" / "step-0000004" / ckpt.CHECKSUMS).is_file()
    garble(tmp_path / "b" / "step-0000004" / "model.safetensors")
    assert "corrupt" in ckpt.verify_checkpoint(tmp_path / "b" / "step-0000004")
    rec = TagRecorder()
    rest = train(cfg_with("train.iterations=6", "train.checkpoint_every=2"), ds, tmp_path / "b", tracker=rec,
                 count_flops=False)
    # resumed from step 2 (the newest verified one), so the trajectory is the uninterrupted one
    assert [s for s, _ in rest.loss_history] == [3, 4, 5, 6]
    assert rest.loss_history == full.loss_history[2:]
    assert "step-0000004" in rec.tags[ckpt.TAG_CORRUPT] and "model.safetensors" in rec.tags[ckpt.TAG_CORRUPT]
    assert "corrupt checkpoint step-0000004" in capsys.readouterr().err
    assert (tmp_path / "b" / "corrupt-step-0000004").is_dir()  # moved aside, not deleted, never resumed again
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "b")] == ["step-0000004", "step-0000006"]


@pytest.mark.fault
def test_garbled_ema_is_refused_by_name_and_skipped_in_a_run_folder(ds, tmp_path):
    train(cfg_with("train.iterations=4", "train.checkpoint_every=2"), ds, tmp_path, count_flops=False)
    newest = tmp_path / "step-0000004"
    garble(newest / "ema.safetensors")
    with pytest.raises(UserError, match="corrupt checkpoint .*ema.safetensors"):
        ckpt.load_checkpoint(newest)
    assert ckpt.resolve_checkpoint(tmp_path) == tmp_path / "step-0000002"  # the run folder: newest verified
    garble(tmp_path / "step-0000002" / "state.json", n=8)
    with pytest.raises(UserError, match="no verified checkpoint"):
        ckpt.load_checkpoint(tmp_path)


def test_checkpoints_without_checksums_still_load(ds, tmp_path):
    res = train(cfg_with("train.iterations=1"), ds, tmp_path, count_flops=False)
    (res.checkpoint / ckpt.CHECKSUMS).unlink()  # written before checksums existed
    model, cfg = ckpt.load_checkpoint(res.checkpoint)
    assert cfg.model.width == 32


def test_a_resumed_trial_run_carries_the_history_up_to_its_checkpoint(tmp_path):
    import json
    from types import SimpleNamespace

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from lightgen.tracking import Tracker, ensure_store
    from lightgen.sweep.worker import carry_over_history

    uri = ensure_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient(uri)
    exp = client.create_experiment("t")
    killed = client.create_run(exp).info.run_id
    client.log_batch(killed, metrics=[Metric("train/loss", 1.0 / s, 0, s) for s in range(1, 7)]
                     + [Metric("data/distinct_2", 0.5, 0, 0)])
    cp = tmp_path / "ck" / "step-0000004"  # the checkpoint the retry resumes from
    cp.mkdir(parents=True)
    for f in ckpt.FILES:
        (cp / f).write_text("{}")
    (cp / "state.json").write_text(json.dumps({"step": 4}))
    new = client.create_run(exp).info.run_id
    trials = [SimpleNamespace(number=0, user_attrs={"lightgen.job": "j-s0", "mlflow_run_id": killed}),
              SimpleNamespace(number=1, user_attrs={"lightgen.job": "j-s0", "mlflow_run_id": new})]
    trial = SimpleNamespace(number=1, study=SimpleNamespace(get_trials=lambda deepcopy=False: trials))
    tracker = Tracker(new, uri)
    assert carry_over_history(tracker, trial, "j-s0", tmp_path / "ck") == 4
    assert [m.step for m in client.get_metric_history(new, "train/loss")] == [1, 2, 3, 4]
    run = client.get_run(new)
    assert "data/distinct_2" not in run.data.metrics and run.data.tags["lightgen.resumed_from_run"] == killed
