"""The launcher of a sweep (``lightgen sweep NAME``): checks, the MLflow parent run, enqueueing, spawning
and supervising worker processes, joining other launchers of the same study."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightgen import layout
from lightgen.config import ConfigError, ExperimentConfig
from lightgen.redact import redact
from lightgen.sweep.plan import Plan, plan_sweep, write_plan
from lightgen.sweep.spec import load_sweep
from lightgen.sweep.study import (
    _has_active,
    _has_waiting,
    check_storage_url,
    default_storage_url,
    enqueue_jobs,
    get_study,
    open_storage,
    permanently_failed,
    reap_dead_trials,
    restore_from_mlflow,
    sweep_status,
)
from lightgen.sweep.worker import ENV_SETS, ENV_STORAGE, ENV_TRACKING, _resolve_runner
from lightgen import tracking
from lightgen.tracking import TAG_PRESET, TAG_SWEEP, TAG_WORLD, resolve_tracking_uri
from lightgen.utils import file_lock, pid_alive


def ensure_parent_run(plan: Plan, tracking_uri: str) -> str:
    """The sweep's parent run (one per study), created once, reused when the command is re-run."""
    from lightgen.tracking import config_params, pip_freeze

    params = {**config_params(plan.base_config), TAG_SWEEP: plan.sweep.name,
              "sweep.seeds": plan.seeds, "sweep.points": len(plan.points), "sweep.mode": plan.sweep.mode}
    _describe_experiment(plan, tracking_uri)
    return tracking.ensure_parent_run(
        tracking_uri, plan.experiment_name, plan.study_name, run_name=f"{plan.sweep.name}:{plan.preset}",
        tags={TAG_SWEEP: plan.sweep.name, TAG_PRESET: plan.preset, TAG_WORLD: plan.base_config.world.kind,
              TAG_NOTE: parent_description(plan)},
        params=params, texts={"sweep.json": redact(plan.sweep.model_dump_json(indent=2)), "pip-freeze.txt": pip_freeze()})


TAG_NOTE = "mlflow.note.content"  # the description MLflow's UI shows on an experiment's or a run's page


def experiment_description(plan: Plan) -> str:
    s = plan.sweep
    return (f"{s.description}\n\nEach launch of `lightgen sweep {s.name} --preset P` is one parent run named "
            f"`{s.name}:P`; expand it (the + beside its name) to see one child run per point and seed, named by "
            f"the swept value (`scale=1K · seed 0`). The objective is `{s.objective}`: add it as a column, or open "
            f"Chart view to plot it against the swept parameter. Tables and figures: "
            f"`python analysis/make_tables.py --sweep {s.name}`, `python analysis/make_curves.py --sweep {s.name}`.")


def parent_description(plan: Plan) -> str:
    s = plan.sweep
    swept = sorted({k for p in plan.points for k in p.overrides})
    text = (f"{s.description} Preset `{plan.preset}`: {len(plan.points)} points × {plan.seeds} seed(s), "
            f"varying {', '.join(swept) or 'nothing (one point)'}; objective `{s.objective}` "
            f"(each child run's metric; the study's status: `lightgen sweep {s.name} --preset {plan.preset} --status`).")
    if plan.preset == "smoke":
        text += (" This is the smoke preset: a plumbing check whose scores are ~0 by design; "
                 "the `cpu` preset is the one that learns.")
    return text


def _describe_experiment(plan: Plan, tracking_uri: str) -> None:
    """The experiment's description (``mlflow.note.content``), set once; a user's own edit is kept."""
    from mlflow.tracking import MlflowClient

    from lightgen.tracking import get_or_create_experiment

    client = MlflowClient(tracking_uri)
    exp_id = get_or_create_experiment(plan.experiment_name, tracking_uri)
    if TAG_NOTE not in client.get_experiment(exp_id).tags:
        client.set_experiment_tag(exp_id, TAG_NOTE, experiment_description(plan))


