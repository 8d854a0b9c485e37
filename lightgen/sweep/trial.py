"""One trial of a sweep: the job's run of the pipeline (``lightgen.pipeline.run``), nested under the sweep's
parent run, with checkpoints keyed by (point, seed) so a retried job resumes where the killed one stopped.

``run_trial`` is the default trial runner of ``lightgen.sweep.worker`` (imported there, not named by a
string); the ``--runner`` test hook swaps it for ``lightgen.testing.fake_trial``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from lightgen import layout
from lightgen.config import ExperimentConfig
from lightgen.pipeline import experiment_name, run
from lightgen.tracking import (
    TAG_ARM,
    TAG_ATTEMPT,
    TAG_BASE_RUN,
    TAG_JOB,
    TAG_POINT,
    TAG_POINT_LABEL,
    TAG_RESUMED_FROM,
    TAG_STUDY,
    TAG_SWEEP,
    TAG_TRIAL,
    Tracker,
)


def run_trial(cfg: ExperimentConfig, *, plan: Any, job: Any, parent_run_id: str, tracking_uri: str,
              trial: Any) -> float:
    """The sweep's default runner (see ``lightgen.sweep.worker.worker_loop``): returns the objective."""
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
    base = base_run = None
    if plan.sweep.mode == "dpo":
        base, base_run = ensure_base_checkpoint(plan, parent_run_id, tracking_uri)
        tags[TAG_BASE_RUN] = base_run
    ckpt_dir = layout.checkpoint_dir(cfg, job.point.point_id, job.seed)

    def started(tracker: Tracker) -> None:
        trial.set_user_attr("mlflow_run_id", tracker.run_id)
        carry_over_history(tracker, trial, job.key, ckpt_dir)

    result = run(cfg, ckpt_dir, mode=plan.sweep.mode, base=base, experiment=experiment_name(cfg, sweep=plan.sweep.name),
                 run_kind="trial", run_name=f"{job.point.label} · seed {job.seed}", parent_run_id=parent_run_id,
                 tags=tags, on_start=started,
                 params={TAG_POINT_LABEL: job.point.label, TAG_ARM: job.point.arm, TAG_SWEEP: plan.sweep.name,
                         **({"dpo.base_run_id": base_run} if base else {})})
    summary = {**result.summary, "step": result.step}
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
    from lightgen.train.checkpoint import latest_checkpoint
    from lightgen.utils import file_lock, write_atomic

    cfg = plan.base_config.model_copy(deep=True)
    cfg.tracking.tracking_uri = tracking_uri
    ckpt_dir = layout.checkpoint_dir(cfg, plan.base_point_id)
    done = ckpt_dir / "BASE_DONE.json"
    with file_lock(ckpt_dir.parent / "base.lock"):
        if done.is_file():
            info = json.loads(done.read_text())
            return info["checkpoint"], info["run_id"]
        result = run(cfg, ckpt_dir, mode="train", experiment=experiment_name(cfg, sweep=plan.sweep.name),
                     run_kind="base", run_name="base model", parent_run_id=parent_run_id,
                     tags={TAG_SWEEP: plan.sweep.name, TAG_STUDY: plan.study_name, TAG_POINT: plan.base_point_id})
        ckpt = str(latest_checkpoint(ckpt_dir))
        write_atomic(done, json.dumps({"checkpoint": ckpt, "run_id": result.run_id}))
        return ckpt, result.run_id
