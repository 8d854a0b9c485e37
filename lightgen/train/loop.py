"""What the two trainers (``pretrain.train`` and ``dpo.dpo_train``) share around their step loops:
finding the checkpoint to resume from, the optimizer and its warm-up schedule, restoring weights,
optimizer, schedule and RNG from a checkpoint, the EMA sampler, and writing a checkpoint after the metrics.

The step loops themselves differ (DDP and gradient accumulation over a dataset vs. preference pairs with
a frozen reference) and stay in their modules; everything that must behave the same on resume lives here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file

from lightgen.config import ExperimentConfig
from lightgen.errors import UserError
from lightgen.model.sampling import sample_images
from lightgen.tracking import TAG_CORRUPT
from lightgen.train import checkpoint as ckpt

Sampler = Callable[[list[str], list[int]], np.ndarray]


def find_resume(ckpt_dir: Path, tracker: Any = None, *, tag: bool = True) -> Path | None:
    """The newest verified checkpoint in ``ckpt_dir`` (corrupt ones moved aside and named in the run tag
    ``lightgen.corrupt_checkpoints``), checked safe to load; None to start afresh."""
    resume_from, corrupt = ckpt.latest_verified_checkpoint(ckpt_dir) if ckpt_dir.exists() else (None, [])
    if corrupt and tag and tracker is not None and hasattr(tracker, "set_tags"):
        tracker.set_tags({TAG_CORRUPT: "; ".join(corrupt)[:5000]})
    if resume_from is not None:
        ckpt.check_safe(resume_from)
    return resume_from


def check_unchanged(resume_from: Path, old: ExperimentConfig, new: ExperimentConfig, keys: tuple[str, ...],
                    order: str) -> None:
    """Refuse to resume when a key that fixes the data (or pair) order changed since the checkpoint."""
    fa, fb = old.flat(), new.flat()
    for k in keys:
        if fa[k] != fb[k]:
            raise UserError(f"cannot resume {resume_from}: {k} changed ({fa[k]!r} → {fb[k]!r}); the {order} order would differ")


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: weight decay on matrices; none on norms, biases, embeddings, the head and tokens."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exempt = (p.ndim < 2 or name.startswith("head.") or "embed" in name or name.endswith("_pos")
                  or name in ("buffer", "mask_token", "null_text") or "shared" in name)
        (no_decay if exempt else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def optimizer_and_schedule(model: torch.nn.Module, cfg: ExperimentConfig, lr: float, warmup: int,
                           device: torch.device) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW over ``param_groups`` (no decay on norms/biases/embeddings) and a linear warm-up to ``lr``."""
    tc = cfg.train
    opt = torch.optim.AdamW(param_groups(model, tc.weight_decay), lr=lr, betas=tuple(tc.betas),
                            **({"fused": True} if device.type == "cuda" else {"foreach": True}))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    return opt, sched


def restore(resume_from: Path, state: dict[str, Any], model: torch.nn.Module, ema: Any, opt: torch.optim.Optimizer,
            sched: Any, lr: float, device: torch.device) -> int:
    """Load weights, EMA, optimizer state, the schedule's position and the RNG states; returns the step."""
    ckpt.load_state_into(model, load_file(str(resume_from / "model.safetensors"), device=str(device)), resume_from)
    ema.load(load_file(str(resume_from / "ema.safetensors"), device=str(device)))
    ckpt.load_optimizer(opt, load_file(str(resume_from / "optimizer.safetensors"), device=str(device)), state["optimizer"])
    start = int(state["step"])
    sched.last_epoch = start  # the schedule is a pure function of the step
    for group in opt.param_groups:
        group["lr"] = lr * sched.lr_lambdas[0](start)
    ckpt.set_rng_state(state["rng"])
    return start


def ema_sampler(model: torch.nn.Module, ema: Any, cfg: ExperimentConfig) -> Sampler:
    """``sampler(prompts, seeds) -> images`` with the EMA weights swapped in (training mode kept)."""

    def sampler(prompts: list[str], seeds: list[int]) -> np.ndarray:
        was_training = model.training
        with ema.swapped_in():
            imgs = sample_images(model, prompts, cfg.eval, seeds=seeds)
        model.train(was_training)
        return imgs

    return sampler


def save(ckpt_dir: Path, step: int, model: torch.nn.Module, ema: Any, opt: torch.optim.Optimizer,
         cfg: ExperimentConfig, vocab: list[str] | None, tracker: Any, extra: dict[str, Any]) -> Path:
    """Flush the run's metrics synchronously (they land with the checkpoint), then write the checkpoint."""
    if tracker is not None and hasattr(tracker, "flush"):
        tracker.flush(synchronous=True)
    return ckpt.save_checkpoint(ckpt_dir, step, model, ema.state_dict(), opt, cfg, vocab, extra=extra)
