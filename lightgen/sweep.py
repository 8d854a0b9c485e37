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
``--runner`` hook (tests) accepts only ``lightgen.trial`` and ``lightgen.testing`` functions.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lightgen.redact import redact
from lightgen.utils import file_lock, pid_alive
from lightgen.config import (
    REPO_ROOT,
    ConfigError,
    ExperimentConfig,
    _yaml_problem,
    load_config,
    parse_size,
    read_yaml_text,
    size_label,
)
from lightgen.tracking import (
    GENEVAL_TASKS,
    TAG_COMMIT,
    TAG_DIRTY,
    TAG_FAILURE,
    TAG_JOB,
    TAG_KIND,
    TAG_PRESET,
    TAG_WORLD,
    TAG_STUDY,
    TAG_SWEEP,
    get_or_create_experiment,
    resolve_tracking_uri,
)

SWEEP_DIR = REPO_ROOT / "sweeps"
ATTR_FAILURE = TAG_FAILURE  # Optuna trial user attrs: why a trial failed; a failure a retry would repeat
ATTR_PERMANENT = "lightgen.permanent"
ATTR_RESTORED = "lightgen.restored"  # a trial restored from MLflow after the journal lost it
JOB_ATTR = TAG_JOB  # the Optuna trial user attr naming its job (the same name as the run tag)


# --------------------------------------------------------------------------------------------------
# Definitions
# --------------------------------------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# Keys a sweep cannot vary or fix per arm: every job sets the seeds itself, and where runs, checkpoints
# and the study live (tracking.*, sweep.*) must be one place for the whole sweep.
_SEED_KEYS = ("seed", "data.seed")
_PLACE_PREFIXES = ("tracking.", "sweep.")
# What a trial's summary holds (lightgen.trial.train_and_evaluate → lightgen.geneval.summary.summarize).
_OBJECTIVE_RE = re.compile(
    r"^step$|^geneval/(overall_ci_low|overall_ci_high|correct_images|correct_prompts)$"
    r"|^geneval(_seen|_unseen)?/(overall|" + "|".join(GENEVAL_TASKS) + r")$"
)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _bookkeeping(key: str, *, place: bool = True) -> str | None:
    """Why ``key`` cannot be swept, or None."""
    if key in _SEED_KEYS:
        return "seeds are set per job by the sweep (use 'seeds:' for replicates)"
    if key == "preset":
        return "the preset is chosen with --preset"
    if place and key.startswith(_PLACE_PREFIXES):
        return "tracking.* and sweep.* say where the whole sweep lives; set them with --set"
    return None


