"""Pre-training: checkpoints, exact resume, EMA warm-up, NaN handling, compute metrics, eval hook, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lightgen.cliutil import UserError
from lightgen.config import load_config
from lightgen.train import checkpoint as ckpt
from lightgen.train.pretrain import EMA, NonFiniteLossError, ema_decay_at, param_groups, train
from lightgen.train.squares import SquaresDataset

torch.set_num_threads(1)

from tests.tiny_models import MICRO  # noqa: E402  (a seconds-per-run model config)


def cfg_with(*extra: str):
    return load_config("smoke", [*MICRO, *extra])


class Recorder:
    def __init__(self):
        self.rows: list[tuple[int, dict]] = []

        self.images: list[str] = []

    def log_metrics(self, metrics, step=0):
        self.rows.append((step, dict(metrics)))

    def log_image(self, image, artifact_file):
        assert image.size[0] > 0
        self.images.append(artifact_file)


@pytest.fixture(scope="module")
def ds():
    return SquaresDataset(10, resolution=32)


def test_resume_gives_the_same_loss_trajectory(ds, tmp_path):
    full = train(cfg_with("train.iterations=5", "train.checkpoint_every=2", "train.grad_accum=2"), ds,
                 tmp_path / "a", count_flops=False)
    part = train(cfg_with("train.iterations=2", "train.checkpoint_every=2", "train.grad_accum=2"), ds,
                 tmp_path / "b", count_flops=False)
    assert [s for s, _ in part.loss_history] == [1, 2]
    rest = train(cfg_with("train.iterations=5", "train.checkpoint_every=2", "train.grad_accum=2"), ds,
                 tmp_path / "b", count_flops=False)
    assert [s for s, _ in rest.loss_history] == [3, 4, 5]
    assert full.loss_history == part.loss_history + rest.loss_history  # bit-exact on CPU
    assert full.step == rest.step == 5
    # epochs wrap over the 10 items (5 steps × 8 samples): the data order is a function of (seed, step)
    assert full.metrics["compute/epochs"] == pytest.approx(4.0)
    # only the newest two checkpoints are kept, the last one at the end
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "a")] == ["step-0000004", "step-0000005"]
    a = ckpt.load_checkpoint(tmp_path / "a")[0].state_dict()
    b = ckpt.load_checkpoint(tmp_path / "b")[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_round_trip_reproduces_outputs(ds, tmp_path):
    res = train(cfg_with("train.iterations=2"), ds, tmp_path, count_flops=False)
    cp = res.checkpoint
    assert sorted(p.name for p in cp.iterdir()) == sorted([*ckpt.FILES, ckpt.CHECKSUMS])
    state = json.loads((cp / "state.json").read_text())
    assert state["step"] == 2 and isinstance(state["rng"]["torch"], list) and "square" in state["vocab"]
    raw, cfg = ckpt.load_checkpoint(cp, weights="model")
    ema, _ = ckpt.load_checkpoint(cp)
    assert cfg.model.width == 32
    batch = ds.get_batch(np.arange(4))
    nz = raw.sample_training_noise(4, torch.Generator().manual_seed(0))
    # a second load gives bit-identical outputs; EMA and raw weights differ after two steps
    raw2, _ = ckpt.load_checkpoint(cp, weights="model")
    assert torch.equal(raw.diffusion_loss(batch, **nz), raw2.diffusion_loss(batch, **nz))
    assert not torch.equal(raw.diffusion_loss(batch, **nz), ema.diffusion_loss(batch, **nz))
    # and the sampler of the result (EMA weights) matches sampling from the loaded EMA model
    from lightgen.model.sampling import sample_images

    imgs = res.sampler(["a photo of a red square on the left"], [7])
    again = sample_images(ema, ["a photo of a red square on the left"], cfg.eval, seeds=[7])
    assert np.array_equal(imgs, again)


def test_load_checkpoint_refuses_bad_input(ds, tmp_path):
    res = train(cfg_with("train.iterations=1"), ds, tmp_path / "run", count_flops=False)
    with pytest.raises(UserError, match="incompatible config"):
        ckpt.load_checkpoint(res.checkpoint, expect=cfg_with("model.width=64"))
    with pytest.raises(UserError, match="(?s)incompatible config.*model.width"):
        train(cfg_with("train.iterations=2", "model.width=64"), ds, tmp_path / "run", count_flops=False)
    with pytest.raises(UserError, match="batch_size"):
        train(cfg_with("train.iterations=2", "train.batch_size=2"), ds, tmp_path / "run", count_flops=False)
    (res.checkpoint / "model.pt").write_bytes(b"not really")
    with pytest.raises(UserError, match="pickle"):
        ckpt.load_checkpoint(res.checkpoint)
    with pytest.raises(UserError, match="not found"):
        ckpt.load_checkpoint(tmp_path / "nowhere")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "state.json").write_text("{}")
    with pytest.raises(UserError, match="missing"):
        ckpt.load_checkpoint(tmp_path / "half")


def test_ema_warmup_moves_early_ema_away_from_init(ds):
    assert ema_decay_at(0, 0.9999, True) == pytest.approx(0.1)
    assert ema_decay_at(90, 0.9999, True) == pytest.approx(0.91)
    assert ema_decay_at(10**7, 0.9999, True) == 0.9999
    assert ema_decay_at(0, 0.9999, False) == 0.9999
    from lightgen.model.mar import build_model

    cfg = cfg_with()
    distances = {}
    for warm in (True, False):
        model = build_model(cfg, vocab=ds.vocabulary())
        init = [p.detach().clone() for p in model.parameters() if p.requires_grad]
        ema = EMA(model)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        for s in range(5):
            loss = model.forward_loss(ds.get_batch(np.arange(4)), torch.Generator().manual_seed(s))
            loss.backward()
            opt.step()
            opt.zero_grad()
            ema.update(ema_decay_at(s, 0.9999, warm))
        moved = sum(float((p.detach() - i).norm()) for p, i in zip(model.parameters(), init))
        ema_moved = sum(float((e - i).norm()) for e, i in zip(ema.shadow, init))
        distances[warm] = ema_moved / moved
    assert distances[True] > 0.5  # early EMA follows the weights
    assert distances[False] < 0.01  # a fixed 0.9999 is still ~the initial weights


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(ds, tmp_path, monkeypatch):
    from lightgen.model.mar import LightGenMAR

    calls = {"n": 0}
    orig = LightGenMAR.forward_loss

    def flaky(self, batch, generator=None, ratio_generator=None):
        calls["n"] += 1
        loss = orig(self, batch, generator, ratio_generator)
        return loss * float("nan") if calls["n"] >= 4 else loss

    monkeypatch.setattr(LightGenMAR, "forward_loss", flaky)
    with pytest.raises(NonFiniteLossError, match="non-finite loss.*step-0000002"):
        train(cfg_with("train.iterations=6", "train.checkpoint_every=2", "train.log_every=3"), ds, tmp_path,
              count_flops=False)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-0000002"]


def test_metrics_compute_and_eval_hook(ds, tmp_path):
    rec = Recorder()
    seen = []

    def hook(step, sampler):
        imgs = sampler(["a photo of a green square on the top"] * 2, [0, 1])
        seen.append((step, imgs.shape))

    cfg = cfg_with("train.iterations=4", "train.log_every=2", "eval.checkpoints=[0.5, 1.0]", "train.sample_every=3")
    res = train(cfg, ds, tmp_path, tracker=rec, eval_hook=hook)
    assert seen == [(2, (2, 32, 32, 3)), (4, (2, 32, 32, 3))]
    assert rec.images == ["samples/step-0000003.png"]
    steps = [s for s, m in rec.rows if "train/loss" in m]
    assert steps == [2, 4]
    last = [m for s, m in rec.rows if "train/loss" in m][-1]
    for k in ("train/lr", "train/grad_norm", "train/images_per_s", "compute/samples_seen", "compute/epochs",
              "compute/train_flops", "compute/device_hours"):
        assert k in last and np.isfinite(last[k]), k
    assert last["compute/samples_seen"] == 16 and last["compute/epochs"] == pytest.approx(1.6)
    assert last["train/lr"] == pytest.approx(1e-3)  # warmup (2 steps) over, constant after
    flops = last["compute/train_flops"] / 16
    assert 1e6 < flops < 1e10  # per-sample forward+backward FLOPs of the micro model
    assert res.metrics["compute/train_flops"] == pytest.approx(last["compute/train_flops"])


def test_weight_decay_groups(ds):
    from lightgen.model.mar import build_model

    model = build_model(cfg_with(), vocab=ds.vocabulary())
    decay, no_decay = param_groups(model, 0.02)
    ids = {id(p) for p in decay["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in ids}
    assert decay["weight_decay"] == 0.02 and no_decay["weight_decay"] == 0.0
    assert "encoder_blocks.0.attn.qkv.weight" in names
    assert not any(n.startswith("head.") or n.endswith(("bias", "_pos")) or "norm" in n for n in names)
    assert "text_encoder.t5.shared.weight" not in names and "null_text" not in names


def test_sample_cli(ds, tmp_path):
    from PIL import Image

    from lightgen.cli import app

    res = train(cfg_with("train.iterations=1"), ds, tmp_path / "run", count_flops=False)
    runner = CliRunner()
    out = tmp_path / "grid.png"
    r = runner.invoke(app, ["sample", "--checkpoint", str(tmp_path / "run"), "--prompt", "a photo of a red square",
                            "--n", "2", "--out", str(out), "--set", "eval.num_iter=2"])
    assert r.exit_code == 0, r.output
    assert Image.open(out).size[0] > 0
    img = ds.get_batch(np.arange(1))["images"][0]
    Image.fromarray(img).save(tmp_path / "src.png")
    m = np.zeros((32, 32, 3), np.uint8)
    m[16:] = 255
    Image.fromarray(m).save(tmp_path / "mask.png")
    r = runner.invoke(app, ["sample", "--checkpoint", str(res.checkpoint), "--prompt", "a photo of a red square",
                            "--n", "1", "--out", str(tmp_path / "inp.png"), "--inpaint", str(tmp_path / "src.png"),
                            "--mask", str(tmp_path / "mask.png"), "--set", "eval.num_iter=2"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["sample", "--checkpoint", str(tmp_path / "nope"), "--prompt", "x"])
    assert r.exit_code == 2 and "nope" in r.output and "neither an existing checkpoint folder" in r.output
    r = runner.invoke(app, ["sample", "--checkpoint", str(res.checkpoint), "--prompt", "x", "--size", "512"])
    assert r.exit_code == 2 and "512" in r.output


def test_init_from_interpolates_position_embeddings(ds, tmp_path):
    """The 256 → 512 px stage in miniature: 32 px (4×4 tokens) → 64 px (8×8 tokens)."""
    from safetensors.torch import load_file

    from lightgen.model.mar import build_model

    src = train(cfg_with("train.iterations=1"), ds, tmp_path / "src", count_flops=False).checkpoint
    cfg64 = cfg_with("data.resolution=64", f"train.init_from={src}", "train.iterations=1")
    model = build_model(cfg64, vocab=ds.vocabulary())
    ckpt.init_weights_from(model, src, cfg64)
    ema = load_file(str(src / "ema.safetensors"))
    assert model.encoder_pos.shape == (1, 2 + 64, 32) and model.diffusion_pos.shape == (1, 64, 32)
    assert torch.equal(model.encoder_pos[:, :2], ema["encoder_pos"][:, :2])  # buffer positions kept
    assert torch.equal(model.head.out.weight, ema["head.out.weight"])
    # a smooth upsampling: the mean of the grid embeddings is about preserved
    assert torch.allclose(model.diffusion_pos.mean(1), ema["diffusion_pos"].mean(1), atol=0.02)
    res = train(cfg64, SquaresDataset(8, resolution=64), tmp_path / "ft", count_flops=False)
    assert res.step == 1 and np.isfinite(res.loss_history[-1][1])
    with pytest.raises(UserError, match="incompatible architecture"):
        ckpt.init_weights_from(build_model(cfg_with("model.width=64"), vocab=ds.vocabulary()), src,
                               cfg_with("model.width=64"))


def test_init_from_accepts_an_mlflow_run_id(ds, tmp_path):
    """finetune-512 can start from the 256 px run by its MLflow run id (the run's checkpoint tag)."""
    from mlflow.tracking import MlflowClient
    from safetensors.torch import load_file

    from lightgen.model.mar import build_model

    src = train(cfg_with("train.iterations=1", "seed=1"), ds, tmp_path / "src", count_flops=False).checkpoint
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("base")
    run_id = client.create_run(exp, tags={"lightgen.checkpoint": str(tmp_path / "src")}).info.run_id
    assert ckpt.resolve_source(run_id, uri, what="train.init_from") == (src, run_id)
    cfg64 = cfg_with("data.resolution=64", f"train.init_from={run_id}", "train.iterations=1",
                     f"tracking.tracking_uri={uri}", "train.lr=1e-12")
    res = train(cfg64, SquaresDataset(8, resolution=64), tmp_path / "ft", count_flops=False)
    got = load_file(str(res.checkpoint / "model.safetensors"))
    want = load_file(str(src / "ema.safetensors"))["z_proj.weight"]  # the source was seeded differently
    assert torch.allclose(got["z_proj.weight"], want, atol=1e-6)
    assert not torch.allclose(build_model(cfg64, vocab=ds.vocabulary()).z_proj.weight, want, atol=1e-3)
    empty = client.create_run(exp).info.run_id
    with pytest.raises(UserError, match="train.init_from .*found no checkpoint"):
        train(cfg_with(f"train.init_from={empty}", f"tracking.tracking_uri={uri}"), ds, tmp_path / "x", count_flops=False)
    with pytest.raises(UserError, match="train.init_from 'nope'"):
        train(cfg_with("train.init_from=nope"), ds, tmp_path / "y", count_flops=False)


def test_train_cli_tracks_the_run_and_marks_nan_failed(ds, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from lightgen.cli import app
    from lightgen.model.mar import LightGenMAR

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sets = [x for o in [*MICRO, "train.iterations=2", f"tracking.tracking_uri={uri}", f"tracking.root={tmp_path}",
                        "tracking.experiment=t", "data.scale=50k", "eval.enabled=false"] for x in ("--set", o)]
    r = CliRunner().invoke(app, ["train", "smoke", *sets])
    assert r.exit_code == 0, r.output
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("t")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert {"train/loss", "compute/train_flops", "compute/samples_seen"} <= set(run.data.metrics)
    assert run.data.params["model.width"] == "32"
    assert "samples" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert list((tmp_path / "checkpoints").glob("*/seed0/step-0000002"))

    monkeypatch.setattr(LightGenMAR, "forward_loss", lambda self, *a, **k: torch.tensor(float("nan"), requires_grad=True))
    r = CliRunner().invoke(app, ["train", "smoke", *sets, "--set", "model.width=64"])
    assert r.exit_code == 1 and "non-finite" in r.output
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])
    assert runs[0].info.status == "FAILED"


