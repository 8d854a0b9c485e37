"""``lightgen sweep NAME --launcher slurm``: the sweep's workers as a Slurm job array, submitted with submitit.

The launcher does what the local one does once (the study, the MLflow experiment and parent run, the plan
file, reaping and enqueueing), then submits N array tasks; each runs the existing worker loop
(:func:`lightgen.sweep.worker.worker_loop`), so retries from checkpoints and "re-run continues" apply
unchanged. Every trial carries its Slurm job (``<array>_<task>``) as the user attr / run tag
``lightgen.slurm_job_id``. The launcher polls ``squeue`` (not ``sacct``: clusters without accounting have
none) until the jobs are gone, reaps the RUNNING trials of a job that ended (run KILLED, trial FAIL, job
enqueued again for the live workers or the next launch), and logs each job's submitit stdout/stderr as
artifacts of the parent run and of that job's trial runs.

Pre-emption: Slurm sends USR2 ``signal_delay_s`` before the time limit (or on pre-emption); submitit calls
:meth:`SlurmWorker.checkpoint`, requeues the job (same id) and exits; the ``SystemExit`` marks the run
KILLED and the trial FAIL, its job enqueued again, and the requeued job resumes from the checkpoint.

Storage: several nodes need an RDB URL (``--storage postgresql://…``) reachable from them; on one node the
default journal file works. The tracking root (datasets, checkpoints, the plan) must be a shared folder,
and the MLflow store shared too (a server, or SQLite on the shared folder for a few workers).
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightgen import layout
from lightgen.errors import UserError
from lightgen.utils import file_lock, slurm_job_id

LAUNCHERS = ("local", "slurm")
# squeue states of a job that has ended (anything else: pending, running, requeued, completing … is alive)
ENDED = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
         "REVOKED", "SPECIAL_EXIT", "TIMEOUT"}
ATTR_RESTART = "slurm_restart_count"  # SLURM_RESTART_COUNT of the job incarnation that ran a trial


@dataclass
class SlurmOptions:
    partition: str | None = None
    gpus_per_node: int | None = None
    nodes: int = 1
    time: str | None = None  # minutes, or [D-]HH:MM[:SS]
    account: str | None = None
    qos: str | None = None
    array_parallelism: int | None = None
    workers: int | None = None  # array tasks (default: one per waiting job)
    max_requeues: int = 20  # time-outs/pre-emptions a job may be requeued through
    poll_seconds: float = 2.0

    def minutes(self) -> int:
        return parse_time(self.time) if self.time else 60


def parse_time(text: str) -> int:
    """A Slurm time limit as whole minutes (seconds round up). Slurm's forms: ``M``, ``M:S``, ``H:M:S``,
    ``D-H``, ``D-H:M``, ``D-H:M:S``."""
    s = str(text).strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+(?::\d+){0,2})", s)
    err = f"--time {text!r}: expected a positive time limit, minutes (e.g. 60) or [D-]HH:MM:SS"
    if not m:
        raise UserError(err)
    days, parts = m.group(1), [int(x) for x in m.group(2).split(":")]
    if days is not None:  # D-H, D-H:M, D-H:M:S
        h, mi, sec = (parts + [0, 0])[:3]
        d = int(days)
    elif len(parts) == 1:
        d, h, mi, sec = 0, 0, parts[0], 0
    elif len(parts) == 2:  # M:S
        d, h, (mi, sec) = 0, 0, parts
    else:
        d, (h, mi, sec) = 0, parts
    if (len(parts) > 1 or days is not None) and (sec >= 60 or (mi >= 60 and (h or d or len(parts) == 3))):
        raise UserError(err)
    minutes = d * 1440 + h * 60 + mi + (1 if sec else 0)
    if minutes < 1:
        raise UserError(err)
    return minutes


def check_slurm() -> None:
    """The Slurm client commands the launcher needs are on PATH (else one line, exit 2)."""
    missing = [c for c in ("sbatch", "squeue", "scancel") if shutil.which(c) is None]
    if missing:
        raise UserError(f"--launcher slurm: {', '.join(missing)} not found on PATH (run on a Slurm login node, or "
                        f"use --launcher local)")


def job_name(plan: Any) -> str:
    return f"lightgen-{plan.study_name}"[:120]


def jobs_folder(root: str | Path, study: str) -> Path:
    """submitit's folder of a study's Slurm jobs (pickles, logs): ``<root>/optuna/<study>.slurm/``."""
    return layout.optuna_dir(root) / f"{study}.slurm"


def executor_params(plan: Any, sopts: SlurmOptions) -> dict[str, Any]:
    p: dict[str, Any] = {"job_name": job_name(plan), "time": sopts.minutes(), "nodes": sopts.nodes,
                         "ntasks_per_node": 1}
    for key in ("partition", "gpus_per_node", "account", "qos", "array_parallelism"):
        if getattr(sopts, key) is not None:
            p[key] = getattr(sopts, key)
    return p


def make_executor(plan: Any, sopts: SlurmOptions) -> Any:
    import submitit

    folder = jobs_folder(plan.base_config.tracking.root, plan.study_name).absolute()
    ex = submitit.SlurmExecutor(folder=str(folder), max_num_timeout=sopts.max_requeues)
    ex.update_parameters(**executor_params(plan, sopts))
    return ex


def sbatch_script(plan: Any, sopts: SlurmOptions, n_workers: int) -> str:
    """The sbatch script a launch would submit (``--dry-run``): submitit's own text for a job array."""
    ex = make_executor(plan, sopts)
    if n_workers > 1:
        ex.parameters["map_count"] = n_workers
    return ex._make_submission_file_text(ex._submitit_command_str, "dry-run")


