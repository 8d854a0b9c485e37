"""A tiny stand-in dataset: one coloured square on grey, captioned with its colour and place.

It follows the dataset contract of ``docs/ARCHITECTURE.md`` (``len``, ``get_batch(indices)`` →
``{"captions", "images"}``, ``vocabulary()``) so the trainer, its tests, the CPU learning check and the
CPU benchmarks run without the data layer. Items are deterministic functions of (seed, index).
"""

from __future__ import annotations

import numpy as np

COLORS = {
    "red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 60, 220), "yellow": (235, 220, 40),
    "purple": (140, 40, 170), "orange": (250, 140, 20), "black": (15, 15, 15), "white": (250, 250, 250),
}
PLACES = ("left", "right", "top", "bottom", "center")


class SquaresDataset:
    def __init__(self, n: int, resolution: int = 32, seed: int = 0, colors: int = 4):
        if n < 1:
            raise ValueError("n must be ≥ 1")
        self.n, self.resolution, self.seed = n, resolution, seed
        self.colors = list(COLORS)[:colors]

    def __len__(self) -> int:
        return self.n

    def vocabulary(self) -> list[str]:
        return sorted({"a", "photo", "of", "square", "on", "the", *self.colors, *PLACES})

    def item(self, i: int) -> tuple[str, np.ndarray]:
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.n} items")
        rng = np.random.default_rng([self.seed, int(i)])
        r = self.resolution
        color = self.colors[int(rng.integers(len(self.colors)))]
        place = PLACES[int(rng.integers(len(PLACES)))]
        side = int(rng.integers(r // 4, r // 2))
        centre = {"left": (r // 2, r // 4), "right": (r // 2, 3 * r // 4), "top": (r // 4, r // 2),
                  "bottom": (3 * r // 4, r // 2), "center": (r // 2, r // 2)}[place]
        img = np.full((r, r, 3), 128, dtype=np.uint8)
        y0 = int(np.clip(centre[0] - side // 2, 0, r - side))
        x0 = int(np.clip(centre[1] - side // 2, 0, r - side))
        img[y0 : y0 + side, x0 : x0 + side] = COLORS[color]
        return f"a photo of a {color} square on the {place}", img

    def get_batch(self, indices: np.ndarray) -> dict:
        items = [self.item(int(i)) for i in np.asarray(indices)]
        return {"captions": [c for c, _ in items], "images": np.stack([im for _, im in items])}
