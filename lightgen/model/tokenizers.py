"""Image tokenizers: images <-> sequences of continuous tokens.

Both implementations share one small interface so the MAR model never knows which world it is in:

* ``seq_len`` / ``token_dim`` / ``grid`` — the token layout (row-major over a ``grid × grid`` map);
* ``encode_batch(batch, generator)`` — a dataset batch (``"images"`` uint8 BHWC, or cached
  ``"latent_moments"`` [B, 2C, h, w]) → tokens [B, L, D];
* ``decode(tokens)`` → uint8 images [B, H, W, 3] (numpy).

``PatchTokenizer`` (toy world) has no weights: pixels in [-1, 1] cut into ``p × p × 3`` patches.
``VAETokenizer`` (real world) wraps a diffusers ``AutoencoderKL``; the paper's VAE has 16 latent channels
and stride 8, and a further 2 × 2 patchify gives 256 tokens of 64 dims at 256 px. Latents are normalised
with the VAE config's ``shift_factor`` / ``scaling_factor`` so the diffusion head sees unit-scale data.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """[B, C, H, W] → [B, (H/p)(W/p), C·p·p], row-major over the patch grid."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // p) * (w // p), c * p * p)


def unpatchify(tokens: torch.Tensor, p: int, channels: int) -> torch.Tensor:
    """Inverse of :func:`patchify` for a square grid."""
    b, n, _ = tokens.shape
    g = int(round(n**0.5))
    if g * g != n:
        raise ValueError(f"cannot unpatchify {n} tokens: not a square grid")
    x = tokens.reshape(b, g, g, channels, p, p).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, channels, g * p, g * p)


