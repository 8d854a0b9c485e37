"""A sample grid of a checkpoint beside the teacher's renders of the same prompts (one row per prompt).

    PYTHONPATH=. python benchmarks/sample_grid.py CKPT OUT.png [--per-task 2] [--images 6] [--set eval.cfg=2]

Prompts are the toy GenEval set's first ``--per-task`` prompts of each task; the first column of each
row is the teacher's render, the rest are the student's samples (seeds 0..images-1).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from PIL import Image, ImageDraw


def main() -> None:
    from lightgen.config import load_config
    from lightgen.geneval.evaluate import prompt_set
    from lightgen.model.sampling import sample_images
    from lightgen.train.checkpoint import load_checkpoint
    from lightgen.world import make_world

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("out")
    ap.add_argument("--per-task", type=int, default=2)
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, base = load_checkpoint(args.checkpoint)
    cfg = load_config(base.model_dump(mode="json"), args.sets)
    world = make_world(cfg)
    metas = prompt_set(cfg, world)
    by_task: dict[str, list[dict]] = {}
    for m in metas:
        by_task.setdefault(m["tag"], []).append(m)
    chosen = [m for group in by_task.values() for m in group[: args.per_task]]
    res, k = cfg.data.resolution, args.images
    teacher = world.render(chosen, res, [10_000 + i for i in range(len(chosen))])
    student = sample_images(model, [m["prompt"] for m in chosen for _ in range(k)], cfg.eval,
                            seeds=list(range(len(chosen) * k)))
    scale, label_w = 3, 230
    canvas = Image.new("RGB", (label_w + (k + 1) * (res + 2) * scale, len(chosen) * (res + 2) * scale), "white")
    draw = ImageDraw.Draw(canvas)
    for r, m in enumerate(chosen):
        y = r * (res + 2) * scale
        draw.text((4, y + res * scale // 2 - 6), m["prompt"].replace("a photo of ", ""), fill="black")
        row = [teacher[r]] + list(student[r * k:(r + 1) * k])
        for c, img in enumerate(row):
            tile = Image.fromarray(np.asarray(img)).resize((res * scale, res * scale), Image.NEAREST)
            canvas.paste(tile, (label_w + c * (res + 2) * scale + (6 if c else 0), y))
    canvas.save(args.out)
    print(f"{args.out}: {len(chosen)} prompts; column 1 = teacher, columns 2-{k + 1} = student")


if __name__ == "__main__":
    from lightgen.errors import run_guarded

    raise SystemExit(run_guarded(main))
