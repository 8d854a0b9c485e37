"""The Optuna side of a sweep: storage (journal or RDB), the study, job states, reaping dead trials,
enqueueing, restoring jobs the journal lost, and progress per point."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from lightgen import layout
from lightgen.config import ConfigError
from lightgen.redact import redact
from lightgen.sweep.plan import Plan
from lightgen.tracking import TAG_FAILURE, TAG_JOB, TAG_SLURM_JOB
from lightgen.utils import pid_alive

ATTR_FAILURE = TAG_FAILURE  # Optuna trial user attrs: why a trial failed; a failure a retry would repeat
ATTR_PERMANENT = "lightgen.permanent"
ATTR_RESTORED = "lightgen.restored"  # a trial restored from MLflow after the journal lost it
JOB_ATTR = TAG_JOB  # the Optuna trial user attr naming its job (the same name as the run tag)
ATTR_SLURM_JOB = TAG_SLURM_JOB  # the Slurm job running the trial (``--launcher slurm``)


def default_storage_url(root: str | Path) -> str:
    return f"journal:{layout.journal_file(root)}"


def _file_blocking(path: Path) -> Path | None:
    """The nearest ancestor of ``path`` that exists and is not a folder (nothing can be created under it)."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def check_storage_url(url: str, what: str = "--storage") -> None:
    """Refuse an Optuna storage URL whose file cannot be the storage, before any work: an empty journal
    path, a journal or SQLite path that is a folder, or one under a regular file."""
    if url.startswith("journal:"):
        kind, raw = "journal", url[len("journal:"):]
    elif url.startswith("sqlite:///"):
        kind, raw = "SQLite", url[len("sqlite:///"):]
    else:
        return
    if not raw.strip():
        raise ConfigError(f"{what} {url!r}: the {kind} storage needs a file path")
    if raw == ":memory:":
        return
    path = Path(raw)
    if path.is_dir():
        raise ConfigError(f"{what} {url!r}: {path} is a folder; the {kind} storage must be a file")
    blocker = _file_blocking(path)
    if blocker is not None:
        raise ConfigError(f"{what} {url!r}: {blocker} is a regular file, so {path} cannot be created under it")


def repair_journal(path: Path) -> str | None:
    """Cut a torn last line (a writer killed mid-write) off an Optuna journal, keeping the torn bytes in
    ``journal.log.torn-<time>``; returns what was done, or None. Without this the next append would be glued
    to the torn line and make the journal unreadable. Holds Optuna's own journal lock meanwhile."""
    from optuna.storages.journal import JournalFileSymlinkLock

    if not path.is_file() or path.stat().st_size == 0:
        return None
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        data = path.read_bytes()
        if data.endswith(b"\n"):
            return None
        cut = data.rfind(b"\n") + 1
        backup = path.with_name(f"{path.name}.torn-{int(time.time())}")
        backup.write_bytes(data[cut:])
        with open(path, "r+b") as f:
            f.truncate(cut)
            f.flush()
            os.fsync(f.fileno())
    finally:
        lock.release()
    return f"Optuna journal {path}: cut a torn last line ({len(data) - cut} bytes, kept in {backup})"