class Arm(_Strict):
    """A cartesian grid over config keys, plus fixed overrides for the arm."""

    name: str
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    zip: dict[str, list[Any]] = Field(default_factory=dict, description="lists varied together, element-wise")
    fixed: dict[str, Any] = Field(default_factory=dict)

    @field_validator("zip")
    @classmethod
    def _same_length(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        if len({len(x) for x in v.values()}) > 1:
            raise ValueError(f"zip lists must have equal lengths, got { {k: len(x) for k, x in v.items()} }")
        return v

    @model_validator(mode="after")
    def _axes(self) -> "Arm":
        for part in ("grid", "zip"):
            for key, values in getattr(self, part).items():
                if not values:
                    raise ValueError(f"arm '{self.name}': {part}.{key} is an empty list (the arm would have no points)")
        for part in ("grid", "zip", "fixed"):
            for key in getattr(self, part):
                why = _bookkeeping(key)
                if why:
                    raise ValueError(f"arm '{self.name}': '{key}' cannot be in {part}: {why}")
        for a, b in (("grid", "zip"), ("grid", "fixed"), ("zip", "fixed")):
            both = sorted(set(getattr(self, a)) & set(getattr(self, b)))
            if both:
                raise ValueError(f"arm '{self.name}': {', '.join(both)} in both {a} and {b}")
        return self

    def combos(self) -> list[dict[str, Any]]:
        keys = list(self.grid)
        grid = [dict(zip(keys, vals)) for vals in itertools.product(*(self.grid[k] for k in keys))]
        n = len(next(iter(self.zip.values()))) if self.zip else 0
        zipped = [{k: v[i] for k, v in self.zip.items()} for i in range(n)] or [{}]
        return [{**g, **z} for g in grid for z in zipped]


class SearchParam(_Strict):
    low: float = Field(allow_inf_nan=False)
    high: float = Field(allow_inf_nan=False)
    log: bool = False
    type: Literal["float", "int"] = "float"

    @model_validator(mode="after")
    def _range(self) -> "SearchParam":
        if not self.low < self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError(f"log=true needs low > 0, got {self.low:g}")
        return self


class PresetSettings(_Strict):
    seeds: int | None = Field(None, ge=1, le=1000)
    set: dict[str, Any] = Field(default_factory=dict)
    arms: list[str] | None = Field(None, description="restrict to these arms at this preset")


class SweepDef(_Strict):
    name: str
    description: str = ""
    mode: Literal["train", "iterations", "dpo"] = "train"
    objective: str = "geneval/overall"
    direction: Literal["maximize", "minimize"] = "maximize"
    sampler: Literal["grid", "tpe"] = "grid"
    seeds: int = Field(1, ge=1, le=1000)
    base: dict[str, Any] = Field(default_factory=dict)
    arms: list[Arm] = Field(default_factory=list)
    search: dict[str, SearchParam] = Field(default_factory=dict)
    budget: int = Field(0, ge=0, le=100_000, description="TPE trials (sampler=tpe)")
    presets: dict[str, PresetSettings] = Field(default_factory=dict)

    @field_validator("arms")
    @classmethod
    def _unique_arms(cls, v: list[Arm]) -> list[Arm]:
        names = [a.name for a in v]
        if len(names) != len(set(names)):
            raise ValueError(f"arm names must be unique, got {names}")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError(f"must be letters, digits, '_', '.' or '-' (it names the study, the MLflow "
                             f"experiment and files), got {v!r}")
        return v

    @model_validator(mode="after")
    def _whole(self) -> "SweepDef":
        """The definition as a whole: what each sampler needs, an objective a trial logs, no seeds fixed."""
        if not _OBJECTIVE_RE.match(self.objective):
            raise ValueError(f"objective {self.objective!r} is not a metric a trial logs; use geneval/overall, "
                             f"geneval/<task> (tasks: {', '.join(GENEVAL_TASKS)}), geneval/correct_images, "
                             "geneval/correct_prompts, their geneval_seen/ and geneval_unseen/ variants, or step")
        if self.sampler == "tpe":
            if not self.search:
                raise ValueError("sampler 'tpe' needs a non-empty 'search' space")
            if self.budget < 1:
                raise ValueError("sampler 'tpe' needs 'budget' >= 1 (the number of trials)")
            for key in self.search:
                why = _bookkeeping(key)
                if why:
                    raise ValueError(f"search: '{key}' cannot be searched: {why}")
        else:
            if self.search or self.budget:
                raise ValueError("'search' and 'budget' only apply to sampler 'tpe' (this sweep's sampler is 'grid')")
            if not self.arms:
                raise ValueError("sampler 'grid' needs at least one arm")
        arm_names = {a.name for a in self.arms}
        for where, keys in [("base", self.base)] + [(f"presets.{p}.set", ps.set) for p, ps in self.presets.items()]:
            for key in keys:
                why = _bookkeeping(key, place=False)
                if why:
                    raise ValueError(f"{where}: '{key}' cannot be set here: {why}")
        for p, ps in self.presets.items():
            unknown = sorted(set(ps.arms or []) - arm_names)
            if unknown:
                raise ValueError(f"presets.{p}.arms names unknown arm(s) {', '.join(unknown)}; arms: "
                                 f"{', '.join(sorted(arm_names)) or '(none)'}")
            if ps.arms is not None and not ps.arms and self.sampler == "grid":
                raise ValueError(f"presets.{p}.arms is empty: the sweep would have no points at preset '{p}'")
        return self


def available_sweeps() -> list[str]:
    names = set()
    for base in (Path.cwd() / "sweeps", SWEEP_DIR):
        if base.is_dir():
            names.update(p.stem for p in base.glob("*.yaml"))
    return sorted(names)


def load_sweep(name_or_path: str | Path) -> SweepDef:
    p = Path(name_or_path)
    if p.suffix not in {".yaml", ".yml"}:
        cands = [b / f"{name_or_path}.yaml" for b in (Path.cwd() / "sweeps", SWEEP_DIR)]
        found = [c for c in cands if c.is_file()]
        if not found:
            raise ConfigError(f"unknown sweep '{name_or_path}'; available: {', '.join(available_sweeps())}")
        p = found[0]
    elif p.is_dir():
        raise ConfigError(f"sweep file {p} is a folder, expected a YAML file")
    elif not p.is_file():
        raise ConfigError(f"sweep file not found: {p}")
    text = read_yaml_text(p, "sweep file")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"malformed YAML in {p}: {_yaml_problem(e)}") from None
    except RecursionError:
        raise ConfigError(f"malformed YAML in {p}: nested too deeply") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a sweep definition must be a mapping, got {type(data).__name__}")
    try:
        return SweepDef.model_validate(data)
    except ValidationError as e:
        msgs = "; ".join(
            (f"{'.'.join(map(str, err['loc']))}: " if err["loc"] else "") + err["msg"].removeprefix("Value error, ")
            for err in e.errors())
        raise ConfigError(f"invalid sweep definition {p}: {msgs}") from None


