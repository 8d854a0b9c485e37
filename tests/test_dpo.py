"""Diffusion-DPO: the loss, shared noise, pairs (build/cache/JSONL safety), training, resume, CLI."""

from __future__ import annotations

import copy
import json
import math
import os

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lightgen.cliutil import UserError
from lightgen.config import load_config
from lightgen.train import checkpoint as ckpt
from lightgen.train import dpo as dpo_mod
from lightgen.train.dpo import (
    PairSet, build_pairs, dpo_loss, dpo_train, load_base_sampler, load_pairs, pair_losses, write_pairs,
)
from lightgen.train.pretrain import NonFiniteLossError, train
from lightgen.train.squares import SquaresDataset

torch.set_num_threads(1)

from tests.tiny_models import MICRO as _MICRO  # noqa: E402

MICRO = [*_MICRO, "eval.batch_size=8", "dpo.num_pairs=8", "dpo.batch_size=4", "dpo.iterations=3", "dpo.lr=1e-4"]


def cfg_with(root, *extra: str):
    return load_config("smoke", [*MICRO, f"tracking.root={root}", *extra])


class Recorder:
    def __init__(self):
        self.rows: list[tuple[int, dict]] = []

    def log_metrics(self, metrics, step=0):
        self.rows.append((step, dict(metrics)))


@pytest.fixture(scope="module")
def ds():
    return SquaresDataset(12, resolution=32)


@pytest.fixture(scope="module")
def base(tmp_path_factory, ds):
    """A tiny base checkpoint (2 pre-training steps) and its pairs (built once, cached)."""
    root = tmp_path_factory.mktemp("dpo")
    cfg = cfg_with(root, "train.iterations=2")
    res = train(cfg, ds, root / "base", count_flops=False)
    pairs = build_pairs(cfg, res.checkpoint, ds)
    return root, res.checkpoint, pairs


# --------------------------------------------------------------------------------------------------
# the loss
# --------------------------------------------------------------------------------------------------
def test_policy_equal_to_reference_gives_log2_and_pushes_winners_down():
    torch.manual_seed(0)
    ref_w, ref_l = torch.rand(5), torch.rand(5)
    pol_w, pol_l = ref_w.clone().requires_grad_(), ref_l.clone().requires_grad_()
    loss, stats = dpo_loss(pol_w, pol_l, ref_w, ref_l, beta=5000.0)
    assert float(loss.detach()) == pytest.approx(math.log(2), abs=1e-7)
    assert float(stats["dpo/reward_accuracy"]) == 0.0 and float(stats["dpo/margin"]) == 0.0
    loss.backward()
    # dL/dℓθ(w) = +β/(2B) (descent lowers the winner's error), dL/dℓθ(l) = −β/(2B) (raises the loser's)
    assert torch.allclose(pol_w.grad, torch.full((5,), 5000.0 / 10))
    assert torch.allclose(pol_l.grad, torch.full((5,), -5000.0 / 10))


def test_per_pair_reduction_matches_a_hand_computed_batch():
    # dyadic numbers: every difference below is exact in float32
    pol_w = torch.tensor([0.5, 0.25, 0.375])
    ref_w = torch.tensor([0.25, 0.5, 0.5])
    pol_l = torch.tensor([0.75, 0.125, 0.5])
    ref_l = torch.tensor([0.5, 0.5, 0.25])
    beta = 8.0
    # Δw = [0.25, -0.25, -0.125], Δl = [0.25, -0.375, 0.25] → m = Δl - Δw = [0, -0.125, 0.375], β·m = [0, -1, 3]
    expected = np.mean([math.log(2), math.log1p(math.exp(1.0)), math.log1p(math.exp(-3.0))])
    loss, stats = dpo_loss(pol_w, pol_l, ref_w, ref_l, beta)
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert float(stats["dpo/reward_accuracy"]) == pytest.approx(1 / 3)
    assert float(stats["dpo/margin"]) == pytest.approx(0.25 / 3, rel=1e-6)
    assert float(stats["dpo/delta_w"]) == pytest.approx(-0.125 / 3, rel=1e-6)
    assert float(stats["dpo/delta_l"]) == pytest.approx(0.125 / 3, rel=1e-6)
    # reducing the batch to one margin first (the official helper) is a different number
    batch_first = math.log1p(math.exp(-beta * 0.25 / 3))
    assert abs(float(loss) - batch_first) > 0.1
    with pytest.raises(ValueError, match="per-pair"):
        dpo_loss(pol_w, pol_l[:2], ref_w, ref_l, beta)


