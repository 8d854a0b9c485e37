"""Where everything the studio writes lives: every path under ``tracking.root`` (default ``mlruns/``).

One owner for the folder layout (docs/ARCHITECTURE.md)::

    <root>/datasets/<stream key>/            cached toy streams (``data.cache_dir`` moves them)
    <root>/checkpoints/<point_id>/seed<seed>/ a run's checkpoints (pre-training, DPO/SFT, a sweep's base)
    <root>/geneval/<run id>/<stage>/          a run's GenEval samples and results.jsonl
    <root>/dpo_pairs/<key>/                   preference pairs
    <root>/tokenizers/<kind>-<key>/           one-off frozen toy components (VAE, T5)
    <root>/optuna/journal.log                 the embedded Optuna storage
    <root>/optuna/<study>.lock | .plan.json | .launchers/   a study's lock, plan file, live launchers

Functions take the config (or the root) and return paths; they create nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def root(cfg: Any) -> Path:
    return Path(cfg.tracking.root)


def checkpoint_dir(cfg: Any, point_id: str | None = None, seed: int | None = None) -> Path:
    """``<root>/checkpoints/<point_id>/seed<seed>/``; ``point_id`` defaults to the config's pre-training
    identity (``cfg.point_id()``), ``seed`` to ``cfg.seed``."""
    return checkpoints_under(cfg.tracking.root, point_id or cfg.point_id(), cfg.seed if seed is None else seed)


def checkpoints_under(root_dir: str | Path, point_id: str, seed: int | str) -> Path:
    """The checkpoint folder of (point, seed) under a root given as a path (e.g. a run's logged param)."""
    return Path(root_dir) / "checkpoints" / point_id / f"seed{seed}"


def geneval_dir(cfg: Any, run_id: str) -> Path:
    """A run's GenEval folders: ``before`` (a DPO run's base), ``final``, ``step<N>`` (along training)."""
    return root(cfg) / "geneval" / run_id


def detector_cache(cfg: Any) -> Path:
    return root(cfg) / "geneval"


def datasets_dir(cfg: Any) -> Path:
    return Path(cfg.data.cache_dir) if cfg.data.cache_dir else root(cfg) / "datasets"


def dpo_pairs_dir(cfg: Any, key: str) -> Path:
    return root(cfg) / "dpo_pairs" / key


def tokenizer_dir(cfg: Any, name: str) -> Path:
    return root(cfg) / "tokenizers" / name


def optuna_dir(root_dir: str | Path) -> Path:
    return Path(root_dir) / "optuna"


def journal_file(root_dir: str | Path) -> Path:
    return optuna_dir(root_dir) / "journal.log"


def study_lock(root_dir: str | Path, study: str) -> Path:
    return optuna_dir(root_dir) / f"{study}.lock"


def plan_file(root_dir: str | Path, study: str) -> Path:
    return optuna_dir(root_dir) / f"{study}.plan.json"


def launchers_dir(root_dir: str | Path, study: str) -> Path:
    return optuna_dir(root_dir) / f"{study}.launchers"
