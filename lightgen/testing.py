"""A fake trial runner for orchestration tests and rehearsals of the sweep machinery.

It behaves like ``lightgen.sweep.worker.run_trial`` where orchestration is concerned — a child MLflow run under
the sweep's parent, a step counter checkpointed under the (point, seed) folder so a retried job resumes,
metrics named like the real ones — but trains nothing. Select it with
``lightgen sweep NAME --runner lightgen.testing:fake_trial``. ``LIGHTGEN_FAKE_STEPS`` and
``LIGHTGEN_FAKE_STEP_SECONDS`` set its length; ``LIGHTGEN_FAKE_NAN=<label>`` makes that point's loss NaN.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from lightgen.tracking import GENEVAL_TASKS, TAG_JOB, TAG_POINT, TAG_POINT_LABEL, TAG_STUDY, TAG_SWEEP, TAG_TRIAL, tracked_run
from lightgen.layout import checkpoint_dir
from lightgen.utils import write_atomic


def fake_trial(cfg: Any, *, plan: Any, job: Any, parent_run_id: str, tracking_uri: str, trial: Any) -> float:
    cfg = cfg.model_copy(deep=True)
    cfg.tracking.tracking_uri = tracking_uri
    steps = int(os.environ.get("LIGHTGEN_FAKE_STEPS", "10"))
    dt = float(os.environ.get("LIGHTGEN_FAKE_STEP_SECONDS", "0.05"))
    ckpt = checkpoint_dir(cfg, job.point.point_id, job.seed)
    state_file = ckpt / "fake_state.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else {"step": 0, "starts": []}
    state["starts"].append(state["step"])
    tags = {TAG_POINT: job.point.point_id, TAG_SWEEP: plan.sweep.name, TAG_STUDY: plan.study_name, TAG_TRIAL: trial.number,
            TAG_POINT_LABEL: job.point.label, TAG_JOB: job.key}
    from lightgen import progress
    from lightgen.sweep.plan import run_name

    with tracked_run(cfg, experiment=plan.experiment_name, run_name=run_name(job),
                     parent_run_id=parent_run_id, tags=tags, kind="trial") as tracker:
        trial.set_user_attr("mlflow_run_id", tracker.run_id)
        state.update(pid=os.getpid(), run_id=tracker.run_id, trial=trial.number)
        write_atomic(state_file, json.dumps(state))
        progress.phase("training", steps, state["step"])
        while state["step"] < steps:
            time.sleep(dt)
            state["step"] += 1
            loss = float("nan") if os.environ.get("LIGHTGEN_FAKE_NAN") == job.point.label else 1.0 / state["step"]
            if loss != loss:
                raise FloatingPointError(f"loss is NaN at step {state['step']}")
            tracker.log_metrics({"train/loss": loss}, step=state["step"])
            write_atomic(state_file, json.dumps(state))
            progress.update(state["step"], steps, f"loss {loss:.4f}")
        # a deterministic score that grows with scale, so tables have something to order
        base = min(0.95, 0.2 + 0.1 * (cfg.data.scale / 100_000) ** 0.3 + 0.01 * job.seed)
        summary = {f"geneval/{t}": round(base, 4) for t in GENEVAL_TASKS}
        summary["geneval/overall"] = round(base, 4)
        summary["compute/samples_seen"] = float(steps * cfg.train.batch_size)
        tracker.log_metrics(summary, step=state["step"])
        state["done"] = True
        write_atomic(state_file, json.dumps(state))
    return summary[plan.sweep.objective]
