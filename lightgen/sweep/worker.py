"""A sweep worker: pops jobs from the study until none waits, running each through the trial runner
:func:`run_trial` — the job's run of the one pipeline (``lightgen.pipeline.run``), nested under the sweep's
parent run, with checkpoints keyed by (point, seed) so a retried job resumes where the killed one stopped
(the ``--runner`` test hook swaps it for ``lightgen.testing.fake_trial``).

Entry point (``lightgen/sweep/__main__.py``): ``python -m lightgen.sweep --plan PLAN.json --parent-run-id ID``
(storage URL and tracking URI by environment); ``python -m lightgen.sweep worker NAME --preset P …`` plans
from the sweep file instead."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from lightgen import layout, progress
from lightgen.config import ConfigError, ExperimentConfig, load_config
from lightgen.pipeline import experiment_name, run
from lightgen.redact import redact
from lightgen.sweep.plan import Job, Plan, Point, _label, read_plan, run_name
from lightgen.sweep.study import ATTR_FAILURE, ATTR_PERMANENT, ATTR_SLURM_JOB, JOB_ATTR, get_study, open_storage
from lightgen.tracking import (TAG_ARM, TAG_ATTEMPT, TAG_BASE_RUN, TAG_JOB, TAG_POINT, TAG_POINT_LABEL, TAG_RESUMED_FROM,
                               TAG_STUDY, TAG_SWEEP, TAG_TRIAL, Tracker)
from lightgen.utils import pid_alive, slurm_job_id

ENV_STORAGE = "LIGHTGEN_STORAGE_URL"
ENV_TRACKING = "LIGHTGEN_TRACKING_URI"
ENV_SETS = "LIGHTGEN_WORKER_SETS"


def worker_loop(plan: Plan, storage_url: str, tracking_uri: str, parent_run_id: str, runner: str | None = None) -> int:
    """Pop jobs until none is waiting. Returns the number of trials this worker ran."""
    import optuna
    from optuna.trial import TrialState

    storage = open_storage(storage_url)
    study = get_study(plan, storage)
    jobs = {j.key: j for j in plan.jobs}
    run_fn = _resolve_runner(runner)
    ran = 0
    current: dict[str, int] = {}  # the trial this worker is running (failed and put back on SystemExit)

    def objective(trial: optuna.Trial) -> float:
        key = trial.user_attrs.get(JOB_ATTR)
        if plan.sweep.sampler == "tpe" and key is None:
            overrides = {}
            for name, sp in plan.sweep.search.items():
                if sp.type == "int":
                    overrides[name] = trial.suggest_int(name, int(sp.low), int(sp.high), log=sp.log)
                else:
                    overrides[name] = trial.suggest_float(name, sp.low, sp.high, log=sp.log)
            cfg0 = load_config(plan.preset, {**plan.common, **overrides, "seed": 0, "data.seed": 0})
            point = Point("tpe", overrides, cfg0, plan.point_id_of(cfg0), _label(overrides))
            job = Job(point, 0)
            trial.set_user_attr(JOB_ATTR, job.key)
        elif key is None or key not in jobs:
            raise optuna.TrialPruned("no job attached (queue emptied meanwhile)")
        else:
            job = jobs[key]
        # a duplicate of a job that another worker completed or is running: skip it
        for other in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)):
            if other.number == trial.number or other.user_attrs.get(JOB_ATTR) != job.key:
                continue
            pid = other.user_attrs.get("worker_pid")
            alive = pid is None or pid_alive(int(pid))
            if other.state == TrialState.COMPLETE or (alive and other.number < trial.number):
                raise optuna.TrialPruned(f"job {job.key} already handled by trial {other.number}")
        trial.set_user_attr("worker_pid", os.getpid())
        trial.set_user_attr("worker_host", socket.gethostname())
        trial.set_user_attr("cuda_visible_devices", os.environ.get("CUDA_VISIBLE_DEVICES", ""))
        if slurm_job_id():  # --launcher slurm: the launcher reaps a gone job's trials by this
            trial.set_user_attr(ATTR_SLURM_JOB, slurm_job_id())
            trial.set_user_attr("slurm_restart_count", int(os.environ.get("SLURM_RESTART_COUNT") or 0))
        current["trial"] = trial.number
        cfg = plan.job_config(job)
        progress.start_trial(run_name(job))
        try:
            value = run_fn(cfg, plan=plan, job=job, parent_run_id=parent_run_id, tracking_uri=tracking_uri,
                           trial=trial)
        except SystemExit as e:  # submitit's pre-emption handler requeued the Slurm job and exits
            trial.set_user_attr(ATTR_FAILURE, f"pre-empted or requeued (SystemExit {e.code})")
            progress.end_trial("KILLED (pre-empted; retried from its checkpoint)")
            raise
        except (FloatingPointError, ConfigError) as e:  # deterministic: a retry would fail the same way
            trial.set_user_attr(ATTR_PERMANENT, True)
            trial.set_user_attr(ATTR_FAILURE, redact(f"{type(e).__name__}: {e}")[:1000])
            progress.end_trial(f"FAILED ({type(e).__name__}: {redact(str(e))[:200]})")
            raise
        except Exception as e:
            trial.set_user_attr(ATTR_FAILURE, redact(f"{type(e).__name__}: {e}")[:1000])
            progress.end_trial(f"FAILED ({type(e).__name__}: {redact(str(e))[:200]})")
            raise
        progress.end_trial("FINISHED", float(value))
        return float(value)

    while True:
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        n_tpe_done = len([t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("arm") is None
                          and t.state in (TrialState.COMPLETE, TrialState.RUNNING)])
        tpe_left = plan.sweep.sampler == "tpe" and n_tpe_done < plan.sweep.budget
        if not waiting and not tpe_left:
            break
        current.clear()
        try:
            study.optimize(objective, n_trials=1, catch=(Exception,))
        except SystemExit:  # Optuna leaves the trial RUNNING on SystemExit: fail it and enqueue its job again
            _fail_and_requeue(plan, study, current.get("trial"), "pre-empted or requeued")
            raise
        ran += 1
    return ran


def _fail_and_requeue(plan: Plan, study: Any, number: int | None, reason: str) -> None:
    from optuna.trial import TrialState

    from lightgen.sweep.study import enqueue_jobs

    if number is None:
        return
    try:
        from lightgen.utils import file_lock

        t = study.get_trials(deepcopy=False)[number]
        if t.state == TrialState.RUNNING:
            study._storage.set_trial_user_attr(t._trial_id, ATTR_FAILURE, reason)
            study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        with file_lock(layout.study_lock(plan.base_config.tracking.root, plan.study_name)):
            enqueue_jobs(plan, study)
    except Exception as e:  # noqa: BLE001 - the launcher (or the requeued job) reaps it otherwise
        print(f"warning: could not fail trial {number} on exit: {e}", file=sys.stderr)


def _resolve_runner(spec: str | None) -> Any:
    """The function that runs one trial: ``module:function`` (tests inject fakes), default the real one."""
    import importlib

    if spec is None:
        return run_trial
    mod, _, fn = spec.partition(":")
    if mod not in TRIAL_RUNNER_MODULES:  # the hook is for tests, not a way to run arbitrary code
        raise ConfigError(f"--runner {spec!r}: a trial runner must come from {' or '.join(TRIAL_RUNNER_MODULES)}")
    return getattr(importlib.import_module(mod), fn)


TRIAL_RUNNER_MODULES = ("lightgen.sweep.worker", "lightgen.testing")


# --------------------------------------------------------------------------------------------------
# The trial runner: one job = one run of the pipeline
# --------------------------------------------------------------------------------------------------
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
                 run_kind="trial", run_name=run_name(job), parent_run_id=parent_run_id,
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


def _worker_main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m lightgen.sweep")
    ap.add_argument("cmd", nargs="?", choices=["worker"])
    ap.add_argument("name", nargs="?", help="sweep name or file, planned here (without --plan)")
    ap.add_argument("--plan", default=None, help="the plan file the launcher wrote (plan.json)")
    ap.add_argument("--preset", default=None)
    ap.add_argument("--storage", default=os.environ.get(ENV_STORAGE))
    ap.add_argument("--tracking-uri", default=os.environ.get(ENV_TRACKING))
    ap.add_argument("--parent-run-id", required=True)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--runner", default=None)
    ap.add_argument("--seeds", type=int, default=None)
    a = ap.parse_args(argv)
    from lightgen.config import _parse_scalar, _split_override

    if not a.storage or not a.tracking_uri:
        ap.error(f"the storage and tracking URI come from ${ENV_STORAGE} / ${ENV_TRACKING} (or --storage / --tracking-uri)")
    if a.plan:
        plan = read_plan(a.plan)  # the launcher planned once; a worker (or its restart) does not plan again
    elif a.name and a.preset:
        from lightgen.sweep.plan import plan_sweep
        from lightgen.sweep.spec import load_sweep

        sets = json.loads(os.environ.get(ENV_SETS) or "{}")
        for s in a.set:
            k, v = _split_override(s)
            sets[k] = _parse_scalar(v)
        plan = plan_sweep(load_sweep(a.name), a.preset, sets, seeds=a.seeds)
    else:
        ap.error("give --plan PLAN.json (what the launcher wrote) or: worker NAME --preset PRESET")
    worker_loop(plan, a.storage, a.tracking_uri, a.parent_run_id, runner=a.runner)
    return 0

