"""Planning a sweep: its points (one per distinct resolved config), jobs (point × seed), the plan file the
launcher writes once for its workers, and the dry run (datasets, checkpoints, compute; no side effects)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightgen import layout
from lightgen.config import ConfigError, ExperimentConfig, load_config, parse_size, size_label, validate_config
from lightgen.errors import UserError
from lightgen.pipeline import experiment_name, job_point_id
from lightgen.sweep.spec import PresetSettings, SweepDef
from lightgen.utils import write_atomic

PLAN_VERSION = 1


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
    base: ExperimentConfig | None = None  # the resolved base config, resolved once (``base_config``)
    study: str | None = None  # the study name as the launcher computed it (a plan read from its file)

    @property
    def jobs(self) -> list[Job]:
        return [Job(p, s) for p in self.points for s in range(self.seeds)]

    @property
    def study_name(self) -> str:
        if self.study is not None:
            return self.study
        blob = json.dumps({"common": self.common, "seeds": self.seeds}, sort_keys=True, default=str)
        return f"{self.sweep.name}-{self.preset}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}"

    @property
    def experiment_name(self) -> str:
        return experiment_name(self.base_config, sweep=self.sweep.name)

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
        """The job's config: its point's resolved config with the job's seeds (``seed``, ``data.seed``), the
        same as loading the preset with ``job.overrides(plan)``, without reading the preset again."""
        data = job.point.cfg.model_dump(mode="json")
        data["seed"] = job.seed
        data["data"]["seed"] = job.seed
        return validate_config(data)

    @property
    def base_config(self) -> ExperimentConfig:
        if self.base is None:
            self.base = load_config(self.preset, self.common)
        return self.base

    # ---- the plan file: written once by the launcher, read by its workers ----------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"version": PLAN_VERSION, "study": self.study_name, "sweep": self.sweep.model_dump(mode="json"), "preset": self.preset,
                "seeds": self.seeds, "common": self.common, "base": self.base_config.model_dump(mode="json"),
                "points": [{"arm": p.arm, "overrides": p.overrides, "point_id": p.point_id, "label": p.label,
                            "cfg": p.cfg.model_dump(mode="json")} for p in self.points]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Plan":
        plan = cls(SweepDef.model_validate(data["sweep"]), data["preset"], int(data["seeds"]), dict(data["common"]),
                   base=validate_config(data["base"]), study=str(data["study"]))
        plan.points = [Point(p["arm"], dict(p["overrides"]), validate_config(p["cfg"]), p["point_id"], p["label"])
                       for p in data["points"]]
        return plan


def write_plan(plan: Plan, path: str | Path) -> Path:
    """The plan as JSON (temp file, then rename): what every worker of the launch runs. Passwords in URLs
    are redacted (``lightgen.redact``): workers get the storage URL and tracking URI by environment."""
    from lightgen.redact import redact

    return write_atomic(path, redact(json.dumps(plan.to_dict(), sort_keys=True, default=str)))


def read_plan(path: str | Path) -> Plan:
    """A plan file written by :func:`write_plan`; a missing, foreign or damaged one is a ``UserError``."""
    from lightgen.utils import read_text

    text = read_text(path)
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("version") != PLAN_VERSION:
            raise ValueError(f"not a version-{PLAN_VERSION} sweep plan")
        return Plan.from_dict(data)
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"sweep plan {path}: {e}") from None


def _label(overrides: dict[str, Any]) -> str:
    parts = []
    for k, v in overrides.items():
        if k == "data.scale":
            v = size_label(parse_size(v))
        parts.append(f"{k.split('.')[-1]}={v}")
    return ", ".join(parts) or "base"


SHORT_KEYS = {"caption_diversity": "D", "iterations": "iters", "beta": "β"}
"""Short names of swept keys in run names (the UI's run-name column is narrow)."""


def short_label(overrides: dict[str, Any]) -> str:
    """A point's short name for run names and progress bars: ``scale=1K``, ``D=0.5``, ``coverage=0.25``."""
    parts = []
    for k, v in overrides.items():
        if k == "data.scale":
            v = size_label(parse_size(v))
        leaf = k.split(".")[-1]
        parts.append(f"{SHORT_KEYS.get(leaf, leaf)}={v}")
    return ", ".join(parts) or "base"


def run_name(job: "Job") -> str:
    """The MLflow run name of a job: ``D=0.5 · seed 0``."""
    return f"{short_label(job.point.overrides)} · seed {job.seed}"


def _refuse_swept_sets(sweep: SweepDef, arms: list, sets: dict[str, Any]) -> None:
    """``--set`` of a key the sweep itself sets per point would be overridden by the grid without a word:
    refused, naming the key (exit code 2). Keys of the sweep's ``base`` may be set (they are not swept)."""
    for key in sets:
        for arm in arms:
            values = arm.grid.get(key) or arm.zip.get(key)
            if values is not None or key in arm.fixed:
                what = (f"varies it over {', '.join(str(v) for v in values)}" if values is not None
                        else f"fixes it to {arm.fixed[key]}")
                raise ConfigError(f"--set {key}: sweep '{sweep.name}' {what} (arm '{arm.name}'), so a value set "
                                  f"here would be ignored; drop --set {key}, or pick the points with a sweep file of your own")
        if key in sweep.search:
            raise ConfigError(f"--set {key}: sweep '{sweep.name}' searches it ({sweep.search[key].low}…"
                              f"{sweep.search[key].high}), so a value set here would be ignored; drop --set {key}")


def plan_sweep(sweep: SweepDef, preset: str, sets: dict[str, Any] | None = None, seeds: int | None = None) -> Plan:
    """Resolve a sweep at a preset: validate every point against the config schema."""
    settings = sweep.presets.get(preset, PresetSettings())
    common = {**sweep.base, **settings.set, **(sets or {})}
    n_seeds = seeds or settings.seeds or sweep.seeds
    plan = Plan(sweep, preset, n_seeds, common)
    try:
        base_cfg = plan.base_config
    except ConfigError as e:
        raise ConfigError(f"sweep '{sweep.name}' at preset '{preset}': {e}") from None
    if sweep.objective.startswith("geneval") and not base_cfg.eval.enabled:
        raise ConfigError(f"sweep '{sweep.name}' at preset '{preset}': objective {sweep.objective!r} is a GenEval "
                          "metric but eval.enabled is false, so no trial would log it")
    arms = [a for a in sweep.arms if settings.arms is None or a.name in settings.arms]
    _refuse_swept_sets(sweep, arms, sets or {})
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


def dry_run(plan: Plan) -> dict[str, Any]:
    """Points, datasets and checkpoints to build, and a compute estimate (no side effects)."""
    datasets: dict[str, dict[str, Any]] = {}
    streams: dict[str, dict[str, Any]] = {}  # what is actually built: one cached stream serves every prefix of it
    ckpts = []
    total_samples = 0
    total_flops = 0.0
    for job in plan.jobs:
        cfg = plan.job_config(job)
        datasets.setdefault(_dataset_key(cfg), {"scale": cfg.data.scale_label, "actual": cfg.data.actual_size,
                                   "diversity": cfg.data.caption_diversity, "seed": cfg.data.seed,
                                   "resolution": cfg.data.resolution})
        skey, folder = _stream_of(cfg)
        st = streams.setdefault(skey, {"folder": folder, "size": 0, "scales": []})
        st["size"] = max(st["size"], cfg.data.actual_size)
        if cfg.data.scale_label not in st["scales"]:
            st["scales"].append(cfg.data.scale_label)
        ckpts.append(str(layout.checkpoint_dir(cfg, job.point.point_id, job.seed)))
        if plan.job_kind == "dpo":   # a DPO/SFT step sees a winner and a loser per pair
            samples = cfg.dpo.iterations * cfg.dpo.batch_size * 2
        else:
            samples = cfg.train.iterations * cfg.train.batch_size * cfg.train.grad_accum
        total_samples += samples
        total_flops += samples * _flops_per_sample(cfg)
    if plan.job_kind == "dpo" and plan.jobs:   # the one shared base model, pre-trained once
        base = plan.base_config
        samples = base.train.iterations * base.train.batch_size * base.train.grad_accum
        total_samples += samples
        total_flops += samples * _flops_per_sample(base)
    for st in streams.values():
        st["built"] = min(st["size"], _built_count(st.pop("folder")))
    return {"points": plan.points, "jobs": len(plan.jobs), "datasets": list(datasets.values()),
            "streams": list(streams.values()),
            "checkpoints": ckpts, "samples": total_samples, "train_flops": total_flops}


def _stream_of(cfg: ExperimentConfig) -> tuple[str, Any]:
    """The cached image stream a job's dataset is a prefix of (toy world), and its folder; a real-world
    dataset is its own stream (no folder known before it is built)."""
    if cfg.world.kind == "toy":
        from lightgen.data.toy import cache_root, resolve_storage, stream_identity, stream_key

        key = stream_key(stream_identity(cfg, resolve_storage(cfg)))
        return key, cache_root(cfg) / key
    return _dataset_key(cfg), None


def _built_count(folder: Any) -> int:
    """Images already in a stream's cache (its manifest's count); 0 when none or unreadable."""
    if folder is None:
        return 0
    from lightgen.data import store

    try:
        manifest = store.read_manifest(folder)
    except Exception:  # noqa: BLE001 - a dry run only reports; the build itself checks the cache
        return 0
    return int((manifest or {}).get("count", 0))


def _dataset_key(cfg: ExperimentConfig) -> str:
    """The dataset a job trains on, by the data layer's own identity in the toy world (``data.toy.dataset_key``:
    the cached stream and its prefix); in the real world, by the config keys a real dataset is built from."""
    if cfg.world.kind == "toy":
        from lightgen.data.toy import dataset_key

        return dataset_key(cfg)
    return json.dumps({"world": cfg.world.model_dump(), "scale": cfg.data.scale, "div": cfg.data.caption_diversity,
                       "cov": cfg.data.coverage, "var": cfg.data.variety, "den": cfg.data.density,
                       "res": cfg.data.resolution, "seed": cfg.data.seed}, sort_keys=True)


def _flops_per_sample(cfg: ExperimentConfig) -> float:
    """6 × parameters × tokens: a standard transformer training estimate (forward + backward)."""
    params = {"tiny": 1.1e6, "small": 78e6, "L": 792e6}[cfg.model.size]  # as built by lightgen.model
    tokens = (cfg.data.resolution // (cfg.model.patch_size * (8 if cfg.model.tokenizer == "vae" else 1))) ** 2
    return 6.0 * params * tokens