def open_storage(url: str, *, heartbeat: bool = True, repair: bool = False, log: Any = None) -> Any:
    """``journal:<path>`` (embedded, one machine, several processes) or any RDB URL (many nodes).

    A journal is replayed at once, so a damaged one fails here with ``DamagedStoreError`` naming the file;
    ``repair`` (the launcher) first cuts a torn last line (``repair_journal``)."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    from lightgen.tracking import DamagedStoreError

    if url.startswith("journal:"):
        path = Path(url[len("journal:"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        if repair:
            note = repair_journal(path)
            if note:
                (log or (lambda m: print(m, file=sys.stderr)))(f"warning: {note}")
        try:
            storage = JournalStorage(JournalFileBackend(str(path)))
            storage.get_all_studies()  # replays every log line
        except Exception as e:  # noqa: BLE001 - any replay failure means the file is damaged
            raise DamagedStoreError(
                f"Optuna journal {path} is damaged and cannot be replayed ({type(e).__name__}: {e}); restore it "
                f"from a backup, or move it away to start the study afresh (finished points are then run again "
                f"from their checkpoints)") from None
        return storage
    if url.startswith("sqlite"):
        print("warning: SQLite is unsafe for parallel Optuna workers; prefer the default journal storage",
              file=sys.stderr)
    try:
        kwargs: dict[str, Any] = {}
        if heartbeat:
            kwargs = dict(heartbeat_interval=30, grace_period=120,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=10))
        return RDBStorage(url, engine_kwargs={"pool_pre_ping": True}, **kwargs)
    except Exception as e:  # noqa: BLE001 - report any driver/connection failure clearly
        raise ConnectionError(f"Optuna storage {redact(url)} is unreachable or invalid: {redact(str(e))}") from None
    finally:
        optuna.logging.set_verbosity(optuna.logging.WARNING)


def get_study(plan: Plan, storage: Any) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=0) if plan.sweep.sampler == "tpe" else None
    return optuna.create_study(
        study_name=plan.study_name,
        storage=storage,
        load_if_exists=True,
        direction=plan.sweep.direction,
        sampler=sampler,
    )


def job_states(study: Any) -> dict[str, list[Any]]:
    """Trials per job key."""
    out: dict[str, list[Any]] = {}
    for t in study.get_trials(deepcopy=False):
        key = t.user_attrs.get(JOB_ATTR)
        if key:
            out.setdefault(key, []).append(t)
    return out


def reap_dead_trials(study: Any, tracking_uri: str, *, pids: set[int] | None = None, host: str | None = None) -> list[str]:
    """Fail RUNNING trials whose worker is gone (this host), mark their MLflow runs KILLED.

    Returns the job keys whose trials were reaped (they will be enqueued again).
    """
    from optuna.trial import TrialState

    from lightgen.tracking import mark_stale_runs

    host = host or socket.gethostname()
    reaped = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get("worker_host") != host:
            continue
        pid = t.user_attrs.get("worker_pid")
        dead = (pid in pids) if pids is not None else (pid is None or not pid_alive(int(pid)))
        if not dead:
            continue
        study._storage.set_trial_user_attr(t._trial_id, ATTR_FAILURE, "worker died")
        study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        run_id = t.user_attrs.get("mlflow_run_id")
        if run_id:
            mark_stale_runs("", tracking_uri, run_ids=[run_id], status="KILLED")
        if t.user_attrs.get(JOB_ATTR):
            reaped.append(t.user_attrs[JOB_ATTR])
    return reaped


def enqueue_jobs(plan: Plan, study: Any, *, retry_failed: bool = False) -> tuple[int, int]:
    """Enqueue every job that has no COMPLETE and no WAITING/RUNNING trial. Returns (enqueued, done).

    A job whose last trial failed permanently (NaN loss, bad input) is left alone unless ``retry_failed``
    (``lightgen sweep NAME --retry-failed``, after fixing the cause)."""
    from optuna.trial import TrialState

    states = job_states(study)
    enq = done = 0
    for job in plan.jobs:
        trials = states.get(job.key, [])
        if any(t.state == TrialState.COMPLETE for t in trials):
            done += 1
            continue
        if any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in trials):
            continue
        failed = [t for t in trials if t.state == TrialState.FAIL and t.user_attrs.get(ATTR_PERMANENT)]
        if failed and not retry_failed:  # a deterministic failure (NaN loss, bad input): do not retry forever
            continue
        study.enqueue_trial(
            {},
            user_attrs={
                JOB_ATTR: job.key,
                "point_id": job.point.point_id,
                "seed": job.seed,
                "label": job.point.label,
                "arm": job.point.arm,
                "overrides": json.dumps(job.point.overrides, default=str),
                "attempt": len(trials) + 1,
            },
        )
        enq += 1
    return enq, done


def restore_from_mlflow(plan: Plan, study: Any, tracking_uri: str) -> list[str]:
    """Jobs that MLflow knows as FINISHED trial runs of this study but the Optuna study has no trial of
    (an emptied or lost journal) are added back as COMPLETE trials with their logged objective, so they
    are not run again. Returns the restored job keys."""
    import optuna

    from lightgen.tracking import finished_trial_runs

    states = job_states(study)
    keys = {j.key: j for j in plan.jobs}
    missing = [k for k in keys if k not in states]
    if not missing:
        return []
    restored = []
    for run_id, tags, metrics in finished_trial_runs(tracking_uri, plan.experiment_name, plan.study_name):
        key = tags.get(JOB_ATTR)
        value = metrics.get(plan.sweep.objective)
        if key not in missing or key in restored or value is None:
            continue
        job = keys[key]
        study.add_trial(optuna.trial.create_trial(value=float(value), params={}, distributions={}, user_attrs={
            JOB_ATTR: key, "point_id": job.point.point_id, "seed": job.seed, "label": job.point.label,
            "arm": job.point.arm, "overrides": json.dumps(job.point.overrides, default=str),
            "mlflow_run_id": run_id, ATTR_RESTORED: "from MLflow (the journal had no trial of it)"}))
        restored.append(key)
    return restored


def permanently_failed(plan: Plan, study: Any) -> list[str]:
    """Job keys with no COMPLETE/WAITING/RUNNING trial whose failure was marked permanent."""
    from optuna.trial import TrialState

    out = []
    for key, trials in job_states(study).items():
        if any(t.state in (TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING) for t in trials):
            continue
        if any(t.state == TrialState.FAIL and t.user_attrs.get(ATTR_PERMANENT) for t in trials):
            out.append(key)
    keys = {j.key for j in plan.jobs}
    return sorted(k for k in out if k in keys)


def sweep_status(plan: Plan, study: Any) -> dict[str, Any]:
    """Progress per point: trials by state and objective values."""
    from optuna.trial import TrialState

    states = job_states(study)
    rows = []
    complete = pending = 0
    failed_points = 0
    for point in plan.points:
        row = {"point": point.label, "arm": point.arm, "point_id": point.point_id, "complete": 0,
               "running": 0, "waiting": 0, "failed": 0, "values": []}
        for s in range(plan.seeds):
            trials = states.get(f"{point.point_id}-s{s}", [])
            if any(t.state == TrialState.COMPLETE for t in trials):
                row["complete"] += 1
                row["values"] += [t.value for t in trials if t.state == TrialState.COMPLETE][:1]
            elif any(t.state == TrialState.RUNNING for t in trials):
                row["running"] += 1
            elif any(t.state == TrialState.WAITING for t in trials):
                row["waiting"] += 1
            elif trials:
                row["failed"] += 1
        complete += row["complete"]
        pending += plan.seeds - row["complete"]
        failed_points += row["failed"] > 0
        rows.append(row)
    return {"study": plan.study_name, "points": rows, "complete": complete, "pending": pending,
            "failed_points": failed_points, "jobs": len(plan.jobs)}


def _has_active(study: Any) -> bool:
    from optuna.trial import TrialState

    return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING)))


def _has_waiting(study: Any) -> bool:
    from optuna.trial import TrialState

    return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
