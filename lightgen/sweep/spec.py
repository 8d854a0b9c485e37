"""Sweep definitions: the schema of ``sweeps/<name>.yaml`` and its loading, each rejection naming the key."""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lightgen.config import REPO_ROOT, ConfigError
from lightgen.yamlfile import load_model
from lightgen.geneval.tasks import TASKS as GENEVAL_TASKS

SWEEP_DIR = REPO_ROOT / "sweeps"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# Keys a sweep cannot vary or fix per arm: every job sets the seeds itself, and where runs, checkpoints
# and the study live (tracking.*, sweep.*) must be one place for the whole sweep.
_SEED_KEYS = ("seed", "data.seed")
_PLACE_PREFIXES = ("tracking.", "sweep.")
# What a trial's summary holds (lightgen.pipeline.train_and_evaluate → lightgen.geneval.summary.summarize).
_OBJECTIVE_RE = re.compile(
    r"^step$|^geneval/(overall_ci_low|overall_ci_high|correct_images|correct_prompts)$"
    r"|^geneval(_intrain|_novel|_heldout)?/(overall|" + "|".join(GENEVAL_TASKS) + r")$"
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
                             "geneval/correct_prompts, their geneval_intrain/, geneval_novel/ and geneval_heldout/ "
                             "variants (per-run splits), or step")
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
    return load_model(p, SweepDef, "sweep definition", not_mapping="a sweep definition must be a mapping")
