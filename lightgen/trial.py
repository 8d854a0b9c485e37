"""One trial of a sweep: dataset → pre-train (or DPO from a shared base) → GenEval → MLflow.

``run_trial`` is what a sweep worker calls for each job. It opens the trial's MLflow child run (nested
under the sweep's parent run), logs the dataset's measured diversity, trains with checkpoints keyed by
(point, seed) so a retried job resumes where the killed one stopped, scores GenEval and logs it.
``run_experiment`` is the same pipeline for a single ``lightgen train`` outside a sweep.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lightgen.config import ExperimentConfig
from lightgen.tracking import (
    TAG_ARM,
    TAG_ATTEMPT,
    TAG_BASE_RUN,
    TAG_CHECKPOINT,
    TAG_JOB,
    TAG_POINT_LABEL,
    TAG_RESUMED_FROM,
    TAG_POINT,
    TAG_STUDY,
    TAG_SWEEP,
    TAG_TRIAL,
    Tracker,
    tracked_run,
)

GRID_PROMPTS = 8  # sample grids: the same first prompts × seed 0 in every run of a sweep


def checkpoint_dir(cfg: ExperimentConfig, point_id: str, seed: int) -> Path:
    return Path(cfg.tracking.root) / "checkpoints" / point_id / f"seed{seed}"


def make_world(cfg: ExperimentConfig) -> Any:
    from lightgen.world import make_world as _make_world

    return _make_world(cfg)


def log_dataset(tracker: Tracker, ds: Any, cfg: ExperimentConfig) -> None:
    """Measured diversity as data/… metrics, the manifest as an artifact and an MLflow dataset input."""
    tracker.log_metrics({f"data/{k}": float(v) for k, v in ds.diversity.items() if _finite(v)}, step=0)
    tracker.log_dict(ds.manifest, "data/manifest.json")
    try:
        from mlflow.entities import Dataset as MlflowDataset
        from mlflow.entities import DatasetInput, InputTag

        name = f"{cfg.world.kind}-{cfg.data.scale_label}-div{cfg.data.caption_diversity}-s{cfg.data.seed}"
        dataset = MlflowDataset(
            name=name,
            digest=ds.manifest_hash[:36],
            source_type="local",
            source=json.dumps({"path": str(getattr(ds, "path", "") or "stream"), "actual_size": len(ds)}),
            profile=json.dumps({"num_rows": len(ds)}),
        )
        tracker.client.log_inputs(tracker.run_id, datasets=[DatasetInput(dataset, [InputTag("mlflow.data.context", "train")])])
    except Exception:  # noqa: BLE001 - the dataset input is a convenience, never fatal
        pass


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
             step: int, prefix: str = "geneval") -> dict[str, float]:
    """GenEval with the run's sampler; metrics logged at ``step`` under ``prefix``; results.jsonl as an
    artifact ``<prefix>/results.jsonl`` (the per-prompt record paired tests are built on)."""
    from lightgen.geneval.evaluate import run_geneval

    summary, _ = run_geneval(cfg, world, sampler, out_dir, detector=_detector(cfg, world), save_images=False)
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
    images = sampler(prompts, [0] * len(prompts))
    tracker.log_image(_png_to_array(image_grid_png(images, prompts, ncol=4)), f"samples/grid_step{step:07d}.png")


def _png_to_array(png: bytes) -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def train_and_evaluate(cfg: ExperimentConfig, tracker: Tracker, ckpt_dir: Path, *, mode: str = "train",
                       base: str | None = None, progress: bool = False) -> dict[str, float]:
    """The pipeline of one run. Returns the final GenEval summary."""
    from lightgen.data import get_dataset

    t0 = time.time()
    world = make_world(cfg)
    ds = get_dataset(cfg, progress=progress)
    log_dataset(tracker, ds, cfg)
    eval_root = Path(cfg.tracking.root) / "geneval" / tracker.run_id
    summaries: dict[int, dict[str, float]] = {}

    if mode == "dpo":
        from lightgen.train.dpo import dpo_train, load_base_sampler

        if base is None:
            raise ValueError("dpo mode needs a base checkpoint")
        before = evaluate(cfg, world, load_base_sampler(base, cfg), eval_root / "before", tracker, 0,
                          prefix="geneval_before")
        result = dpo_train(cfg, base, ds, ckpt_dir, tracker=tracker)
    else:
        from lightgen.train.pretrain import train

        hook = None
        if mode == "iterations" or cfg.eval.checkpoints != [1.0]:
            def hook(step: int, sampler: Callable) -> None:
                summaries[step] = evaluate(cfg, world, sampler, eval_root / f"step{step:07d}", tracker, step)
                log_sample_grid(cfg, world, sampler, tracker, step)

        result = train(cfg, ds, ckpt_dir, tracker=tracker, eval_hook=hook)
    if result.step in summaries:
        final = summaries[result.step]
    elif cfg.eval.enabled:
        final = evaluate(cfg, world, result.sampler, eval_root / "final", tracker, result.step)
    else:
        final = {}
    if result.step not in summaries:
        log_sample_grid(cfg, world, result.sampler, tracker, result.step)
    tracker.log_metrics({"compute/wall_seconds": time.time() - t0}, step=result.step)
    tracker.flush(synchronous=True)
    return {**final, "step": result.step}


def run_trial(cfg: ExperimentConfig, *, plan: Any, job: Any, parent_run_id: str, tracking_uri: str,
              trial: Any) -> float:
    """The sweep's default runner (see ``lightgen.sweep.worker_loop``)."""
    cfg = cfg.model_copy(deep=True)
    cfg.tracking.tracking_uri = tracking_uri
    tags = {
        TAG_POINT: job.point.point_id,  # the job's identity (kind included), not the bare config hash
        TAG_SWEEP: plan.sweep.name,
        TAG_STUDY: plan.study_name,
        TAG_TRIAL: trial.number,
        TAG_POINT_LABEL: job.point.label,
        TAG_ARM: job.point.arm,
        TAG_JOB: job.key,
        TAG_ATTEMPT: trial.user_attrs.get("attempt", 1),
    }
    base = None
    if plan.sweep.mode == "dpo":
        base, base_run = ensure_base_checkpoint(plan, parent_run_id, tracking_uri)
        tags[TAG_BASE_RUN] = base_run
    ckpt_dir = checkpoint_dir(cfg, job.point.point_id, job.seed)
    with tracked_run(cfg, experiment=plan.experiment_name, run_name=f"{job.point.label} · seed {job.seed}",
                     parent_run_id=parent_run_id, tags=tags, kind="trial") as tracker:
        trial.set_user_attr("mlflow_run_id", tracker.run_id)
        tracker.set_tags({TAG_CHECKPOINT: str(ckpt_dir)})
        carry_over_history(tracker, trial, job.key, ckpt_dir)
        tracker.log_params({TAG_POINT_LABEL: job.point.label, TAG_ARM: job.point.arm,
                            TAG_SWEEP: plan.sweep.name, **({"dpo.base_run_id": base_run} if base else {})})
        summary = train_and_evaluate(cfg, tracker, ckpt_dir, mode=plan.sweep.mode, base=base)
    value = summary.get(plan.sweep.objective)
    if value is None:
        raise KeyError(f"objective {plan.sweep.objective!r} not among the logged metrics {sorted(summary)}")
    return float(value)