def test_vae_world_trains_and_checkpoints_without_copying_the_vae(tmp_path):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), latent_channels=4,
                  norm_num_groups=4, layers_per_block=1).save_pretrained(tmp_path / "vae")
    cfg = cfg_with("model.tokenizer=vae", f"model.vae={tmp_path / 'vae'}", "model.patch_size=2",
                   "model.head_width=32", "train.iterations=1", "eval.diffusion_steps=2")
    res = train(cfg, SquaresDataset(8, resolution=32), tmp_path / "run", count_flops=False)
    from safetensors.torch import load_file

    assert not any(k.startswith("tokenizer.") for k in load_file(str(res.checkpoint / "model.safetensors")))
    model, _ = ckpt.load_checkpoint(res.checkpoint)
    assert (model.seq_len, model.token_dim) == (64, 16)
    imgs = res.sampler(["a photo of a red square"], [0])
    assert imgs.shape == (1, 32, 32, 3)


@pytest.mark.fault
def test_train_cli_resumes_its_killed_mlflow_run(ds, tmp_path):
    """A SIGKILLed `lightgen train` leaves its run RUNNING with a dead process; the same command again
    resumes that run (one run, the whole loss history) instead of leaving it RUNNING forever."""
    import subprocess

    from mlflow.tracking import MlflowClient

    from lightgen.cli import app

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sets = [x for o in [*MICRO, f"tracking.tracking_uri={uri}", f"tracking.root={tmp_path}", "tracking.experiment=t",
                        "data.scale=50k", "eval.enabled=false", "train.checkpoint_every=2"] for x in ("--set", o)]
    out = ["--checkpoint-dir", str(tmp_path / "ck")]
    r = CliRunner().invoke(app, ["train", "smoke", *sets, "--set", "train.iterations=2", *out])
    assert r.exit_code == 0, r.output
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("t").experiment_id
    (run,) = client.search_runs([exp])
    # what a SIGKILL leaves: the run RUNNING, its process gone
    dead = subprocess.Popen(["true"])
    dead.wait()
    client.update_run(run.info.run_id, status="RUNNING")
    client.set_tag(run.info.run_id, "lightgen.pid", str(dead.pid))
    r = CliRunner().invoke(app, ["train", "smoke", *sets, "--set", "train.iterations=4", *out])
    assert r.exit_code == 0, r.output
    assert f"resuming MLflow run {run.info.run_id}" in r.output
    (again,) = client.search_runs([exp])
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))
    assert steps == [1, 2, 3, 4]


def test_metrics_are_flushed_with_each_checkpoint(ds, tmp_path, monkeypatch):
    class Buffered(Recorder):
        def __init__(self):
            super().__init__()
            self.pending, self.flushed = [], []

        def log_metrics(self, metrics, step=0):
            self.pending.append(step)

        def flush(self, synchronous=False):
            self.flushed += self.pending
            self.pending = []

    rec = Buffered()
    at_save = []
    orig = ckpt.save_checkpoint

    def spy(root, step, *a, **k):
        at_save.append((step, max(rec.flushed, default=0)))
        return orig(root, step, *a, **k)

    monkeypatch.setattr(ckpt, "save_checkpoint", spy)
    train(cfg_with("train.iterations=4", "train.checkpoint_every=2"), ds, tmp_path, tracker=rec, count_flops=False)
    assert at_save == [(2, 2), (4, 4)]  # every metric up to a checkpoint is in the store when it is written
