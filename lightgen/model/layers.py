"""Transformer building blocks shared by the MAR backbone and the text aligner.

Pre-norm blocks with a fused QKV projection and PyTorch's ``scaled_dot_product_attention`` (flash /
memory-efficient kernels on GPU). Padding is honoured through a boolean *key* mask (``True`` = a real
token): padded keys get zero attention weight, so the output at real positions does not depend on how
much padding a batch carries (the official LightGen code ignores the text padding mask).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _key_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """[B, T] keep-mask → [B, 1, 1, T] boolean SDPA mask (broadcast over heads and queries)."""
    return None if mask is None else mask[:, None, None, :]


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)  # fused: one matmul instead of three
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=_key_mask(key_mask), dropout_p=self.attn_drop if self.training else 0.0
        )
        return self.proj_drop(self.proj(y.transpose(1, 2).reshape(b, t, c)))


class CrossAttention(nn.Module):
    """Image tokens (queries) attend to text tokens (keys/values); ``ctx_mask`` hides text padding."""

    def __init__(self, dim: int, heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)  # fused K and V
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, ctx_mask: torch.Tensor | None) -> torch.Tensor:
        b, t, c = x.shape
        s = ctx.shape[1]
        h = self.heads
        q = self.q(x).view(b, t, h, c // h).transpose(1, 2)
        k, v = self.kv(ctx).view(b, s, 2, h, c // h).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=_key_mask(ctx_mask), dropout_p=self.attn_drop if self.training else 0.0
        )
        return self.proj_drop(self.proj(y.transpose(1, 2).reshape(b, t, c)))


class MLP(nn.Sequential):
    def __init__(self, dim: int, ratio: float, drop: float = 0.0):
        hidden = int(dim * ratio)
        super().__init__(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim), nn.Dropout(drop))


class Block(nn.Module):
    """Self-attention + MLP (pre-norm)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SelfAttention(dim, heads, attn_drop, proj_drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLP(dim, mlp_ratio, proj_drop)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None, **_: object) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), key_mask)
        return x + self.mlp(self.norm2(x))


class CrossBlock(nn.Module):
    """Cross-attention to the aligned text + MLP (pre-norm)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = CrossAttention(dim, heads, attn_drop, proj_drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLP(dim, mlp_ratio, proj_drop)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, ctx_mask: torch.Tensor | None, **_: object) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), ctx, ctx_mask)
        return x + self.mlp(self.norm2(x))


def interleave(n_self: int, n_cross: int) -> list[str]:
    """Spread ``n_cross`` cross-attention blocks evenly among ``n_self`` self-attention blocks.

    e.g. (4, 2) → [self, self, cross, self, self, cross]: every stage sees the text repeatedly.
    """
    kinds: list[str] = []
    placed = 0
    for i in range(n_self):
        kinds.append("self")
        target = (i + 1) * n_cross // max(n_self, 1)
        while placed < target:
            kinds.append("cross")
            placed += 1
    kinds.extend(["cross"] * (n_cross - placed))
    return kinds
