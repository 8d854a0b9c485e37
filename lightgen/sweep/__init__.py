"""Sweeps: declarative ablations run as Optuna studies, every trial a child run in MLflow.

A sweep definition (``sweeps/<name>.yaml``) names a base preset, *arms* (each a cartesian grid of config
keys), seeds (replicates per point), an objective and a sampler. Every grid point has an identity — the
hash of its resolved config without seeds (``ExperimentConfig.point_id``) — and every (point, seed) is a
*job*. Jobs are enqueued as fixed Optuna trials (``enqueue_trial`` with the job in ``user_attrs``), so
parallel workers pop distinct jobs and none is skipped; re-running the command enqueues only jobs that
have neither a COMPLETE nor a live trial, so finished points are never redone.

Execution: ``lightgen sweep NAME`` is a *launcher*. It creates the MLflow experiment and the sweep's
parent run once (concurrent creation races), enqueues the jobs under a file lock, then spawns worker
processes (one per GPU × ``--workers-per-gpu``, pinned with ``CUDA_VISIBLE_DEVICES``; ``sweep.workers``
on a CPU). A worker loops ``study.optimize(objective, n_trials=1)`` while jobs wait. On the embedded
journal storage (Optuna heartbeats exist only for RDB storage) the launcher watches its workers: when one
dies, its RUNNING trial is failed, its MLflow run marked KILLED, and the job is enqueued again; the retry
resumes from the checkpoint of that point and seed (checkpoints are keyed by point and seed, not by
trial). On an RDB storage, heartbeats plus ``RetryHeartbeatStaleTrialCallback`` do the same across nodes.

State that survives: the MLflow store is created once under a file lock; concurrent launchers register and
join one another (the last out ends the parent run); a damaged journal is refused naming the file, a torn
last line is cut; jobs the journal lost but MLflow holds as FINISHED are restored. Workers receive the
storage URL, tracking URI and ``--set`` values by environment (passwords never on a command line). The
``--runner`` hook (tests) accepts only ``lightgen.sweep.worker`` and ``lightgen.testing`` functions.

One job per module: ``spec`` (the schema and loading of sweep files), ``plan`` (points, jobs, the plan file
``<root>/optuna/<study>.plan.json`` that the launcher writes once and every worker reads, the dry run),
``study`` (Optuna storage, job states, reaping, enqueueing, progress), ``worker`` (the objective and the trial
runner, one job's run of ``lightgen.pipeline``, called by import; ``python -m lightgen.sweep``),
``launch`` (the parent run, spawning and supervising workers), ``slurm`` (``--launcher slurm``: the workers as a
Slurm job array through submitit, imported on use). This package re-exports their public names.
"""

from __future__ import annotations

from lightgen.sweep.launch import (
    ENV_SETS,
    ENV_STORAGE,
    ENV_TRACKING,
    LaunchOptions,
    _cuda_device_count,
    _spawn_worker,
    ensure_parent_run,
    launch,
    resolve_workers,
)
from lightgen.sweep.plan import Job, Plan, Point, dry_run, job_point_id, plan_sweep, read_plan, write_plan
from lightgen.sweep.spec import SWEEP_DIR, Arm, SweepDef, available_sweeps, load_sweep
from lightgen.sweep.study import (
    JOB_ATTR,
    check_storage_url,
    default_storage_url,
    enqueue_jobs,
    get_study,
    job_states,
    open_storage,
    permanently_failed,
    reap_dead_trials,
    repair_journal,
    restore_from_mlflow,
    sweep_status,
)
from lightgen.sweep.worker import TRIAL_RUNNER_MODULES, _resolve_runner, _worker_main, worker_loop

__all__ = [
    "ENV_SETS", "ENV_STORAGE", "ENV_TRACKING", "JOB_ATTR", "SWEEP_DIR", "TRIAL_RUNNER_MODULES", "Arm", "Job",
    "LaunchOptions", "Plan", "Point", "SweepDef", "available_sweeps", "check_storage_url", "default_storage_url",
    "dry_run", "enqueue_jobs", "ensure_parent_run", "get_study", "job_point_id", "job_states", "launch",
    "load_sweep", "open_storage", "permanently_failed", "plan_sweep", "read_plan", "reap_dead_trials",
    "repair_journal", "resolve_workers", "restore_from_mlflow", "sweep_status", "worker_loop", "write_plan",
]
