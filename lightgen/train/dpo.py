"""Diffusion-DPO post-training of the MAR student (LightGen's second stage), with an SFT control arm.

``dpo_train(cfg, base, dataset, ckpt_dir, tracker=None) -> TrainResult``

Preference pairs
----------------
A pair is (caption, winner, loser): the winner is the teacher's image (toy world: the exact render of the
caption's spec, i.e. the distillation dataset's image), the loser is the *base* student's own sample for
the same caption (EMA weights, ``cfg.eval`` sampling settings, seeded per pair). ``build_pairs`` writes
them once under ``<tracking.root>/dpo_pairs/<key>/`` in LightGen's pair layout — ``pairs.jsonl`` with
``pos_image_path`` / ``neg_image_path`` / ``caption`` and PNGs next to it — plus ``manifest.json``, all
built in a temporary folder and renamed when complete. ``load_pairs`` reads that layout (or any such
JSONL: ``dpo.pairs``); image paths must stay inside the JSONL's folder.

Loss (Diffusion-DPO, LightGen Eq. 7)
------------------------------------
Per pair the token mask, the diffusion timesteps, the noise and the caption dropout are shared between
winner and loser and between the policy θ and a frozen reference copy of the base. With ℓ = the per-pair
mean ε-prediction error over the masked tokens (``LightGenMAR.diffusion_loss``, reduction per sample),
Δ_w = ℓθ(w) − ℓref(w), Δ_l = ℓθ(l) − ℓref(l) and margin m = Δ_l − Δ_w (the implicit reward of the winner
minus the loser's, divided by β):  L = mean over pairs of −log σ(β·m) = −log σ(−β·(Δ_w − Δ_l)).
It is reduced per pair *before* the average (the official helper reduces the batch first, which turns
the per-pair logistic into one logistic of the batch mean).

Defaults and weights
--------------------
β = 5000 and a constant lr of 1e-8 (``dpo.beta``, ``dpo.lr``, optional ``dpo.warmup_steps``); every other
optimisation knob is the pre-training one (``train.*``). The whole student trains (every parameter that
pre-training trains; a frozen text encoder stays frozen). Policy and reference both start from the base
checkpoint's **EMA** weights — the weights its GenEval score was measured on. The policy gets a fresh EMA
with the same warm-up as pre-training (decay ``min(train.ema_decay, (1+s)/(10+s))`` from DPO step 0),
and evaluation after DPO (``result.sampler``) uses those EMA weights, exactly as pre-training evaluation
does. ``dpo.mode=sft`` is the control arm: the same steps, batches and optimiser on the winners only
(plain denoising loss), so a study can separate a preference effect from more distillation on teacher
images. The DPO statistics are still logged for SFT (on the log step's batch) so both arms are comparable.

What β means at our loss scale
------------------------------
ℓ is a mean over tokens, noise draws and token dimensions, so its differences are small numbers, and β is
what turns them into logits. With AdamW the update size is set by the lr, not by β (Adam divides out the
gradient's scale), so while β·|m| ≪ 1 the loss is ≈ log 2 − β·m/2 and every β gives the same training
(push ℓθ(w) down and ℓθ(l) up). β acts only once β·|m| reaches ~1: pairs whose margin is already
positive get down-weighted by σ(−β·m), which stops the policy drifting — the KL-like regulariser.
So the useful β range is around 1/|m| for the margins a run actually reaches. Measured on a toy
checkpoint (``tiny`` (width 96), 32 px, smoke world with 1,000 images, 1,500 pre-training steps of batch
32, final loss 0.044; 64 pairs, batch 16, 20 steps, EMA base weights; ``experiments/dpo_beta_scale.py``,
CPU, 2026-11-23):

  ℓ at the base             ℓ(w) = 0.0432, ℓ(l) = 0.0431; per-pair gap ℓ(w) − ℓ(l) = 0.000 ± 0.009
                            across pairs; one pair's ℓ moves by ±0.009 between noise draws — as much
                            as the gap between pairs, which is why the draw must be shared.
  lr 1e-8 (paper), β 5000   |m| = 4.6e-7 after 10 steps, 1.4e-6 after 20 → β·|m| ≈ 0.007, loss 0.690 ≈
                            log 2: the linear regime, β has no effect; β·|m| ≈ 1 would need β ≈ 7e5.
  lr 1e-5, β 5000           |m| = 3.9e-4 (10 steps), 1.1e-3 (20) → β·|m| ≈ 5, loss 0.042: saturated.
  lr 1e-5, β 50             |m| = 4.2e-4, 1.25e-3 → β·|m| ≈ 0.06, loss 0.663; Δw = +5.8e-4,
                            Δl = +1.8e-3: both errors rise (the margin grows by pushing losers up),
                            ~20 % more than at β 5000 (Δw = +4.6e-4, Δl = +1.5e-3): saturation is the
                            regulariser.
  SFT (same steps, lr 1e-5) Δw = −2.5e-4, Δl = +5e-5, reward accuracy 0.94 (more distillation on the
                            winners alone already separates the pairs).

|m| grows with lr × steps, so β and (lr, iterations) are coupled: sweep β at a fixed lr/iteration budget,
log-spaced over 0.1/|m| … 10/|m| of that budget (here: β ≈ 100 … 2.5e4 at lr 1e-5 × 20 steps, β ≈ 7e4 … 2e7
at the paper's 1e-8); ``dpo/abs_margin`` of a first run gives |m|. At our loss scale the paper's
β = 5000 with lr 1e-8 is in the β-insensitive regime.
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
import torch.nn.functional as F
from safetensors.torch import load_file

from lightgen.errors import UserError
from lightgen.config import ExperimentConfig
from lightgen.model.sampling import sample_images
from lightgen.train import checkpoint as ckpt
from lightgen.train.pretrain import (
    EMA, DataOrder, NonFiniteLossError, TrainResult, _step_generators, autocast_dtype, ema_decay_at, optimizer_step,
    param_groups, resolve_device,
)
from lightgen.utils import iter_jsonl

Sampler = Callable[[list[str], list[int]], np.ndarray]
PAIRS_FILE = "pairs.jsonl"
MANIFEST_FILE = "manifest.json"
_SEED_SALT = 0xD90  # DPO's randomness (pair order, masks, noise) is a different stream from pre-training's
STAT_KEYS = ("dpo/loss", "dpo/reward_accuracy", "dpo/margin", "dpo/abs_margin", "dpo/delta_w", "dpo/delta_l")


# --------------------------------------------------------------------------------------------------
# the loss
# --------------------------------------------------------------------------------------------------
def dpo_loss(l_pol_w: torch.Tensor, l_pol_l: torch.Tensor, l_ref_w: torch.Tensor, l_ref_l: torch.Tensor,
             beta: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Diffusion-DPO loss from per-pair denoising errors (each [B]) → (scalar loss, detached stats).

    L = mean_i −log σ(−β·[(ℓθ(w_i) − ℓref(w_i)) − (ℓθ(l_i) − ℓref(l_i))]), reduced per pair first.
    Stats (tensors, no host sync): ``dpo/loss``, ``dpo/reward_accuracy`` (share of pairs with a positive
    margin), ``dpo/margin`` (mean Δ_l − Δ_w, not multiplied by β so it compares across β),
    ``dpo/abs_margin`` (mean |Δ_l − Δ_w|: the scale β is calibrated against, β·|m| ≈ 1 is where the
    sigmoid bends), ``dpo/delta_w``, ``dpo/delta_l`` (mean ℓ differences to the reference).
    """
    shapes = {t.shape for t in (l_pol_w, l_pol_l, l_ref_w, l_ref_l)}
    if len(shapes) != 1 or l_pol_w.dim() != 1:
        raise ValueError(f"dpo_loss expects four per-pair vectors of one shape [B], got {sorted(map(tuple, shapes))}")
    delta_w = l_pol_w - l_ref_w
    delta_l = l_pol_l - l_ref_l
    margin = delta_l - delta_w
    per_pair = -F.logsigmoid(beta * margin)
    loss = per_pair.mean()
    with torch.no_grad():
        stats = {
            "dpo/loss": loss.detach(),
            "dpo/reward_accuracy": (margin > 0).float().mean(),
            "dpo/margin": margin.mean(),
            "dpo/abs_margin": margin.abs().mean(),
            "dpo/delta_w": delta_w.mean(),
            "dpo/delta_l": delta_l.mean(),
        }
    return loss, stats


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
    folder = Path(out_dir) if out_dir is not None else cfg.root_path() / "dpo_pairs" / key
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


