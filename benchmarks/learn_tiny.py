"""CPU learning check: train the `tiny` student on coloured squares for about a minute, then sample.

Not a unit test. Prints the loss curve, the time taken, and how often a sample for "a photo of a
<colour> square …" shows an object of the right colour (the mean colour of the non-background pixels,
nearest palette colour). Writes a sample grid PNG.

    PYTHONPATH=. python benchmarks/learn_tiny.py --seconds 60 --out learn_tiny.png
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch

from lightgen.config import load_config
from lightgen.train.pretrain import train
from lightgen.train.squares import COLORS, SquaresDataset
from lightgen.utils import image_grid_png, write_atomic


def colour_accuracy(images: np.ndarray, colours: list[str], palette: list[str]) -> tuple[float, float]:
    """(share of images with an object, share whose object colour is the prompted one)."""
    present = correct = 0
    for img, want in zip(images.astype(np.int32), colours):
        fg = np.abs(img - 128).max(-1) > 40
        if fg.sum() < 0.03 * fg.size:
            continue
        present += 1
        mean = img[fg].mean(0)
        best = min(palette, key=lambda c: float(((np.array(COLORS[c]) - mean) ** 2).sum()))
        correct += best == want
    return present / len(images), correct / len(images)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=60.0, help="training budget (steps are estimated)")
    ap.add_argument("--steps", type=int, default=0, help="fixed number of steps (overrides --seconds)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--out", default="learn_tiny.png")
    ap.add_argument("--set", nargs="*", default=[], help="extra config overrides")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = ["data.resolution=32", "model.size=tiny", "model.patch_size=4", f"train.batch_size={args.batch}",
            "train.lr=1e-3", "train.warmup_steps=20", "train.ema_decay=0.999", "train.precision=fp32",
            "model.diffusion_batch_mul=2", "eval.num_iter=8", "eval.diffusion_steps=25", "eval.cfg=3.0",
            f"train.num_threads={args.threads}", *args.set]
    ds = SquaresDataset(2000, resolution=32, colors=4)
    # estimate steps from a 3-step probe so the whole run takes about --seconds
    per_step = 1.0
    if not args.steps:  # probe 8 steps; the trainer's own images/s (steps 2-8) exclude building the model
        rates: list[float] = []

        class Rates:
            def log_metrics(self, metrics: dict, step: int = 0) -> None:
                if step > 1 and "train/images_per_s" in metrics:
                    rates.append(metrics["train/images_per_s"])

        probe_cfg = load_config("smoke", [*base, "train.iterations=8", "train.log_every=1"])
        with tempfile.TemporaryDirectory() as d:
            train(probe_cfg, ds, d, tracker=Rates(), count_flops=False)
        per_step = args.batch / float(np.median(rates))
    steps = args.steps or max(10, int(args.seconds / per_step))
    cfg = load_config("smoke", [*base, f"train.iterations={steps}", f"train.log_every={max(1, steps // 20)}"])
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        res = train(cfg, ds, d)
        train_s = time.perf_counter() - t0
        colours = ds.colors
        prompts = [f"a photo of a {c} square on the {p}" for c in colours for p in ("left", "right", "top", "center")]
        t1 = time.perf_counter()
        imgs = res.sampler(prompts, list(range(len(prompts))))
        sample_s = time.perf_counter() - t1
    present, correct = colour_accuracy(imgs, [p.split()[4] for p in prompts], colours)
    write_atomic(args.out, image_grid_png(imgs, prompts, ncol=4))
    report = {
        "steps": steps, "batch": args.batch, "train_seconds": round(train_s, 1),
        "loss_curve": [(s, round(v, 4)) for s, v in res.loss_history],
        "object_present": present, "colour_correct": correct, "sample_seconds": round(sample_s, 1),
        "images": len(imgs), "grid": args.out, "train_flops": res.metrics["compute/train_flops"],
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    from lightgen.cliutil import run_guarded  # the studio's error boundary: bad input → one line, exit 2

    raise SystemExit(run_guarded(main))
