"""What the tokenizer lets a student reach: toy GenEval of teacher renders after an encode → decode round trip.

A student can at best reproduce the tokens of a teacher render. So the GenEval score of
``decode(encode(render))`` is the ceiling a tokenizer puts on every student; with Gaussian noise of
σ (in units of the normalised token scale) added before decoding, it shows how forgiving the decoder is to
slightly-off tokens, as a student's are. ``--swap`` also scores images whose tokens come from two different
renders of the same prompt, mixed token by token (a student that gets every token locally right but picks
a different pose per token).

    PYTHONPATH=. python benchmarks/tokenizer_ceiling.py --root /work/exp/shared [--set model.vae_stride=8 ...]

Prints one line per variant; appends JSON rows to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--root", required=True, help="tracking.root holding (or to hold) the cached tokenizers/")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--sigmas", default="0,0.1,0.2,0.4")
    ap.add_argument("--per-task", type=int, default=40)
    ap.add_argument("--out", default=str(HERE / "tokenizer_ceiling.jsonl"))
    args = ap.parse_args()

    from lightgen.config import load_config
    from lightgen.geneval.evaluate import evaluate_images, make_detector, prompt_set
    from lightgen.geneval.summary import summarize
    from lightgen.geneval.tasks import TASKS
    from lightgen.model.mar import build_tokenizer
    from lightgen.model.tokenizers import float_to_images
    from lightgen.world.toy import ToyWorld

    torch.set_num_threads(1)
    cfg = load_config(args.preset, overrides=[f"tracking.root={args.root}", *args.sets])
    res = cfg.data.resolution
    world = ToyWorld(cfg.world)
    t0 = time.perf_counter()
    tok = build_tokenizer(cfg)
    build_s = time.perf_counter() - t0
    det = make_detector(cfg, world)  # the one every run of this config scores with
    specs = prompt_set(cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"n_prompts": args.per_task})}), world)
    renders = world.render(specs, res, [10_000 + i for i in range(len(specs))])
    other = world.render(specs, res, [20_000 + i for i in range(len(specs))])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        tokens = tok.encode_images(renders)
        tokens_b = tok.encode_images(other)
    scale = float(tokens.std())
    rows = []

    def score(name: str, imgs: np.ndarray) -> None:
        s = summarize(evaluate_images([imgs[i:i + 1] for i in range(len(specs))], specs, det), bootstrap=0)
        row = {"variant": name, "sets": args.sets, "overall": s["geneval/overall"],
               "tasks": {t: round(s[f"geneval/{t}"], 3) for t in TASKS if f"geneval/{t}" in s},
               "tokens": list(tokens.shape[1:]), "build_s": round(build_s, 1),
               "machine": f"{platform.machine()}, {torch.get_num_threads()} thread", "date": time.strftime("%Y-%m-%d %H:%M")}
        rows.append(row)
        print(f"{name:28s} {row['overall']:.3f}  {row['tasks']}", flush=True)

    score("teacher renders", renders)
    for sig in [float(s) for s in args.sigmas.split(",")]:
        with torch.no_grad():
            noisy = tokens + sig * scale * torch.randn(tokens.shape, generator=g)
            score(f"round trip, noise σ={sig}", float_to_images(tok.decode_float(noisy)))
    with torch.no_grad():
        pick = torch.rand(tokens.shape[:2], generator=g) < 0.5
        mixed = torch.where(pick[..., None], tokens, tokens_b)
        score("tokens of two poses mixed", float_to_images(tok.decode_float(mixed)))
    with open(args.out, "a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    from lightgen.errors import run_guarded

    raise SystemExit(run_guarded(main))
