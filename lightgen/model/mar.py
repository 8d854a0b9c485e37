"""LightGenMAR: a masked-autoregressive text-to-image student with a diffusion-MLP head.

Read top to bottom:

1. ``SIZES`` / ``resolve_arch`` — the architecture of each ``model.size`` (explicit config fields win).
2. ``DiffusionHead`` — a residual MLP with AdaLN, conditioned on a token's feature ``z`` and the
   diffusion timestep; it predicts the noise ε added to that token (MAR's "DiffLoss"), or the velocity v
   with ``model.prediction_type=v_prediction``.
3. ``LightGenMAR`` — text (T5 → aligner, learned null embedding for CFG), then
   encoder on the *visible* image tokens (+ learned buffer tokens), decoder over *all* positions (mask
   tokens where unknown), with cross-attention blocks to the aligned text spread through both stages.
   Training: a random order per image, a mask ratio from a truncated normal on [min, 1] (mean 1.0, std
   0.25) per batch, a denoising loss on the masked tokens only, ``diffusion_batch_mul`` noise draws per
   token.
4. ``build_model(cfg, vocab)``.

The noise schedule is diffusers' ``DDPMScheduler`` (``squaredcos_cap_v2``, 1000 steps; SNR ÷ shift² with
``model.noise_shift``); sampling uses a ``DDIMScheduler`` built from its config with ``eval.diffusion_steps``
(see ``lightgen.model.sampling``). ``model.pos_embed_init=sincos`` starts the image positions from MAE's 2-D
sin-cos instead of N(0, 0.02) (why: ``benchmarks/LEARN_TINY.md``).

API for preference training (DPO)
---------------------------------
``noise = model.sample_training_noise(B, generator)`` draws everything random in one training step:
``{"mask": [B, L] bool (True = masked, predicted), "t": [B, M, L] long, "noise": [B, M, L, D],
"drop_text": [B] bool}`` with ``M = diffusion_batch_mul``. ``model.diffusion_loss(batch, **noise)``
returns the per-sample mean denoising error over masked tokens, shape [B]; passing the same ``noise``
dict to a policy and a reference model, or to a winner and a loser batch, makes their errors directly
comparable (Diffusion-DPO). ``drop_text`` may be omitted (no text dropout). Every row of ``mask`` must
mask the same number of tokens (the encoder gathers the visible tokens into a dense batch).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from diffusers import DDPMScheduler
from diffusers.models.embeddings import TimestepEmbedding, Timesteps, get_2d_sincos_pos_embed

from lightgen.model.layers import Block, CrossBlock, interleave
from lightgen.model.text import TextAligner, TextEncoder

# --------------------------------------------------------------------------------------------------
# 1. Sizes
# --------------------------------------------------------------------------------------------------
SIZES: dict[str, dict[str, int]] = {
    # CPU: well under a second per step at 32 px (64 tokens of 48 dims), batch 16, one thread
    "tiny": dict(width=96, encoder_depth=2, decoder_depth=2, cross_depth=2, heads=4, aligner_depth=1,
                 head_width=128, head_depth=2, buffer_size=4),
    # one GPU, toy world at lab scale (64 px, 256 tokens)
    "small": dict(width=512, encoder_depth=6, decoder_depth=6, cross_depth=6, heads=8, aligner_depth=2,
                  head_width=768, head_depth=4, buffer_size=16),
    # the paper's 0.7B configuration (official fluid_large: 792.2M parameters with the head)
    "L": dict(width=1024, encoder_depth=16, decoder_depth=16, cross_depth=16, heads=16, aligner_depth=6,
              head_width=1536, head_depth=8, buffer_size=64),
}
ARCH_KEYS = tuple(SIZES["tiny"])


def resolve_arch(mcfg: Any) -> dict[str, int]:
    """The size's architecture with every explicitly set config field taking precedence."""
    arch = dict(SIZES[mcfg.size])
    for k in ARCH_KEYS:
        v = getattr(mcfg, k, None)
        if v is not None:
            arch[k] = v
    if arch["width"] % arch["heads"]:
        raise ValueError(f"model.width={arch['width']} is not divisible by model.heads={arch['heads']}")
    return arch


