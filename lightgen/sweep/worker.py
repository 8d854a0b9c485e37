"""A sweep worker: pops jobs from the study until none waits, running each through the trial runner
(``lightgen.sweep.trial.run_trial``, imported, not named by a string). Entry point:
``python -m lightgen.sweep.worker --plan PLAN.json --parent-run-id ID`` (storage URL and tracking URI by
environment); ``python -m lightgen.sweep.worker worker NAME --preset P …`` plans from the sweep file instead."""

from __future__ import annotations

import json
import os
import socket
import sys
from typing import Any

from lightgen.config import ConfigError, load_config
from lightgen.redact import redact
from lightgen.sweep.plan import Job, Plan, Point, _label, read_plan
from lightgen.sweep.study import ATTR_FAILURE, ATTR_PERMANENT, JOB_ATTR, get_study, open_storage
from lightgen.utils import pid_alive

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
        cfg = plan.job_config(job)
        try:
            value = run_fn(cfg, plan=plan, job=job, parent_run_id=parent_run_id, tracking_uri=tracking_uri,
                           trial=trial)
        except (FloatingPointError, ConfigError) as e:  # deterministic: a retry would fail the same way
            trial.set_user_attr(ATTR_PERMANENT, True)
            trial.set_user_attr(ATTR_FAILURE, redact(f"{type(e).__name__}: {e}")[:1000])
            raise
        except Exception as e:
            trial.set_user_attr(ATTR_FAILURE, redact(f"{type(e).__name__}: {e}")[:1000])
            raise
        return float(value)

    while True:
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        n_tpe_done = len([t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("arm") is None
                          and t.state in (TrialState.COMPLETE, TrialState.RUNNING)])
        tpe_left = plan.sweep.sampler == "tpe" and n_tpe_done < plan.sweep.budget
        if not waiting and not tpe_left:
            break
        study.optimize(objective, n_trials=1, catch=(Exception,))
        ran += 1
    return ran


def _resolve_runner(spec: str | None) -> Any:
    """The function that runs one trial: ``module:function`` (tests inject fakes), default the real one."""
    import importlib

    if spec is None:
        from lightgen.sweep.trial import run_trial

        return run_trial
    mod, _, fn = spec.partition(":")
    if mod not in TRIAL_RUNNER_MODULES:  # the hook is for tests, not a way to run arbitrary code
        raise ConfigError(f"--runner {spec!r}: a trial runner must come from {' or '.join(TRIAL_RUNNER_MODULES)}")
    return getattr(importlib.import_module(mod), fn)


TRIAL_RUNNER_MODULES = ("lightgen.sweep.trial", "lightgen.testing")


def _worker_main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="lightgen.sweep.worker")
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


if __name__ == "__main__":
    from lightgen.errors import run_guarded

    sys.exit(run_guarded(_worker_main, sys.argv[1:]))