# --------------------------------------------------------------------------------------------------
# Points and jobs
# --------------------------------------------------------------------------------------------------
@dataclass
class Point:
    arm: str
    overrides: dict[str, Any]  # the swept values (what tables show)
    cfg: ExperimentConfig  # resolved config at seed 0
    point_id: str
    label: str


@dataclass
class Job:
    point: Point
    seed: int

    @property
    def key(self) -> str:
        return f"{self.point.point_id}-s{self.seed}"

    def overrides(self, plan: "Plan") -> dict[str, Any]:
        return {**plan.common, **self.point.overrides, "seed": self.seed, "data.seed": self.seed}


@dataclass
class Plan:
    sweep: SweepDef
    preset: str
    seeds: int
    common: dict[str, Any]  # base + preset set + CLI sets
    points: list[Point] = field(default_factory=list)

    @property
    def jobs(self) -> list[Job]:
        return [Job(p, s) for p in self.points for s in range(self.seeds)]

    @property
    def study_name(self) -> str:
        blob = json.dumps({"common": self.common, "seeds": self.seeds}, sort_keys=True, default=str)
        return f"{self.sweep.name}-{self.preset}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}"

    @property
    def experiment_name(self) -> str:
        return f"lightgen/{self.sweep.name}"

    @property
    def job_kind(self) -> str:
        """What kind of job every point is: ``pretrain``, or ``dpo`` / ``sft`` (``dpo.mode``) from a base."""
        return "pretrain" if self.sweep.mode in ("train", "iterations") else "dpo"

    @property
    def base_point_id(self) -> str | None:
        """The shared base model of a DPO sweep (``checkpoints/<base_point_id>/seed<seed>``), else None."""
        if self.sweep.mode != "dpo":
            return None
        cfg = self.base_config
        return "base-" + cfg.point_id(exclude=("seed", "data.seed", "preset", "tracking.", "sweep.", "dpo."))

    def point_id_of(self, cfg: ExperimentConfig) -> str:
        """A point's identity: its config hash and its job kind (and, for DPO/SFT, its base)."""
        if self.job_kind == "pretrain":
            return job_point_id(cfg, "pretrain")
        return job_point_id(cfg, cfg.dpo.mode, base=f"{self.base_point_id}/seed{self.base_config.seed}")

    def job_config(self, job: Job) -> ExperimentConfig:
        return load_config(self.preset, job.overrides(self))

    @property
    def base_config(self) -> ExperimentConfig:
        return load_config(self.preset, self.common)


def job_point_id(cfg: ExperimentConfig, kind: str = "pretrain", base: str | None = None) -> str:
    """The identity of a point: what is trained (the config hash) and how (the job kind and its base).

    Pre-training (``kind="pretrain"``) keeps the plain config hash, so existing checkpoint folders and runs
    stay valid. DPO and SFT (``kind`` = ``dpo.mode``) hash the config together with the kind and the base
    they start from: a DPO point can never share a checkpoint folder, a run tag or a finished trial with a
    pre-training point of the same config (e.g. the default β next to the default data scale)."""
    if kind == "pretrain":
        return cfg.point_id()
    blob = json.dumps({"point": cfg.point_id(exclude=("seed", "data.seed", "preset", "tracking.", "sweep.", "dpo.base")),
                       "kind": kind, "base": base}, sort_keys=True)
    return f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def _label(overrides: dict[str, Any]) -> str:
    parts = []
    for k, v in overrides.items():
        if k == "data.scale":
            v = size_label(parse_size(v))
        parts.append(f"{k.split('.')[-1]}={v}")
    return ", ".join(parts) or "base"