def _with_text_dropout(cfg: ExperimentConfig) -> ExperimentConfig:
    p = cfg.dpo.text_dropout
    if p is None or p == cfg.model.text_dropout:
        return cfg
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"text_dropout": p})})


# --------------------------------------------------------------------------------------------------
# one step
# --------------------------------------------------------------------------------------------------
def pair_losses(policy: Any, ref: Any, batch: dict[str, Any], generator: torch.Generator,
                ratio_generator: torch.Generator | None = None, *, with_policy_grad: bool = True,
                winners_only: bool = False) -> dict[str, torch.Tensor]:
    """Per-pair errors ℓ of policy and reference on winners and losers with one shared noise draw.

    Winners and losers go through each model as one batch of 2B rows whose mask/timesteps/noise/caption
    dropout are the same draw repeated, so row i and row B+i differ only in the image.
    ``winners_only``: only ℓθ(w) (with grad) — the SFT objective; the rest is skipped.
    """
    caps = list(batch["captions"])
    n = len(caps)
    draw = policy.sample_training_noise(n, generator, ratio_generator=ratio_generator)
    n_masked = draw.pop("n_masked")
    if winners_only:
        wb = {"captions": caps, "images": batch["winners"]}
        tokens = policy.tokenizer.encode_batch(wb, generator=generator, device=policy.device)
        return {"pol_w": policy.diffusion_loss(wb, tokens=tokens, n_masked=n_masked, **draw)}
    both = {"captions": caps + caps, "images": np.concatenate([batch["winners"], batch["losers"]])}
    tokens = policy.tokenizer.encode_batch(both, generator=generator, device=policy.device)
    shared = {k: torch.cat([v, v]) for k, v in draw.items()}
    with torch.set_grad_enabled(with_policy_grad and torch.is_grad_enabled()):
        l_pol = policy.diffusion_loss(both, tokens=tokens, n_masked=n_masked, **shared)
    with torch.no_grad():
        l_ref = ref.diffusion_loss(both, tokens=tokens, n_masked=n_masked, **shared)
    return {"pol_w": l_pol[:n], "pol_l": l_pol[n:], "ref_w": l_ref[:n], "ref_l": l_ref[n:]}


