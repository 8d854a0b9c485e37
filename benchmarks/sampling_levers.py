"""Sampling levers on one trained checkpoint: toy GenEval for each eval.* override set (no retraining).

    PYTHONPATH=. python benchmarks/sampling_levers.py CKPT [--variant 'eval.cfg=5' ...] [--out FILE]

Each variant is a comma-separated list of dotted ``eval.*`` overrides; one JSON line per variant is
appended to ``--out`` (default benchmarks/sampling_levers.jsonl) with the Overall, its CI and the tasks.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def main() -> None:
    from lightgen.config import load_config
    from lightgen.geneval.prompts import TASKS
    from lightgen.geneval.evaluate import make_detector, run_geneval
    from lightgen.model.sampling import sample_images
    from lightgen.train.checkpoint import load_checkpoint
    from lightgen.world.toy import ToyWorld

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--variant", action="append", default=[])
    ap.add_argument("--root", default=None, help="tracking.root holding the cached tokenizers/ and geneval/")
    ap.add_argument("--out", default=str(HERE / "sampling_levers.jsonl"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    variants = [[s for s in v.split(",") if s] for v in args.variant or [""]]
    for sets in variants:  # refuse a bad variant before any sampling
        if any(not s.startswith("eval.") for s in sets):
            raise SystemExit(f"only eval.* overrides change sampling, got {','.join(sets)!r}")
    model, base = load_checkpoint(args.checkpoint)
    world = ToyWorld(base.world)
    for sets in variants:
        cfg = load_config(base.model_dump(mode="json"), sets + ([f"tracking.root={args.root}"] if args.root else []))

        def sampler(prompts, seeds, model=model, cfg=cfg):
            return sample_images(model, prompts, cfg.eval, seeds=seeds)

        t = time.perf_counter()
        summary, _ = run_geneval(cfg, world, sampler, None, detector=make_detector(cfg, world), save_images=False)
        row = {"checkpoint": args.checkpoint, "variant": sets, "overall": summary["geneval/overall"],
               "ci": [summary["geneval/overall_ci_low"], summary["geneval/overall_ci_high"]],
               "tasks": {t: summary[f"geneval/{t}"] for t in TASKS if f"geneval/{t}" in summary},
               "seconds": round(time.perf_counter() - t, 1)}
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row))


if __name__ == "__main__":
    from lightgen.cliutil import run_guarded  # the studio's error boundary: bad input → one line, exit 2

    raise SystemExit(run_guarded(main))