def images_to_float(images: Any, device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 BHWC (numpy or tensor) → float BCHW in [-1, 1]."""
    t = torch.from_numpy(np.array(images, dtype=np.uint8)) if not isinstance(images, torch.Tensor) else images
    if t.dim() != 4 or t.shape[-1] != 3:
        raise ValueError(f"images must be [B, H, W, 3], got shape {tuple(t.shape)}")
    t = t.to(device=device)
    return t.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def float_to_images(x: torch.Tensor) -> np.ndarray:
    """float BCHW in [-1, 1] → uint8 BHWC numpy."""
    x = ((x.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


class PatchTokenizer(nn.Module):
    """Toy-world tokenizer: raw pixel patches (no weights), tokens in [-1, 1]."""

    def __init__(self, resolution: int, patch_size: int):
        super().__init__()
        if resolution % patch_size:
            raise ValueError(f"resolution {resolution} is not a multiple of patch_size {patch_size}")
        self.resolution = resolution
        self.patch_size = patch_size
        self.grid = resolution // patch_size
        self.seq_len = self.grid**2
        self.token_dim = 3 * patch_size**2
        self.clip_range: float | None = 1.0  # pixel tokens live in [-1, 1]: the sampler clips x̂₀ there

    def encode_images(self, images: Any, device: torch.device | str | None = None) -> torch.Tensor:
        x = images_to_float(images, device)
        if x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
            raise ValueError(
                f"images are {x.shape[-2]}x{x.shape[-1]} but the model was built for "
                f"{self.resolution}x{self.resolution} (data.resolution)"
            )
        return patchify(x, self.patch_size)

    def encode_batch(self, batch: dict, generator: torch.Generator | None = None,
                     device: torch.device | str | None = None) -> torch.Tensor:
        if "images" not in batch:
            raise ValueError("the patch tokenizer needs batch['images'] (uint8 [B,H,W,3])")
        return self.encode_images(batch["images"], device)

    def decode_float(self, tokens: torch.Tensor) -> torch.Tensor:
        return unpatchify(tokens.float(), self.patch_size, 3)

    def decode(self, tokens: torch.Tensor) -> np.ndarray:
        return float_to_images(self.decode_float(tokens))


class LatentTokenizer(nn.Module):
    """Tokens from cached VAE posterior moments, without the VAE itself (benchmarks, cached training).

    ``encode_batch`` reads ``batch["latent_moments"]`` ([B, 2C, h, w]); there is no ``decode``.
    """

    def __init__(self, channels: int, latent_size: int, patch_size: int = 2, scaling: float = 1.0, shift: float = 0.0):
        super().__init__()
        self.channels, self.patch_size, self.scaling, self.shift = channels, patch_size, scaling, shift
        self.grid = latent_size // patch_size
        self.seq_len = self.grid**2
        self.token_dim = channels * patch_size**2
        self.clip_range: float | None = None  # normalised latents are unbounded

    def normalise(self, latents: torch.Tensor) -> torch.Tensor:
        return (latents - self.shift) * self.scaling

    def moments_to_tokens(self, moments: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        mean, logvar = moments.float().chunk(2, dim=1)
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return patchify(self.normalise(mean + std * eps), self.patch_size)

    def encode_batch(self, batch: dict, generator: torch.Generator | None = None,
                     device: torch.device | str | None = None) -> torch.Tensor:
        if "latent_moments" not in batch:
            raise ValueError("this tokenizer needs batch['latent_moments'] (cached VAE moments)")
        m = batch["latent_moments"]
        m = m if isinstance(m, torch.Tensor) else torch.as_tensor(np.asarray(m))
        if m.dim() != 4 or m.shape[1] != 2 * self.channels:
            raise ValueError(f"batch['latent_moments'] must be [B, {2 * self.channels}, h, w], got {tuple(m.shape)}")
        return self.moments_to_tokens(m.to(device), generator)


class VAETokenizer(LatentTokenizer):
    """Real-world tokenizer: a frozen diffusers ``AutoencoderKL`` plus a ``p × p`` patchify of its latents.

    Normalisation follows the VAE config: ``z = (latent - shift_factor) * scaling_factor`` (shift 0 when
    the config has none). ``encode_batch`` prefers cached posterior moments (``latent_moments`` =
    concatenated mean and log-variance, as ``AutoencoderKL`` produces them), sampling the posterior with
    the given generator, so datasets can store moments once and training never runs the VAE encoder.
    """

    def __init__(self, vae: Any, resolution: int, patch_size: int = 2):
        nn.Module.__init__(self)
        from diffusers import AutoencoderKL

        if isinstance(vae, (str, bytes)) or hasattr(vae, "__fspath__"):
            try:
                vae = AutoencoderKL.from_pretrained(str(vae), use_safetensors=True, low_cpu_mem_usage=False)
            except (OSError, ValueError) as e:
                raise ValueError(f"model.vae: cannot load an AutoencoderKL from {vae!r}: {e}") from e
        self.vae = vae.eval().requires_grad_(False)
        cfg = vae.config
        self.channels = int(cfg.latent_channels)
        self.stride = 2 ** (len(cfg.block_out_channels) - 1)
        self.scaling = float(getattr(cfg, "scaling_factor", 1.0) or 1.0)
        self.shift = float(getattr(cfg, "shift_factor", 0.0) or 0.0)
        self.resolution = resolution
        self.patch_size = patch_size
        if resolution % (self.stride * patch_size):
            raise ValueError(
                f"resolution {resolution} must be a multiple of VAE stride {self.stride} × patch {patch_size}"
            )
        self.grid = resolution // (self.stride * patch_size)
        self.seq_len = self.grid**2
        self.token_dim = self.channels * patch_size**2
        self.clip_range = None

    def train(self, mode: bool = True) -> "VAETokenizer":  # the VAE always stays in eval mode
        super().train(mode)
        self.vae.eval()
        return self

    @torch.no_grad()
    def encode_images(self, images: Any, device: torch.device | str | None = None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        x = images_to_float(images, device).to(self.vae.dtype)
        moments = self.vae.encode(x).latent_dist.parameters
        return self.moments_to_tokens(moments, generator)

    def encode_batch(self, batch: dict, generator: torch.Generator | None = None,
                     device: torch.device | str | None = None) -> torch.Tensor:
        if "latent_moments" in batch:
            return super().encode_batch(batch, generator, device)
        if "images" in batch:
            return self.encode_images(batch["images"], device, generator)
        raise ValueError("the VAE tokenizer needs batch['latent_moments'] or batch['images']")

    @torch.no_grad()
    def decode_float(self, tokens: torch.Tensor) -> torch.Tensor:
        z = unpatchify(tokens.float(), self.patch_size, self.channels)
        z = z / self.scaling + self.shift
        return self.vae.decode(z.to(self.vae.dtype)).sample.float()

    def decode(self, tokens: torch.Tensor) -> np.ndarray:
        return float_to_images(self.decode_float(tokens))