def plan_sweep(sweep: SweepDef, preset: str, sets: dict[str, Any] | None = None, seeds: int | None = None) -> Plan:
    """Resolve a sweep at a preset: validate every point against the config schema."""
    settings = sweep.presets.get(preset, PresetSettings())
    common = {**sweep.base, **settings.set, **(sets or {})}
    n_seeds = seeds or settings.seeds or sweep.seeds
    plan = Plan(sweep, preset, n_seeds, common)
    try:
        base_cfg = load_config(preset, common)
    except ConfigError as e:
        raise ConfigError(f"sweep '{sweep.name}' at preset '{preset}': {e}") from None
    if sweep.objective.startswith("geneval") and not base_cfg.eval.enabled:
        raise ConfigError(f"sweep '{sweep.name}' at preset '{preset}': objective {sweep.objective!r} is a GenEval "
                          "metric but eval.enabled is false, so no trial would log it")
    arms = [a for a in sweep.arms if settings.arms is None or a.name in settings.arms]
    seen: dict[str, Point] = {}
    for arm in arms:
        for swept in arm.combos():
            over = {**arm.fixed, **swept}
            try:
                cfg = load_config(preset, {**common, **over, "seed": 0, "data.seed": 0})
            except ConfigError as e:
                raise ConfigError(f"sweep '{sweep.name}', arm '{arm.name}', point {over}: {e}") from None
            pid = plan.point_id_of(cfg)
            if pid in seen:  # the same point reached by two arms is run once
                continue
            seen[pid] = Point(arm.name, over, cfg, pid, _label(swept) if swept else arm.name)
    plan.points = list(seen.values())
    if sweep.sampler == "grid" and not plan.points:
        raise ConfigError(f"sweep '{sweep.name}' has no points at preset '{preset}'")
    return plan


# --------------------------------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------------------------------
def default_storage_url(root: str | Path) -> str:
    return f"journal:{Path(root) / 'optuna' / 'journal.log'}"


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
    from mlflow.tracking import MlflowClient

    states = job_states(study)
    keys = {j.key: j for j in plan.jobs}
    missing = [k for k in keys if k not in states]
    if not missing:
        return []
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(plan.experiment_name)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], filter_string=(
        f"tags.`{TAG_STUDY}` = '{plan.study_name}' and tags.`{TAG_KIND}` = 'trial' and attributes.status = 'FINISHED'"),
        max_results=50000)
    restored = []
    for r in runs:
        key = r.data.tags.get(JOB_ATTR)
        value = r.data.metrics.get(plan.sweep.objective)
        if key not in missing or key in restored or value is None:
            continue
        job = keys[key]
        study.add_trial(optuna.trial.create_trial(value=float(value), params={}, distributions={}, user_attrs={
            JOB_ATTR: key, "point_id": job.point.point_id, "seed": job.seed, "label": job.point.label,
            "arm": job.point.arm, "overrides": json.dumps(job.point.overrides, default=str),
            "mlflow_run_id": r.info.run_id, ATTR_RESTORED: "from MLflow (the journal had no trial of it)"}))
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


