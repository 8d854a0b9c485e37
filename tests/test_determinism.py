"""Same config and seed → identical metrics on CPU; another seed → different ones."""

from __future__ import annotations

import torch

from lightgen.config import load_config
from lightgen.data import get_dataset
from lightgen.geneval.evaluate import make_detector, run_geneval
from lightgen.train.pretrain import train
from lightgen.world.toy import ToyWorld


def test_same_config_and_seed_give_identical_metrics(tmp_path):
    torch.set_num_threads(1)
    sets = ["train.iterations=3", "data.scale=50k", "eval.n_prompts=1", "eval.detector_train_images=200",
            "eval.num_iter=2", "eval.diffusion_steps=2", "eval.bootstrap=50", f"tracking.root={tmp_path}"]
    cfg = load_config("smoke", sets)
    ds = get_dataset(cfg)
    world = ToyWorld(cfg.world)
    detector = make_detector(cfg, world)
    runs = []
    for name, c in (("a", cfg), ("b", cfg), ("c", load_config("smoke", [*sets, "seed=1"]))):
        res = train(c, ds, tmp_path / name, count_flops=False, progress=False)
        summary, results = run_geneval(c, world, res.sampler, None, detector=detector, save_images=False)
        images = res.sampler(["a photo of a red circle"], [0])
        runs.append((res.loss_history, summary, [r["correct"] for r in results], images))
    (loss_a, sum_a, cor_a, img_a), (loss_b, sum_b, cor_b, img_b), (loss_c, _, _, img_c) = runs
    assert loss_a == loss_b and sum_a == sum_b and cor_a == cor_b
    assert (img_a == img_b).all()
    assert loss_a != loss_c and not (img_a == img_c).all()
