"""Analysis: load logged sweeps, compute CIs and paired tests, rebuild the paper's tables and curves.

Importable API (the scripts in ``analysis/`` are thin command lines around it):
``load_runs``, ``load_prompt_results``, ``load_sweep`` (loader), ``write_bundle``/``read_bundle``
(bundle), ``hierarchical_bootstrap``, ``paired_test``, ``holm`` (stats), ``build_paper_table``,
``build_ablation_table``, ``render`` (tables), ``plot_*`` (curves).

Names are imported lazily so that ``python analysis/make_tables.py --help`` answers at once.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "read_bundle": "bundle", "write_bundle": "bundle",
    "NoData": "loader", "SweepData": "loader", "load_prompt_results": "loader", "load_runs": "loader",
    "load_sweep": "loader",
    "hierarchical_bootstrap": "stats", "holm": "stats", "paired_test": "stats",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"lightgen.analysis.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'lightgen.analysis' has no attribute {name!r}")