# --------------------------------------------------------------------------------------------------
# Parent run
# --------------------------------------------------------------------------------------------------
def ensure_parent_run(plan: Plan, tracking_uri: str) -> str:
    """The sweep's parent run (one per study), created once, reused when the command is re-run."""
    from mlflow.tracking import MlflowClient

    from lightgen.tracking import config_params, ensure_store, git_info, pip_freeze

    client = MlflowClient(ensure_store(tracking_uri))
    exp_id = get_or_create_experiment(plan.experiment_name, tracking_uri)
    runs = client.search_runs(
        [exp_id],
        filter_string=f"tags.`{TAG_STUDY}` = '{plan.study_name}' and tags.`{TAG_KIND}` = 'sweep'",
        max_results=1,
    )
    if runs:
        run_id = runs[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return run_id
    commit, dirty = git_info()
    run = client.create_run(
        exp_id,
        run_name=f"{plan.sweep.name}:{plan.preset}",
        tags={
            TAG_KIND: "sweep",
            TAG_SWEEP: plan.sweep.name,
            TAG_STUDY: plan.study_name,
            TAG_PRESET: plan.preset,
            TAG_WORLD: plan.base_config.world.kind,
            TAG_COMMIT: commit,
            TAG_DIRTY: str(dirty).lower(),
        },
    )
    run_id = run.info.run_id
    from mlflow.entities import Param

    params = {**config_params(plan.base_config), TAG_SWEEP: plan.sweep.name,
              "sweep.seeds": plan.seeds, "sweep.points": len(plan.points), "sweep.mode": plan.sweep.mode}
    items = [Param(k, redact(str(v))[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])
    client.log_text(run_id, redact(plan.sweep.model_dump_json(indent=2)), "sweep.json")
    client.log_text(run_id, pip_freeze(), "pip-freeze.txt")
    return run_id


# --------------------------------------------------------------------------------------------------
# Worker
# --------------------------------------------------------------------------------------------------
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

    spec = spec or "lightgen.trial:run_trial"
    mod, _, fn = spec.partition(":")
    if mod not in TRIAL_RUNNER_MODULES:  # the hook is for tests, not a way to run arbitrary code
        raise ConfigError(f"--runner {spec!r}: a trial runner must come from {' or '.join(TRIAL_RUNNER_MODULES)}")
    return getattr(importlib.import_module(mod), fn)


TRIAL_RUNNER_MODULES = ("lightgen.trial", "lightgen.testing")


# --------------------------------------------------------------------------------------------------
# Launcher
# --------------------------------------------------------------------------------------------------
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


def launch(name: str, opts: LaunchOptions, log: Any = print) -> dict[str, Any]:
    """Run (or continue) a sweep to completion. Returns a summary dict."""
    from lightgen.tracking import check_reachable, ensure_store

    sweep = load_sweep(name)
    _resolve_runner(opts.runner)  # refuse a runner outside the allowed modules before anything starts
    plan = plan_sweep(sweep, opts.preset, opts.sets, seeds=opts.seeds)
    cfg = plan.base_config
    tracking_uri = resolve_tracking_uri(opts.tracking_uri or cfg.tracking.tracking_uri)
    check_reachable(tracking_uri)
    root = Path(cfg.tracking.root)
    _check_writable(root)
    storage_url = opts.storage or cfg.sweep.storage or default_storage_url(root)
    check_storage_url(storage_url, "--storage" if opts.storage else "sweep.storage" if cfg.sweep.storage else "tracking.root")
    workers_env = resolve_workers(opts, cfg)
    ensure_store(tracking_uri)  # checked, and created once under a file lock, before anything uses it

    storage = open_storage(storage_url, heartbeat=False, repair=True, log=log)
    lock = root / "optuna" / f"{plan.study_name}.lock"
    with file_lock(lock):  # two launchers at once: one creates the study and the parent, the other joins
        study = get_study(plan, storage)
        parent = ensure_parent_run(plan, tracking_uri)
    launchers = root / "optuna" / f"{plan.study_name}.launchers"
    me = _register_launcher(launchers)
    t0 = time.time()
    restarts = 0
    status = "FINISHED"
    procs: dict[int, tuple[subprocess.Popen, dict[str, str]]] = {}
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
        for env in workers_env:
            p = _spawn_worker(name, opts, storage_url, tracking_uri, parent, env)
            procs[p.pid] = (p, env)
        while procs:
            time.sleep(0.5)
            for pid, (p, env) in list(procs.items()):
                rc = p.poll()
                if rc is None:
                    continue
                del procs[pid]
                if rc != 0:
                    # a dead worker: fail its trial, mark its run KILLED, put the job back, replace it
                    with file_lock(lock):
                        dead = reap_dead_trials(study, tracking_uri, pids={pid})
                        enqueue_jobs(plan, study)
                    log(f"worker {pid} died (exit {rc}); requeued {dead or 'nothing'}")
                    if restarts < opts.max_restarts and _has_waiting(study):
                        restarts += 1
                        np_ = _spawn_worker(name, opts, storage_url, tracking_uri, parent, env)
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
        for p, _ in procs.values():
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        for p, _ in procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=30)
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        with contextlib.suppress(OSError):
            me.unlink()
        summary = sweep_status(plan, study)
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri)
        if status == "FINISHED" and summary["pending"] > 0:
            status = "FAILED" if summary["failed_points"] else "RUNNING"
        others = _other_launchers(launchers)
        with contextlib.suppress(Exception):
            from mlflow.entities import Metric

            client.log_batch(parent, metrics=[
                Metric("sweep/complete", summary["complete"], int(time.time() * 1000), 0),
                Metric("sweep/wall_seconds", time.time() - t0, int(time.time() * 1000), 0),
            ])
            if not others:  # the last launcher out ends the shared parent run
                client.set_terminated(parent, status=status if status != "RUNNING" else "FAILED")
    summary["wall_seconds"] = time.time() - t0
    summary["parent_run_id"] = parent
    summary["status"] = status
    return summary