class SlurmWorker:
    """One array task: the sweep's worker loop, pickled by submitit (URLs travel in the pickle, which lives in
    a folder only the user can read, never on a command line or in the job's environment)."""

    def __init__(self, plan_file: str, storage_url: str, tracking_uri: str, parent_run_id: str,
                 runner: str | None = None) -> None:
        self.plan_file, self.storage_url, self.tracking_uri = plan_file, storage_url, tracking_uri
        self.parent_run_id, self.runner = parent_run_id, runner

    def __call__(self, index: int = 0) -> int:
        from lightgen.sweep.plan import read_plan
        from lightgen.sweep.study import enqueue_jobs, get_study, open_storage
        from lightgen.sweep.worker import worker_loop

        plan = read_plan(self.plan_file)
        restart = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
        if restart:  # a requeued job: its trials from before the requeue are dead (same job id)
            study = get_study(plan, open_storage(self.storage_url))
            with file_lock(layout.study_lock(plan.base_config.tracking.root, plan.study_name)):
                dead = reap_job_trials(study, self.tracking_uri, {slurm_job_id() or ""}, before_restart=restart)
                enqueue_jobs(plan, study)
            if dead:
                print(f"requeued job {slurm_job_id()} (restart {restart}): retrying {', '.join(dead)}", flush=True)
        return worker_loop(plan, self.storage_url, self.tracking_uri, self.parent_run_id, runner=self.runner)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit's pre-emption/time-out hook: requeue this same worker. The trial in progress keeps its
        last checkpoint (the pipeline checkpoints as it trains); the exit that follows marks its run KILLED."""
        import submitit

        print(f"job {slurm_job_id()}: pre-empted or timed out; requeueing", flush=True)
        # requeueing makes Slurm SIGTERM this process: it must not cut short the clean-up of the exit that
        # follows (the run marked KILLED, the trial failed and its job enqueued again); SIGKILL comes later
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def squeue_states(name: str) -> dict[str, str]:
    """Job id (``<array>_<task>`` for array tasks) → state, for this user's jobs called ``name``."""
    try:
        res = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-n", name, "-u", getpass.getuser(), "-o", "%i|%T"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ConnectionError(f"squeue failed: {e}") from None
    if res.returncode != 0:
        raise ConnectionError(f"squeue failed (exit {res.returncode}): {res.stderr.strip()[:300]}")
    out = {}
    for line in res.stdout.split():
        jid, _, state = line.partition("|")
        out[jid] = state.split()[0] if state else "UNKNOWN"
    return out


def alive(states: dict[str, str]) -> set[str]:
    return {j for j, s in states.items() if s not in ENDED}


def reap_job_trials(study: Any, tracking_uri: str, job_ids: set[str], *, before_restart: int | None = None) -> list[str]:
    """Fail the RUNNING trials of the given Slurm jobs (gone; or, with ``before_restart``, run by an earlier
    incarnation of a requeued job) and mark their MLflow runs KILLED — also the runs a killed worker failed the
    trial of but could not end itself. Returns the job keys of the reaped trials."""
    from optuna.trial import TrialState

    from lightgen.sweep.study import ATTR_FAILURE, ATTR_SLURM_JOB, JOB_ATTR
    from lightgen.tracking import mark_stale_runs

    reaped = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.FAIL)):
        jid = t.user_attrs.get(ATTR_SLURM_JOB)
        if jid not in job_ids:
            continue
        if before_restart is not None and int(t.user_attrs.get(ATTR_RESTART, 0)) >= before_restart:
            continue
        if t.state == TrialState.RUNNING:
            study._storage.set_trial_user_attr(t._trial_id, ATTR_FAILURE, f"Slurm job {jid} ended")
            study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
            if t.user_attrs.get(JOB_ATTR):
                reaped.append(t.user_attrs[JOB_ATTR])
        run_id = t.user_attrs.get("mlflow_run_id")
        if run_id:  # only a run still RUNNING is changed
            mark_stale_runs("", tracking_uri, run_ids=[run_id], status="KILLED")
    return reaped