def shifted_betas(steps: int, shift: float) -> list[float] | None:
    """Betas of the cosine schedule with every step's SNR divided by ``shift²`` (None when ``shift`` is 1).

    ᾱ' = ᾱ / (ᾱ + shift²·(1 − ᾱ)) is the shifted schedule of Hoogeboom et al., "simple diffusion" (2023):
    data whose tokens repeat their information (a flat 4×4 pixel patch carries one colour 16 times) stays
    readable through the noise of the plain schedule, so the head can denoise a token from itself and the
    backbone never has to learn from the visible tokens.
    """
    if shift == 1.0:
        return None
    ac = DDPMScheduler(num_train_timesteps=steps, beta_schedule="squaredcos_cap_v2").alphas_cumprod.double()
    ac = ac / (ac + shift**2 * (1 - ac))
    prev = torch.cat([torch.ones(1, dtype=ac.dtype), ac[:-1]])
    return (1 - ac / prev).clamp(max=0.999).tolist()


# --------------------------------------------------------------------------------------------------
# 2. Diffusion head
# --------------------------------------------------------------------------------------------------
def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class HeadBlock(nn.Module):
    """Residual MLP block; AdaLN shift/scale/gate come from the (timestep + condition) embedding."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.ada(y).chunk(3, dim=-1)
        return x + gate * self.mlp(_modulate(self.norm(x), shift, scale))


class DiffusionHead(nn.Module):
    """ε- (or v-) prediction MLP for one token: input the noisy token, conditioned on ``z`` and ``t``."""

    def __init__(self, token_dim: int, cond_dim: int, width: int, depth: int):
        super().__init__()
        self.time_proj = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(256, width)
        self.cond_embed = nn.Linear(cond_dim, width)
        self.input_proj = nn.Linear(token_dim, width)
        self.blocks = nn.ModuleList([HeadBlock(width) for _ in range(depth)])
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.out = nn.Linear(width, token_dim)

    def init_weights(self) -> None:
        # zero-init of every modulation and the output: each block starts as the identity (DiT/MAR)
        for blk in self.blocks:
            nn.init.zeros_(blk.ada[-1].weight)
            nn.init.zeros_(blk.ada[-1].bias)
        for lin in (self.final_ada[-1], self.out):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def embed_cond(self, z: torch.Tensor) -> torch.Tensor:
        """Project token features once; callers repeat the (smaller) result for several noise draws."""
        return self.cond_embed(z)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x_t [N, D], t [N] (long), cond [N, width] (from ``embed_cond``) → ε̂ (or v̂) [N, D]."""
        temb = self.time_embed(self.time_proj(t).to(cond.dtype))
        y = temb + cond
        h = self.input_proj(x_t)
        for blk in self.blocks:
            h = blk(h, y)
        shift, scale = self.final_ada(y).chunk(2, dim=-1)
        return self.out(_modulate(self.final_norm(h), shift, scale))


