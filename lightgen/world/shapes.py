"""The toy world's silhouettes: indicator functions on [-1, 1]^2 (y up), rasterised once per (class, pixel
size) at every rotation level (anti-aliased by 4×4 supersampling, edges sharpened so even small objects show
their exact palette colour) and cached for the process: what makes rendering millions of images cheap.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np

N_ROTATIONS = 7
MAX_ROTATION_DEG = 30.0


def _poly(x: np.ndarray, y: np.ndarray, verts: Sequence[tuple[float, float]]) -> np.ndarray:
    """Even-odd point-in-polygon test, vectorised over the points (works for non-convex stars)."""
    inside = np.zeros(x.shape, dtype=bool)
    v = list(verts)
    for (x1, y1), (x2, y2) in zip(v, v[1:] + v[:1]):
        if y1 == y2:
            continue
        crosses = (y1 > y) != (y2 > y)
        xi = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
        inside ^= crosses & (x < xi)
    return inside


def _regular(n: int, r: float, phase: float = math.pi / 2) -> list[tuple[float, float]]:
    return [(r * math.cos(phase + 2 * math.pi * k / n), r * math.sin(phase + 2 * math.pi * k / n)) for k in range(n)]


def _star_verts() -> list[tuple[float, float]]:
    out = []
    for k in range(10):
        r = 0.97 if k % 2 == 0 else 0.42
        a = math.pi / 2 + math.pi * k / 5
        out.append((r * math.cos(a), r * math.sin(a) - 0.08))
    return out


def _shape(name: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    r = np.hypot(x, y)
    if name == "circle":
        return r <= 0.85
    if name == "square":
        return np.maximum(np.abs(x), np.abs(y)) <= 0.7
    if name == "triangle":
        return _poly(x, y, [(0.0, 0.9), (-0.92, -0.7), (0.92, -0.7)])
    if name == "star":
        return _poly(x, y, _star_verts())
    if name == "heart":
        lobes = (np.hypot(x - 0.44, y - 0.35) <= 0.47) | (np.hypot(x + 0.44, y - 0.35) <= 0.47)
        return lobes | _poly(x, y, [(-0.88, 0.22), (0.88, 0.22), (0.0, -0.92)])
    if name == "cross":
        return ((np.abs(x) <= 0.28) & (np.abs(y) <= 0.9)) | ((np.abs(y) <= 0.28) & (np.abs(x) <= 0.9))
    if name == "diamond":
        return np.abs(x) / 0.62 + np.abs(y) / 0.95 <= 1.0
    if name == "hexagon":
        return _poly(x, y, _regular(6, 0.9, 0.0))
    if name == "pentagon":
        return _poly(x, y, [(px, py - 0.05) for px, py in _regular(5, 0.92)])
    if name == "crescent":
        return (r <= 0.9) & (np.hypot(x - 0.42, y - 0.12) > 0.72)
    if name == "ring":
        return (r <= 0.9) & (r >= 0.52)
    if name == "arrow":
        shaft = (np.abs(y) <= 0.22) & (x >= -0.92) & (x <= 0.15)
        return shaft | _poly(x, y, [(0.1, 0.72), (0.95, 0.0), (0.1, -0.72)])
    if name == "semicircle":
        v = y + 0.42
        return (np.hypot(x, v) <= 0.95) & (v >= 0)
    if name == "trapezoid":
        return _poly(x, y, [(-0.92, -0.55), (0.92, -0.55), (0.45, 0.55), (-0.45, 0.55)])
    if name == "ellipse":
        return (x / 0.95) ** 2 + (y / 0.5) ** 2 <= 1.0
    if name == "frame":
        m = np.maximum(np.abs(x), np.abs(y))
        return (m <= 0.8) & (m >= 0.48)
    raise KeyError(name)


@functools.lru_cache(maxsize=None)
def _silhouettes(name: str, size: int) -> tuple[tuple[np.ndarray, tuple[int, int, int, int]], ...]:
    """All rotation levels of one class at one pixel size, rasterised in one vectorised call."""
    ss = 4
    n = size * ss
    c = (np.arange(n, dtype=np.float64) + 0.5) / n * 2.0 - 1.0
    xx, yy = np.meshgrid(c, -c)  # y up
    angles = np.radians(-MAX_ROTATION_DEG + 2 * MAX_ROTATION_DEG * np.arange(N_ROTATIONS) / max(1, N_ROTATIONS - 1))
    ca, sa = np.cos(angles)[:, None, None], np.sin(angles)[:, None, None]
    xr, yr = ca * xx + sa * yy, -sa * xx + ca * yy  # rotate the grid = rotate the shape by -angle
    inside = _shape(name, xr, yr).astype(np.float32)
    cover = inside.reshape(N_ROTATIONS, size, ss, size, ss).mean(axis=(2, 4))
    out = []
    for k in range(N_ROTATIONS):
        # Sharpened edges: pixels ≥ 75 % covered are fully opaque, so even small objects show their
        # exact palette colour; tiny stamps get hard edges (thin shapes would have no pure pixel).
        if size < 12:
            alpha = (cover[k] >= 0.4).astype(np.float32)
        else:
            alpha = np.clip(2.0 * (cover[k] - 0.5) + 0.5, 0.0, 1.0).astype(np.float32)
        ys, xs = np.nonzero(alpha >= 0.5)
        if len(xs) == 0:  # degenerate tiny stamp: fall back to its centre pixel
            h = size // 2
            alpha[h, h] = 1.0
            ys, xs = np.array([h]), np.array([h])
        alpha = np.ascontiguousarray(alpha[..., None])  # [s, s, 1]: broadcasts over RGB when stamping
        alpha.setflags(write=False)
        out.append((alpha, (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)))
    return tuple(out)


def silhouette(name: str, size: int, rot: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Anti-aliased alpha mask (float32 ``[size, size, 1]``) of a class at a rotation level, plus the
    tight box ``(x0, y0, x1, y1)`` (exclusive) of pixels with alpha ≥ 0.5 inside the stamp.

    Cached for the process: each (class, size) is rasterised once, which is what makes rendering
    millions of images cheap.
    """
    return _silhouettes(name, size)[rot]