def test_beta_to_zero_gives_zero_gradient():
    pol_w = torch.tensor([0.5, 0.2]).requires_grad_()
    pol_l = torch.tensor([0.1, 0.9]).requires_grad_()
    ref = torch.tensor([0.3, 0.3])
    for beta, tol in ((0.0, 0.0), (1e-9, 1e-9)):
        pol_w.grad = pol_l.grad = None
        loss, _ = dpo_loss(pol_w, pol_l, ref, ref, beta)
        loss.backward()
        assert float(loss.detach()) == pytest.approx(math.log(2), abs=1e-6)
        assert pol_w.grad.abs().max() <= tol and pol_l.grad.abs().max() <= tol


# --------------------------------------------------------------------------------------------------
# shared noise, on the real model
# --------------------------------------------------------------------------------------------------
def test_noise_is_shared_between_winner_loser_policy_and_reference(base, ds):
    root, base_cp, pairs = base
    cfg = cfg_with(root)
    policy = dpo_mod._load_base_ema(cfg, base_cp, ckpt.read_state(base_cp)["vocab"], torch.device("cpu"))
    ref = copy.deepcopy(policy).eval()
    b = pairs.get_batch(np.arange(4))
    g = torch.Generator().manual_seed(3)
    ls = pair_losses(policy, ref, b, g)
    assert torch.equal(ls["pol_w"], ls["ref_w"]) and torch.equal(ls["pol_l"], ls["ref_l"])
    assert not torch.equal(ls["pol_w"], ls["pol_l"])
    same = {**b, "losers": b["winners"]}  # identical images → identical errors only if the draw is shared
    ls2 = pair_losses(policy, ref, same, torch.Generator().manual_seed(3))
    assert torch.allclose(ls2["pol_w"], ls2["pol_l"], atol=1e-6)

    # one SGD step on the DPO loss lowers the winners' error relative to the losers' (same draw)
    loss, _ = dpo_loss(ls["pol_w"], ls["pol_l"], ls["ref_w"], ls["ref_l"], beta=1.0)
    loss.backward()
    with torch.no_grad():
        for p in policy.parameters():
            if p.grad is not None:
                p -= 0.05 * p.grad / (p.grad.norm() + 1e-12)
    after = pair_losses(policy, ref, b, torch.Generator().manual_seed(3))
    gap_before = float((ls["pol_w"] - ls["pol_l"]).mean().detach())
    gap_after = float((after["pol_w"] - after["pol_l"]).mean())
    assert gap_after < gap_before


# --------------------------------------------------------------------------------------------------
# pairs
# --------------------------------------------------------------------------------------------------
def test_pairs_are_teacher_vs_base_sample_and_cached(base, ds):
    root, base_cp, pairs = base
    cfg = cfg_with(root)
    assert len(pairs) == 8 and pairs.winners.shape == pairs.losers.shape == (8, 32, 32, 3)
    m = pairs.manifest
    idx = np.array(m["dataset_indices"])
    teacher = ds.get_batch(idx)
    assert np.array_equal(pairs.winners, teacher["images"]) and pairs.captions == teacher["captions"]
    sampler = load_base_sampler(base_cp, cfg)
    # (images are seeded per sampling batch: same batches of eval.batch_size, same images)
    assert np.array_equal(pairs.losers, sampler(pairs.captions, m["loser_seeds"]))
    # the cache folder is reused (not rebuilt) and holds LightGen's JSONL layout
    folder = pairs.path.parent
    assert folder.parent == root / "dpo_pairs"
    stamp = os.stat(folder / "manifest.json").st_mtime_ns
    again = build_pairs(cfg, base_cp, ds, sampler=lambda *a: pytest.fail("pairs were rebuilt"))
    assert again.key == pairs.key and os.stat(folder / "manifest.json").st_mtime_ns == stamp
    first = json.loads((folder / "pairs.jsonl").read_text().splitlines()[0])
    assert set(first) == {"pos_image_path", "neg_image_path", "caption"}
    assert not any(p.name.startswith(".") for p in folder.parent.iterdir())  # no temp folders left
    with pytest.raises(UserError, match="holds other pairs"):
        build_pairs(cfg_with(root, "dpo.num_pairs=4"), base_cp, ds, out_dir=folder)


