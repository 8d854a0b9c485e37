"""A pre-trained, frozen toy text encoder: the toy world's stand-in for the paper's Flan-T5.

The paper's T5 is pre-trained on language and frozen; it already knows that "a ruby disc" and "a red
circle" say the same thing. A toy T5 trained from scratch jointly with the student must learn every
word of every caption through the image loss, which makes linguistic variety costly by construction
(``../shared/reviews/study-validity.md``, point 9) and spends most of a CPU run's steps on reading.

``model.text_encoder_weights=toy`` (with ``model.text_encoder_mode=pretrained-toy``) gives the toy world
the paper's arrangement: a toy T5 (the same ``transformers.T5EncoderModel`` the student builds) trained
once per world on **text alone** — captions drawn at full linguistic variety over *every* composition of
the world, held-out ones included, exactly as a language model has read every phrase — to say what a
caption means: for each of the (up to two) clauses of its scene, the class, colour (or none) and count,
and the relation of the second to the first. It never sees an image, so it knows nothing about what a
held-out composition looks like; what the student learns about images it learns from its own data.
A two-query attention pool and linear read-outs sit on top during pre-training and are thrown away.

Cached like the toy VAE: ``<tracking.root>/tokenizers/toyt5-<hash>/model.safetensors`` (+ ``stats.json``),
written to a temporary name and renamed, under a file lock.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn


RECIPE_VERSION = 2
N_CAPTIONS = 20_000


def text_spec(cfg: Any) -> dict[str, Any]:
    from lightgen.data.toy import WORLD_KEYS

    m = cfg.model
    return {"recipe": RECIPE_VERSION, "world": {k: getattr(cfg.world, k) for k in WORLD_KEYS},
            "width": m.toy_text_width, "depth": m.toy_text_depth, "max_len": m.max_text_len,
            "steps": m.toy_text_pretrain_steps, "seed": 0}


def _captions(world: Any, n: int, seed: int) -> tuple[list[str], torch.Tensor]:
    """n captions over every composition of the world (text only) and their meaning targets [n, 7]."""
    from lightgen.world.captions import CaptionGenerator, Knobs

    # a world without held-out compositions: the language model reads every phrase
    open_world = type(world)(world.cfg.model_copy(update={"heldout_fraction": 0.0}))
    gen = CaptionGenerator(open_world, Knobs(coverage=1.0, variety=1.0, density=0.5), seed=seed)
    classes, colors, rels = open_world.classes, open_world.colors, open_world.relations
    caps, rows = [], []
    for spec, cap in gen.stream(n):
        inc = spec["include"]
        row = []
        for j in range(2):
            if j < len(inc):
                cl = inc[j]
                row += [classes.index(cl["class"]) + 1,
                        colors.index(cl["color"]) + 1 if cl.get("color") else 0, int(cl.get("count", 1))]
            else:
                row += [0, 0, 0]
        pos = inc[1].get("position") if len(inc) > 1 else None
        row.append(rels.index(pos[0]) + 1 if pos else 0)
        caps.append(cap)
        rows.append(row)
    return caps, torch.tensor(rows)


class _Probe(nn.Module):
    """Two learned queries attend over the T5 features; linear read-outs of each clause's meaning."""

    def __init__(self, width: int, n_classes: int, n_colors: int, max_count: int, n_rel: int):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(2, width) * 0.02)
        self.attn = nn.MultiheadAttention(width, max(1, width // 32), batch_first=True)
        self.outs = nn.ModuleList([nn.Linear(width, k) for k in (n_classes + 1, n_colors + 1, max_count + 1)])
        self.rel = nn.Linear(2 * width, n_rel + 1)

    def forward(self, feats: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        q = self.queries[None].expand(feats.shape[0], -1, -1)
        pooled, _ = self.attn(q, feats, feats, key_padding_mask=~mask)
        logits = [head(pooled[:, j]) for j in range(2) for head in self.outs]
        return logits + [self.rel(pooled.flatten(1))]


def pretrain_text_encoder(cfg: Any, spec: dict[str, Any], *, log: Any = None) -> tuple[nn.Module, dict[str, float]]:
    from lightgen.model.text import TextEncoder
    from lightgen.world.toy import ToyWorld

    world = ToyWorld(cfg.world)
    m = cfg.model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(spec["seed"]))
        enc = TextEncoder("toy", "trainable", m.max_text_len, vocab=world.vocabulary(),
                          toy_width=m.toy_text_width, toy_depth=m.toy_text_depth)
        probe = _Probe(enc.dim, len(world.classes), len(world.colors), world.max_objects, len(world.relations))
    caps, targets = _captions(world, N_CAPTIONS, seed=4242)
    n_val = 1000
    params = list(enc.parameters()) + list(probe.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    steps, batch = int(spec["steps"]), 64
    rng = random.Random(int(spec["seed"]))
    t0 = time.perf_counter()
    ce = nn.CrossEntropyLoss(reduction="none")
    # "a star and a ring" names its objects in either order: without a relation, the clauses are a set
    swapped = targets[:, [3, 4, 5, 0, 1, 2, 6]]
    unordered = targets[:, 6] == 0

    def run(idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        feats, mask = enc([caps[i] for i in idx])
        logits = probe(feats, mask)
        per_order = []
        for y in (targets[idx], swapped[idx]):
            loss = sum(ce(lg, y[:, k]) for k, lg in enumerate(logits))
            exact = torch.stack([(lg.argmax(-1) == y[:, k]) for k, lg in enumerate(logits)], 1).all(1)
            per_order.append((loss, exact))
        (l0, e0), (l1, e1) = per_order
        free = unordered[idx]
        loss = torch.where(free, torch.minimum(l0, l1), l0).mean()
        acc = torch.where(free, e0 | e1, e0).float().mean()
        return loss, acc

    enc.train()
    for step in range(steps):
        lr = 1e-3 * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / steps))  # warm-up, cosine
        for g in opt.param_groups:
            g["lr"] = lr
        loss, acc = run([rng.randrange(n_val, N_CAPTIONS) for _ in range(batch)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if log is not None and (step % 200 == 0 or step == steps - 1):
            log(f"toy T5 step {step + 1}/{steps}: loss {float(loss.detach()):.3f}, exact meaning {float(acc):.3f} "
                f"({time.perf_counter() - t0:.0f} s)")
    enc.eval()
    with torch.no_grad():
        accs = [run(list(range(i, min(i + 250, n_val))))[1] for i in range(0, n_val, 250)]
    return enc, {"toy_t5/val_exact_meaning": float(torch.stack(accs).mean()),
                 "toy_t5/train_s": time.perf_counter() - t0}


def text_folder(cfg: Any) -> Path:
    from lightgen.model.oneoff import cache_folder

    return cache_folder(cfg, "toyt5", text_spec(cfg))


def resolve_toy_text_encoder(cfg: Any, *, log: Any = None) -> Path:
    """The cached pre-trained toy T5 weights (``model.safetensors``) for ``cfg``, trained on first use."""
    from safetensors.torch import save_file

    from lightgen.model.oneoff import build_once

    def build(tmp: Path, log: Any) -> str:
        enc, stats = pretrain_text_encoder(cfg, text_spec(cfg), log=log)
        state = {k: v.detach().contiguous() for k, v in enc.t5.state_dict().items() if k != "encoder.embed_tokens.weight"}
        save_file(state, str(tmp / "model.safetensors"))
        (tmp / "stats.json").write_text(json.dumps({"spec": text_spec(cfg), **stats}, indent=2) + "\n")
        return (f"exact meaning on held-back captions {stats['toy_t5/val_exact_meaning']:.3f} "
                f"in {stats['toy_t5/train_s']:.0f} s")

    return build_once(text_folder(cfg), "model.safetensors", "toy text encoder", cfg, build, log) / "model.safetensors"