@dataclass
class LaunchOptions:
    preset: str
    sets: dict[str, Any]
    gpus: list[int] | None = None
    workers_per_gpu: int = 1
    workers: int | None = None
    storage: str | None = None
    tracking_uri: str | None = None
    runner: str | None = None
    max_restarts: int = 20
    seeds: int | None = None
    retry_failed: bool = False


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) stopped the launcher: ``running`` trials were stopped at their last checkpoint
    (their runs KILLED); the same command continues the sweep."""

    def __init__(self, running: int) -> None:
        super().__init__(f"{running} trial(s) interrupted")
        self.running = running


def resolve_workers(opts: LaunchOptions, cfg: ExperimentConfig) -> list[dict[str, str]]:
    """Environment for each worker: GPUs pinned with CUDA_VISIBLE_DEVICES."""
    gpus = opts.gpus if opts.gpus is not None else (cfg.sweep.gpus or None)
    if gpus:
        n = _cuda_device_count()
        bad = [g for g in gpus if g < 0 or g >= n]
        if bad:
            raise ConfigError(
                f"--gpus names GPU {bad[0]} but this machine has {n} GPU(s)"
                + (f" (valid: 0..{n - 1})" if n else "")
            )
        k = opts.workers_per_gpu or cfg.sweep.workers_per_gpu
        return [{"CUDA_VISIBLE_DEVICES": str(g)} for g in gpus for _ in range(k)]
    n = opts.workers or cfg.sweep.workers
    return [{"CUDA_VISIBLE_DEVICES": ""} if _cuda_device_count() == 0 else {} for _ in range(n)]


def _cuda_device_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001
        return 0


@dataclass
class Prepared:
    """What every launcher (local, Slurm) sets up once before its workers start."""

    plan: Plan
    cfg: ExperimentConfig
    tracking_uri: str
    root: Path
    storage_url: str
    storage: Any
    lock: Path
    study: Any
    parent: str
    plan_file: Path
    checked: Any = None   # what the launcher's own ``check`` returned


def prepare_launch(name: str, opts: Any, log: Any = print, *, plan: Plan | None = None,
                   check: Any = None) -> Prepared:
    """Check the inputs (runner, store, root, storage URL, then the launcher's own ``check(cfg)``) before
    anything is created; then create the MLflow store, the Optuna study, the parent run and the plan file,
    once, under the study's file lock (two launchers at once: one creates, the other joins)."""
    from lightgen.tracking import check_reachable, ensure_store

    _resolve_runner(opts.runner)  # refuse a runner outside the allowed modules before anything starts
    if plan is None:
        plan = plan_sweep(load_sweep(name), opts.preset, opts.sets, seeds=opts.seeds)
    cfg = plan.base_config
    tracking_uri = resolve_tracking_uri(opts.tracking_uri or cfg.tracking.tracking_uri)
    check_reachable(tracking_uri)
    root = Path(cfg.tracking.root)
    _check_writable(root)
    storage_url = opts.storage or cfg.sweep.storage or default_storage_url(root)
    check_storage_url(storage_url, "--storage" if opts.storage else "sweep.storage" if cfg.sweep.storage else "tracking.root")
    checked = check(cfg) if check is not None else None
    ensure_store(tracking_uri)  # checked, and created once under a file lock, before anything uses it
    storage = open_storage(storage_url, heartbeat=False, repair=True, log=log)
    lock = layout.study_lock(root, plan.study_name)
    with file_lock(lock):
        study = get_study(plan, storage)
        parent = ensure_parent_run(plan, tracking_uri)
        plan_file = write_plan(plan, layout.plan_file(root, plan.study_name))
    return Prepared(plan, cfg, tracking_uri, root, storage_url, storage, lock, study, parent, plan_file, checked)


def launch(name: str, opts: LaunchOptions, log: Any = print, *, plan: Plan | None = None,
           view: Any = None) -> dict[str, Any]:
    """Run (or continue) a sweep to completion; ``plan`` (else planned here from ``name``) is written once
    to ``<root>/optuna/<study>.plan.json``, which every worker reads. Returns a summary dict. Workers'
    output goes through ``view`` (a :class:`lightgen.progress.SweepProgress`, made here when not given):
    labelled progress per trial. Ctrl-C stops the workers and raises :class:`SweepInterrupted`."""
    from lightgen.progress import SweepProgress

    view = view if view is not None else SweepProgress()

    prep = prepare_launch(name, opts, log, plan=plan, check=lambda cfg: resolve_workers(opts, cfg))
    plan, sweep, cfg, workers_env = prep.plan, prep.plan.sweep, prep.cfg, prep.checked
    tracking_uri, root, storage_url, storage = prep.tracking_uri, prep.root, prep.storage_url, prep.storage
    lock, study, parent, plan_file = prep.lock, prep.study, prep.parent, prep.plan_file
    launchers = layout.launchers_dir(root, plan.study_name)
    me = _register_launcher(launchers)
    t0 = time.time()
    restarts = 0
    status = "FINISHED"
    procs: dict[int, tuple[subprocess.Popen, dict[str, str]]] = {}
    prev_sigint = None
    try:
        with file_lock(lock):
            reaped = reap_dead_trials(study, tracking_uri)
            restored = restore_from_mlflow(plan, study, tracking_uri)
            if restored:
                log(f"warning: the Optuna journal had no trial of {len(restored)} job(s) that MLflow holds as "
                    f"FINISHED (an emptied or replaced journal); restored them as complete: {', '.join(restored)}")
            enq, done = enqueue_jobs(plan, study, retry_failed=opts.retry_failed)
            held = permanently_failed(plan, study)
        others = _other_launchers(launchers)
        log(f"sweep {sweep.name} [{opts.preset}] study {plan.study_name}: {len(plan.jobs)} jobs, "
            f"{done} done, {enq} enqueued" + (f", {len(reaped)} dead trials reaped" if reaped else "")
            + (f"; joining {len(others)} running launcher(s) {others}" if others else "")
            + (f", {len(held)} failed permanently and not retried ({', '.join(held)}); fix the cause and run "
               f"again with --retry-failed" if held else ""))
        if not _has_waiting(study) and not (plan.sweep.sampler == "tpe" and plan.sweep.budget):
            workers_env = []  # nothing to do: a finished sweep re-run does nothing new
        if workers_env:
            view.start()
        for env in workers_env:
            p = _spawn_worker(name, opts, storage_url, tracking_uri, parent, env, plan_file, view)
            procs[p.pid] = (p, env)
        while procs:
            time.sleep(0.5)
            for pid, (p, env) in list(procs.items()):
                rc = p.poll()
                if rc is None:
                    continue
                del procs[pid]
                _drain(p)
                view.worker_gone(pid)
                if rc != 0:
                    # a dead worker: fail its trial, mark its run KILLED, put the job back, replace it
                    with file_lock(lock):
                        dead = reap_dead_trials(study, tracking_uri, pids={pid})
                        enqueue_jobs(plan, study)
                    log(f"worker {pid} died (exit {rc}); requeued {dead or 'nothing'}")
                    if restarts < opts.max_restarts and _has_waiting(study):
                        restarts += 1
                        np_ = _spawn_worker(name, opts, storage_url, tracking_uri, parent, env, plan_file, view)
                        procs[np_.pid] = (np_, env)
                    elif restarts >= opts.max_restarts:
                        status = "FAILED"
        # joined another launcher: its jobs are still running; wait for them instead of failing the sweep
        waited = False
        while _has_active(study) and _other_launchers(launchers):
            if not waited:
                log("waiting for the other launcher(s) of this sweep to finish their jobs")
                waited = True
            time.sleep(1.0)
    except KeyboardInterrupt:
        status = "KILLED"
        with contextlib.suppress(ValueError):  # a second Ctrl-C must not cut the clean-up short
            prev_sigint = signal.signal(signal.SIGINT, signal.SIG_IGN)
        running = len(view.running) or len(procs)
        view.mute()  # the workers' shutdown (their KeyboardInterrupt) is not shown
        for p, _ in procs.values():
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        for p, _ in procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=30)
            _drain(p)
        with contextlib.suppress(Exception):  # a worker stopped before its run could end itself: KILLED here
            reap_dead_trials(study, tracking_uri, pids=set(procs))
            _kill_left_runs(tracking_uri, parent, set(procs))
        raise SweepInterrupted(running) from None
    except BaseException:
        status = "FAILED"
        raise
    finally:
        view.stop()
        with contextlib.suppress(OSError):
            me.unlink()
        summary = sweep_status(plan, study)
        if status == "FINISHED" and summary["pending"] > 0:
            status = "FAILED" if summary["failed_points"] else "RUNNING"
        others = _other_launchers(launchers)
        # the last launcher out ends the shared parent run
        tracking.close_parent_run(tracking_uri, parent, {"sweep/complete": summary["complete"],
                                                         "sweep/wall_seconds": time.time() - t0},
                                  None if others else (status if status != "RUNNING" else "FAILED"))
        if prev_sigint is not None:
            signal.signal(signal.SIGINT, prev_sigint)
    summary["wall_seconds"] = time.time() - t0
    summary["parent_run_id"] = parent
    summary["status"] = status
    return summary


