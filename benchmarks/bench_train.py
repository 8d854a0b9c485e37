"""Training throughput of the MAR student: images/s, step time, peak memory, MFU.

CPU-sized by default (``tiny`` at 32 px on coloured squares). On a GPU, the paper's shapes:

    PYTHONPATH=. python benchmarks/bench_train.py --size L --device cuda --batch 96 --compile

``L`` uses synthetic inputs of the paper's shapes: cached VAE moments (16 channels, 32 × 32 latents →
256 tokens of 64 dims) and cached T5-XXL embeddings (128 × 4096), as the official trainer does. A step is
the trainer's step: bf16 autocast (GPU), forward + backward, grad clip, fused AdamW, foreach EMA.
MFU = model FLOPs per step (torch.utils.flop_counter, counted once) / step time / the measured peak
matmul rate of the same device (bf16 8192³ on GPU, fp32 2048³ on CPU).
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import torch

from lightgen.config import load_config
from lightgen.model.mar import build_model
from lightgen.model.tokenizers import LatentTokenizer
from lightgen.train.pretrain import EMA, count_step_flops, ema_decay_at, param_groups
from lightgen.train.squares import SquaresDataset


def peak_matmul_flops(device: torch.device) -> float:
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (2048, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps = 20 if device.type == "cuda" else 3
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_setup(size: str, batch: int, device: torch.device, seed: int = 0, sets: list[str] | None = None):
    """(cfg, model, batch dict) for the size: L on synthetic paper-shaped cached inputs, else squares."""
    sets = list(sets or [])
    if size == "L":
        cfg = load_config("paper", ["model.text_encoder=cached", *sets])
        model = build_model(cfg, tokenizer=LatentTokenizer(16, 32, 2))
        g = torch.Generator().manual_seed(seed)
        data = {
            "latent_moments": torch.cat([torch.randn(batch, 16, 32, 32, generator=g),
                                         torch.full((batch, 16, 32, 32), -4.0)], dim=1).to(device),
            "text_emb": torch.randn(batch, 128, 4096, generator=g).to(device),
            "text_mask": (torch.arange(128)[None] < torch.randint(8, 128, (batch, 1), generator=g)).to(device),
        }
    else:
        res = 32 if size == "tiny" else 64
        cfg = load_config("smoke", [f"model.size={size}", f"data.resolution={res}", *sets])
        ds = SquaresDataset(max(batch, 64), resolution=res)
        model = build_model(cfg, vocab=ds.vocabulary())
        data = ds.get_batch(np.arange(batch))
    return cfg, model.to(device), data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="tiny", choices=["tiny", "small", "L"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", nargs="*", default=[], help="config overrides, e.g. model.encoder_depth=2")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    cfg, model, batch = make_setup(args.size, args.batch, device, sets=args.set)
    amp = device.type == "cuda" if args.precision == "auto" else args.precision == "bf16"
    model.train()
    nb = min(args.batch, 8)
    small = {k: v[:nb] for k, v in batch.items()}
    flops_per_sample = count_step_flops(model, small, 0) / nb
    opt = torch.optim.AdamW(param_groups(model, 0.02), lr=1e-4, betas=(0.9, 0.95),
                            **({"fused": True} if device.type == "cuda" else {"foreach": True}))
    ema = EMA(model)
    if args.compile:
        for blk in [*model.encoder_blocks, *model.decoder_blocks, *model.aligner.blocks]:
            blk.compile()
        model.head.compile()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for step in range(args.warmup + args.steps):
        g = torch.Generator(device=device).manual_seed(step)
        rg = torch.Generator().manual_seed(step)
        sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = model.forward_loss(batch, g, rg)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update(ema_decay_at(step, 0.9999, True))
        sync(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    peak = peak_matmul_flops(device)
    mem = (torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda"
           else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    out = {
        "size": args.size, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": args.threads, "batch": args.batch, "compile": args.compile, "bf16": amp,
        "params_M": round(model.num_params() / 1e6, 1), "step_s": round(step_s, 4),
        "images_per_s": round(args.batch / step_s, 2), "peak_mem_GiB": round(mem, 2),
        "flops_per_sample_T": round(flops_per_sample / 1e12, 4), "peak_matmul_TFLOPs": round(peak / 1e12, 2),
        "mfu": round(flops_per_sample * args.batch / step_s / peak, 3), "loss": float(loss),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    from lightgen.cliutil import run_guarded  # the studio's error boundary: bad input → one line, exit 2

    raise SystemExit(run_guarded(main))
