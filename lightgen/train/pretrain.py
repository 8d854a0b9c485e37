"""Pre-training loop of the MAR student.

``train(cfg, dataset, ckpt_dir, tracker=None, eval_hook=None) -> TrainResult``

* AdamW β = train.betas, weight decay only on ≥2-D weights that are not embeddings (norms, biases,
  position/buffer/mask/null embeddings and the whole diffusion head are exempt, as in MAR); linear warmup
  then constant lr; gradient clipping; gradient accumulation; fused AdamW on CUDA, foreach on CPU.
* EMA of the trainable weights with a warm-up of the decay, ``min(ema_decay, (1+s)/(10+s))``: with a
  fixed 0.9999 a run of a few thousand steps would evaluate nearly initial weights.
* Data order and all training randomness are functions of (seed, step): item ``k`` of the run is
  ``perm(seed, epoch)[k mod N]``, and each step's mask/timesteps/noise come from a generator seeded with
  (seed, step, rank, micro-step). Resuming therefore reproduces the uninterrupted loss trajectory.
* bf16 autocast on GPU (``train.precision``), SDPA attention, optional ``torch.compile`` of the blocks and
  head, DDP when launched by torchrun (``WORLD_SIZE`` > 1; ``train.batch_size`` is per process).
* No host sync per step: loss / grad-norm stay on the device and are read every ``log_every`` steps,
  where a non-finite loss also stops the run (``NonFiniteLossError``) before any checkpoint of bad
  weights is written — the last good checkpoint is kept.
* Compute accounting: ``compute/samples_seen``, ``compute/epochs``, ``compute/train_flops`` (one step
  counted with ``torch.utils.flop_counter`` × steps), ``compute/device_hours``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from lightgen.errors import UserError
from lightgen.config import ExperimentConfig
from lightgen.model.mar import LightGenMAR, build_model
from lightgen.tracking import TAG_INIT_CHECKPOINT
from lightgen.train import checkpoint as ckpt
from lightgen.train import loop
from lightgen.train.loop import param_groups  # noqa: F401 - re-exported (tests, benchmarks)


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/inf; the run stops and the last good checkpoint is kept."""


