"""Does a trained student use the image tokens it can see? A diagnostic for MAR training runs.

A masked-autoregressive model can lower its loss a long way by learning, for each position, what the
caption makes likely there (the colour, "some object somewhere") while ignoring the visible tokens. Such a
model samples every token independently of the others: scattered patches instead of objects. This probe
measures the dependence directly on a checkpoint and its own training data:

* ``loss true / shuffled``: the denoising loss on the masked tokens when the visible tokens come from the
  image itself, and when they come from another image of the batch (same masks, timesteps and noise);
* ``dz visible / dz text``: how much the head's conditioning features at masked positions move when the
  visible tokens (resp. the captions) are swapped with another item's, relative to their spread.

    PYTHONPATH=. python benchmarks/context_probe.py CHECKPOINT [--items 64] [--weights ema]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from lightgen.data import get_dataset
from lightgen.train.checkpoint import load_checkpoint


@torch.no_grad()
def probe(model, batch: dict, ratios=(0.95, 0.8, 0.5, 0.2), seed: int = 0) -> dict:
    tok = model.tokenizer.encode_batch(batch)
    b, n, d = tok.shape
    other = torch.roll(torch.arange(b), 1)  # each item's context taken from its neighbour in the batch
    g = torch.Generator().manual_seed(seed)
    out: dict = {"loss": {}}
    for r in ratios:
        nm = max(1, int(r * n))
        order = torch.rand(b, n, generator=g).argsort(1)
        mask = torch.zeros(b, n, dtype=torch.bool)
        mask.scatter_(1, order[:, :nm], True)
        t = torch.randint(0, model.noise_scheduler.config.num_train_timesteps, (b, 4, n), generator=g)
        noise = torch.randn(b, 4, n, d, generator=g)
        own = model.diffusion_loss(batch, mask=mask, t=t, noise=noise, tokens=tok, n_masked=nm).mean()
        # masked targets from the item itself, visible context from another item
        swapped = torch.where(mask[..., None], tok, tok[other])
        foreign = model.diffusion_loss(batch, mask=mask, t=t, noise=noise, tokens=swapped, n_masked=nm).mean()
        out["loss"][f"{r:.2f}"] = {"true": round(float(own), 5), "shuffled": round(float(foreign), 5)}
    nm = n // 2
    mask = torch.zeros(b, n, dtype=torch.bool)
    mask.scatter_(1, torch.rand(b, n, generator=g).argsort(1)[:, :nm], True)
    caps = list(batch["captions"])
    ctx, cm = model.encode_text(caps)
    z = model.forward_features(tok, mask, ctx, cm, nm)
    z_vis = model.forward_features(tok[other], mask, ctx, cm, nm)
    ctx2, cm2 = model.encode_text([caps[int(i)] for i in other])
    z_txt = model.forward_features(tok, mask, ctx2, cm2, nm)
    spread = float(z[mask].std())
    out["dz_visible"] = round(float((z - z_vis)[mask].std()) / spread, 4)
    out["dz_text"] = round(float((z - z_txt)[mask].std()) / spread, 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--items", type=int, default=64)
    ap.add_argument("--weights", default="ema", choices=["ema", "model"])
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model, cfg = load_checkpoint(a.checkpoint, weights=a.weights)
    ds = get_dataset(cfg)
    batch = ds.get_batch(np.arange(min(a.items, len(ds))))
    res = probe(model, batch)
    res["checkpoint"] = str(a.checkpoint)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    from lightgen.cliutil import run_guarded  # the studio's error boundary: bad input → one line, exit 2

    raise SystemExit(run_guarded(main))
