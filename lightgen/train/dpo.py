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

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lightgen.errors import UserError
from lightgen.config import ExperimentConfig
from lightgen.train import checkpoint as ckpt
from lightgen.train import loop
from lightgen.train.pretrain import (
    EMA, DataOrder, NonFiniteLossError, TrainResult, _step_generators, autocast_dtype, ema_decay_at, optimizer_step,
    resolve_device,
)
from lightgen.train.pairs import (  # noqa: F401 - the pairs API, re-exported
    MANIFEST_FILE, PAIRS_FILE, _SEED_SALT, PairSet, Sampler, _load_base_ema, base_identity, build_pairs, load_base_sampler,
    load_pairs, pairs_key, write_pairs,
)

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
# the policy's config
# --------------------------------------------------------------------------------------------------
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
    opt, sched = loop.optimizer_and_schedule(policy, cfg, dc.lr, dc.warmup_steps, device)
    ema = EMA(policy)
    start, state = 0, {}
    resume_from = loop.find_resume(ckpt_dir, tracker)
    if resume_from is not None:
        state = ckpt.read_state(resume_from)
        old_cfg = ckpt.load_config(ckpt.read_yaml(resume_from / "config.yaml"))
        for k, v in identity.items():
            if state.get(k) != v:
                raise UserError(f"cannot resume {resume_from}: {k} changed ({state.get(k)!r} → {v!r})")
        loop.check_unchanged(resume_from, old_cfg, cfg, ("dpo.batch_size", "train.grad_accum", "seed"), "pair")
        start = loop.restore(resume_from, state, policy, ema, opt, sched, dc.lr, device)

    seed = cfg.seed * 1_000_003 + _SEED_SALT
    order = DataOrder(len(pair_set), seed)
    amp = autocast_dtype(tc.precision, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp is torch.float16)
    bs, accum = dc.batch_size, tc.grad_accum
    sft = dc.mode == "sft"
    last_ckpt: Path | None = resume_from
    history: list[tuple[int, float]] = []
    device_seconds = float(state.get("device_seconds", 0.0))

    sampler = loop.ema_sampler(policy, ema, cfg)

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
                from lightgen import progress as progress_events

                progress_events.update(done, dc.iterations, f"objective {objective:.4f}")
                for v in sums.values():
                    v.zero_()
                n_stat = n_sft = 0
                t_log = now
            if ckpt_now:  # the metrics up to this step land with the checkpoint
                last_ckpt = loop.save(ckpt_dir, done, policy, ema, opt, cfg, vocab, tracker,
                                      {**identity, "device_seconds": device_seconds})
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