def _kill_left_runs(tracking_uri: str, parent: str, pids: set[int]) -> None:
    """Child runs of ``parent`` still RUNNING whose worker (tag ``lightgen.pid``) was one of ``pids``: KILLED
    (a worker interrupted while its run was being opened, before the run could end itself)."""
    from mlflow.tracking import MlflowClient

    from lightgen.tracking import mark_stale_runs
    from lightgen.tracking.names import TAG_PID

    if not pids:
        return
    client = MlflowClient(tracking_uri)
    exp = client.get_run(parent).info.experiment_id
    left = client.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent}' and attributes.status = 'RUNNING'")
    ids = [r.info.run_id for r in left if r.data.tags.get(TAG_PID, "").isdigit() and int(r.data.tags[TAG_PID]) in pids]
    if ids:
        mark_stale_runs("", tracking_uri, run_ids=ids, status="KILLED")


def _register_launcher(folder: Path) -> Path:
    """Record this launcher (``<study>.launchers/<pid>``) so that concurrent launchers of a sweep know of
    each other: the last one out ends the parent run; an earlier one waits for the others' jobs."""
    folder.mkdir(parents=True, exist_ok=True)
    me = folder / str(os.getpid())
    me.write_text(socket.gethostname())
    return me


def _other_launchers(folder: Path) -> list[int]:
    """Live launchers of this sweep on this host other than this process (stale entries are removed)."""
    out = []
    host = socket.gethostname()
    for f in folder.glob("*") if folder.is_dir() else []:
        if not f.name.isdigit() or int(f.name) == os.getpid():
            continue
        try:
            if f.read_text().strip() not in ("", host):
                continue  # another node's launcher: its liveness cannot be checked from here
        except OSError:
            continue
        if pid_alive(int(f.name)):
            out.append(int(f.name))
        else:
            with contextlib.suppress(OSError):
                f.unlink()
    return out


