"""The one pipeline of the studio: dataset → pre-train (or DPO/SFT from a base) → GenEval → tracking.

``lightgen train``, ``lightgen dpo`` and every sweep trial (``lightgen.sweep.worker.run_trial``) call
:func:`run`, which opens the MLflow run and calls :func:`train_and_evaluate`, the pipeline inside a run.

Naming, in one place:

* experiments (:func:`experiment_name`): ``lightgen/<sweep>`` for a sweep's runs; otherwise
  ``tracking.experiment`` or ``lightgen/train`` (pre-training) / ``lightgen/dpo`` (DPO and SFT);
* metrics: ``data/…`` (the dataset's measured diversity and composition numbers, step 0), ``train/…`` or ``dpo/…`` (the trainer),
  ``geneval/…`` (the trained model: at the end, and at each ``eval.checkpoints`` fraction along training),
  ``geneval_before/…`` (a DPO/SFT run's base model, step 0), ``compute/wall_seconds``;
* artifacts: ``data/manifest.json``, ``geneval/results.jsonl`` (``geneval_before/results.jsonl``),
  ``samples/grid_step<step>.png`` (the same first prompts × seed 0 in every run);
* a point's identity (:func:`job_point_id`): the config hash for pre-training; ``dpo-…`` / ``sft-…`` of the
  config, the kind and the base for DPO/SFT, so a DPO point never resumes a pre-training checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lightgen import layout, progress as _progress
from lightgen.config import ExperimentConfig
from lightgen.tracking import TAG_CHECKPOINT, Tracker, tracked_run
from lightgen.world import make_world

GRID_PROMPTS = 8  # sample grids: the same first prompts × seed 0 in every run of a sweep
MODES = ("train", "iterations", "dpo")  # what a run does: pre-train, pre-train with GenEval along, DPO/SFT


def experiment_name(cfg: ExperimentConfig, mode: str = "train", sweep: str | None = None) -> str:
    """The MLflow experiment of a run: its sweep's, else ``tracking.experiment``, else one per kind of run."""
    if sweep:
        return f"lightgen/{sweep}"
    return cfg.tracking.experiment or ("lightgen/dpo" if mode == "dpo" else "lightgen/train")


def job_point_id(cfg: ExperimentConfig, kind: str = "pretrain", base: str | None = None) -> str:
    """The identity of a point: what is trained (the config hash) and how (the job kind and its base).

    Pre-training (``kind="pretrain"``) keeps the plain config hash, so existing checkpoint folders and runs
    stay valid. DPO and SFT (``kind`` = ``dpo.mode``) hash the config together with the kind and the base
    they start from: a DPO point can never share a checkpoint folder, a run tag or a finished trial with a
    pre-training point of the same config (e.g. the default β next to the default data scale)."""
    if kind == "pretrain":
        return cfg.point_id()
    blob = json.dumps({"point": cfg.point_id(exclude=("seed", "data.seed", "preset", "tracking.", "sweep.", "dpo.base")),
                       "kind": kind, "base": base}, sort_keys=True)
    return f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


@dataclass
class PipelineResult:
    """What a run of the pipeline gives: the final GenEval summary (empty when GenEval is off), the base's
    (``geneval_before/…``, DPO/SFT only), the last step, the newest checkpoint and the loss history."""

    summary: dict[str, float]
    step: int
    checkpoint: Path | None
    run_id: str
    before: dict[str, float] | None = None
    loss_history: list[tuple[int, float]] = field(default_factory=list)


def run(cfg: ExperimentConfig, ckpt_dir: Path, *, mode: str = "train", experiment: str, run_kind: str,
        base: str | Path | None = None, run_name: str | None = None, parent_run_id: str | None = None,
        tags: dict[str, Any] | None = None, params: dict[str, Any] | None = None, run_id: str | None = None,
        geneval: bool = True, progress: bool = False,
        on_start: Callable[[Tracker], None] | None = None) -> PipelineResult:
    """One tracked run of the pipeline (``run_kind``: the run's ``lightgen.kind`` tag — train, dpo, trial,
    base). ``on_start(tracker)`` runs once the run is open (a sweep trial records its run id there);
    ``run_id`` resumes an existing run. The run's checkpoint folder is its ``lightgen.checkpoint`` tag."""
    with tracked_run(cfg, experiment=experiment, run_name=run_name, parent_run_id=parent_run_id, tags=tags,
                     kind=run_kind, run_id=run_id) as tracker:
        tracker.set_tags({TAG_CHECKPOINT: str(ckpt_dir)})
        if on_start is not None:
            on_start(tracker)
        if params:
            tracker.log_params(params)
        return train_and_evaluate(cfg, tracker, ckpt_dir, mode=mode, base=base, progress=progress,
                                  geneval=geneval, full=True)


