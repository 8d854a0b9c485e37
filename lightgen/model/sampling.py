"""Sampling: iterative unmasking (MAR) with a few-step diffusion sampler for each token.

Per unmasking step k of ``eval.num_iter`` the number of still-unknown tokens follows MAR's cosine
schedule ``⌊n·cos(π/2·(k+1)/K)⌋``; the tokens leaving the mask (next in a random order per image) are
drawn by the diffusion head with diffusers' ``DDIMScheduler`` over ``eval.diffusion_steps`` steps.
``model.diffusion_sampler = ddpm`` runs it stochastically (η = 1, the added noise scaled by
``eval.temperature`` as in MAR); ``ddim`` runs it deterministically (η = 0, temperature scales the
starting noise). Classifier-free guidance doubles the batch with the learned null text; its scale is
constant or grows linearly with the share of decoded tokens (MAR's "linear").

Zero-shot inpainting: ``known_tokens`` + ``known_mask`` ([L] bool, shared by the batch) are kept and
only the rest is generated.

Randomness comes from one generator per batch seeded by the batch's seeds, so the same captions and
seeds give the same images.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from diffusers import DDIMScheduler


def _scheduler(model: Any, steps: int) -> DDIMScheduler:
    # With the cosine schedule ᾱ(999) ≈ 0, so x̂₀ = (x − √(1−ᾱ)ε̂)/√ᾱ amplifies any ε error at the first
    # steps; bounded token spaces (pixels in [-1, 1]) clip x̂₀ to their range, as pixel-space DDPMs do.
    clip = getattr(model.tokenizer, "clip_range", None)
    sched = DDIMScheduler(
        num_train_timesteps=model.noise_scheduler.config.num_train_timesteps, beta_schedule="squaredcos_cap_v2",
        trained_betas=model.noise_scheduler.config.trained_betas,  # the model's (possibly shifted) schedule
        prediction_type=model.noise_scheduler.config.prediction_type, clip_sample=clip is not None, clip_sample_range=clip or 1.0,
        set_alpha_to_one=True, timestep_spacing="trailing",
    )
    sched.set_timesteps(steps)
    return sched


@torch.no_grad()
def sample_head(model: Any, z: torch.Tensor, *, steps: int, cfg_scale: float | None, temperature: float,
                generator: torch.Generator) -> torch.Tensor:
    """Draw tokens for features ``z`` [N, W] ([2N, W] = cond then uncond when ``cfg_scale`` is set)."""
    head = model.head
    cond = head.embed_cond(z)
    n = z.shape[0] // 2 if cfg_scale is not None else z.shape[0]
    d = model.token_dim
    stochastic = model.mcfg.diffusion_sampler == "ddpm"
    sched = _scheduler(model, steps)
    x = torch.randn(n, d, generator=generator, device=z.device)
    if not stochastic:
        x = x * temperature
    for t in sched.timesteps:
        xin = torch.cat([x, x]) if cfg_scale is not None else x
        tt = torch.full((1,), int(t), device=z.device, dtype=torch.long)  # one embedding, broadcast to rows
        eps = head(xin.to(cond.dtype), tt, cond).float()
        if cfg_scale is not None:
            e_c, e_u = eps.chunk(2)
            eps = e_u + cfg_scale * (e_c - e_u)
        if stochastic:
            vn = torch.randn(x.shape, generator=generator, device=x.device) * temperature
            x = sched.step(eps, t, x, eta=1.0, variance_noise=vn).prev_sample
        else:
            x = sched.step(eps, t, x, eta=0.0).prev_sample
    return x


@torch.no_grad()
def sample_tokens(model: Any, captions: Sequence[str], *, num_iter: int, cfg: float = 1.0,
                  cfg_schedule: str = "constant", temperature: float = 1.0, diffusion_steps: int = 50,
                  generator: torch.Generator, known_tokens: torch.Tensor | None = None,
                  known_mask: torch.Tensor | None = None, text_batch: dict | None = None) -> torch.Tensor:
    """→ tokens [B, L, D] for ``captions`` (or cached ``text_batch``)."""
    dev = model.device
    b = len(captions) if text_batch is None else len(next(iter(text_batch.values())))
    n, d = model.seq_len, model.token_dim
    use_cfg = cfg != 1.0
    if text_batch is not None:
        ctx, ctx_mask = model.encode_text(batch=text_batch)
    else:
        ctx, ctx_mask = model.encode_text(list(captions))
    if use_cfg:  # unconditional half: the learned null text
        null_ctx, null_mask = model.apply_null(ctx, ctx_mask, torch.ones(b, dtype=torch.bool, device=dev))
        ctx, ctx_mask = torch.cat([ctx, null_ctx]), torch.cat([ctx_mask, null_mask])

    tokens = torch.zeros(b, n, d, device=dev)
    known = torch.zeros(n, dtype=torch.bool, device=dev)
    if known_mask is not None:
        known = known_mask.to(dev).bool()
        tokens[:, known] = known_tokens.to(dev).float()[:, known] if known_tokens.dim() == 3 else known_tokens.to(dev).float()[known]
    n_unknown = int((~known).sum())
    # a random order over the unknown positions; known positions come first and are never masked
    scores = torch.rand(b, n, generator=generator, device=dev).masked_fill(known, -1.0)
    order = scores.argsort(dim=1)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(n, device=dev).expand(b, -1))
    remaining = n_unknown
    steps = max(1, min(num_iter, n_unknown))
    for k in range(steps):
        if remaining == 0:
            break
        mask = rank >= (n - remaining)                     # still unknown
        next_len = int(math.floor(n_unknown * math.cos(math.pi / 2 * (k + 1) / steps)))
        next_len = 0 if k == steps - 1 else max(1, min(remaining - 1, next_len))
        to_pred = mask & (rank < (n - next_len))           # leave the mask this step
        z_in = torch.cat([tokens, tokens]) if use_cfg else tokens
        m_in = torch.cat([mask, mask]) if use_cfg else mask
        z = model.forward_features(z_in, m_in, ctx, ctx_mask, n_masked=remaining)
        n_pred = remaining - next_len
        idx = to_pred.to(torch.uint8).argsort(dim=1, descending=True, stable=True)[:, :n_pred]   # [B, P]
        idx_in = torch.cat([idx, idx]) if use_cfg else idx
        zs = torch.gather(z, 1, idx_in[..., None].expand(-1, -1, z.shape[-1])).reshape(-1, z.shape[-1])
        scale = None
        if use_cfg:
            scale = cfg if cfg_schedule == "constant" else 1.0 + (cfg - 1.0) * (n - next_len) / n
        new = sample_head(model, zs, steps=diffusion_steps, cfg_scale=scale, temperature=temperature,
                          generator=generator).view(b, n_pred, d)
        tokens = tokens.scatter(1, idx[..., None].expand(-1, -1, d), new)
        remaining = next_len
    return tokens


def _batch_generator(seeds: Sequence[int], device: torch.device) -> torch.Generator:
    mixed = 0
    for s in seeds:  # order-sensitive mix of the batch's seeds
        mixed = (mixed * 1_000_003 + int(s) + 1) % (2**61 - 1)
    return torch.Generator(device=device).manual_seed(mixed)


@torch.no_grad()
def sample_images(model: Any, captions: Sequence[str], eval_cfg: Any, seed: int = 0,
                  device: torch.device | str | None = None, *, seeds: Sequence[int] | None = None,
                  known_tokens: torch.Tensor | None = None, known_mask: torch.Tensor | None = None,
                  autocast: bool | None = None) -> np.ndarray:
    """Generate one image per caption → uint8 [N, H, W, 3], batched by ``eval_cfg.batch_size``.

    ``seeds`` (one per caption) default to ``seed + i``; each batch is seeded from its seeds.
    """
    if device is not None:
        model.to(device)
    model.eval()
    captions = list(captions)
    if not captions:
        raise ValueError("no captions to sample")
    seeds = list(seeds) if seeds is not None else [seed + i for i in range(len(captions))]
    if len(seeds) != len(captions):
        raise ValueError(f"got {len(seeds)} seeds for {len(captions)} captions")
    dev = model.device
    use_amp = (dev.type == "cuda") if autocast is None else autocast
    out = []
    bs = eval_cfg.batch_size
    for i in range(0, len(captions), bs):
        caps, sds = captions[i : i + bs], seeds[i : i + bs]
        gen = _batch_generator(sds, dev)
        kt = known_tokens[i : i + bs] if known_tokens is not None and known_tokens.dim() == 3 else known_tokens
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
            tok = sample_tokens(model, caps, num_iter=eval_cfg.num_iter, cfg=eval_cfg.cfg,
                                cfg_schedule=eval_cfg.cfg_schedule, temperature=eval_cfg.temperature,
                                diffusion_steps=eval_cfg.diffusion_steps, generator=gen,
                                known_tokens=kt, known_mask=known_mask)
        out.append(model.tokenizer.decode(tok.float()))
    return np.concatenate(out)