# --------------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------------
def _resolve_pairs(cfg: ExperimentConfig, base_cp: Path, dataset: Any, pairs: Any) -> PairSet:
    if isinstance(pairs, PairSet):
        return pairs
    if pairs is not None:
        return load_pairs(pairs, cfg.data.resolution)
    if cfg.dpo.pairs:
        return load_pairs(cfg.dpo.pairs, cfg.data.resolution)
    if isinstance(dataset, PairSet):
        return dataset
    if dataset is None:
        raise UserError("DPO needs preference pairs: a dataset to build them from, or dpo.pairs (JSONL)")
    return build_pairs(cfg, base_cp, dataset)


def dpo_train(cfg: ExperimentConfig, base: str | Path, dataset: Any, ckpt_dir: str | Path, tracker: Any = None,
              *, pairs: PairSet | str | Path | None = None, progress: bool | None = None) -> TrainResult:
    """DPO (or SFT, ``dpo.mode``) from the checkpoint ``base`` for ``dpo.iterations`` steps.

    Pairs: ``pairs`` (a PairSet or JSONL path), else ``dpo.pairs``, else built (and cached) from
    ``dataset`` with :func:`build_pairs`; ``dataset`` may itself be a PairSet. Resumes from the newest
    checkpoint in ``ckpt_dir`` (same step, same pair order, same noise). A non-finite loss stops the run
    with ``NonFiniteLossError`` before any checkpoint of bad weights is written. ``result.sampler`` uses
    the DPO run's EMA weights (see the module docstring).
    """
    dc, tc = cfg.dpo, cfg.train
    ckpt_dir = Path(ckpt_dir)
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    device = resolve_device(tc.device)
    base_cp = ckpt.resolve_checkpoint(base)
    if base_cp.resolve().parent == ckpt_dir.resolve() or ckpt_dir.resolve() == base_cp.resolve():
        raise UserError(f"the DPO checkpoint folder {ckpt_dir} is the base's folder; "
                        "DPO would rotate away the base checkpoint — choose another folder")
    base_cfg = ckpt.load_config(ckpt.read_yaml(base_cp / "config.yaml"))
    ckpt.check_compatible(base_cfg, cfg, base_cp)
    vocab = ckpt.read_state(base_cp).get("vocab")
    pair_set = _resolve_pairs(cfg, base_cp, dataset, pairs)
    if len(pair_set) == 0:
        raise UserError("no preference pairs")
    res = cfg.data.resolution
    if pair_set.winners.shape[1:3] != (res, res):
        raise UserError(f"pair images are {pair_set.winners.shape[1:3]} but data.resolution is {res}")
    identity = {"dpo_base": str(base_cp.resolve()), "dpo_base_identity": base_identity(base_cp),
                "dpo_mode": dc.mode, "dpo_pairs": pair_set.key}

    mcfg = _with_text_dropout(cfg)
    ref = _load_base_ema(mcfg, base_cp, vocab, device).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    policy = _load_base_ema(mcfg, base_cp, vocab, device)
    opt = torch.optim.AdamW(param_groups(policy, tc.weight_decay), lr=dc.lr, betas=tuple(tc.betas),
                            **({"fused": True} if device.type == "cuda" else {"foreach": True}))
    warm = dc.warmup_steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
    ema = EMA(policy)
    start, state = 0, {}
    resume_from, corrupt = ckpt.latest_verified_checkpoint(ckpt_dir) if ckpt_dir.exists() else (None, [])
    if corrupt and tracker is not None and hasattr(tracker, "set_tags"):
        tracker.set_tags({ckpt.TAG_CORRUPT: "; ".join(corrupt)[:5000]})
    if resume_from is not None:
        ckpt._check_safe(resume_from)
        state = ckpt.read_state(resume_from)
        old_cfg = ckpt.load_config(ckpt.read_yaml(resume_from / "config.yaml"))
        for k, v in identity.items():
            if state.get(k) != v:
                raise UserError(f"cannot resume {resume_from}: {k} changed ({state.get(k)!r} → {v!r})")
        for k in ("dpo.batch_size", "train.grad_accum", "seed"):
            a, b = old_cfg.flat()[k], cfg.flat()[k]
            if a != b:
                raise UserError(f"cannot resume {resume_from}: {k} changed ({a!r} → {b!r}); the pair order would differ")
        ckpt.load_state_into(policy, load_file(str(resume_from / "model.safetensors"), device=str(device)), resume_from)
        ema.load(load_file(str(resume_from / "ema.safetensors"), device=str(device)))
        ckpt._opt_load(opt, load_file(str(resume_from / "optimizer.safetensors"), device=str(device)), state["optimizer"])
        start = int(state["step"])
        sched.last_epoch = start
        for g_ in opt.param_groups:
            g_["lr"] = dc.lr * sched.lr_lambdas[0](start)
        ckpt.set_rng_state(state["rng"])

    seed = cfg.seed * 1_000_003 + _SEED_SALT
    order = DataOrder(len(pair_set), seed)
    amp = autocast_dtype(tc.precision, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp is torch.float16)
    bs, accum = dc.batch_size, tc.grad_accum
    sft = dc.mode == "sft"
    last_ckpt: Path | None = resume_from
    history: list[tuple[int, float]] = []
    device_seconds = float(state.get("device_seconds", 0.0))

    def sampler(prompts: list[str], seeds: list[int]) -> np.ndarray:
        was = policy.training
        with ema.swapped_in():
            imgs = sample_images(policy, prompts, cfg.eval, seeds=seeds)
        policy.train(was)
        return imgs

    def autocast() -> Any:
        return torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None)

    sums = {k: torch.zeros((), device=device) for k in (*STAT_KEYS, "dpo/sft_loss")}
    n_stat = n_sft = 0
    bad = torch.zeros((), dtype=torch.bool, device=device)
    gnorm = torch.zeros((), device=device)
    t_log = t_run = time.perf_counter()
    bar = _progress((sys.stderr.isatty() if progress is None else progress), start, dc.iterations)
    policy.train()
    try:
        for step in range(start, dc.iterations):
            done = step + 1
            log_now = done % tc.log_every == 0 or done == dc.iterations
            for micro in range(accum):
                batch = pair_set.get_batch(order.indices((step * accum + micro) * bs, bs))
                g, rg = _step_generators(seed, step, 0, micro, device)
                with autocast():
                    if sft:
                        loss = pair_losses(policy, ref, batch, g, rg, winners_only=True)["pol_w"].mean()
                    else:
                        ls = pair_losses(policy, ref, batch, g, rg)
                        loss, stats = dpo_loss(ls["pol_w"], ls["pol_l"], ls["ref_w"], ls["ref_l"], dc.beta)
                scaler.scale(loss / accum).backward()
                bad |= ~torch.isfinite(loss.detach())
                if sft:
                    sums["dpo/sft_loss"] += loss.detach()
                    n_sft += 1
                    if log_now and micro == accum - 1:  # diagnostics of the control arm, same draw
                        g, rg = _step_generators(seed, step, 0, micro, device)
                        with torch.no_grad(), autocast():
                            ls = pair_losses(policy, ref, batch, g, rg)
                        stats = dpo_loss(ls["pol_w"], ls["pol_l"], ls["ref_w"], ls["ref_l"], dc.beta)[1]
                if not sft or (log_now and micro == accum - 1):
                    for k in STAT_KEYS:
                        sums[k] += stats[k]
                    n_stat += 1
            gnorm = optimizer_step(policy, opt, scaler, sched, ema, step, tc)

            ckpt_now = (tc.checkpoint_every and done % tc.checkpoint_every == 0) or done == dc.iterations
            if (log_now or ckpt_now) and bool(bad):
                raise NonFiniteLossError(f"non-finite {dc.mode} loss by step {done} (β={dc.beta}, lr={dc.lr}); "
                                         f"last verified checkpoint: {last_ckpt or 'none'}")
            if log_now:
                now = time.perf_counter()
                device_seconds += now - t_log
                metrics = {k: float(sums[k]) / max(n_stat, 1) for k in STAT_KEYS}
                if sft:
                    metrics["dpo/sft_loss"] = float(sums["dpo/sft_loss"]) / max(n_sft, 1)
                objective = metrics["dpo/sft_loss" if sft else "dpo/loss"]
                metrics.update({
                    "dpo/lr": sched.get_last_lr()[0], "dpo/grad_norm": float(gnorm),
                    "dpo/ema_decay": ema_decay_at(step, tc.ema_decay, tc.ema_warmup),
                    "dpo/pairs_per_s": (n_sft if sft else n_stat) * bs / max(now - t_log, 1e-9),
                    "compute/dpo_pairs_seen": float(done * bs * accum),
                    "compute/dpo_device_hours": device_seconds / 3600.0,
                })
                history.append((done, objective))
                if tracker is not None:
                    tracker.log_metrics(metrics, step=done)
                if bar is not None:
                    bar.update(bar.task_ids[0], completed=done, loss=objective)
                for v in sums.values():
                    v.zero_()
                n_stat = n_sft = 0
                t_log = now
            if ckpt_now:
                if tracker is not None and hasattr(tracker, "flush"):
                    tracker.flush(synchronous=True)  # the metrics up to this step land with the checkpoint
                last_ckpt = ckpt.save_checkpoint(ckpt_dir, done, policy, ema.state_dict(), opt, cfg, vocab,
                                                 extra={**identity, "device_seconds": device_seconds})
    finally:
        if bar is not None:
            bar.stop()
    step = max(start, dc.iterations)
    final = {"dpo/final_objective": history[-1][1] if history else float("nan"),
             "compute/dpo_wall_seconds": time.perf_counter() - t_run}
    return TrainResult(step=step, checkpoint=last_ckpt, metrics=final, sampler=sampler, loss_history=history)


def _progress(show: bool, start: int, total: int) -> Any:
    if not show:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("[bold]dpo"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn())
    bar.add_task("dpo", total=total, completed=start, loss=float("nan"))
    bar.start()
    return bar
