"""The naming contract of the studio's MLflow runs: tag names, the default store, the task registry's
metric names (``geneval/<task>``). See the package docstring of ``lightgen.tracking``."""

from __future__ import annotations

import os

from lightgen.geneval.tasks import TASKS

__all__ = [
    "DEFAULT_TRACKING_URI", "GENEVAL_TASKS", "TAG_SWEEP", "TAG_POINT", "TAG_WORLD", "TAG_PRESET",
    "TAG_COMMIT", "TAG_DIRTY", "TAG_KIND", "TAG_STUDY", "TAG_TRIAL", "TAG_SEED", "TAG_BASE_RUN", "TAG_PID",
    "TAG_HOST", "TAG_FAILURE", "TAG_CHECKPOINT", "TAG_BASE_CHECKPOINT", "TAG_INIT_CHECKPOINT", "TAG_CORRUPT",
    "TAG_RESUMED_FROM", "TAG_JOB", "TAG_POINT_LABEL", "TAG_ARM", "TAG_ATTEMPT", "TAG_DATASET",
    "TAG_DATASET_PATH", "TAG_SOURCE_RUN", "TAG_SLURM_JOB", "resolve_tracking_uri",
]

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
GENEVAL_TASKS = TASKS  # the task registry (lightgen.geneval.tasks): metrics geneval/<task>

TAG_SWEEP = "lightgen.sweep"
TAG_POINT = "lightgen.point_id"
TAG_WORLD = "lightgen.world"
TAG_PRESET = "lightgen.preset"
TAG_COMMIT = "lightgen.git_commit"
TAG_DIRTY = "lightgen.git_dirty"
TAG_KIND = "lightgen.kind"
TAG_STUDY = "optuna.study"
TAG_TRIAL = "optuna.trial"
TAG_SEED = "lightgen.seed"
TAG_BASE_RUN = "lightgen.base_run_id"
TAG_PID = "lightgen.pid"  # process and host that last ran the run (a RUNNING run whose process is gone is stale)
TAG_HOST = "lightgen.host"
TAG_FAILURE = "lightgen.failure"  # why a run failed or was killed
TAG_CHECKPOINT = "lightgen.checkpoint"  # the run's checkpoint folder (its newest checkpoint after training)
TAG_BASE_CHECKPOINT = "lightgen.base_checkpoint"  # a DPO/SFT run's base checkpoint
TAG_INIT_CHECKPOINT = "lightgen.init_checkpoint"  # weights a pre-training run started from (train.init_from)
TAG_CORRUPT = "lightgen.corrupt_checkpoints"  # corrupt checkpoints skipped when this run resumed
TAG_RESUMED_FROM = "lightgen.resumed_from_run"  # a retried trial: the run its history was copied from
TAG_JOB = "lightgen.job"  # a sweep job's key "<point_id>-s<seed>" (also the Optuna trial's user attr)
TAG_POINT_LABEL = "lightgen.point_label"
TAG_ARM = "lightgen.arm"
TAG_ATTEMPT = "lightgen.attempt"
TAG_DATASET = "lightgen.dataset"  # the dataset's manifest hash
TAG_DATASET_PATH = "lightgen.dataset_path"
TAG_SOURCE_RUN = "lightgen.source_run_id"  # an imported run: its id in the store it came from
TAG_SLURM_JOB = "lightgen.slurm_job_id"  # the Slurm job (``<array>_<task>``) that ran the run (also a trial user attr)


def resolve_tracking_uri(explicit: str | None = None) -> str:
    """--tracking-uri / config value, else $MLFLOW_TRACKING_URI, else MLflow's SQLite default."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