def _running_jobs_of_trials(study: Any) -> set[str]:
    from optuna.trial import TrialState

    from lightgen.sweep.study import ATTR_SLURM_JOB

    return {t.user_attrs[ATTR_SLURM_JOB] for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.user_attrs.get(ATTR_SLURM_JOB)}


def _record_jobs(folder: Path, ids: list[str]) -> None:
    from lightgen.utils import write_atomic

    f = folder / "jobs.json"
    known = json.loads(f.read_text()) if f.is_file() else []
    write_atomic(f, json.dumps(known + [{"job_id": j, "submitted": time.time()} for j in ids]))


def recorded_jobs(root: str | Path, study: str) -> list[str]:
    f = jobs_folder(root, study) / "jobs.json"
    try:
        return [r["job_id"] for r in json.loads(f.read_text())]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def slurm_status(plan: Any, study: Any) -> list[dict[str, Any]]:
    """The study's Slurm jobs (those launched, and those its RUNNING trials name) with their ``squeue`` state
    (``gone`` once Slurm has forgotten them) and the trials each ran."""
    from lightgen.sweep.study import ATTR_SLURM_JOB

    ids = recorded_jobs(plan.base_config.tracking.root, plan.study_name)
    trials: dict[str, list[str]] = {}
    for t in study.get_trials(deepcopy=False):
        jid = t.user_attrs.get(ATTR_SLURM_JOB)
        if jid:
            trials.setdefault(jid, []).append(f"{t.number}:{t.user_attrs.get('label', '?')} {t.state.name}")
            if jid not in ids:
                ids.append(jid)
    states = squeue_states(job_name(plan)) if shutil.which("squeue") else {}
    return [{"job_id": j, "state": states.get(j, "gone" if shutil.which("squeue") else "unknown (no squeue)"),
             "trials": trials.get(j, [])} for j in ids]


def _log_job_outputs(tracking_uri: str, parent: str, study: Any, folder: Path, job_ids: set[str]) -> int:
    """Each job's submitit stdout/stderr as artifacts ``slurm/<file>`` of the parent run and of the job's trial
    runs (a convenience: failures only warn)."""
    from mlflow.tracking import MlflowClient

    from lightgen.sweep.study import ATTR_SLURM_JOB

    client = MlflowClient(tracking_uri)
    runs: dict[str, set[str]] = {}
    for t in study.get_trials(deepcopy=False):
        jid, rid = t.user_attrs.get(ATTR_SLURM_JOB), t.user_attrs.get("mlflow_run_id")
        if jid and rid:
            runs.setdefault(jid, set()).add(rid)
    n = 0
    for jid in sorted(job_ids):
        for f in sorted(folder.glob(f"{jid}_*_log.*")):
            for rid in [parent, *sorted(runs.get(jid, ()))]:
                try:
                    client.log_artifact(rid, str(f), "slurm")
                    n += 1
                except Exception as e:  # noqa: BLE001
                    print(f"warning: could not log {f.name} to run {rid}: {e}")
    return n