def _pair_dir(tmp_path, n=2, size=32):
    rng = np.random.default_rng(0)
    w = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    l_ = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    return write_pairs(tmp_path / "pairs", [f"caption {i}" for i in range(n)], w, l_, {"key": "x"}), w, l_


def test_jsonl_pairs_round_trip_and_resize(tmp_path):
    folder, w, l_ = _pair_dir(tmp_path)
    ps = load_pairs(folder / "pairs.jsonl")
    assert np.array_equal(ps.winners, w) and np.array_equal(ps.losers, l_) and ps.captions == ["caption 0", "caption 1"]
    small = load_pairs(folder, resolution=16)
    assert small.winners.shape == (2, 16, 16, 3)
    with pytest.raises(UserError, match="not empty"):
        write_pairs(folder, ["c"], w[:1], l_[:1], {})


@pytest.mark.parametrize("bad, match", [
    ({"pos_image_path": "../outside.png"}, "escapes the pairs folder"),
    ({"neg_image_path": "/etc/passwd"}, "escapes the pairs folder"),
    ({"pos_image_path": "images/../../x.png"}, "escapes the pairs folder"),
    ({"pos_image_path": "link.png"}, "escapes the pairs folder"),
    ({"caption": None}, "caption"),
    ({"pos_image_path": ""}, "non-empty relative path"),
])
def test_jsonl_paths_escaping_the_folder_are_refused(tmp_path, bad, match):
    folder, _, _ = _pair_dir(tmp_path, n=1)
    outside = tmp_path / "outside.png"
    outside.write_bytes((folder / "images" / "000000_pos.png").read_bytes())
    (folder / "link.png").symlink_to(outside)
    row = {"pos_image_path": "images/000000_pos.png", "neg_image_path": "images/000000_neg.png", "caption": "c", **bad}
    (folder / "pairs.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(UserError, match=match):
        load_pairs(folder / "pairs.jsonl")


def test_jsonl_errors_name_the_file_and_line(tmp_path):
    folder, _, _ = _pair_dir(tmp_path, n=1)
    (folder / "pairs.jsonl").write_text('{"pos_image_path": "images/000000_pos.png"}\n')
    with pytest.raises(UserError, match=r"pairs.jsonl:1: missing field\(s\) neg_image_path, caption"):
        load_pairs(folder)
    (folder / "pairs.jsonl").write_text("not json\n")
    with pytest.raises(UserError, match="pairs.jsonl:1: not valid JSON"):
        load_pairs(folder)
    with pytest.raises(UserError, match="not found"):
        load_pairs(tmp_path / "nowhere.jsonl")


# --------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------
def test_dpo_run_logs_resumes_and_samples(base, ds, tmp_path):
    root, base_cp, pairs = base
    rec = Recorder()
    full = dpo_train(cfg_with(root), base_cp, ds, tmp_path / "full", tracker=rec)
    assert full.step == 3 and full.checkpoint.name == "step-0000003"
    steps = [s for s, _ in rec.rows]
    assert steps == [1, 2, 3]
    first = rec.rows[0][1]
    for k in ("dpo/loss", "dpo/reward_accuracy", "dpo/margin", "dpo/delta_w", "dpo/delta_l", "dpo/lr"):
        assert k in first and math.isfinite(first[k])
    # step 1 is computed before any update: policy = reference
    assert first["dpo/loss"] == pytest.approx(math.log(2), abs=1e-6) and first["dpo/margin"] == 0.0
    assert first["dpo/lr"] == pytest.approx(1e-4)
    assert rec.rows[-1][1]["dpo/loss"] < math.log(2)  # the policy moved toward the winners
    assert rec.rows[-1][1]["dpo/reward_accuracy"] > 0

    # resume: 2 steps, then continue to 3 → the uninterrupted trajectory, bit-exact
    dpo_train(cfg_with(root, "dpo.iterations=2", "train.checkpoint_every=1"), base_cp, ds, tmp_path / "part")
    rest = dpo_train(cfg_with(root), base_cp, ds, tmp_path / "part")
    assert rest.loss_history == full.loss_history[2:]
    a = ckpt.load_checkpoint(full.checkpoint)[0].state_dict()
    b = ckpt.load_checkpoint(rest.checkpoint)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(UserError, match="dpo_mode changed"):
        dpo_train(cfg_with(root, "dpo.mode=sft", "dpo.iterations=4"), base_cp, ds, tmp_path / "part")

    imgs = full.sampler(["a photo of a red square on the left"] * 2, [0, 1])
    assert imgs.dtype == np.uint8 and imgs.shape == (2, 32, 32, 3)
    # the base checkpoint is untouched (same identity as when the pairs were built); its samples differ
    assert dpo_mod.base_identity(base_cp) == pairs.manifest["base_identity"]
    base_imgs = load_base_sampler(base_cp, cfg_with(root))(["a photo of a red square on the left"] * 2, [0, 1])
    assert not np.array_equal(imgs, base_imgs)


def test_sft_control_arm_trains_on_winners_only(base, ds, tmp_path):
    root, base_cp, pairs = base
    # losers never enter the SFT objective: scrambling them leaves the trajectory unchanged
    scrambled = PairSet(pairs.captions, pairs.winners, 255 - pairs.losers, pairs.key, None, {})
    rec_a, rec_b = Recorder(), Recorder()
    a = dpo_train(cfg_with(root, "dpo.mode=sft"), base_cp, pairs, tmp_path / "a", tracker=rec_a)
    b = dpo_train(cfg_with(root, "dpo.mode=sft"), base_cp, scrambled, tmp_path / "b", tracker=rec_b)
    assert a.loss_history == b.loss_history
    assert all("dpo/sft_loss" in m and "dpo/reward_accuracy" in m for _, m in rec_a.rows)
    sa = ckpt.load_checkpoint(a.checkpoint, weights="model")[0].state_dict()
    sb = ckpt.load_checkpoint(b.checkpoint, weights="model")[0].state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_nan_loss_stops_with_a_clear_error_and_no_checkpoint(base, ds, tmp_path, monkeypatch):
    root, base_cp, pairs = base
    real = dpo_mod.dpo_loss

    def poisoned(*args, **kwargs):
        loss, stats = real(*args, **kwargs)
        return loss * float("nan"), stats

    monkeypatch.setattr(dpo_mod, "dpo_loss", poisoned)
    with pytest.raises(NonFiniteLossError, match="non-finite dpo loss by step 1"):
        dpo_train(cfg_with(root), base_cp, pairs, tmp_path / "nan")
    assert ckpt.latest_checkpoint(tmp_path / "nan") is None


def test_bad_inputs_are_refused(base, ds, tmp_path):
    root, base_cp, pairs = base
    with pytest.raises(UserError, match="incompatible config"):
        dpo_train(cfg_with(root, "model.width=64"), base_cp, pairs, tmp_path / "x")
    with pytest.raises(UserError, match="base's folder"):
        dpo_train(cfg_with(root), base_cp, pairs, base_cp.parent)
    with pytest.raises(UserError, match="not found"):
        dpo_train(cfg_with(root), tmp_path / "nowhere", pairs, tmp_path / "x")


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------
def test_cli_dpo_config_routes_to_train_and_links_the_base(base, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from lightgen.cli import app
    from lightgen.commands.dpo import resolve_base

    root, base_cp, pairs = base
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri)
    exp = client.create_experiment("bases")
    base_run = client.create_run(exp, tags={"lightgen.checkpoint": str(base_cp)}).info.run_id
    assert resolve_base(base_run) == (base_cp, base_run)
    empty_run = client.create_run(exp).info.run_id
    with pytest.raises(UserError, match="found no checkpoint"):
        resolve_base(empty_run)

    sets = [x for s in MICRO for x in ("--set", s)] + ["--set", f"tracking.root={root}",
                                                       "--set", f"dpo.pairs={pairs.path}", "--set", "dpo.iterations=2"]
    r = CliRunner().invoke(app, ["dpo", "smoke", "--base", base_run, "--no-geneval", "--experiment", "t", *sets])
    assert r.exit_code == 0, r.output
    assert "dpo to step 2" in r.output
    run = client.search_runs([client.get_experiment_by_name("t").experiment_id])[0]
    assert run.data.tags["lightgen.base_run_id"] == base_run
    assert run.data.tags["lightgen.kind"] == "dpo"
    assert run.data.params["dpo.base"] == base_run
    assert ckpt.latest_checkpoint(run.data.tags["lightgen.checkpoint"]) is not None
    assert "dpo/reward_accuracy" in run.data.metrics

    bad = CliRunner().invoke(app, ["dpo", "smoke", "--base", "not-a-run", "--no-geneval"])
    assert bad.exit_code == 2 and "neither an existing checkpoint" in bad.output
    assert CliRunner().invoke(app, ["dpo", "pairs", "--help"]).exit_code == 0