def _check_writable(root: Path) -> None:
    try:
        layout.optuna_dir(root).mkdir(parents=True, exist_ok=True)
        probe = layout.optuna_dir(root) / f".probe-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"tracking.root '{root}' is not writable: {e.strerror}") from None


def _spawn_worker(name: str, opts: LaunchOptions, storage_url: str, tracking_uri: str, parent: str,
                  env_extra: dict[str, str], plan_file: Path | None = None, view: Any = None) -> subprocess.Popen:
    """A worker process running the plan file the launcher wrote (without one: planning ``name`` itself).
    Storage URL, tracking URI and --set values (any of which may hold a password) go through the
    environment, never the command line that ``ps`` shows to every user. With a ``view``, the worker's
    stdout and stderr come through one pipe to it (progress events and labelled lines)."""
    cmd = [sys.executable, "-m", "lightgen.sweep"]
    if plan_file is not None:
        cmd += ["--plan", str(plan_file)]
    else:
        cmd += ["worker", name, "--preset", opts.preset] + (["--seeds", str(opts.seeds)] if opts.seeds else [])
    cmd += ["--parent-run-id", parent]
    if opts.runner:
        cmd += ["--runner", opts.runner]
    env = {**os.environ, **env_extra, "PYTHONUNBUFFERED": "1", ENV_STORAGE: storage_url, ENV_TRACKING: tracking_uri,
           ENV_SETS: json.dumps(opts.sets, default=str)}
    if view is None:
        return subprocess.Popen(cmd, env=env, cwd=os.getcwd())
    from lightgen.progress import ENV_EVENTS, read_lines

    env[ENV_EVENTS] = "1"
    p = subprocess.Popen(cmd, env=env, cwd=os.getcwd(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, encoding="utf-8", errors="replace", bufsize=1)
    p._lightgen_reader = read_lines(p.stdout, p.pid, view.feed)  # type: ignore[attr-defined]
    return p


def _drain(p: subprocess.Popen) -> None:
    """Wait (briefly) until a finished worker's last lines have reached the view."""
    reader = getattr(p, "_lightgen_reader", None)
    if reader is not None:
        reader.join(timeout=5)
