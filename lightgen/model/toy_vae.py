"""A frozen toy-world tokenizer: a small diffusers ``AutoencoderKL`` trained once per world on teacher renders.

The paper's student never sees pixels: a frozen, pre-trained VAE turns images into latent tokens and
back. Raw pixel patches (``model.tokenizer=patch``) make the toy student model every pixel of every
edge with an independent per-token diffusion head, so a student that has the right object in the right
place still draws it with ragged, speckled edges (``benchmarks/LEARN_TINY.md``). ``model.vae=toy`` gives
the toy world the paper's arrangement instead: an ``AutoencoderKL`` (diffusers' own class, saved with
``save_pretrained`` as safetensors) trained on renders of the world's *trainable* compositions, with
Gaussian noise added to its latents while it learns, so that its decoder maps slightly-off latents back
onto clean silhouettes. Its one-off cost is paid once per (world, resolution, architecture) and cached:

    <tracking.root>/tokenizers/toyvae-<hash>/   (config.json + diffusion_pytorch_model.safetensors)

``resolve_toy_vae(cfg)`` returns that folder, training it first when it is missing (under a file lock,
written to a temporary folder and renamed, so a crash never leaves a half-written tokenizer in place).
The latent normalisation (``shift_factor``, ``scaling_factor``) is measured on the training renders and
stored in the config, which ``VAETokenizer`` reads.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightgen.model.tokenizers import VAETokenizer, patchify

#: bump when the recipe below changes: it is part of the cache identity
RECIPE_VERSION = 1
META = "lightgen_toy_vae.json"


def vae_spec(cfg: Any) -> dict[str, Any]:
    """Everything the trained autoencoder depends on (its cache identity)."""
    from lightgen.data.toy import world_identity

    m = cfg.model
    return {
        "recipe": RECIPE_VERSION,
        "world": world_identity(cfg.world),
        "resolution": cfg.data.resolution,
        "stride": m.vae_stride,
        "latent_channels": m.vae_latent_channels,
        "width": m.vae_width,
        "steps": m.vae_train_steps,
        "latent_noise": m.vae_latent_noise,
        "decoder": m.vae_decoder,
        "seed": 0,
    }


def world_palette(cfg: Any) -> list[list[int]]:
    """The colours a toy render is made of: its backgrounds, then its object colours."""
    from lightgen.world.toy import ToyWorld

    world = ToyWorld(cfg.world)
    return [list(map(int, c)) for c in world.backgrounds] + [list(map(int, world.palette[c])) for c in world.colors]


def palette_labels(images: torch.Tensor, palette: torch.Tensor) -> torch.Tensor:
    """float BCHW images in [-1, 1] → [B, H, W] index of the nearest palette colour (as the detector reads)."""
    pal = palette.to(images.dtype) / 127.5 - 1.0                     # [P, 3]
    d = (images[:, None] - pal[None, :, :, None, None]).pow(2).sum(2)  # [B, P, H, W]
    return d.argmin(1)


def build_autoencoder(spec: dict[str, Any], n_out: int = 3) -> Any:
    from diffusers import AutoencoderKL

    n_blocks = int(round(np.log2(spec["stride"]))) + 1
    w = spec["width"]
    channels = tuple(w * min(2, 2**i) for i in range(n_blocks))  # w, 2w, 2w, ...
    return AutoencoderKL(
        in_channels=3, out_channels=n_out,
        down_block_types=("DownEncoderBlock2D",) * n_blocks, up_block_types=("UpDecoderBlock2D",) * n_blocks,
        block_out_channels=channels, layers_per_block=1, latent_channels=spec["latent_channels"],
        norm_num_groups=min(8, w), sample_size=spec["resolution"], mid_block_add_attention=False,
        scaling_factor=1.0, shift_factor=0.0,
    )


def _training_images(cfg: Any, n: int, seed: int) -> np.ndarray:
    """Teacher renders of ``n`` items of a full-diversity stream (trainable compositions only)."""
    from lightgen.world.captions import CaptionGenerator, Knobs
    from lightgen.world.toy import ToyWorld

    world = ToyWorld(cfg.world)
    gen = CaptionGenerator(world, Knobs(coverage=1.0, variety=0.0, density=1.0), seed=seed)
    specs = [spec for spec, _ in gen.stream(n)]
    return world.render(specs, cfg.data.resolution, [gen.render_seed(i) for i in range(n)])


def train_autoencoder(cfg: Any, spec: dict[str, Any], *, log: Any = None) -> tuple[Any, dict[str, float]]:
    """Train the toy autoencoder; → (model in eval mode with its normalisation set, stats)."""
    from lightgen.model.tokenizers import images_to_float

    g = torch.Generator().manual_seed(int(spec["seed"]))
    palette = torch.tensor(world_palette(cfg), dtype=torch.float32)
    categorical = spec["decoder"] == "palette"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(spec["seed"]))
        vae = build_autoencoder(spec, n_out=len(palette) if categorical else 3)
    n_images = 8192
    images = images_to_float(_training_images(cfg, n_images, seed=10_007))
    labels = (torch.cat([palette_labels(images[i:i + 512], palette) for i in range(0, n_images, 512)])
              if categorical else None)
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    steps, batch = int(spec["steps"]), 32
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.05)
    sigma = float(spec["latent_noise"])
    vae.train()
    t0 = time.perf_counter()
    rec = 0.0
    for step in range(steps):
        idx = torch.randint(0, n_images, (batch,), generator=g)
        x = images[idx]
        post = vae.encode(x).latent_dist
        z = post.mean
        # the MAR head will hand the decoder slightly-off latents: teach the decoder to snap them back
        z_in = z + sigma * z.detach().std() * torch.randn(z.shape, generator=g)
        out = vae.decode(z_in).sample
        if categorical:  # per-pixel palette logits: flat colours and crisp edges, as the teacher draws them
            rec_loss = torch.nn.functional.cross_entropy(out, labels[idx])
        else:
            rec_loss = torch.nn.functional.mse_loss(out, x)
        # keep the latents near unit scale (a light KL, as in AutoencoderKL training)
        kl = 0.5 * (post.mean.pow(2) + post.var - 1.0 - post.logvar).mean()
        loss = rec_loss + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        r = float(rec_loss.detach())
        rec = 0.9 * rec + 0.1 * r if step else r
        if log is not None and (step % 100 == 0 or step == steps - 1):
            log(f"toy VAE step {step + 1}/{steps}: reconstruction loss {rec:.5f} ({time.perf_counter() - t0:.0f} s)")
    vae.eval()
    with torch.no_grad():
        z = torch.cat([vae.encode(images[i:i + 256]).latent_dist.mean for i in range(0, 2048, 256)])
        shift, std = float(z.mean()), float(z.std())
        seen = images[-512:]  # 512 of its training renders (the steps draw from all of them)
        recon = vae.decode(vae.encode(seen).latent_dist.mean).sample
        if categorical:
            recon = palette_to_images(recon, palette)
        mse = float(torch.nn.functional.mse_loss(recon.clamp(-1, 1), seen))
    vae.register_to_config(shift_factor=shift, scaling_factor=1.0 / max(std, 1e-6))
    return vae, {"palette": palette.int().tolist() if categorical else None, "toy_vae/recon_mse": mse,
                 "toy_vae/train_s": time.perf_counter() - t0, "toy_vae/latent_std": std, "toy_vae/latent_mean": shift}


def vae_folder(cfg: Any) -> Path:
    from lightgen.model.oneoff import cache_folder

    return cache_folder(cfg, "toyvae", vae_spec(cfg))


def resolve_toy_vae(cfg: Any, *, log: Any = None) -> Path:
    """The cached toy autoencoder folder for ``cfg`` (trained on first use)."""
    from lightgen.model.oneoff import build_once

    def build(tmp: Path, log: Any) -> str:
        spec = vae_spec(cfg)
        vae, stats = train_autoencoder(cfg, spec, log=log)
        vae.save_pretrained(tmp, safe_serialization=True)
        (tmp / META).write_text(json.dumps({"spec": spec, **stats}, indent=2) + "\n")
        return f"reconstruction MSE {stats['toy_vae/recon_mse']:.5f} in {stats['toy_vae/train_s']:.0f} s"

    return build_once(vae_folder(cfg), "config.json", "toy VAE tokenizer", cfg, build, log)


def palette_to_images(logits: torch.Tensor, palette: torch.Tensor) -> torch.Tensor:
    """[B, P, H, W] palette logits → float BCHW in [-1, 1]: each pixel the colour of its most likely entry."""
    pal = palette.to(logits.device, torch.float32) / 127.5 - 1.0
    return pal[logits.argmax(1)].permute(0, 3, 1, 2)


class ToyVAETokenizer(VAETokenizer):
    """``VAETokenizer`` over the cached toy autoencoder; a palette decoder's logits become palette colours."""

    def __init__(self, folder: str | Path, resolution: int, patch_size: int = 1):
        super().__init__(folder, resolution, patch_size)
        meta = json.loads((Path(folder) / META).read_text())
        pal = meta.get("palette")
        self.register_buffer("palette", torch.tensor(pal, dtype=torch.float32) if pal else torch.zeros(0, 3),
                             persistent=False)

    def moments_to_tokens(self, moments: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        # the posterior mean: the autoencoder is trained on its mean latents (plus its own noise), so its
        # log-variance carries nothing but the KL term's pull towards 1 and sampling it would drown the signal
        mean, _ = moments.float().chunk(2, dim=1)
        return patchify(self.normalise(mean), self.patch_size)

    @torch.no_grad()
    def decode_float(self, tokens: torch.Tensor) -> torch.Tensor:
        out = super().decode_float(tokens)
        return palette_to_images(out, self.palette) if len(self.palette) else out