@dataclass
class TrainResult:
    step: int
    checkpoint: Path | None
    metrics: dict[str, float] = field(default_factory=dict)
    sampler: Callable[[list[str], list[int]], np.ndarray] | None = None
    loss_history: list[tuple[int, float]] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError as e:
        raise UserError(f"train.device: invalid device {spec!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"train.device={spec!r} but CUDA is not available")
    return dev


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "fp16":
        return torch.float16
    return torch.bfloat16


def dataset_vocabulary(dataset: Any, limit: int = 5000) -> list[str]:
    """The toy vocabulary: ``dataset.vocabulary()`` when offered, else words of the first captions."""
    for obj in (dataset, getattr(dataset, "world", None)):
        fn = getattr(obj, "vocabulary", None)
        if callable(fn):
            return list(fn())
    n = min(len(dataset), limit)
    words: set[str] = set()
    for i in range(0, n, 256):
        for c in dataset.get_batch(np.arange(i, min(n, i + 256)))["captions"]:
            words.update(c.lower().replace(",", " , ").split())
    return sorted(words)


class DataOrder:
    """Sample ``k`` of the run → dataset index, from (seed, epoch) permutations (resumable)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self._cache: dict[int, np.ndarray] = {}

    def perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._cache:
            self._cache = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
        return self._cache[epoch]

    def indices(self, start: int, count: int) -> np.ndarray:
        ks = np.arange(start, start + count)
        out = np.empty(count, dtype=np.int64)
        for e in np.unique(ks // self.n):
            sel = ks // self.n == e
            out[sel] = self.perm(int(e))[ks[sel] % self.n]
        return out


def ema_decay_at(step: int, cfg_decay: float, warmup: bool) -> float:
    """EMA decay after ``step`` updates: ramps as (1+s)/(10+s) up to ``cfg_decay`` when warm-up is on."""
    return min(cfg_decay, (1.0 + step) / (10.0 + step)) if warmup else cfg_decay


class EMA:
    """fp32 exponential moving average of the trainable parameters (foreach lerp, no Python loop)."""

    def __init__(self, model: torch.nn.Module):
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.shadow = [p.detach().float().clone() for p in self.params]

    @torch.no_grad()
    def update(self, decay: float) -> None:
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in self.params], 1.0 - decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.shadow))

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        for i, n in enumerate(self.names):
            if n in tensors:
                self.shadow[i].copy_(tensors[n])

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Temporarily put the EMA weights into the model (for sampling), then restore."""
        backup = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, s in zip(self.params, self.shadow):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(self.params, backup):
                    p.copy_(b)


def count_step_flops(model: LightGenMAR, batch: dict, gen_seed: int) -> float:
    """FLOPs of one forward+backward on ``batch`` (torch.utils.flop_counter), gradients discarded."""
    from torch.utils.flop_counter import FlopCounterMode

    g = torch.Generator(device=model.device).manual_seed(gen_seed)
    rg = torch.Generator().manual_seed(gen_seed)
    counter = FlopCounterMode(display=False)
    with counter:
        loss = model.forward_loss(batch, g, rg)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def optimizer_step(model: torch.nn.Module, opt: torch.optim.Optimizer, scaler: Any, sched: Any, ema: "EMA",
                   step: int, tc: Any) -> torch.Tensor:
    """One update after the micro-batches' backward passes: unscale, clip (``train.grad_clip``; 0 = off),
    step, clear the gradients, advance the lr schedule and the EMA. Returns the gradient norm."""
    scaler.unscale_(opt)
    gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip if tc.grad_clip > 0 else float("inf"))
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)
    sched.step()
    ema.update(ema_decay_at(step, tc.ema_decay, tc.ema_warmup))
    return gnorm


def _step_generators(seed: int, step: int, rank: int, micro: int, device: torch.device) -> tuple[torch.Generator, torch.Generator]:
    s = int(np.random.SeedSequence([seed, step, rank, micro]).generate_state(1, np.uint64)[0] >> 1)
    return torch.Generator(device=device).manual_seed(s), torch.Generator().manual_seed(s)


def _dist_info() -> tuple[int, int, int]:
    ws = int(os.environ.get("WORLD_SIZE", "1"))
    return ws, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))


