"""MLflow conventions of the studio, in one small module.

Names here are a contract that the analysis scripts and tests rely on:

* one MLflow experiment per sweep, a parent run per sweep, a child run per trial (``parent_run_id``);
* params: every config knob under its dotted name (``data.scale``, ``dpo.beta``, ``seed`` …) plus
  ``data.scale_label`` (the nominal label) and ``data.actual_size``;
* tags: ``lightgen.sweep``, ``lightgen.point_id``, ``lightgen.world``, ``lightgen.preset``,
  ``lightgen.git_commit``, ``lightgen.git_dirty``, ``lightgen.kind`` (sweep|trial|train|dpo|eval),
  ``optuna.study``, ``optuna.trial``, ``lightgen.pid`` / ``lightgen.host`` (the process that last ran it),
  ``lightgen.corrupt_checkpoints`` (skipped on resume), ``lightgen.resumed_from_run`` (history copied from);
* metrics: ``geneval/<task>``, ``geneval/overall``, ``geneval/overall_ci_low|high``,
  ``geneval_intrain/…``, ``geneval_novel/…``, ``geneval_heldout/…`` (per-run splits), ``train/loss`` …, ``compute/…``, ``data/…``;
* artifacts: ``config.yaml``, ``pip-freeze.txt``, ``samples/…png``, ``geneval/results.jsonl``.

Metrics are buffered and sent with ``log_batch`` (one call per flush, asynchronous), never one
``log_metric`` call per value: a single call costs ~14 ms on SQLite.
"""

from lightgen.tracking.names import *  # noqa: F401,F403 - the naming contract
from lightgen.tracking.run import Tracker, tracked_run  # noqa: F401
from lightgen.tracking.runs import (  # noqa: F401
    close_parent_run, copy_metric_history, ensure_parent_run, finished_trial_runs, mark_stale_runs, run_record,
    stale_run_to_resume,
)
from lightgen.tracking.store import (  # noqa: F401
    DamagedStoreError, check_reachable, check_sqlite_store, config_params, configure, ensure_store,
    get_or_create_experiment, git_info, pip_freeze, quiet_mlflow, sqlite_path,
)