def carry_over_history(tracker: Tracker, trial: Any, job_key: str, ckpt_dir: Path) -> int:
    """A retried job resumes from its checkpoint in a new MLflow run: copy the metrics of the job's previous
    run up to that checkpoint's step into it, so its loss curve starts at step 1, not at the resume step."""
    from lightgen.tracking import copy_metric_history
    from lightgen.train.checkpoint import latest_checkpoint, read_state

    prev = [t for t in trial.study.get_trials(deepcopy=False)
            if t.user_attrs.get(TAG_JOB) == job_key and t.number != trial.number and t.user_attrs.get("mlflow_run_id")]
    cp = latest_checkpoint(ckpt_dir) if ckpt_dir.exists() else None
    if not prev or cp is None:
        return 0
    src = max(prev, key=lambda t: t.number).user_attrs["mlflow_run_id"]
    try:
        n = copy_metric_history(tracker.client, src, tracker.run_id, max_step=int(read_state(cp)["step"]))
    except Exception as e:  # noqa: BLE001 - the history is a convenience; the trial itself goes on
        print(f"warning: could not copy the metric history of run {src}: {e}", file=sys.stderr)
        return 0
    tracker.set_tags({TAG_RESUMED_FROM: src})
    return n


def ensure_base_checkpoint(plan: Any, parent_run_id: str, tracking_uri: str) -> tuple[str, str]:
    """Train the sweep's one shared base model once (file-locked across workers); reuse it afterwards."""
    from lightgen.utils import file_lock

    cfg = plan.base_config.model_copy(deep=True)
    cfg.tracking.tracking_uri = tracking_uri
    ckpt_dir = Path(cfg.tracking.root) / "checkpoints" / plan.base_point_id / f"seed{cfg.seed}"
    done = ckpt_dir / "BASE_DONE.json"
    with file_lock(ckpt_dir.parent / "base.lock"):
        if done.is_file():
            info = json.loads(done.read_text())
            return info["checkpoint"], info["run_id"]
        with tracked_run(cfg, experiment=plan.experiment_name, run_name="base model",
                         parent_run_id=parent_run_id, kind="base",
                         tags={TAG_SWEEP: plan.sweep.name, TAG_STUDY: plan.study_name,
                               TAG_POINT: plan.base_point_id}) as tracker:
            train_and_evaluate(cfg, tracker, ckpt_dir, mode="train")
            from lightgen.train.checkpoint import latest_checkpoint

            ckpt = str(latest_checkpoint(ckpt_dir))
            run_id = tracker.run_id
        from lightgen.utils import write_atomic

        write_atomic(done, json.dumps({"checkpoint": ckpt, "run_id": run_id}))
        return ckpt, run_id


def run_experiment(cfg: ExperimentConfig, *, experiment: str | None = None, run_name: str | None = None) -> dict[str, float]:
    """`lightgen train CONFIG`: one tracked run outside a sweep (resumes from its checkpoint folder)."""
    ckpt_dir = checkpoint_dir(cfg, cfg.point_id(), cfg.seed)
    with tracked_run(cfg, experiment=experiment or cfg.tracking.experiment or "lightgen/train",
                     run_name=run_name, kind="train") as tracker:
        summary = train_and_evaluate(cfg, tracker, ckpt_dir, mode="train")
    return summary