# --------------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------------
def train(cfg: ExperimentConfig, dataset: Any, ckpt_dir: str | Path, tracker: Any = None,
          eval_hook: Callable[[int, Callable[[list[str], list[int]], np.ndarray]], None] | None = None,
          *, progress: bool | None = None, count_flops: bool = True) -> TrainResult:
    """Pre-train (or resume from the newest checkpoint in ``ckpt_dir``) for ``cfg.train.iterations``."""
    tc = cfg.train
    ckpt_dir = Path(ckpt_dir)
    if len(dataset) == 0:
        raise UserError("the dataset is empty")
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    world, rank, local_rank = _dist_info()
    device = resolve_device(tc.device)
    if world > 1:
        import torch.distributed as dist

        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    is_main = rank == 0
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # ---- model, optimizer, EMA; resume ------------------------------------------------------------
    resume_from = loop.find_resume(ckpt_dir, tracker, tag=is_main)
    state: dict[str, Any] = {}
    if resume_from is not None:
        ckpt_cfg = ckpt.load_config(ckpt.read_yaml(resume_from / "config.yaml"))
        ckpt.check_compatible(ckpt_cfg, cfg, resume_from)
        loop.check_unchanged(resume_from, ckpt_cfg, cfg, ("train.batch_size", "train.grad_accum", "seed", "data.seed"), "data")
        state = ckpt.read_state(resume_from)
        vocab = state.get("vocab")
    else:
        vocab = dataset_vocabulary(dataset) if cfg.model.text_encoder == "toy" else None
    init_cp = None
    if resume_from is None and tc.init_from:  # a checkpoint/run folder or an MLflow run id
        init_cp, _ = ckpt.resolve_source(tc.init_from, cfg.tracking.tracking_uri, what="train.init_from")
        vocab = ckpt.read_state(init_cp).get("vocab") or vocab
    model = build_model(cfg, vocab=vocab)
    if init_cp is not None:
        ckpt.init_weights_from(model, init_cp, cfg)
        if tracker is not None and is_main:
            tracker.set_tags({TAG_INIT_CHECKPOINT: str(Path(init_cp).resolve())})
    model.to(device)
    opt, sched = loop.optimizer_and_schedule(model, cfg, tc.lr, tc.warmup_steps, device)
    ema = EMA(model)
    start = loop.restore(resume_from, state, model, ema, opt, sched, tc.lr, device) if resume_from is not None else 0
    order = DataOrder(len(dataset), cfg.seed * 1_000_003 + cfg.data.seed)
    flops_per_sample = float(state.get("flops_per_sample", 0.0))
    if count_flops and not flops_per_sample and start < tc.iterations:  # eager, before compile/DDP
        model.train()
        nb = min(tc.batch_size, 4)
        flops_per_sample = count_step_flops(model, dataset.get_batch(order.indices(0, nb)), cfg.seed) / nb
    amp = autocast_dtype(tc.precision, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp is torch.float16)
    fwd_model: Any = model
    if tc.compile:
        for blk in [*model.encoder_blocks, *model.decoder_blocks, *model.aligner.blocks]:
            blk.compile()
        model.head.compile()
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        fwd_model = DDP(model, device_ids=[device] if device.type == "cuda" else None)

    micro_bs = tc.batch_size
    per_step = micro_bs * tc.grad_accum * world
    eval_steps = sorted({max(1, round(f * tc.iterations)) for f in cfg.eval.checkpoints}) if eval_hook else []
    losses: list[tuple[int, float]] = []
    last_ckpt: Path | None = resume_from
    device_seconds = float(state.get("device_seconds", 0.0))

    def get_batch(step: int, micro: int) -> dict:
        first = step * per_step + (micro * world + rank) * micro_bs
        return dataset.get_batch(order.indices(first, micro_bs))

    sampler = loop.ema_sampler(model, ema, cfg)

    def save(step: int) -> Path:
        if world > 1:
            import torch.distributed as dist

            dist.barrier()
        if not is_main:
            return ckpt.step_dir(ckpt_dir, step)
        return loop.save(ckpt_dir, step, model, ema, opt, cfg, vocab, tracker,
                         {"flops_per_sample": flops_per_sample, "device_seconds": device_seconds})

    from lightgen import progress as progress_events

    # ---- loop --------------------------------------------------------------------------------------
    show = (sys.stderr.isatty() if progress is None else progress) and is_main
    bar = _progress(show)
    task = bar.add_task("train", total=tc.iterations, completed=start, loss=float("nan"), ips=0.0) if bar else None
    model.train()
    loss_acc = torch.zeros((), device=device)
    bad = torch.zeros((), dtype=torch.bool, device=device)
    gnorm = torch.zeros((), device=device)
    n_acc, t_log, step = 0, time.perf_counter(), start
    t_run = time.perf_counter()
    try:
        if bar:
            bar.start()
        for step in range(start, tc.iterations):
            for micro in range(tc.grad_accum):
                batch = get_batch(step, micro)
                g, rg = _step_generators(cfg.seed, step, rank, micro, device)
                sync_ctx = fwd_model.no_sync() if world > 1 and micro < tc.grad_accum - 1 else contextlib.nullcontext()
                with sync_ctx, torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                    loss = fwd_model(batch, g, rg)
                scaler.scale(loss / tc.grad_accum).backward()
                loss_acc += loss.detach()
                bad |= ~torch.isfinite(loss.detach())
                n_acc += 1
            gnorm = optimizer_step(model, opt, scaler, sched, ema, step, tc)
            done = step + 1

            log_now = done % tc.log_every == 0 or done == tc.iterations
            ckpt_now = (tc.checkpoint_every and done % tc.checkpoint_every == 0) or done == tc.iterations
            if log_now or ckpt_now or done in eval_steps:
                if world > 1:  # every rank sees the same flag and the global mean loss
                    import torch.distributed as dist

                    flags = torch.stack([bad.float(), loss_acc])
                    dist.all_reduce(flags)
                    bad = flags[0] > 0
                    loss_acc = flags[1] / world
                if bool(bad):  # one host sync per log interval, and always before saving
                    raise NonFiniteLossError(
                        f"non-finite loss between steps {done - n_acc // tc.grad_accum + 1} and {done}; "
                        f"last verified checkpoint: {last_ckpt or 'none'}"
                    )
            if log_now:
                now = time.perf_counter()
                mean_loss = float(loss_acc) / max(n_acc, 1)
                ips = (n_acc // tc.grad_accum) * per_step / max(now - t_log, 1e-9)
                device_seconds += (now - t_log) * world
                losses.append((done, mean_loss))
                metrics = {
                    "train/loss": mean_loss, "train/lr": sched.get_last_lr()[0], "train/grad_norm": float(gnorm),
                    "train/images_per_s": ips, "train/ema_decay": ema_decay_at(step, tc.ema_decay, tc.ema_warmup),
                    **_compute(done, per_step, len(dataset), flops_per_sample, device_seconds),
                }
                if tracker is not None and is_main:
                    tracker.log_metrics(metrics, step=done)
                if bar:
                    bar.update(task, completed=done, loss=mean_loss, ips=ips)
                if is_main:
                    progress_events.update(done, tc.iterations, f"loss {mean_loss:.4f} · {ips:.0f} img/s")
                loss_acc.zero_()
                n_acc, t_log = 0, now
            if ckpt_now:
                last_ckpt = save(done)
            if tc.sample_every and done % tc.sample_every == 0 and tracker is not None and is_main:
                _log_samples(tracker, sampler, dataset, done)
                t_log = time.perf_counter()
            if done in eval_steps and eval_hook is not None:
                eval_hook(done, sampler)
                t_log = time.perf_counter()  # do not count evaluation as training time
    finally:
        if bar:
            bar.stop()
    step = max(start, tc.iterations)
    final = {"train/loss": losses[-1][1] if losses else float("nan"),
             **_compute(step, per_step, len(dataset), flops_per_sample, device_seconds),
             "compute/wall_seconds": time.perf_counter() - t_run}
    if tracker is not None and is_main:
        tracker.log_metrics({k: v for k, v in final.items() if k.startswith("compute/")}, step=step)
    return TrainResult(step=step, checkpoint=last_ckpt, metrics=final, sampler=sampler, loss_history=losses)


def _log_samples(tracker: Any, sampler: Callable, dataset: Any, step: int, n: int = 8) -> None:
    """A grid of EMA samples for the first ``n`` captions of the dataset, as ``samples/step-XXXXXXX.png``."""
    import io

    from PIL import Image

    from lightgen.utils import image_grid_png

    captions = dataset.get_batch(np.arange(min(n, len(dataset))))["captions"]
    images = sampler(captions, list(range(len(captions))))
    tracker.log_image(Image.open(io.BytesIO(image_grid_png(images, captions))), f"samples/step-{step:07d}.png")


def _compute(step: int, per_step: int, n: int, flops_per_sample: float, device_seconds: float) -> dict[str, float]:
    seen = step * per_step
    return {
        "compute/samples_seen": float(seen),
        "compute/epochs": seen / n,
        "compute/train_flops": seen * flops_per_sample,
        "compute/device_hours": device_seconds / 3600.0,
    }


def _progress(show: bool) -> Any:
    if not show:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[ips]:.1f} img/s"),
        TimeRemainingColumn(), transient=False,
    )
