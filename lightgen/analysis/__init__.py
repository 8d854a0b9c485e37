"""Analysis: load logged sweeps, compute CIs and paired tests, rebuild the paper's tables and curves.

Importable API (the scripts in ``analysis/`` are thin command lines around it):
``load_runs``, ``load_prompt_results``, ``load_sweep`` (loader), ``write_bundle``/``read_bundle``
(bundle), ``hierarchical_bootstrap``, ``paired_test``, ``holm`` (stats), ``build_*``/``render`` (tables),
``plot_*`` (curves).
"""

from lightgen.analysis.bundle import read_bundle, write_bundle
from lightgen.analysis.loader import NoData, SweepData, load_prompt_results, load_runs, load_sweep
from lightgen.analysis.stats import hierarchical_bootstrap, holm, paired_test

__all__ = [
    "NoData", "SweepData", "hierarchical_bootstrap", "holm", "load_prompt_results", "load_runs",
    "load_sweep", "paired_test", "read_bundle", "write_bundle",
]
