"""Preference pairs for Diffusion-DPO and the base model they come from (see ``lightgen.train.dpo``).

A pair set is a folder with ``pairs.jsonl`` (caption, winner image, loser image per line; images as PNG
files beside it) and ``manifest.json`` (what the pairs depend on: base checkpoint identity, dataset, seeds,
sampling settings). :func:`build_pairs` makes one (winner = the teacher's image, loser = the base student's
sample); :func:`load_pairs` reads one back, every field checked; :func:`load_base_sampler` samples the base.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from safetensors.torch import load_file

from lightgen import layout
from lightgen.config import ExperimentConfig
from lightgen.errors import UserError
from lightgen.model.sampling import sample_images
from lightgen.train import checkpoint as ckpt
from lightgen.train.pretrain import resolve_device
from lightgen.utils import iter_jsonl

Sampler = Callable[[list[str], list[int]], np.ndarray]
PAIRS_FILE = "pairs.jsonl"
MANIFEST_FILE = "manifest.json"
_SEED_SALT = 0xD90  # DPO's randomness (pair order, masks, noise) is a different stream from pre-training's


# --------------------------------------------------------------------------------------------------
# preference pairs
# --------------------------------------------------------------------------------------------------
@dataclass
class PairSet:
    """Preference pairs in memory: captions, winners and losers (uint8 [N, H, W, 3])."""

    captions: list[str]
    winners: np.ndarray
    losers: np.ndarray
    key: str
    path: Path | None = None
    manifest: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.captions)

    def get_batch(self, indices: Any) -> dict[str, Any]:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        return {"captions": [self.captions[i] for i in idx], "winners": self.winners[idx], "losers": self.losers[idx]}


def _content_key(captions: Sequence[str], winners: np.ndarray, losers: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(list(captions)).encode())
    h.update(np.ascontiguousarray(winners).tobytes())
    h.update(np.ascontiguousarray(losers).tobytes())
    return h.hexdigest()[:16]


def _inside(folder: Path, rel: Any, where: str, field_name: str) -> Path:
    """``folder/rel`` if it stays inside ``folder`` (symlinks resolved), else a UserError."""
    if not isinstance(rel, str) or not rel.strip():
        raise UserError(f"{where}: '{field_name}' must be a non-empty relative path, got {rel!r}")
    target = (folder / rel).resolve()
    if not target.is_relative_to(folder.resolve()):
        raise UserError(f"{where}: '{field_name}' = {rel!r} escapes the pairs folder {folder} "
                        "(paths must be relative and stay inside the JSONL's folder)")
    return target


def _read_image(path: Path, resolution: int | None, where: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            img = im.convert("RGB")
    except FileNotFoundError:
        raise UserError(f"{where}: image not found: {path}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"{where}: {path} is not a readable image ({e})") from None
    if resolution is not None and img.size != (resolution, resolution):
        img = img.resize((resolution, resolution), Image.BICUBIC)  # pair images may come at another size
    return np.asarray(img, dtype=np.uint8)


def load_pairs(path: str | Path, resolution: int | None = None) -> PairSet:
    """Read a pairs JSONL (or a folder holding ``pairs.jsonl``) in LightGen's layout.

    Each line: ``{"pos_image_path": …, "neg_image_path": …, "caption": …}`` (extra keys ignored); image
    paths are relative to the JSONL's folder and may not leave it. Images are resized to ``resolution``
    (bicubic) when they differ.
    """
    p = Path(path)
    if p.is_dir():
        p = p / PAIRS_FILE
    if not p.is_file():
        raise UserError(f"dpo.pairs: pairs file not found: {p}")
    folder = p.parent
    captions: list[str] = []
    wins: list[np.ndarray] = []
    loses: list[np.ndarray] = []
    for where, row in iter_jsonl(p):
        if not isinstance(row, dict):
            raise UserError(f"{where}: each line must be a JSON object")
        missing = [k for k in ("pos_image_path", "neg_image_path", "caption") if k not in row]
        if missing:
            raise UserError(f"{where}: missing field(s) {', '.join(missing)}")
        if not isinstance(row["caption"], str):
            raise UserError(f"{where}: 'caption' must be a string, got {row['caption']!r}")
        pos = _inside(folder, row["pos_image_path"], where, "pos_image_path")
        neg = _inside(folder, row["neg_image_path"], where, "neg_image_path")
        captions.append(row["caption"])
        wins.append(_read_image(pos, resolution, where))
        loses.append(_read_image(neg, resolution, where))
    if not captions:
        raise UserError(f"{p}: no pairs in the file")
    sizes = {im.shape for im in wins + loses}
    if len(sizes) != 1:
        raise UserError(f"{p}: images have different sizes {sorted(sizes)}; pass a resolution to resize them")
    winners, losers = np.stack(wins), np.stack(loses)
    manifest: dict[str, Any] = {}
    if (folder / MANIFEST_FILE).is_file():
        with contextlib.suppress(OSError, json.JSONDecodeError):
            manifest = json.loads((folder / MANIFEST_FILE).read_text())
    return PairSet(captions, winners, losers, _content_key(captions, winners, losers), p, manifest)


def write_pairs(folder: str | Path, captions: Sequence[str], winners: np.ndarray, losers: np.ndarray,
                manifest: dict[str, Any]) -> Path:
    """Write pairs (PNGs + ``pairs.jsonl`` + ``manifest.json``) into a temp folder, then rename it."""
    from PIL import Image

    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise UserError(f"{folder} exists and is not empty; refusing to overwrite it with new pairs")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    try:
        lines = []
        for i, cap in enumerate(captions):
            pos, neg = f"images/{i:06d}_pos.png", f"images/{i:06d}_neg.png"
            Image.fromarray(winners[i]).save(tmp / pos)
            Image.fromarray(losers[i]).save(tmp / neg)
            lines.append(json.dumps({"pos_image_path": pos, "neg_image_path": neg, "caption": cap}))
        (tmp / PAIRS_FILE).write_text("\n".join(lines) + "\n")
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        if folder.exists():
            folder.rmdir()  # empty (checked above)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _file_fingerprint(path: Path, head: int = 1 << 20) -> str:
    """size + sha256 of the first MiB: cheap, content-based identity of a (possibly large) weights file."""
    h = hashlib.sha256(str(path.stat().st_size).encode())
    with open(path, "rb") as fh:
        h.update(fh.read(head))
    return h.hexdigest()[:16]


def base_identity(base_cp: Path) -> dict[str, Any]:
    """What identifies a base checkpoint: its step and a fingerprint of its EMA weights."""
    return {"step": int(ckpt.read_state(base_cp).get("step", -1)),
            "ema": _file_fingerprint(base_cp / "ema.safetensors")}


def pairs_key(cfg: ExperimentConfig, base_cp: Path, dataset: Any, n: int) -> str:
    """Cache key of the pairs built from (base weights, dataset, pair count, seed, sampling settings)."""
    ds_id = getattr(dataset, "manifest_hash", None) or f"{type(dataset).__name__}:{len(dataset)}"
    ev = cfg.eval
    blob = {
        "base": base_identity(base_cp), "dataset": ds_id, "n": n, "seed": cfg.seed,
        "resolution": cfg.data.resolution, "sampler": cfg.model.diffusion_sampler,
        "eval": [ev.num_iter, ev.diffusion_steps, ev.cfg, ev.cfg_schedule, ev.temperature],
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def build_pairs(cfg: ExperimentConfig, base: str | Path, dataset: Any, out_dir: str | Path | None = None,
                *, progress: bool = False, sampler: Sampler | None = None) -> PairSet:
    """Winner = the dataset's (teacher) image, loser = the base student's sample for the same caption.

    ``min(dpo.num_pairs, len(dataset))`` items are drawn by a permutation seeded with ``cfg.seed``; each
    loser has its own seed. Reuses ``out_dir`` (default ``<root>/dpo_pairs/<key>``) when it already
    holds these pairs.
    """
    base_cp = ckpt.resolve_checkpoint(base)
    n = min(cfg.dpo.num_pairs, len(dataset))
    key = pairs_key(cfg, base_cp, dataset, n)
    folder = Path(out_dir) if out_dir is not None else layout.dpo_pairs_dir(cfg, key)
    if (folder / MANIFEST_FILE).is_file():
        try:
            old = json.loads((folder / MANIFEST_FILE).read_text()).get("key")
        except (OSError, json.JSONDecodeError):
            old = None
        if old == key:
            return load_pairs(folder, cfg.data.resolution)
        raise UserError(f"{folder} holds other pairs (key {old}, wanted {key}); choose another --out")
    rng = np.random.default_rng([cfg.seed, _SEED_SALT])
    idx = rng.permutation(len(dataset))[:n]
    seeds = rng.integers(0, 2**31 - 1, size=n)
    sampler = sampler or load_base_sampler(base_cp, cfg)
    bs = cfg.eval.batch_size
    captions: list[str] = []
    winners, losers = [], []
    t0 = time.perf_counter()
    for i in range(0, n, bs):
        batch = dataset.get_batch(idx[i : i + bs])
        if "images" not in batch:
            raise UserError("this dataset has no teacher images (real world: cached latents); "
                            "give preference pairs as a JSONL with dpo.pairs")
        caps = list(batch["captions"])
        captions += caps
        winners.append(np.asarray(batch["images"], dtype=np.uint8))
        losers.append(np.asarray(sampler(caps, [int(s) for s in seeds[i : i + bs]]), dtype=np.uint8))
        if progress:
            print(f"pairs {min(i + bs, n)}/{n}", file=sys.stderr, flush=True)
    w, l_ = np.concatenate(winners), np.concatenate(losers)
    manifest = {
        "key": key, "n": n, "base": str(base_cp.resolve()), "base_identity": base_identity(base_cp),
        "dataset": getattr(dataset, "manifest_hash", None), "dataset_indices": idx.tolist(),
        "loser_seeds": seeds.tolist(), "seed": cfg.seed, "resolution": cfg.data.resolution,
        "eval": cfg.eval.model_dump(mode="json"), "content": _content_key(captions, w, l_),
        "build_seconds": round(time.perf_counter() - t0, 3),
    }
    write_pairs(folder, captions, w, l_, manifest)
    return PairSet(captions, w, l_, manifest["content"], folder / PAIRS_FILE, manifest)


# --------------------------------------------------------------------------------------------------
# samplers and weights
# --------------------------------------------------------------------------------------------------
def load_base_sampler(base: str | Path, cfg: ExperimentConfig) -> Sampler:
    """Sampler of the base checkpoint's EMA weights with ``cfg.eval`` settings (GenEval before DPO)."""
    model, _ = ckpt.load_checkpoint(base, weights="ema", expect=cfg, device=resolve_device(cfg.train.device))

    def sampler(prompts: list[str], seeds: list[int]) -> np.ndarray:
        return sample_images(model, prompts, cfg.eval, seeds=seeds)

    return sampler


def _load_base_ema(cfg: ExperimentConfig, base_cp: Path, vocab: list[str] | None, device: torch.device) -> torch.nn.Module:
    """The student of ``cfg`` holding the base's EMA weights (raw weights for anything EMA lacks)."""
    from lightgen.model.mar import build_model

    model = build_model(cfg, vocab=vocab)
    ckpt.load_state_into(model, load_file(str(base_cp / "model.safetensors")), base_cp)
    ckpt.load_state_into(model, load_file(str(base_cp / "ema.safetensors")), base_cp, strict_keys=False)
    return model.to(device)
