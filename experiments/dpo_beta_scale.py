"""CPU experiment behind the β note in ``lightgen/train/dpo.py`` (not a unit test; minutes on 2 cores).

    PYTHONPATH=. python experiments/dpo_beta_scale.py BASE_CHECKPOINT OUT.json [--set k=v ...]

1. Scale of ℓ at the base: per-pair ε-errors of winners and losers, their gap and how much one pair's ℓ
   moves between noise draws.
2. Margins reached: short DPO runs (β = 5000) at the paper's lr (1e-8) and at the smoke lr (1e-5) log
   mean |m| = |Δ_l − Δ_w| per step; β·|m| ≈ 1 is where β starts to matter.
3. GenEval (toy prompts) of the base, of DPO at two β values and of the SFT control arm.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lightgen.config import load_config
from lightgen.data import get_dataset
from lightgen.geneval.evaluate import run_geneval
from lightgen.train import checkpoint as ckpt
from lightgen.train.dpo import _load_base_ema, build_pairs, dpo_train, load_base_sampler, pair_losses
from lightgen.world.toy import ToyWorld


class Recorder:
    def __init__(self):
        self.rows = []

    def log_metrics(self, metrics, step=0):
        self.rows.append({"step": step, **metrics})


def main(base: str, out: str, sets: list[str]) -> None:
    torch.set_num_threads(1)
    cfg = load_config("smoke", sets)
    base_cp = ckpt.resolve_checkpoint(base)
    ds = get_dataset(cfg)
    world = ToyWorld(cfg.world)
    report: dict = {"base": str(base_cp), "sets": sets}
    t0 = time.perf_counter()
    pairs = build_pairs(cfg, base_cp, ds)
    report["pairs_build_s"] = time.perf_counter() - t0

    # 1. scale of ℓ at the base (policy = reference = base EMA)
    model = _load_base_ema(cfg, base_cp, ckpt.read_state(base_cp)["vocab"], torch.device("cpu")).eval()
    draws = []
    with torch.no_grad():
        for d in range(4):
            ls = pair_losses(model, model, pairs.get_batch(np.arange(len(pairs))), torch.Generator().manual_seed(d))
            draws.append((ls["ref_w"].numpy(), ls["ref_l"].numpy()))
    w = np.stack([a for a, _ in draws])
    l_ = np.stack([b for _, b in draws])
    gap = w - l_
    report["scale"] = {
        "l_w_mean": float(w.mean()), "l_l_mean": float(l_.mean()),
        "gap_mean": float(gap.mean()), "gap_std_across_pairs": float(gap.mean(0).std()),
        "l_std_across_draws_same_pair": float(w.std(0).mean()),
    }
    print(json.dumps(report["scale"], indent=1), flush=True)

    # 2./3. runs; GenEval of the base first
    def geneval(sampler, name):
        t = time.perf_counter()
        summary, _ = run_geneval(cfg, world, sampler, None, save_images=False)
        report.setdefault("geneval", {})[name] = summary
        print(name, {k: round(v, 3) for k, v in summary.items() if k.startswith("geneval/")},
              f"{time.perf_counter() - t:.0f}s", flush=True)

    geneval(load_base_sampler(base_cp, cfg), "base")
    root = Path(out).with_suffix("")
    arms = [("dpo_lr1e-8_b5000", ["dpo.lr=1e-8", "dpo.beta=5000"], False),
            ("dpo_b5000", ["dpo.beta=5000"], True),
            ("dpo_b50", ["dpo.beta=50"], True),
            ("sft", ["dpo.mode=sft"], True)]
    for name, extra, evaluate in arms:
        c = load_config(cfg.model_dump(mode="json"), extra)
        rec = Recorder()
        t = time.perf_counter()
        res = dpo_train(c, base_cp, pairs, root / name, tracker=rec, progress=False)
        report.setdefault("runs", {})[name] = {"seconds": time.perf_counter() - t, "log": rec.rows}
        last = rec.rows[-1]
        print(name, f"{time.perf_counter() - t:.0f}s", {k: f"{v:.3g}" for k, v in last.items()
                                                         if k.startswith("dpo/")}, flush=True)
        if evaluate:
            geneval(res.sampler, name)
        Path(out).write_text(json.dumps(report, indent=1, default=float))
    Path(out).write_text(json.dumps(report, indent=1, default=float))


if __name__ == "__main__":
    args = sys.argv[1:]
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    main(args[0], args[1], sets)
