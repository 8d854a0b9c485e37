"""Test-wide settings: MLflow's system-metrics sampler (on by default, ``tracking.log_system_metrics``) is
off in tests through ``$LIGHTGEN_SYSTEM_METRICS``, so runs stay fast; subprocesses inherit it."""

import os

os.environ.setdefault("LIGHTGEN_SYSTEM_METRICS", "0")