def _has_active(study: Any) -> bool:
    from optuna.trial import TrialState

    return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING)))


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


def _has_waiting(study: Any) -> bool:
    from optuna.trial import TrialState

    return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def _check_writable(root: Path) -> None:
    try:
        (root / "optuna").mkdir(parents=True, exist_ok=True)
        probe = root / "optuna" / f".probe-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"tracking.root '{root}' is not writable: {e.strerror}") from None


ENV_STORAGE = "LIGHTGEN_STORAGE_URL"
ENV_TRACKING = "LIGHTGEN_TRACKING_URI"
ENV_SETS = "LIGHTGEN_WORKER_SETS"


def _spawn_worker(name: str, opts: LaunchOptions, storage_url: str, tracking_uri: str, parent: str,
                  env_extra: dict[str, str]) -> subprocess.Popen:
    """A worker process. Storage URL, tracking URI and --set values (any of which may hold a password) go
    through the environment, never the command line that ``ps`` shows to every user."""
    cmd = [sys.executable, "-m", "lightgen.sweep", "worker", name, "--preset", opts.preset,
           "--parent-run-id", parent]
    if opts.runner:
        cmd += ["--runner", opts.runner]
    if opts.seeds:
        cmd += ["--seeds", str(opts.seeds)]
    env = {**os.environ, **env_extra, "PYTHONUNBUFFERED": "1", ENV_STORAGE: storage_url, ENV_TRACKING: tracking_uri,
           ENV_SETS: json.dumps(opts.sets, default=str)}
    return subprocess.Popen(cmd, env=env, cwd=os.getcwd())


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


def dry_run(plan: Plan) -> dict[str, Any]:
    """Points, datasets and checkpoints to build, and a compute estimate (no side effects)."""
    datasets: dict[str, dict[str, Any]] = {}
    ckpts = []
    total_samples = 0
    total_flops = 0.0
    for job in plan.jobs:
        cfg = plan.job_config(job)
        dkey = json.dumps({"world": cfg.world.model_dump(), "scale": cfg.data.scale, "div": cfg.data.caption_diversity,
                           "cov": cfg.data.coverage, "var": cfg.data.variety, "den": cfg.data.density,
                           "res": cfg.data.resolution, "seed": cfg.data.seed}, sort_keys=True)
        datasets.setdefault(dkey, {"scale": cfg.data.scale_label, "actual": cfg.data.actual_size,
                                   "diversity": cfg.data.caption_diversity, "seed": cfg.data.seed,
                                   "resolution": cfg.data.resolution})
        ckpts.append(f"{cfg.tracking.root}/checkpoints/{job.point.point_id}/seed{job.seed}")
        samples = cfg.train.iterations * cfg.train.batch_size * cfg.train.grad_accum
        total_samples += samples
        total_flops += samples * _flops_per_sample(cfg)
    return {"points": plan.points, "jobs": len(plan.jobs), "datasets": list(datasets.values()),
            "checkpoints": ckpts, "samples": total_samples, "train_flops": total_flops}


def _flops_per_sample(cfg: ExperimentConfig) -> float:
    """6 × parameters × tokens: a standard transformer training estimate (forward + backward)."""
    params = {"tiny": 1.1e6, "small": 78e6, "L": 792e6}[cfg.model.size]  # as built by lightgen.model
    tokens = (cfg.data.resolution // (cfg.model.patch_size * (8 if cfg.model.tokenizer == "vae" else 1))) ** 2
    return 6.0 * params * tokens


# --------------------------------------------------------------------------------------------------
# Worker entry point: python -m lightgen.sweep worker NAME ...
# --------------------------------------------------------------------------------------------------
def _worker_main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="lightgen.sweep worker")
    ap.add_argument("cmd", choices=["worker"])
    ap.add_argument("name")
    ap.add_argument("--preset", required=True)
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
    sets = json.loads(os.environ.get(ENV_SETS) or "{}")
    for s in a.set:
        k, v = _split_override(s)
        sets[k] = _parse_scalar(v)
    plan = plan_sweep(load_sweep(a.name), a.preset, sets, seeds=a.seeds)
    worker_loop(plan, a.storage, a.tracking_uri, a.parent_run_id, runner=a.runner)
    return 0


if __name__ == "__main__":
    from lightgen.errors import run_guarded

    sys.exit(run_guarded(_worker_main, sys.argv[1:]))