def launch_slurm(name: str, opts: Any, sopts: SlurmOptions, log: Any = print, *, plan: Any = None) -> dict[str, Any]:
    """Submit the sweep's workers to Slurm and wait for them (see the module docstring). Returns the summary
    dict of :func:`lightgen.sweep.launch.launch`; ``status`` INCOMPLETE when jobs ended with work left."""
    from optuna.trial import TrialState

    from lightgen import tracking
    from lightgen.sweep.launch import SweepInterrupted, prepare_launch
    from lightgen.sweep.study import (_has_waiting, enqueue_jobs, permanently_failed, reap_dead_trials,
                                      restore_from_mlflow, sweep_status)

    check_slurm()
    sopts.minutes()  # a bad --time is refused before anything is created
    prep = prepare_launch(name, opts, log, plan=plan)
    plan, cfg, tracking_uri, root = prep.plan, prep.cfg, prep.tracking_uri, prep.root
    storage_url, storage, lock, study, parent, plan_file = (prep.storage_url, prep.storage, prep.lock, prep.study,
                                                            prep.parent, prep.plan_file)
    folder = jobs_folder(root, plan.study_name).absolute()
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)  # the pickles hold the storage URL (maybe with a password)
    name_ = job_name(plan)
    t0 = time.time()
    status = "FINISHED"
    watched: set[str] = set()
    try:
        states = squeue_states(name_)
        with file_lock(lock):
            reaped = reap_dead_trials(study, tracking_uri)  # a local worker of an earlier launch
            reaped += reap_job_trials(study, tracking_uri, _running_jobs_of_trials(study) - alive(states))
            restored = restore_from_mlflow(plan, study, tracking_uri)
            if restored:
                log(f"warning: restored {len(restored)} job(s) that MLflow holds as FINISHED: {', '.join(restored)}")
            enq, done = enqueue_jobs(plan, study, retry_failed=opts.retry_failed)
            held = permanently_failed(plan, study)
        watched = alive(states) & _running_jobs_of_trials(study)  # an earlier launch's jobs still at work
        waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
        n = min(sopts.workers or waiting, max(waiting, 0)) if waiting else 0
        log(f"sweep {plan.sweep.name} [{plan.preset}] study {plan.study_name}: {len(plan.jobs)} jobs, {done} done, "
            f"{enq} enqueued" + (f", {len(reaped)} dead trials reaped" if reaped else "")
            + (f", {len(held)} failed permanently ({', '.join(held)}); fix the cause and use --retry-failed" if held else "")
            + (f"; submitting {n} Slurm worker job(s) as array {name_}" if n else "")
            + (f"; watching {len(watched)} job(s) of an earlier launch" if watched else ""))
        if n:
            ex = make_executor(plan, sopts)
            worker = SlurmWorker(str(Path(plan_file).absolute()), storage_url, tracking_uri, parent, opts.runner)
            try:
                jobs = ex.map_array(worker, list(range(n)))
            except Exception as e:  # noqa: BLE001 - sbatch refused (bad partition, account, limits)
                from lightgen.redact import redact

                raise UserError(f"sbatch refused the sweep's jobs: {redact(str(e)).strip().splitlines()[-1][:400]}") from None
            ids = [j.job_id for j in jobs]
            _record_jobs(folder, ids)
            log(f"submitted Slurm job(s) {', '.join(ids)}; logs in {folder}")
            watched |= set(ids)
        seen_gone: set[str] = set()
        last = ""
        while watched - seen_gone:
            states = squeue_states(name_)
            gone = {j for j in watched if states.get(j, "GONE") in ENDED | {"GONE"}} - seen_gone
            if gone:
                with file_lock(lock):
                    dead = reap_job_trials(study, tracking_uri, gone)
                    enqueue_jobs(plan, study)  # a job the worker itself failed on SIGTERM too: live workers take it
                bad = {j: states.get(j, "gone") for j in gone if states.get(j) != "COMPLETED"}
                if bad or dead:
                    log(f"Slurm job(s) ended: {', '.join(f'{j} {s}' for j, s in sorted(bad.items())) or ', '.join(sorted(gone))}"
                        + (f"; their trials {', '.join(dead)} were reaped and enqueued again" if dead else ""))
                seen_gone |= gone
            live = {j: states[j] for j in watched - seen_gone if j in states}
            counts: dict[str, int] = {}
            for s in live.values():
                counts[s] = counts.get(s, 0) + 1
            st = sweep_status(plan, study)
            line = (f"slurm: {', '.join(f'{v} {k.lower()}' for k, v in sorted(counts.items())) or 'no job left'}; "
                    f"{st['complete']}/{st['jobs']} jobs complete")
            if line != last:
                log(line)
                last = line
            if watched - seen_gone:
                time.sleep(sopts.poll_seconds)
    except KeyboardInterrupt:
        status = "KILLED"
        live_ids = sorted(watched)
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        if live_ids:
            subprocess.run(["scancel", *live_ids], capture_output=True, timeout=60)
            log(f"cancelled Slurm job(s) {', '.join(live_ids)}; run the same command to continue")
        raise SweepInterrupted(len(live_ids)) from None
    except BaseException:
        status = "FAILED"
        raise
    finally:
        with contextlib.suppress(Exception):
            _log_job_outputs(tracking_uri, parent, study, folder, watched)
        summary = sweep_status(plan, study)
        if status == "FINISHED" and summary["pending"] > 0:
            status = "INCOMPLETE" if _has_waiting(study) or not summary["failed_points"] else "FAILED"
        tracking.close_parent_run(tracking_uri, parent, {"sweep/complete": summary["complete"],
                                                         "sweep/wall_seconds": time.time() - t0},
                                  {"INCOMPLETE": "KILLED"}.get(status, status))
    summary.update(wall_seconds=time.time() - t0, parent_run_id=parent, status=status, slurm_jobs=sorted(watched))
    return summary