def train_and_evaluate(cfg: ExperimentConfig, tracker: Tracker, ckpt_dir: Path, *, mode: str = "train",
                       base: str | Path | None = None, progress: bool = False, geneval: bool = True,
                       full: bool = False) -> Any:
    """The pipeline inside an open run. Returns the final GenEval summary with ``step`` (``full``: the
    :class:`PipelineResult`)."""
    from lightgen.data import get_dataset

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    t0 = time.time()
    world = make_world(cfg)
    ds = None
    if not (mode == "dpo" and cfg.dpo.pairs):
        _progress.phase("dataset", cfg.data.actual_size)
        on_shard = ((lambda m: _progress.update(int(m.get("count", 0)), cfg.data.actual_size))
                    if _progress.enabled() else None)
        ds = get_dataset(cfg, progress=progress, **({"on_shard": on_shard} if on_shard else {}))
        _progress.update(len(ds), cfg.data.actual_size, force=True)
    if ds is not None:
        log_dataset(tracker, ds, cfg)
    # the run's own compositions (stated and shown by its items): each toy prompt's intrain/novel split
    train_comps = ds.train_compositions() if hasattr(ds, "train_compositions") else None
    eval_root = layout.geneval_dir(cfg, tracker.run_id)
    evaluating = geneval and cfg.eval.enabled
    summaries: dict[int, dict[str, float]] = {}
    before = None

    if mode == "dpo":
        from lightgen.train.dpo import dpo_train, load_base_sampler

        if base is None:
            raise ValueError("dpo mode needs a base checkpoint")
        if evaluating:
            before = evaluate(cfg, world, load_base_sampler(base, cfg), eval_root / "before", tracker, 0,
                              prefix="geneval_before", train=train_comps)
        _progress.phase("training", cfg.dpo.iterations)
        result = dpo_train(cfg, base, ds, ckpt_dir, tracker=tracker)  # its bar follows the terminal
    else:
        from lightgen.train.pretrain import train

        hook = None
        if geneval and (mode == "iterations" or cfg.eval.checkpoints != [1.0]):
            def hook(step: int, sampler: Callable) -> None:
                summaries[step] = evaluate(cfg, world, sampler, eval_root / f"step{step:07d}", tracker, step,
                                           train=train_comps)
                log_sample_grid(cfg, world, sampler, tracker, step)
                if step < cfg.train.iterations:   # back to training: the bar resumes where it was
                    _progress.phase("training", cfg.train.iterations, done=step)

        _progress.phase("training", cfg.train.iterations)
        result = train(cfg, ds, ckpt_dir, tracker=tracker, eval_hook=hook)
    if result.step in summaries:
        final = summaries[result.step]
    elif evaluating:
        final = evaluate(cfg, world, result.sampler, eval_root / "final", tracker, result.step, train=train_comps)
    else:
        final = {}
    if result.step not in summaries:
        log_sample_grid(cfg, world, result.sampler, tracker, result.step)
    tracker.log_metrics({"compute/wall_seconds": time.time() - t0}, step=result.step)
    tracker.flush(synchronous=True)
    if not full:
        return {**final, "step": result.step}
    return PipelineResult(final, result.step, result.checkpoint, tracker.run_id, before, list(result.loss_history))


def log_dataset(tracker: Tracker, ds: Any, cfg: ExperimentConfig) -> None:
    """Measured diversity and the composition numbers (realised coverage, repetition, colourless share, colours
    per caption, held-out leaks: :mod:`lightgen.data.compositions`) as data/… metrics, the manifest as an
    artifact and an MLflow dataset input."""
    numbers = {**ds.diversity, **(ds.composition_metrics() if hasattr(ds, "composition_metrics") else {})}
    tracker.log_metrics({f"data/{k}": float(v) for k, v in numbers.items() if _finite(v)}, step=0)
    tracker.log_dict(ds.manifest, "data/manifest.json")
    name = f"{cfg.world.kind}-{cfg.data.scale_label}-div{cfg.data.caption_diversity}-s{cfg.data.seed}"
    tracker.log_dataset_input(name, digest=ds.manifest_hash[:36],
                              source={"path": str(getattr(ds, "path", "") or "stream"), "actual_size": len(ds)},
                              num_rows=len(ds))


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


_DETECTORS: dict[str, Any] = {}


def _detector(cfg: ExperimentConfig, world: Any) -> Any:
    """One detector per process and world (the toy one trains a small classifier once, then caches)."""
    from lightgen.geneval.evaluate import make_detector

    key = f"{cfg.eval.detector}:{cfg.world.model_dump_json()}:{cfg.eval.segmenter}:{cfg.eval.clip}"
    if key not in _DETECTORS:
        _DETECTORS[key] = make_detector(cfg, world)
    return _DETECTORS[key]


def evaluate(cfg: ExperimentConfig, world: Any, sampler: Callable, out_dir: Path, tracker: Tracker | None,
             step: int, prefix: str = "geneval", train: Any = None) -> dict[str, float]:
    """GenEval with the run's sampler; metrics logged at ``step`` under ``prefix``; results.jsonl as an
    artifact ``<prefix>/results.jsonl`` (the per-prompt record paired tests are built on). ``train``: the
    run's own composition set (each toy prompt's split)."""
    from lightgen.geneval.evaluate import prompt_set, run_geneval

    if _progress.enabled():  # phases: sampling GenEval's images, then scoring them
        sampler = _progress.counting_sampler(sampler, len(prompt_set(cfg, world)) * cfg.eval.images_per_prompt,
                                             then="GenEval")
    summary, _ = run_geneval(cfg, world, sampler, out_dir, detector=_detector(cfg, world), save_images=False,
                             train=train)
    if prefix != "geneval":
        summary = {k.replace("geneval", prefix, 1): v for k, v in summary.items()}
    if tracker is not None:
        tracker.log_metrics(summary, step=step)
        tracker.log_artifact(out_dir / "results.jsonl", prefix)
        tracker.flush()
    return summary


def log_sample_grid(cfg: ExperimentConfig, world: Any, sampler: Callable, tracker: Tracker, step: int) -> None:
    """The same first prompts × seed 0 in every run of a sweep, for side-by-side comparison."""
    from lightgen.geneval.evaluate import prompt_set
    from lightgen.utils import image_grid_png

    metas = prompt_set(cfg, world)
    prompts = [m["prompt"] for m in metas[:: max(1, len(metas) // GRID_PROMPTS)][:GRID_PROMPTS]]  # every task
    images = _progress.counting_sampler(sampler, len(prompts))(prompts, [0] * len(prompts))
    tracker.log_image(_png_to_array(image_grid_png(images, prompts, ncol=4)), f"samples/grid_step{step:07d}.png")


def _png_to_array(png: bytes) -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