# --------------------------------------------------------------------------------------------------
# 3. The MAR student
# --------------------------------------------------------------------------------------------------
class LightGenMAR(nn.Module):
    def __init__(self, mcfg: Any, tokenizer: nn.Module, text_encoder: TextEncoder):
        super().__init__()
        arch = resolve_arch(mcfg)
        self.arch = arch
        self.mcfg = mcfg
        w, heads, r = arch["width"], arch["heads"], mcfg.mlp_ratio
        drops = dict(attn_drop=mcfg.attn_dropout, proj_drop=mcfg.proj_dropout)
        self.tokenizer = tokenizer
        self.seq_len, self.token_dim, self.width = tokenizer.seq_len, tokenizer.token_dim, w
        self.buffer_size = arch["buffer_size"]
        if arch["head_width"] < self.token_dim:
            # the head must carry x_t through its width to predict ε: a narrower MLP cannot (loss floor)
            raise ValueError(f"model.head_width={arch['head_width']} is smaller than the token dim "
                             f"{self.token_dim} (patch_size² × channels); widen the head or use smaller patches")
        self.diffusion_batch_mul = mcfg.diffusion_batch_mul

        # text: encoder (possibly frozen / absent) → aligner; a learned null sequence for CFG
        self.text_encoder = text_encoder
        self.aligner = TextAligner(text_encoder.dim, w, arch["aligner_depth"], heads, r)
        self.null_text = nn.Parameter(torch.zeros(1, 1, w))

        # encoder over buffer + visible tokens
        n_tok = self.buffer_size + self.seq_len
        self.z_proj = nn.Linear(self.token_dim, w)
        self.buffer = nn.Parameter(torch.zeros(1, self.buffer_size, w))
        # optional: the pooled text in the buffer tokens (MAR's class-embedding slot), beside the cross-attention
        self.text_to_buffer = nn.Linear(w, w) if getattr(mcfg, "text_pool_buffer", False) and self.buffer_size else None
        self.encoder_pos = nn.Parameter(torch.zeros(1, n_tok, w))
        n_cross_enc = round(arch["cross_depth"] * arch["encoder_depth"] / (arch["encoder_depth"] + arch["decoder_depth"]))
        self.encoder_blocks = self._stage(arch["encoder_depth"], n_cross_enc, w, heads, r, drops)
        self.encoder_norm = nn.LayerNorm(w, eps=1e-6)

        # decoder over all positions (mask tokens where unknown)
        self.decoder_embed = nn.Linear(w, w)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, w))
        self.decoder_pos = nn.Parameter(torch.zeros(1, n_tok, w))
        self.decoder_blocks = self._stage(arch["decoder_depth"], arch["cross_depth"] - n_cross_enc, w, heads, r, drops)
        self.decoder_norm = nn.LayerNorm(w, eps=1e-6)
        self.diffusion_pos = nn.Parameter(torch.zeros(1, self.seq_len, w))

        self.head = DiffusionHead(self.token_dim, w, arch["head_width"], arch["head_depth"])
        self.noise_scheduler = DDPMScheduler(
            num_train_timesteps=mcfg.train_diffusion_steps, beta_schedule="squaredcos_cap_v2",
            prediction_type=mcfg.prediction_type, clip_sample=False,
            trained_betas=shifted_betas(mcfg.train_diffusion_steps, mcfg.noise_shift),
        )
        self.register_buffer(
            "alphas_cumprod", self.noise_scheduler.alphas_cumprod.clone().float(), persistent=False
        )
        self.init_weights()

    @staticmethod
    def _stage(n_self: int, n_cross: int, w: int, heads: int, r: float, drops: dict) -> nn.ModuleList:
        return nn.ModuleList(
            [Block(w, heads, r, **drops) if k == "self" else CrossBlock(w, heads, r, **drops) for k in interleave(n_self, n_cross)]
        )

    def init_weights(self) -> None:
        if self.encoder_pos.is_meta:
            return
        for name, m in self.named_modules():
            if name.startswith("text_encoder."):
                continue  # T5 keeps its own initialisation (or pretrained weights)
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for p in (self.buffer, self.encoder_pos, self.decoder_pos, self.diffusion_pos, self.mask_token, self.null_text):
            nn.init.normal_(p, std=0.02)
        if self.mcfg.pos_embed_init == "sincos":  # image positions (not the buffer) from MAE's 2-D sin-cos
            grid = self.tokenizer.grid
            sincos = get_2d_sincos_pos_embed(self.width, grid, base_size=grid, output_type="pt")
            with torch.no_grad():
                for p in (self.encoder_pos, self.decoder_pos):
                    p[0, self.buffer_size:] = sincos.to(p.dtype)
        self.head.init_weights()

    # ---- parameters --------------------------------------------------------------------------
    def num_params(self, include_text_encoder: bool = False) -> int:
        return sum(p.numel() for n, p in self.named_parameters() if include_text_encoder or not n.startswith("text_encoder."))

    @property
    def device(self) -> torch.device:
        return self.z_proj.weight.device

    # ---- text --------------------------------------------------------------------------------
    def encode_text(self, captions: list[str] | None = None, *, batch: dict | None = None,
                    drop_text: torch.Tensor | None = None, pad_to: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """→ aligned text [B, T, width] and its key mask [B, T]; rows with ``drop_text`` become null."""
        feats, mask = self.text_encoder(captions, batch=batch, device=self.device, pad_to=pad_to)
        ctx = self.aligner(feats.to(self.aligner.proj.weight.dtype), mask)
        if drop_text is not None:
            ctx, mask = self.apply_null(ctx, mask, drop_text)
        return ctx, mask

    def apply_null(self, ctx: torch.Tensor, mask: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        """Replace dropped rows by the learned null embedding (one valid token, the rest hidden)."""
        null = self.null_text.to(ctx.dtype).expand_as(ctx)
        only_first = torch.zeros_like(mask)
        only_first[:, 0] = True
        return torch.where(drop[:, None, None], null, ctx), torch.where(drop[:, None], only_first, mask)

    def null_context(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        ctx = self.null_text.expand(batch_size, 1, self.width)
        return ctx, torch.ones(batch_size, 1, dtype=torch.bool, device=ctx.device)

    # ---- backbone ----------------------------------------------------------------------------
    @staticmethod
    def split_mask(mask: torch.Tensor, n_masked: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """mask [B, L] bool → (masked indices [B, Nm], visible indices [B, L-Nm]), both in position order.

        Index gathers instead of boolean indexing keep the step free of host syncs when ``n_masked`` is
        known; every row must mask the same number of tokens.
        """
        if n_masked is None:
            counts = mask.sum(1)
            n_masked = int(counts[0])
            if not bool((counts == n_masked).all()):
                raise ValueError("every row of the mask must mask the same number of tokens")
        idx = mask.to(torch.uint8).argsort(dim=1, descending=True, stable=True)
        return idx[:, :n_masked], idx[:, n_masked:].sort(dim=1).values

    def forward_features(self, tokens: torch.Tensor, mask: torch.Tensor, ctx: torch.Tensor,
                         ctx_mask: torch.Tensor, n_masked: int | None = None) -> torch.Tensor:
        """tokens [B, L, D], mask [B, L] (True = unknown) → features [B, L, width] for the head."""
        b, n, _ = tokens.shape
        w, nb = self.width, self.buffer_size
        _, vis = self.split_mask(mask, n_masked)
        vis_w = vis[..., None].expand(-1, -1, w)
        x = self.z_proj(tokens) + self.encoder_pos[:, nb:]
        x = torch.gather(x, 1, vis_w)  # visible tokens only: the encoder never sees mask tokens
        buf = (self.buffer + self.encoder_pos[:, :nb]).to(x.dtype).expand(b, -1, -1)
        if self.text_to_buffer is not None:
            keep = ctx_mask[..., None].to(ctx.dtype)
            pooled = (ctx * keep).sum(1) / keep.sum(1).clamp(min=1.0)
            buf = buf + self.text_to_buffer(pooled)[:, None].to(x.dtype)
        x = torch.cat([buf, x], dim=1)
        for blk in self.encoder_blocks:
            x = blk(x, ctx=ctx, ctx_mask=ctx_mask)
        x = self.decoder_embed(self.encoder_norm(x))

        # decoder: visible features back in place, the learned mask token everywhere else
        full = torch.scatter(self.mask_token.to(x.dtype).expand(b, n, w), 1, vis_w, x[:, nb:])
        x = torch.cat([x[:, :nb], full], dim=1) + self.decoder_pos
        for blk in self.decoder_blocks:
            x = blk(x, ctx=ctx, ctx_mask=ctx_mask)
        x = self.decoder_norm(x)[:, nb:]
        return x + self.diffusion_pos

    # ---- training ----------------------------------------------------------------------------
    def sample_mask_ratio(self, generator: torch.Generator | None = None) -> float:
        """One ratio per batch from N(mean, std) truncated to [mask_ratio_min, 1] (MAR). CPU generator."""
        m = self.mcfg
        r = torch.empty(1)
        nn.init.trunc_normal_(r, mean=m.mask_ratio_mean, std=m.mask_ratio_std, a=m.mask_ratio_min, b=1.0,
                              generator=generator)
        return float(r)

    def sample_training_noise(self, batch_size: int, generator: torch.Generator | None = None,
                              device: torch.device | str | None = None,
                              ratio_generator: torch.Generator | None = None) -> dict[str, Any]:
        """Everything random in one training step (see the module docstring).

        Tensors come from ``generator`` (on the model's device for speed); the mask ratio, a host-side
        number that fixes shapes, from ``ratio_generator`` (CPU) — or from ``generator`` when that is a
        CPU generator — so no device→host sync is needed.
        """
        device = torch.device(device) if device is not None else self.device
        gen_dev = generator.device if generator is not None else device
        if ratio_generator is None and generator is not None and generator.device.type == "cpu":
            ratio_generator = generator
        n, d, mul = self.seq_len, self.token_dim, self.diffusion_batch_mul
        n_mask = min(n, max(1, math.ceil(self.sample_mask_ratio(ratio_generator) * n)))
        order = torch.rand(batch_size, n, generator=generator, device=gen_dev).argsort(dim=1)
        mask = torch.zeros(batch_size, n, dtype=torch.bool, device=gen_dev)
        mask.scatter_(1, order[:, :n_mask], True)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (batch_size, mul, n),
                          generator=generator, device=gen_dev)
        noise = torch.randn(batch_size, mul, n, d, generator=generator, device=gen_dev)
        drop = torch.rand(batch_size, generator=generator, device=gen_dev) < self.mcfg.text_dropout
        out: dict[str, Any] = {k: v.to(device) for k, v in dict(mask=mask, t=t, noise=noise, drop_text=drop).items()}
        out["n_masked"] = n_mask
        return out

    def diffusion_loss(self, batch: dict, *, mask: torch.Tensor | None = None, t: torch.Tensor | None = None,
                       noise: torch.Tensor | None = None, drop_text: torch.Tensor | None = None,
                       reduction: str = "per_sample", generator: torch.Generator | None = None,
                       tokens: torch.Tensor | None = None, n_masked: int | None = None) -> torch.Tensor:
        """Mean ε- (or v-) prediction error over the masked tokens: [B] (``per_sample``) or a scalar (``mean``).

        Missing ``mask``/``t``/``noise`` are drawn with ``generator``; ``drop_text`` None = no dropout.
        ``tokens`` skips the tokenizer (precomputed [B, L, D]); ``n_masked`` (masked tokens per row)
        avoids a host sync.
        """
        if reduction not in ("per_sample", "mean"):
            raise ValueError(f"reduction must be 'per_sample' or 'mean', got {reduction!r}")
        if tokens is None:
            tokens = self.tokenizer.encode_batch(batch, generator=generator, device=self.device)
        b = tokens.shape[0]
        if mask is None or t is None or noise is None:
            drawn = self.sample_training_noise(b, generator)
            if mask is None:
                mask, n_masked = drawn["mask"], drawn["n_masked"]
            t = drawn["t"] if t is None else t
            noise = drawn["noise"] if noise is None else noise
        if mask.shape != tokens.shape[:2]:
            raise ValueError(f"mask must be [B, L] = {tuple(tokens.shape[:2])}, got {tuple(mask.shape)}")
        ctx, ctx_mask = self.encode_text(batch=batch, drop_text=drop_text)
        z = self.forward_features(tokens, mask, ctx, ctx_mask, n_masked)

        # the head runs on masked tokens only, ``mul`` noise draws each; the condition is projected once
        idx, _ = self.split_mask(mask, n_masked)                               # [B, Nm]
        nm, d = idx.shape[1], tokens.shape[-1]
        mul = t.shape[1]
        cond = self.head.embed_cond(torch.gather(z, 1, idx[..., None].expand(-1, -1, self.width)))  # [B, Nm, Wh]
        x0 = torch.gather(tokens.float(), 1, idx[..., None].expand(-1, -1, d))                    # [B, Nm, D]
        t_m = torch.gather(t, 2, idx[:, None].expand(-1, mul, -1))                                 # [B, mul, Nm]
        eps = torch.gather(noise.float(), 2, idx[:, None, :, None].expand(-1, mul, -1, d))         # [B, mul, Nm, D]
        a = self.alphas_cumprod[t_m][..., None]
        x_t = a.sqrt() * x0[:, None] + (1 - a).sqrt() * eps  # = DDPMScheduler.add_noise, in one batched op
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = a.sqrt() * eps - (1 - a).sqrt() * x0[:, None]  # = DDPMScheduler.get_velocity
        else:
            target = eps
        cond = cond[:, None].expand(-1, mul, -1, -1)
        pred = self.head(x_t.reshape(-1, d).to(cond.dtype), t_m.reshape(-1), cond.reshape(-1, cond.shape[-1]))
        err = (pred.float().view(b, mul, nm, d) - target).pow(2).mean(dim=(1, 2, 3))               # [B]
        return err.mean() if reduction == "mean" else err

    def forward_loss(self, batch: dict, generator: torch.Generator | None = None,
                     ratio_generator: torch.Generator | None = None) -> torch.Tensor:
        """The pre-training loss of one batch (random mask/order/timesteps/noise and 10% text dropout)."""
        tokens = self.tokenizer.encode_batch(batch, generator=generator, device=self.device)
        noise = self.sample_training_noise(tokens.shape[0], generator, ratio_generator=ratio_generator)
        return self.diffusion_loss(batch, reduction="mean", generator=generator, tokens=tokens, **noise)

    def forward(self, batch: dict, generator: torch.Generator | None = None,
                ratio_generator: torch.Generator | None = None) -> torch.Tensor:  # DDP wraps forward
        return self.forward_loss(batch, generator, ratio_generator)


# --------------------------------------------------------------------------------------------------
# 4. Construction
# --------------------------------------------------------------------------------------------------
def build_tokenizer(cfg: Any) -> nn.Module:
    from lightgen.model.tokenizers import PatchTokenizer, VAETokenizer

    m = cfg.model
    if m.tokenizer == "patch":
        return PatchTokenizer(cfg.data.resolution, m.patch_size)
    if not m.vae:
        raise ValueError("model.vae must name an AutoencoderKL (path) when model.tokenizer=vae")
    if m.vae == "toy":
        if cfg.world.kind != "toy":
            raise ValueError("model.vae=toy needs the toy world (world.kind=toy)")
        from lightgen.model.toy_vae import ToyVAETokenizer, resolve_toy_vae

        return ToyVAETokenizer(resolve_toy_vae(cfg), cfg.data.resolution, m.patch_size)
    return VAETokenizer(m.vae, cfg.data.resolution, m.patch_size)


def build_model(cfg: Any, vocab: list[str] | None = None, *, tokenizer: nn.Module | None = None) -> LightGenMAR:
    """Build the student for ``cfg`` (toy text encoder over ``vocab``); weights seeded by ``cfg.seed``.

    Build under ``torch.device("meta")`` to count parameters without allocating them.
    """
    m = cfg.model
    arch = resolve_arch(m)
    # the one-off frozen components (trained on first use, then cached) come first, outside the seeded block
    weights = m.text_encoder_weights
    if weights == "toy" and m.text_encoder_mode == "pretrained-toy":
        from lightgen.model.toy_text import resolve_toy_text_encoder

        weights = str(resolve_toy_text_encoder(cfg))
    tok = tokenizer if tokenizer is not None else build_tokenizer(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        text_dim = m.text_dim or (4096 if m.text_encoder == "cached" and m.size == "L" else arch["width"])
        text = TextEncoder(m.text_encoder, m.text_encoder_mode, m.max_text_len, vocab=vocab,
                           toy_width=m.toy_text_width, toy_depth=m.toy_text_depth,
                           weights=weights, cached_dim=text_dim)
        model = LightGenMAR(m, tok, text)
    return model
