"""Sampling throughput (images/s) of the MAR student: iterative unmasking + few-step diffusion head.

CPU-sized by default (``tiny`` at 32 px). The GenEval setting of issue 10 on a GPU:

    PYTHONPATH=. python benchmarks/bench_sample.py --size L --device cuda --batch 32 \
        --num-iter 64 --diffusion-steps 100 --cfg 4

``L`` uses random weights and cached-text inputs of the paper's shapes (128 × 4096); images are the
decoded tokens' shape only (no VAE: the timing covers the student, as the anchors do).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from lightgen.model.sampling import sample_tokens
from benchmarks.bench_train import make_setup, sync


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="tiny", choices=["tiny", "small", "L"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--num-iter", type=int, default=8)
    ap.add_argument("--diffusion-steps", type=int, default=10)
    ap.add_argument("--cfg", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", nargs="*", default=[], help="config overrides, e.g. model.encoder_depth=2")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    _, model, batch = make_setup(args.size, args.batch, device, sets=args.set)
    model.eval()
    amp = device.type == "cuda"
    text = {k: batch[k] for k in ("text_emb", "text_mask")} if "text_emb" in batch else None
    caps = batch.get("captions", [""] * args.batch)
    times = []
    for r in range(args.repeats + 1):
        g = torch.Generator(device=device).manual_seed(r)
        sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            sample_tokens(model, caps, num_iter=args.num_iter, cfg=args.cfg, diffusion_steps=args.diffusion_steps,
                          generator=g, text_batch=text)
        sync(device)
        if r:  # the first pass warms up
            times.append(time.perf_counter() - t0)
    best = min(times)
    print(json.dumps({
        "size": args.size, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "batch": args.batch, "num_iter": args.num_iter, "diffusion_steps": args.diffusion_steps, "cfg": args.cfg,
        "seconds_per_batch": round(best, 3), "images_per_s": round(args.batch / best, 3),
        "peak_mem_GiB": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
    }))


if __name__ == "__main__":
    from lightgen.cliutil import run_guarded  # the studio's error boundary: bad input → one line, exit 2

    raise SystemExit(run_guarded(main))
